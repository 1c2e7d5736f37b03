"""Sweeps and drills: resumable, shardable runs of N seeds x tasks x run tags.

A run folder holds ``manifest.json`` (config, provenance, command) and one
``<tag>.jsonl`` per run tag. Re-running the same command on the same folder skips the
episodes already committed and redoes the rest (see ``records`` for the durability rules).
A drill is a sweep whose tags are the baseline plus the chosen faults.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

from vla_eval.errors import UsageError
from vla_eval.faults import toggles_for  # noqa: F401  (re-exported: the API's one toggles_for)
from vla_eval.policies.factory import OpenVLAOptions, make_policies, policy_spec, resolve_options
from vla_eval.records import EpisodeRecord, JsonlWriter
from vla_eval.rundir import (  # noqa: F401  (SweepConfig, committed, read_tag: re-exported for the API)
    SweepConfig, check_or_write_manifest, committed, config_from_manifest, parse_shard, read_tag, run_lock)
from vla_eval.runner import Execution, make_jobs, run_episodes  # noqa: F401  (Execution: the API)



def _model_provenance(openvla: OpenVLAOptions) -> dict:
    """The model options as run, with the weights' fingerprint (``diagnose`` matches libraries by it)."""
    from vla_eval.policies.openvla.hub import checkpoint_fingerprint

    return {**asdict(openvla), "checkpoint_id": checkpoint_fingerprint(openvla.checkpoint, openvla.revision)}


@dataclass
class SweepResult:
    run_dir: Path
    episodes: dict[str, list[EpisodeRecord]] = field(default_factory=dict)  # tag -> committed episodes
    skipped: int = 0
    ran: int = 0
    wall_s: float = 0.0


def run_sweep(cfg: SweepConfig, run_dir: Path, model: OpenVLAOptions | None = None,
              execution: Execution = Execution()) -> SweepResult:
    """Run (or resume) ``cfg`` in ``run_dir``: every committed episode is kept, the rest run.
    ``model``: device, dtype, backend and attention of a model policy (default: the policy's
    own); its checkpoint and revision are the config's."""
    spec = policy_spec(cfg.policy)
    if not cfg.cameras and spec.reads_images:
        raise UsageError(f"policy {cfg.policy!r} reads camera images; drop --cameras off")
    from vla_eval.sims.libero_env import require_sim

    require_sim()  # here, not in an env worker: a missing simulator is one message, before anything is written
    ex = execution
    i, k = parse_shard(cfg.shard)
    tags = [(tag, toggles_for(tag)) for tag in cfg.tags]
    all_jobs = make_jobs(cfg.suite, cfg.task_ids, cfg.seeds)[i::k]
    openvla = None
    if ex.record_features and not spec.model:
        from vla_eval.policies.factory import model_policy_names

        raise UsageError(f"--record-features records a model's hidden state; policy {cfg.policy!r} has none (valid "
                         f"with --policy {model_policy_names()})")
    if spec.model:
        from vla_eval.policies.factory import model_options

        openvla = replace(model or model_options(cfg.policy), checkpoint=cfg.checkpoint, revision=cfg.revision,
                          batch=max(1, ex.workers), features=ex.record_features)  # one row per env
        openvla = resolve_options(cfg.policy, cfg.suite, openvla)
    elif model is not None:
        raise UsageError(f"policy {cfg.policy!r} has no model to configure")
    forecaster = _load_forecaster(cfg, ex.forecaster, ex.record_features) if ex.forecaster else None
    wants_monitor = ex.monitor or ex.stop_on_alert or forecaster is not None
    monitor_factory = _monitor_factory(cfg, forecaster) if wants_monitor else None
    with _ray_session(ex.ray_address, local_cpus=ex.workers + (ex.policy_actors or 0)) as ray:
        policies = _load_policies(ray, ex.policy_actors, cfg, tags, openvla)  # set-up errors before any episode
        if forecaster is not None:
            _check_feature_width(forecaster, policies.values(), ex.forecaster)
        try:
            from vla_eval.preflight import preflight_run

            preflight_run(policies, openvla is None or openvla.native, cfg.suite)
            if ex.check_world:
                from vla_eval.preflight import preflight_world

                preflight_world(cfg.suite, cfg.task_ids[0])
            run_dir = Path(run_dir)
            from vla_eval.sims.libero_env import configure_gl

            configure_gl()  # before the manifest records MUJOCO_GL
            with run_lock(run_dir, "run episodes"):  # one writer per folder, manifest checked under the lock
                check_or_write_manifest(run_dir, cfg, _model_provenance(openvla) if openvla else None)
                if ex.forecaster:
                    _keep_forecaster(run_dir, Path(ex.forecaster))
                return _run_tags(run_dir, tags, all_jobs, policies, ex, cfg.shape, monitor_factory)
        finally:
            if ray is not None:  # policy actors would hold their GPUs on a shared cluster after the run
                from vla_eval.policies.ray_actors import release

                release(ray, policies.values())


def _load_forecaster(cfg: SweepConfig, path: str, record_features: bool):
    """The failure forecaster for the monitor, refused here, before any episode, if it was fitted
    on another policy, checkpoint or suite, or reads hidden-state summaries the run does not record."""
    from vla_eval.monitors.forecast import Forecaster

    forecaster = Forecaster.load(path)
    forecaster.check_identity(cfg.policy, cfg.checkpoint, cfg.suite, f"this run ({path})")
    if forecaster.features and not record_features:
        raise UsageError(f"the forecaster {path} reads the model's hidden-state summaries (the feature "
                         f"family): add --record-features")
    return forecaster


