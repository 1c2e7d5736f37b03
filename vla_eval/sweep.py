"""Sweeps and drills: resumable, shardable runs of N seeds x tasks x run tags.

A run folder holds ``manifest.json`` (config, provenance, command) and one
``<tag>.jsonl`` per run tag. Re-running the same command on the same folder skips the
episodes already committed and redoes the rest (see ``records`` for the durability rules).
A drill is a sweep whose tags are the baseline plus the chosen faults.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from vla_eval.argtypes import format_ids
from vla_eval.errors import DIST, UsageError
from vla_eval.sims.protocol import N_INIT_STATES, SUITES
from vla_eval.faults import RUN_TAGS, is_run_tag
from vla_eval.faults import toggles_for as _fault_toggles
from vla_eval.policies.factory import PIXEL_POLICIES, POLICIES, OpenVLAOptions, Toggles, make_policies, resolve_options
from vla_eval.records import EpisodeRecord, JsonlWriter, RunLog, RunScope, read_jsonl
from vla_eval.rundir import run_lock
from vla_eval.runner import RunConfig, make_jobs, run_episodes, slot_groups

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class SweepConfig:
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

    def __post_init__(self):
        seeds = tuple(range(self.seeds)) if isinstance(self.seeds, int) else tuple(sorted(self.seeds))
        bad = [s for s in seeds if not (isinstance(s, int) and 0 <= s < N_INIT_STATES)]
        if not seeds or bad or len(set(seeds)) != len(seeds):
            what = f"seed {bad[0]} has no stored init state" if bad else "a seed set must be non-empty and unique"
            raise UsageError(f"--seeds: {what}; valid: 0..{N_INIT_STATES - 1} (a count N, or ids such as 10-59 or 3,4)")
        object.__setattr__(self, "seeds", seeds)

    def scope(self, tag: str) -> RunScope:
        """What this run's ``<tag>.jsonl`` may hold."""
        return RunScope(self.suite, tag, frozenset(self.task_ids), frozenset(self.seeds))

    def identity(self) -> dict:
        """What must match for two runs to be resumed or merged as one."""
        d = asdict(self)
        d.pop("shard")
        return d


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


def toggles_for(tag: str) -> Toggles:
    try:
        return _fault_toggles(tag)
    except KeyError as e:
        raise UsageError(f"unknown run tag {tag!r} (fault {e.args[0]!r}); valid: {', '.join(RUN_TAGS)}, or fault "
                         "names joined by +") from None


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
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise UsageError(f"{path}: not a readable manifest ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
        raise UsageError(f"{path}: a manifest is a JSON object with a 'config' object")
    return d


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# field -> (check, what a valid value is); every value read back from a manifest passes one.
_CONFIG_CHECKS = {
    "suite": (lambda v: isinstance(v, str) and v in SUITES, f"one of {', '.join(SUITES)}"),
    "task_ids": (lambda v: isinstance(v, list) and v and all(_is_int(t) and 0 <= t < 90 for t in v), "task ids"),
    "seeds": (lambda v: (_is_int(v) and 1 <= v <= N_INIT_STATES)  # a count: manifests before seed sets
              or (isinstance(v, list) and v and all(_is_int(s) and 0 <= s < N_INIT_STATES for s in v)
                  and len(set(v)) == len(v)),
              f"a list of distinct seeds 0..{N_INIT_STATES - 1} (or a count 1..{N_INIT_STATES})"),
    "policy": (lambda v: isinstance(v, str) and v in POLICIES, f"one of {', '.join(POLICIES)}"),
    "tags": (lambda v: isinstance(v, list) and v and all(isinstance(t, str) and is_run_tag(t) for t in v),
             f"a list of {', '.join(RUN_TAGS)} (or fault names joined by +)"),
    "cameras": (lambda v: isinstance(v, bool), "true or false"),
    "hard_reset": (lambda v: isinstance(v, bool), "true or false"),
    "max_steps": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "checkpoint": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "revision": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "shard": (lambda v: v is None or isinstance(v, str), "null or 'i/K'"),
}


def config_from_manifest(run_dir: Path) -> SweepConfig:
    """The run's config, every field checked by type and range (a crafted manifest is refused)."""
    c = load_manifest(run_dir)["config"]
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
    return SweepConfig(**{**c, "task_ids": tuple(c["task_ids"]), "tags": tuple(c["tags"]), "seeds": seeds})


def _shown(key: str, value) -> str:
    """A config value as the user typed it: seed sets in the --seeds syntax ('0-3'), the rest as repr."""
    if key == "seeds" and isinstance(value, (list, tuple)):
        return format_ids(value)
    return repr(value)


def _check_or_write_manifest(run_dir: Path, cfg: SweepConfig, model_options: dict | None = None,
                             merged: dict | None = None) -> None:
    path = run_dir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())["config"]
        if _is_int(old.get("seeds")):  # a manifest from before seed sets: a count N is seeds 0..N-1
            old = {**old, "seeds": list(range(old["seeds"]))}
        diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != _jsonish(v)}
        if diff:
            lines = "; ".join(f"{k}: folder has {_shown(k, a)}, command asks {_shown(k, b)}"
                              for k, (a, b) in diff.items())
            raise UsageError(f"{run_dir} holds a run with another config ({lines}). Use another --out folder.")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    prov = {**provenance(), **({"openvla": model_options} if model_options else {})}
    tmp.write_text(json.dumps({"config": asdict(cfg), "provenance": prov, **({"merged": merged} if merged else {})},
                              indent=2))
    tmp.replace(path)


