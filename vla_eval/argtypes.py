"""argparse value types that name the bad value and the valid range (bottom layer: every CLI uses them)."""
from __future__ import annotations

import argparse
import math
from typing import Callable


MAX_INT_FLAG = 10**6  # no count, step limit or worker number the toolkit takes is near this
MAX_STEP_LIMIT = 100_000  # --max-steps' range: far above any suite's limit, far below what breaks a report


def int_at_least(low: int, what: str = "", high: int = MAX_INT_FLAG) -> Callable[[str], int]:
    """An integer in [low, high]: every integer flag has a range (a 10**20 step limit would run,
    then break the report)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}{what}, got {n}")
        if n > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,}{what}, got {str(n)[:30]}")
        return n

    parse.__name__ = f"integer >= {low}"
    return parse


def float_between(low: float, high: float = 1e9, low_inclusive: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = x >= low if low_inclusive else x > low
        if not (math.isfinite(x) and above and x < high):
            bound = f"{'>=' if low_inclusive else '>'} {low}" + (f" and < {high}" if math.isfinite(high) else "")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return x

    parse.__name__ = "number"
    return parse


def id_set(flag: str) -> Callable[[str], tuple[int, ...]]:
    """'3,4' or '10-59' or '0-4,7' -> sorted unique non-negative ids; a repeat or a bad range is refused."""
    def parse(text: str) -> tuple[int, ...]:
        ids: list[int] = []
        try:
            for part in text.split(","):
                lo, _, hi = part.partition("-")
                a, b = int(lo), int(hi) if hi else int(lo)
                if a < 0 or b < a:
                    raise ValueError
                ids.extend(range(a, b + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes ids and ranges such as 3,4 or 10-59, got {text!r}") from None
        if len(set(ids)) != len(ids):
            raise argparse.ArgumentTypeError(f"{flag} lists an id twice: {text!r}")
        return tuple(sorted(ids))

    parse.__name__ = "id list"
    return parse


def _blocking_file(path):
    """The path itself or the nearest existing ancestor, if that is not a folder."""
    from pathlib import Path

    p = Path(path)
    for candidate in (p, *p.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def out_dir(text: str):
    """A folder to write into: refused at parse time if it, or a folder above it, is a file."""
    from pathlib import Path

    blocker = _blocking_file(text)
    if blocker is not None:
        what = "is a file" if str(blocker) == str(Path(text)) else f"lies under the file {blocker}"
        raise argparse.ArgumentTypeError(f"{text} {what}; give a folder path")
    return Path(text)


def out_file(text: str):
    """A file to write: refused at parse time if it is a folder or lies under a file."""
    from pathlib import Path

    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file path, e.g. {p / 'episode.jsonl'}")
    blocker = _blocking_file(p.parent)
    if blocker is not None:
        raise argparse.ArgumentTypeError(f"{text} lies under the file {blocker}; give a path in a folder")
    return p


def seeds(flag: str, count: bool) -> Callable[[str], tuple[int, ...]]:
    """The one seed-set grammar of every seed flag: ids and ranges separated by commas ('3,4',
    '10-59', '0-4,7'). A lone number is where the flags differ, and each flag's help says which:
    on a flag that takes a count (``count=True``: sweep/drill/demo ``--seeds``, dagger
    ``--eval-seeds``) 'N' means seeds 0..N-1, as in the published protocol's "50 seeds per task",
    and a lone seed is written '7-7'; on a flag that takes ids (``--calib-seeds``) '7' is seed 7."""
    ids = id_set(flag)

    def parse(text: str) -> tuple[int, ...]:
        if count and text.strip().isdigit():
            n = int(text)
            if n < 1:
                raise argparse.ArgumentTypeError(
                    f"must be at least 1 (a count; the lone seed 0 is written 0-0), got {n}")
            return tuple(range(n))
        return ids(text)

    parse.__name__ = "seed count or ids" if count else "seed ids"
    return parse


seed_set = seeds("--seeds", count=True)  # sweep, drill, demo: 'N' is a count


def format_ids(ids) -> str:
    """(0, 1, 2, 3) -> '0-3'; (3, 4) -> '3,4'; (0, 1, 2, 7, 8, 9) -> '0-2,7-9'; (0,) -> '0-0': what
    seed_set reads back."""
    s, parts, i = sorted(ids), [], 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        parts.append(f"{s[i]}-{s[j]}" if j - i >= 2 else ",".join(map(str, s[i:j + 1])))
        i = j + 1
    text = ",".join(parts)
    return f"{text}-{text}" if text.isdigit() else text  # one id alone would read back as a count


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads N``: torch (and BLAS) threads of this run's processes; default: the cores this
    process may use (affinity, cgroup quota), shared among the processes the run keeps busy."""
    parser.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                        help="CPU threads for torch in each process of this run (default: sized from the usable "
                             "cores: affinity and cgroup quota)")
