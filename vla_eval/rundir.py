"""The run folder: its config and manifest, its logs, its suites file, and one writer at a time.

A run folder holds ``manifest.json`` (the run's ``SweepConfig``, provenance, the command), one
``<tag>.jsonl`` of step and episode records per run tag, and, for several suites,
``suites.json`` with one sub-folder per suite. This module reads and checks all of it; reports,
monitors and ``diagnose`` read runs through it alone (never through the sweep or the policies).

One writer per run folder: an exclusive lock, and the holder's name when it is refused. The lock
is an OS file lock (``filelock``) on ``<run>/.lock``: the kernel releases it when its process dies,
so a lock left by a killed sweep is taken over by the next command without any clean-up.
``.lock.holder`` says who holds it (pid, host, command, since), for the message.

    with run_lock(run_dir):          # sweep, drill, resume, merge output, report writing
        ...
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vla_eval.argtypes import MAX_STEP_LIMIT, format_ids
from vla_eval.errors import DIST, UsageError, bad_choice
from vla_eval.faults import RUN_TAGS, is_run_tag, toggles_for
from vla_eval.records import EpisodeRecord, RunLog, RunScope, read_jsonl
from vla_eval.safe_json import read_json
from vla_eval.sims.protocol import N_INIT_STATES, SUITES, check_task_id, suite_spec

MANIFEST = "manifest.json"
FORECASTER_COPY = "forecaster.json"  # a --forecaster run keeps a copy, for its report
SUITES_FILE = "suites.json"
ALL4 = ("libero_spatial", "libero_object", "libero_goal", "libero_10")  # the four suites OpenVLA reports


@dataclass(frozen=True)
class EpisodeShape:
    """What every episode of a run is beyond its task and seed: part of the run's identity."""
    cameras: bool = True  # render (pixel policies); off: physics only, ~10x faster
    hard_reset: bool = True  # the published eval's robosuite default; False is ~6x faster to reset
    max_steps: int | None = None  # None: the suite's (220/280/300/520/400)
    perturb_seed: int = 0  # what perturbation run tags draw from (vla_eval.perturbations)


@dataclass(frozen=True)
class SweepConfig:
    """What a run is: its identity, recorded in the manifest; a resume or merge must match it."""
    suite: str
    task_ids: tuple[int, ...]
    seeds: tuple[int, ...]  # seed i -> stored init state i; an int N means 0..N-1
    policy: str
    tags: tuple[str, ...] = ("baseline",)
    cameras: bool = True
    hard_reset: bool = True
    max_steps: int | None = None
    checkpoint: str | None = None
    revision: str | None = None
    shard: str | None = None  # "i/K": this run does jobs i, i+K, i+2K, ...
    perturb_seed: int = 0  # the seed perturbation run tags (camera:2, ...) draw their perturbations from

    def __post_init__(self):
        """The one gate of a run's identity: names and ranges, before any simulator or model import."""
        task_ids, tags = tuple(self.task_ids), tuple(self.tags)  # any iterable, read once
        suite_spec(self.suite)  # an unknown suite names the valid ones
        if not task_ids or len(set(task_ids)) != len(task_ids):
            raise UsageError(f"task ids {task_ids}: give at least one, each once")
        for t in task_ids:
            if not isinstance(t, int) or isinstance(t, bool):
                raise UsageError(f"task id {t!r} is not an integer")
            check_task_id(self.suite, t)
        if not tags or len(set(tags)) != len(tags):
            raise UsageError(f"run tags {tags}: give at least one, each once")
        for tag in tags:
            toggles_for(tag)  # an unknown tag names the valid ones
        seeds = tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(sorted(self.seeds))
        bad = [s for s in seeds if not (isinstance(s, int) and 0 <= s < N_INIT_STATES)]
        if not seeds or bad or len(set(seeds)) != len(seeds):
            what = f"seed {bad[0]} has no stored init state" if bad else "a seed set must be non-empty and unique"
            raise UsageError(f"--seeds: {what}; valid: 0..{N_INIT_STATES - 1} (a count N, or ids such as 10-59 or 3,4)")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "task_ids", task_ids)
        object.__setattr__(self, "tags", tags)
        parse_shard(self.shard)
        if not (_is_int(self.perturb_seed) and 0 <= self.perturb_seed < 2**31):
            raise UsageError(f"--perturb-seed {self.perturb_seed!r}: valid 0..{2**31 - 1}")
        if self.max_steps is not None and not (isinstance(self.max_steps, int) and 1 <= self.max_steps <= MAX_STEP_LIMIT):
            raise UsageError(f"--max-steps {self.max_steps!r}: valid 1..{MAX_STEP_LIMIT} (LIBERO's longest suite: 520)")

    @property
    def shape(self) -> EpisodeShape:
        """The episodes' shape (kept as flat fields so manifests read as before)."""
        return EpisodeShape(self.cameras, self.hard_reset, self.max_steps, self.perturb_seed)

    def scope(self, tag: str) -> RunScope:
        """What this run's ``<tag>.jsonl`` may hold."""
        return RunScope(self.suite, tag, frozenset(self.task_ids), frozenset(self.seeds))

    def identity(self) -> dict:
        """What must match for two runs to be resumed or merged as one."""
        d = asdict(self)
        d.pop("shard")
        return d

    def jobs_in_shard(self) -> int:
        i, k = parse_shard(self.shard)
        return len(range(i, len(self.task_ids) * len(self.seeds), k))