def _model_provenance(openvla: OpenVLAOptions) -> dict:
    """The model options as run, with the weights' fingerprint (``diagnose`` matches libraries by it)."""
    from vla_eval.policies.hub import checkpoint_fingerprint

    return {**asdict(openvla), "checkpoint_id": checkpoint_fingerprint(openvla.checkpoint, openvla.revision)}


def _jsonish(v):
    return json.loads(json.dumps(v))


@dataclass
class SweepResult:
    run_dir: Path
    episodes: dict[str, list[EpisodeRecord]] = field(default_factory=dict)  # tag -> committed episodes
    skipped: int = 0
    ran: int = 0
    wall_s: float = 0.0


def read_tag(run_dir: Path, tag: str, cfg: SweepConfig | None = None) -> RunLog | None:
    """A run folder's ``<tag>.jsonl`` checked against its manifest (None if there is no such log)."""
    path = Path(run_dir) / f"{tag}.jsonl"
    if not path.exists():
        return None
    cfg = cfg or config_from_manifest(run_dir)
    if tag not in cfg.tags:
        raise UsageError(f"{path}: tag {tag!r} is not one of this run's ({', '.join(cfg.tags)})")
    return read_jsonl(path, cfg.scope(tag))


def committed(run_dir: Path, tag: str, retry_errors: bool = False) -> list[EpisodeRecord]:
    path = Path(run_dir) / f"{tag}.jsonl"
    log = read_tag(run_dir, tag)
    if log is None:
        return []
    if log.torn_tail:
        print(f"note: {path}: dropped a torn final line (a run was killed mid-write)", file=sys.stderr)
    return [e for e in log.episodes if not (retry_errors and e.outcome == "error")]


