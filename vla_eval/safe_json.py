"""The one bounded reader for every JSON file the toolkit accepts (bottom layer, stdlib only).

Thresholds, diagnose libraries, manifests, checkpoint configs, norm stats and tokenizer files all
come from users' disks. Each is read through ``read_json``: a regular file only (a FIFO would hang,
``/dev/zero`` would fill memory), at most ``max_bytes``, UTF-8, nested at most ``MAX_DEPTH`` deep,
numbers finite (no NaN, Infinity, 1e400 or 10**400). Anything else is one ``UsageError`` naming the file
and the problem.

    cfg = read_json(path, "thresholds file")              # -> a dict, or UsageError
"""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from vla_eval.errors import UsageError

MAX_JSON_BYTES = 64 * 2**20  # the largest file the toolkit writes is a tokenizer.json (~2 MB)
MAX_DEPTH = 64  # the deepest file the toolkit writes nests 6 levels


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise _NotFinite(f"the number {text[:40]} is out of range")
    return x


def _bounded_int(text: str) -> int:
    n = int(text)
    if abs(n) >= 2**63:
        raise _NotFinite(f"the integer {text[:40]}{'...' if len(text) > 40 else ''} is out of range")
    return n


def _no_constant(name: str):
    raise _NotFinite(f"{name} is not a number JSON allows here")


def _depth(value) -> int:
    """Nesting depth, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:  # stop descending once too deep
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def read_json(path: str | Path, what: str, *, expect: type = dict, max_bytes: int = MAX_JSON_BYTES,
              allow_nan: bool = False):
    """``path``'s JSON value, or ``UsageError(f"{what} {path}: ...")``. ``expect``: the top-level
    type (dict, list, or object for any). ``allow_nan``: read a bare ``NaN`` as a missing value
    (older diagnose libraries wrote one for a feature a run did not log); Infinity never reads."""
    path = Path(path)

    def bad(problem: str) -> UsageError:
        return UsageError(f"{what} {path}: {problem}")

    try:
        st = os.stat(path)  # follows links; a loop is ELOOP below
    except FileNotFoundError:
        raise bad("no such file") from None
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, device or socket)"
        raise bad(f"is {kind}; give a JSON file")
    if st.st_size > max_bytes:
        raise bad(f"is {st.st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise bad(f"cannot be read ({e.strerror or e})") from None
    if len(raw) > max_bytes:  # grew while read, or a special file that reports size 0
        raise bad(f"holds more than the {max_bytes:,} bytes a {what} may have")
    try:
        constant = (lambda name: math.nan if name == "NaN" else _no_constant(name)) if allow_nan else _no_constant
        value = json.loads(raw.decode("utf-8"), parse_float=_finite_float, parse_int=_bounded_int,
                           parse_constant=constant)
    except UnicodeDecodeError:
        raise bad("is not UTF-8 text") from None
    except RecursionError:
        raise bad(f"is nested more than {MAX_DEPTH} levels deep") from None
    except _NotFinite as e:
        raise bad(f"{e} (numbers must be finite)") from None
    except ValueError as e:  # JSONDecodeError, and int() past Python's digit limit
        raise bad(f"is not valid JSON ({str(e)[:120]})") from None
    if _depth(value) > MAX_DEPTH:
        raise bad(f"is nested more than {MAX_DEPTH} levels deep")
    if expect is not object and not isinstance(value, expect):
        raise bad(f"holds a JSON {type(value).__name__}, expected {'an object' if expect is dict else 'a list'}")
    return value