def parse_shard(shard: str | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    try:
        i, k = (int(x) for x in shard.split("/"))
    except ValueError:
        raise UsageError(f"bad --shard {shard!r}; expected i/K with 0 <= i < K, e.g. 0/4") from None
    if not (k >= 1 and 0 <= i < k):
        raise UsageError(f"bad --shard {shard!r}; expected i/K with 0 <= i < K, e.g. 0/4")
    return i, k


# -- manifest ------------------------------------------------------------------------------------
def provenance() -> dict:
    from importlib import metadata

    versions = {}
    for pkg in (DIST, "numpy", "torch", "transformers", "timm", "tokenizers", "robosuite", "mujoco", "libero"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    gpu = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpu": gpu,
        "MUJOCO_GL": os.environ.get("MUJOCO_GL"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def load_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise UsageError(f"{run_dir} is not a vla-eval run folder (no {MANIFEST})")
    d = read_json(path, "manifest", max_bytes=16 * 2**20)
    if not isinstance(d.get("config"), dict):
        raise UsageError(f"{path}: a manifest is a JSON object with a 'config' object")
    return d


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# field -> (check, what a valid value is); every value read back from a manifest passes one. The
# policy is checked against the registry only where one is built (a resume), not to read a run.
_CONFIG_CHECKS = {
    "suite": (lambda v: isinstance(v, str) and v in SUITES, f"one of {', '.join(SUITES)}"),
    "task_ids": (lambda v: isinstance(v, list) and v and all(_is_int(t) and 0 <= t < 90 for t in v), "task ids"),
    "seeds": (lambda v: (_is_int(v) and 1 <= v <= N_INIT_STATES)  # a count: manifests before seed sets
              or (isinstance(v, list) and v and all(_is_int(s) and 0 <= s < N_INIT_STATES for s in v)
                  and len(set(v)) == len(v)),
              f"a list of distinct seeds 0..{N_INIT_STATES - 1} (or a count 1..{N_INIT_STATES})"),
    "policy": (lambda v: isinstance(v, str) and 0 < len(v) <= 100 and v.isprintable(), "a policy name"),
    "tags": (lambda v: isinstance(v, list) and v and all(isinstance(t, str) and is_run_tag(t) for t in v),
             f"a list of {', '.join(RUN_TAGS)} (or fault names joined by +)"),
    "cameras": (lambda v: isinstance(v, bool), "true or false"),
    "hard_reset": (lambda v: isinstance(v, bool), "true or false"),
    "max_steps": (lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_STEP_LIMIT), f"null or 1..{MAX_STEP_LIMIT}"),
    "checkpoint": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "revision": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "shard": (lambda v: v is None or isinstance(v, str), "null or 'i/K'"),
    "perturb_seed": (lambda v: _is_int(v) and 0 <= v < 2**31, "an integer 0..2^31-1"),
}


def config_from_manifest(run_dir: Path, manifest: dict | None = None) -> SweepConfig:
    """The run's config, every field checked by type and range (a crafted manifest is refused)."""
    c = (manifest or load_manifest(run_dir))["config"]
    where = Path(run_dir) / MANIFEST
    unknown = sorted(set(c) - set(_CONFIG_CHECKS))
    missing = sorted({"suite", "task_ids", "seeds", "policy"} - set(c))
    if unknown or missing:
        raise UsageError(f"{where}: config " + "; ".join(
            ([f"has unknown fields {unknown}"] if unknown else []) + ([f"lacks {missing}"] if missing else [])))
    defaults = {f: getattr(SweepConfig, f) for f in _CONFIG_CHECKS if hasattr(SweepConfig, f)}
    c = {**{k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}, **c}  # older manifests
    for key, (ok, valid) in _CONFIG_CHECKS.items():
        if not ok(c[key]):
            raise UsageError(f"{where}: config {key}={c[key]!r} is invalid; valid: {valid}")
    parse_shard(c["shard"])
    seeds = tuple(range(c["seeds"])) if _is_int(c["seeds"]) else tuple(c["seeds"])
    return SweepConfig(**{**c, "seeds": seeds})


def _shown(key: str, value) -> str:
    """A config value as the user typed it: seed sets in the --seeds syntax ('0-3'), the rest as repr."""
    if key == "seeds" and isinstance(value, (list, tuple)):
        return format_ids(value)
    return repr(value)


def _jsonish(v):
    return json.loads(json.dumps(v))


def same_path(a, b) -> bool:
    """One local folder named two ways (relative and absolute) is the same; other strings must be equal."""
    if a == b:
        return True
    return isinstance(a, str) and isinstance(b, str) and Path(a).exists() and Path(a).resolve() == Path(b).resolve()


def _same(key: str, old, new) -> bool:
    return same_path(old, new) if key == "checkpoint" else old == new


def check_or_write_manifest(run_dir: Path, cfg: SweepConfig, model_options: dict | None = None,
                            merged: dict | None = None) -> None:
    """A new folder gets the manifest; an existing one must hold the same config (else refused)."""
    path = Path(run_dir) / MANIFEST
    if path.exists():
        old = load_manifest(run_dir)["config"]
        if _is_int(old.get("seeds")):  # a manifest from before seed sets: a count N is seeds 0..N-1
            old = {**old, "seeds": list(range(old["seeds"]))}
        old = {**{f: _jsonish(getattr(SweepConfig, f)) for f in ("perturb_seed",)}, **old}  # fields newer than the folder
        diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if not _same(k, old.get(k), _jsonish(v))}
        if diff:
            lines = "; ".join(f"{k}: folder has {_shown(k, a)}, command asks {_shown(k, b)}"
                              for k, (a, b) in diff.items())
            raise UsageError(f"{run_dir} holds a run with another config ({lines}). Use another --out folder.")
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    prov = {**provenance(), **({"openvla": model_options} if model_options else {})}
    tmp.write_text(json.dumps({"config": asdict(cfg), "provenance": prov, **({"merged": merged} if merged else {})},
                              indent=2))
    tmp.replace(path)


# -- logs ----------------------------------------------------------------------------------------
def read_tag(run_dir: Path, tag: str, cfg: SweepConfig | None = None) -> RunLog | None:
    """A run folder's ``<tag>.jsonl`` checked against its manifest (None if there is no such log)."""
    path = Path(run_dir) / f"{tag}.jsonl"
    if not path.exists():
        return None
    cfg = cfg or config_from_manifest(run_dir)
    if tag not in cfg.tags:
        raise UsageError(f"{path}: tag {tag!r} is not one of this run's ({', '.join(cfg.tags)})")
    return read_jsonl(path, cfg.scope(tag))


def read_log(path: Path) -> RunLog:
    """A JSONL log; inside a run folder it is checked against the manifest (a foreign record is an error)."""
    path = Path(path)
    if (path.parent / MANIFEST).is_file() and path.suffix == ".jsonl":
        log = read_tag(path.parent, path.stem)
        if log is None:  # a tag this run does not have, or one whose first episode has not started yet
            there = sorted(p.name for p in path.parent.glob("*.jsonl"))
            raise UsageError(f"no such log file: {path}; the run folder holds {', '.join(there) or 'no log yet'}")
        return log
    return read_jsonl(path)


def committed(run_dir: Path, tag: str, retry_errors: bool = False) -> list[EpisodeRecord]:
    """The episodes a resume keeps (without errors if ``retry_errors``)."""
    path = Path(run_dir) / f"{tag}.jsonl"
    log = read_tag(run_dir, tag)
    if log is None:
        return []
    if log.torn_tail:
        print(f"note: {path}: dropped a torn final line (a run was killed mid-write)", file=sys.stderr)
    return [e for e in log.episodes if not (retry_errors and e.outcome == "error")]


# -- several suites ------------------------------------------------------------------------------
def parse_suites(text: str) -> tuple[str, ...]:
    """``libero_object`` | ``libero_spatial,libero_goal`` | ``all4``."""
    names = ALL4 if text == "all4" else tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SUITES]
    if bad:
        raise bad_choice("suite", bad[0], [*SUITES, "all4 (several: comma-separated)"])
    if not names or len(set(names)) != len(names):
        raise UsageError(f"--suite {text!r}: give one suite, a comma-separated list without repeats, or all4")
    return names