def run_sweep(
    cfg: SweepConfig,
    run_dir: Path,
    workers: int = 0,
    openvla: OpenVLAOptions = OpenVLAOptions(),
    retry_errors: bool = False,
    progress: bool = True,
    stop_on_alert: bool = False,
    monitor_factory=None,
    overlap: bool = False,
    env_timeout_s: float | None = None,
    videos: str = "default",
    ray_address: str | None = None,
    policy_actors: int | None = None,
) -> SweepResult:
    """``videos``: which episodes' agentview videos to keep (``vla_eval.videos``; cameras on only).
    ``ray_address``: env workers as Ray actors ("local" or a cluster address); same folder rules.
    ``policy_actors``: with Ray, the policy runs in that many Ray actors (default: one per GPU
    for a CUDA model, none for a CPU one: then it stays in this process)."""
    from vla_eval.videos import parse_policy

    parse_policy(videos)
    slot_groups(max(workers, 1), overlap)  # refuse a bad --overlap before loading any model
    if ray_address is not None and workers < 1:
        raise UsageError("--ray runs the envs as Ray actors: give their number with --workers N (or --batch N)")
    if policy_actors is not None and (ray_address is None or policy_actors < 0):
        raise UsageError(f"--policy-actors {policy_actors}: policy actors live on a Ray cluster; add --ray and give "
                         f"0 (the policy in this process) or more")
    i, k = parse_shard(cfg.shard)
    tags = [(tag, toggles_for(tag)) for tag in cfg.tags]
    all_jobs = make_jobs(cfg.suite, cfg.task_ids, cfg.seeds)[i::k]
    openvla = replace(openvla, batch=max(1, workers))  # the model is called with one row per env
    if cfg.policy in PIXEL_POLICIES:
        openvla = resolve_options(cfg.policy, cfg.suite, openvla)
    with _ray_session(ray_address, local_cpus=workers + (policy_actors or 0)) as ray:
        policies = _load_policies(ray, policy_actors, cfg, tags, openvla)  # set-up errors surface before any episode
        try:
            from vla_eval.preflight import preflight_run

            preflight_run(policies, openvla.native, cfg.suite)
            run_dir = Path(run_dir)
            from vla_eval.sims.libero_env import configure_gl

            configure_gl()  # before the manifest records MUJOCO_GL
            with run_lock(run_dir, "run episodes"):  # one writer per folder, manifest checked under the lock
                _check_or_write_manifest(run_dir, cfg, _model_provenance(openvla) if cfg.policy in PIXEL_POLICIES
                                         else None)
                rc = RunConfig(cameras=cfg.cameras, hard_reset=cfg.hard_reset, max_steps=cfg.max_steps,
                               workers=workers, stop_on_alert=stop_on_alert, overlap=overlap,
                               env_timeout_s=env_timeout_s, ray_address=ray_address)
                return _run_tags(run_dir, tags, all_jobs, policies, rc, retry_errors, monitor_factory, progress,
                                 videos)
        finally:
            if ray is not None:  # policy actors would hold their GPUs on a shared cluster after the run
                from vla_eval.policies.ray_actors import release

                release(ray, policies.values())


@contextmanager
def _ray_session(address: str | None, local_cpus: int):
    """Connected Ray (None without --ray); a local instance started here is shut down after the run."""
    if address is None:
        yield None
        return
    from vla_eval.sims.ray_pool import connect, ray_initialized

    own = not ray_initialized()
    ray = connect(None if address == "local" else address, local_cpus)
    try:
        yield ray
    finally:
        if own:
            ray.shutdown()


def _load_policies(ray, policy_actors: int | None, cfg: SweepConfig, tags, openvla: OpenVLAOptions) -> dict:
    """tag -> policy: in this process, or (Ray) proxies of policy actors that hold the weights.
    Default actor count: one per cluster GPU for a CUDA model, none otherwise."""
    toggles = [t for _, t in tags]
    n_actors = 0
    if ray is not None:
        from vla_eval.policies.ray_actors import default_actor_count, make_ray_policies

        pixel = cfg.policy in PIXEL_POLICIES
        n_actors = policy_actors if policy_actors is not None else (
            default_actor_count(ray, openvla.device) if pixel else 0)
    if n_actors:
        gpu = pixel and openvla.device.startswith("cuda")
        loaded = make_ray_policies(ray, n_actors, cfg.policy, cfg.suite, toggles, openvla, gpu)
    else:
        loaded = make_policies(cfg.policy, cfg.suite, toggles, openvla)
    return {tag: p for (tag, _), p in zip(tags, loaded)}