def _monitor_factory(cfg: SweepConfig, forecaster=None):
    """A fresh monitor per episode, with the thresholds calibrated for this policy where shipped,
    and the failure forecaster if one is given."""
    import functools

    from vla_eval.monitors import RuntimeMonitor
    from vla_eval.monitors.predicates import thresholds_for

    return functools.partial(RuntimeMonitor, thresholds_for(cfg.policy, cfg.suite, cfg.checkpoint)[0], forecaster)


def _check_feature_width(forecaster, policies, path) -> None:
    """A feature forecaster reads summaries of one model's width; another model's are refused."""
    widths = {getattr(p, "feature_width", None) for p in policies} - {None}
    if forecaster.features and widths and widths != {forecaster.feature_width}:
        raise UsageError(f"the forecaster {path} reads hidden-state summaries of width {forecaster.feature_width}; "
                         f"this model's are {sorted(widths)[0]} wide (another model)")


def _keep_forecaster(run_dir: Path, path: Path) -> None:
    """A copy in the run folder, so its report can replay it; a resume with another one is refused
    (the warnings in the logs would come from two forecasters)."""
    from vla_eval.rundir import FORECASTER_COPY

    kept, text = run_dir / FORECASTER_COPY, path.read_text()
    if not kept.exists():
        kept.write_text(text)
    elif kept.read_text() != text:
        raise UsageError(f"{run_dir} was run with another forecaster (kept as {kept}); resume it with that one, "
                         f"or start a new run folder for {path}")


def resume(run_dir: Path, model: OpenVLAOptions | None = None, execution: Execution = Execution()) -> SweepResult:
    """Continue the run in ``run_dir`` with its own config (from its manifest)."""
    return run_sweep(config_from_manifest(run_dir), run_dir, model, execution)


def run_suites(configs: Sequence[SweepConfig], run_dir: Path, model: OpenVLAOptions | None = None,
               execution: Execution = Execution()) -> dict[str, SweepResult]:
    """Several suites in one folder: ``<run_dir>/<suite>/`` each (its own run folder, with its
    own config from ``configs``, one per suite), one after the other, and ``suites.json``
    listing them. Re-running resumes every suite. The summary report is
    ``reports.suites.write_suites_report``."""
    from vla_eval.rundir import MANIFEST, write_suites_file

    run_dir = Path(run_dir)
    if (run_dir / MANIFEST).exists():
        raise UsageError(f"{run_dir} is a single-suite run folder; use another --out for a several-suite run")
    write_suites_file(run_dir, tuple(c.suite for c in configs))
    out = {}
    for cfg in configs:
        print(f"\n== {cfg.suite} ==")
        out[cfg.suite] = run_sweep(cfg, run_dir / cfg.suite, model, execution)
    return out


def resume_suites(run_dir: Path, model: OpenVLAOptions | None = None,
                  execution: Execution = Execution()) -> dict[str, SweepResult]:
    """Continue a several-suite run: every suite folder with its own config."""
    from vla_eval.rundir import MANIFEST, read_suites

    out = {}
    for suite in read_suites(run_dir):
        sub = Path(run_dir) / suite
        if not (sub / MANIFEST).exists():
            raise UsageError(f"{sub} has not started yet: re-run the original command to continue")
        print(f"\n== {suite} ==")
        out[suite] = resume(sub, model, execution)
    return out


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

        n_actors = policy_actors if policy_actors is not None else (
            default_actor_count(ray, openvla.device) if openvla else 0)
    if n_actors:
        gpu = openvla is not None and openvla.device.startswith("cuda")
        loaded = make_ray_policies(ray, n_actors, cfg.policy, cfg.suite, toggles, openvla, gpu)
    else:
        loaded = make_policies(cfg.policy, cfg.suite, toggles, openvla)
    return {tag: p for (tag, _), p in zip(tags, loaded)}


def _run_tags(run_dir, tags, all_jobs, policies, ex: Execution, shape, monitor_factory) -> SweepResult:
    from vla_eval.features import FeatureKeeper
    from vla_eval.videos import VideoKeeper

    result = SweepResult(run_dir)
    t0 = time.perf_counter()
    from vla_eval.sims.pools import make_pool

    with make_pool(ex.workers, ex.env_timeout_s, ex.ray_address) as pool:  # one set of envs for every tag: a drill creates them once
        for tag, _ in tags:
            have = committed(run_dir, tag, ex.retry_errors)
            done_keys = {(e.task_id, e.seed) for e in have}
            todo = [j for j in all_jobs if (j.task_id, j.seed) not in done_keys]
            result.skipped += len(all_jobs) - len(todo)
            bar = _progress(tag, len(all_jobs), have, enabled=ex.progress)
            with JsonlWriter(run_dir / f"{tag}.jsonl") as writer:
                keeper = VideoKeeper(run_dir / "videos", ex.videos if shape.cameras else "none", tag)
                features = FeatureKeeper(run_dir, tag) if ex.record_features else None
                new = run_episodes(policies[tag], todo, writer, tag, shape, ex, monitor_factory,
                                   on_episode=bar.update_episode, pool=pool, videos=keeper, features=features)
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
        check_or_write_manifest(tmp_dir, SweepConfig(**{**asdict(ref), "shard": None}), merged=coverage)
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