def write_suites_file(run_dir: Path, suites: tuple[str, ...]) -> None:
    path = Path(run_dir) / SUITES_FILE
    if path.exists():
        have = read_suites(run_dir)
        if have != tuple(suites):
            raise UsageError(f"{run_dir} holds a run over suites {list(have)}; this command asks for {list(suites)}. "
                             f"Use another --out folder.")
        return
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"suites": list(suites)}, indent=1) + "\n")
    tmp.replace(path)


def is_multi_suite(run_dir: Path) -> bool:
    return (Path(run_dir) / SUITES_FILE).is_file()


def read_suites(run_dir: Path) -> tuple[str, ...]:
    path = Path(run_dir) / SUITES_FILE
    suites = read_json(path, "suites file", max_bytes=2**20).get("suites")
    if not (isinstance(suites, list) and suites and all(isinstance(s, str) and s in SUITES for s in suites)):
        raise UsageError(f"{path}: 'suites' must be a list of {', '.join(SUITES)}")
    return tuple(suites)


# -- one writer ----------------------------------------------------------------------------------
LOCK, HOLDER = ".lock", ".lock.holder"


def _holder(run_dir: Path) -> str:
    try:
        h = read_json(run_dir / HOLDER, "lock holder", max_bytes=2**16)
        return f"pid {h['pid']} on {h['host']} ({h['command']!r}, since {h['since']})"
    except (UsageError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def run_lock(run_dir: Path, what: str = "write"):
    """Hold ``run_dir``'s lock for the block; refuse at once if another process holds it."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file, not a run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"{run_dir} is in use by {_holder(run_dir)}; wait for it to finish (or stop it) "
                         f"before you {what} there") from None
    try:
        (run_dir / HOLDER).write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([Path(sys.argv[0]).name,
                                                                                   *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        yield run_dir
    finally:
        with contextlib.suppress(OSError):
            (run_dir / HOLDER).unlink()
        lock.release()