def _run_tags(run_dir, tags, all_jobs, policies, rc: RunConfig, retry_errors, monitor_factory,
              progress, videos: str) -> SweepResult:
    from vla_eval.videos import VideoKeeper

    result = SweepResult(run_dir)
    t0 = time.perf_counter()
    from vla_eval.sims.pools import make_pool

    with make_pool(rc.workers, rc.env_timeout_s, rc.ray_address) as pool:  # one set of envs for every tag: a drill creates them once
        for tag, _ in tags:
            have = committed(run_dir, tag, retry_errors)
            done_keys = {(e.task_id, e.seed) for e in have}
            todo = [j for j in all_jobs if (j.task_id, j.seed) not in done_keys]
            result.skipped += len(all_jobs) - len(todo)
            bar = _progress(tag, len(all_jobs), have, enabled=progress)
            with JsonlWriter(run_dir / f"{tag}.jsonl") as writer:
                keeper = VideoKeeper(run_dir / "videos", videos if rc.cameras else "none", tag)
                new = run_episodes(policies[tag], todo, writer, tag, rc, monitor_factory,
                                   on_episode=bar.update_episode, pool=pool, videos=keeper)
            bar.close()
            result.ran += len(new)
            keep = {(e.task_id, e.seed) for e in new}
            result.episodes[tag] = [e for e in have if (e.task_id, e.seed) not in keep] + new
    result.wall_s = time.perf_counter() - t0
    return result


class _progress:
    """tqdm bar with the running success rate (errors shown apart)."""

    def __init__(self, tag: str, total: int, have: Sequence[EpisodeRecord], enabled: bool):
        from tqdm import tqdm

        self.counts = {"success": 0, "failure": 0, "error": 0}
        for e in have:
            self.counts[e.outcome] += 1
        self.bar = tqdm(total=total, initial=len(have), desc=tag, unit="ep", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self._postfix()

    def _postfix(self) -> None:
        n = self.counts["success"] + self.counts["failure"]
        rate = f"{100 * self.counts['success'] / n:.0f}%" if n else "-"
        self.bar.set_postfix_str(f"success {self.counts['success']}/{n} ({rate}), errors {self.counts['error']}")

    def update_episode(self, ep: EpisodeRecord) -> None:
        self.counts[ep.outcome] += 1
        self._postfix()
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def merge_runs(out_dir: Path, shard_dirs: Sequence[Path], allow_partial: bool = False) -> dict[str, int]:
    """Join shard folders into a new folder. Refuses mismatched configs, overlapping episodes, an
    existing output and (unless ``allow_partial``) an incomplete shard set. Built in
    ``<out>.partial``, which it creates itself and renames at the end: a refused or failed merge
    removes only that folder, and a second merge into the same output is refused."""
    if not shard_dirs:
        raise UsageError("merge needs at least one shard folder")
    configs = [config_from_manifest(d) for d in shard_dirs]
    ref = configs[0]
    for d, other in zip(shard_dirs[1:], configs[1:]):
        if other.identity() != ref.identity():
            diff = [k for k, v in other.identity().items() if ref.identity()[k] != v]
            raise UsageError(f"cannot merge {d} with {shard_dirs[0]}: configs differ in {', '.join(diff)}")
    coverage = _shard_coverage(shard_dirs, configs, allow_partial)
    missing = _check_shard_episodes(shard_dirs, configs, allow_partial)
    if missing:
        coverage = {**coverage, "partial": True, "missing_episodes": missing}
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise UsageError(f"{out_dir} already exists; merge into a new folder")
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp_dir.mkdir()  # atomic claim: a concurrent merge into the same output fails here
    except FileExistsError:
        raise UsageError(f"{tmp_dir} exists: another merge into {out_dir} is running, or one was interrupted "
                         f"(then remove {tmp_dir} yourself; it is never deleted automatically)") from None
    counts = {}
    try:
        _check_or_write_manifest(tmp_dir, SweepConfig(**{**asdict(ref), "shard": None}), merged=coverage)
        for tag in ref.tags:
            counts[tag] = _merge_tag(tmp_dir, tag, shard_dirs)
        os.rename(tmp_dir, out_dir)  # fails if out_dir appeared meanwhile: nothing is overwritten
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # only the folder this call created
        raise
    return counts


def _shard_coverage(shard_dirs: Sequence[Path], configs: Sequence[SweepConfig], allow_partial: bool) -> dict:
    """Which slices of the sweep the shards hold; an incomplete or repeated set is refused."""
    parsed = [parse_shard(c.shard) for c in configs]
    ks = {k for _, k in parsed}
    if len(ks) != 1:
        raise UsageError(f"shards come from different splits (K = {sorted(ks)}); merge shards of one --shard i/K set")
    (k,) = ks
    seen: dict[int, Path] = {}
    for d, (i, _) in zip(shard_dirs, parsed):
        if i in seen:
            raise UsageError(f"shard {i}/{k} is given twice: {seen[i]} and {d}")
        seen[i] = Path(d)
    missing = sorted(set(range(k)) - set(seen))
    if missing and not allow_partial:
        raise UsageError(f"incomplete shard set: missing shard(s) {', '.join(f'{i}/{k}' for i in missing)}; "
                         f"pass --allow-partial to merge what is there (the report then says so)")
    if missing:
        print(f"warning: merging {len(seen)} of {k} shards; the merged run is partial", file=sys.stderr)
    return {"shards": [f"{i}/{k}" for i in sorted(seen)], "of": k, "partial": bool(missing)}


def _check_shard_episodes(shard_dirs: Sequence[Path], configs: Sequence[SweepConfig], allow_partial: bool) -> int:
    """Every shard's logs hold only its own slice's episodes; a slice with missing episodes (an
    unfinished, truncated or deleted log) is refused unless ``allow_partial``. Returns how many
    episodes are missing in all."""
    missing = 0
    for d, cfg in zip(shard_dirs, configs):
        i, k = parse_shard(cfg.shard)
        mine = {(j.task_id, j.seed) for j in make_jobs(cfg.suite, cfg.task_ids, cfg.seeds)[i::k]}
        for tag in cfg.tags:
            path = Path(d) / f"{tag}.jsonl"
            log = read_tag(d, tag, cfg)
            have = {(e.task_id, e.seed) for e in log.episodes} if log else set()
            outside = sorted(have - mine)
            if outside:
                raise UsageError(f"{path}: episode task {outside[0][0]} seed {outside[0][1]} is not in this shard's "
                                 f"slice ({cfg.shard or 'the whole run'}); it does not belong here")
            lacking = len(mine - have)
            if lacking and not allow_partial:
                raise UsageError(f"{path}: {lacking} of the shard's {len(mine)} episodes are missing (an unfinished "
                                 f"or damaged shard): finish it (re-run its sweep command) or pass --allow-partial")
            if lacking:
                print(f"warning: {path} lacks {lacking} of its {len(mine)} episodes; the merged run is partial",
                      file=sys.stderr)
            missing += lacking
    return missing


def _merge_tag(out_dir: Path, tag: str, shard_dirs: Sequence[Path]) -> int:
    seen: dict[tuple[int, int], Path] = {}
    with JsonlWriter(out_dir / f"{tag}.jsonl") as w:
        for d in shard_dirs:
            log = read_tag(d, tag)
            for ep in (log.episodes if log else []):
                key = (ep.task_id, ep.seed)
                if key in seen:
                    raise UsageError(f"episode task {key[0]} seed {key[1]} is in both {seen[key]} and {d}")
                seen[key] = Path(d)
                for s in log.steps_of(ep):
                    w.write(s)
                w.write(ep)
    return len(seen)
