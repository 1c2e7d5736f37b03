"""Python entry points for notebooks: ``run_episode`` (one rollout, baseline or any faults of
``vla_eval.faults``) and ``load_run`` (a run folder as pandas DataFrames, committed attempts only)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from vla_eval.policies.factory import OpenVLAOptions, Toggles, make_policy, model_options
from vla_eval.records import JsonlWriter, read_jsonl
from vla_eval.runner import RunConfig, make_jobs, run_episodes


def run_episode(
    flip_image: bool = True,
    prompt_template: str = "default",
    unnorm_key: str | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    *,
    policy: str = "openvla",
    suite: str = "libero_object",
    task_id: int = 0,
    cameras: bool | None = None,
    hard_reset: bool = True,
    log_path: str | Path | None = None,
    model: OpenVLAOptions | None = None,
    progress: bool = False,
    return_steps: bool = False,
    fault: str | None = None,
):
    """One episode: seed -> init state, RNGs seeded from it; step records go to ``log_path``.

    ``unnorm_key=None`` uses the suite's key (``libero_object`` -> ``libero_object_no_noops``
    if the checkpoint only has that), as the published eval does. ``model``: OpenVLA options
    (``factory.model_options``); default: the policy's own (``tiny``: shipped checkpoint, CPU).
    ``fault``: a fault name of ``vla_eval.faults.FAULTS`` (or names joined by ``+``), applied on
    top of the three keyword toggles. Returns the ``EpisodeRecord``, or ``(episode, steps)``
    with ``return_steps=True``.
    """
    from dataclasses import replace

    from vla_eval.sweep import toggles_for

    toggles = replace(toggles_for(fault) if fault else Toggles(), **{
        k: v for k, v in (("flip", "rotate" if flip_image else "none"), ("prompt_template", prompt_template),
                          ("unnorm_key", unnorm_key)) if v != getattr(Toggles(), k)})
    pol = make_policy(policy, suite, toggles, model or model_options(policy))
    jobs = make_jobs(suite, [task_id], [seed])
    cameras = pol.uses_images if cameras is None else cameras  # default: render only for pixel policies
    cfg = RunConfig(cameras=cameras, hard_reset=hard_reset, max_steps=max_steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(log_path) if log_path else Path(tmp) / "episode.jsonl"
        with JsonlWriter(path) as writer:
            (ep,) = run_episodes(pol, jobs, writer, toggles.tag, cfg)
        steps = read_jsonl(path).steps_of(ep) if return_steps else None
    return (ep, steps) if return_steps else ep


def load_run(run_dir: str | Path, tags: list[str] | None = None):
    """A run folder as two DataFrames, with the reader's rules (killed attempts' steps dropped,
    the last committed attempt of an episode wins): ``(episodes, steps)``, one row per record,
    the ``run_tag`` column telling the runs of a drill apart. Needs pandas (extra ``data``)."""
    from dataclasses import asdict

    from vla_eval.errors import require
    from vla_eval.sweep import config_from_manifest

    pd = require("pandas", "data", "load_run")
    run_dir = Path(run_dir)
    cfg = config_from_manifest(run_dir)
    episodes, steps = [], []
    for tag in tags or cfg.tags:
        path = run_dir / f"{tag}.jsonl"
        if path.exists():
            log = read_jsonl(path)
            episodes += [asdict(e) for e in log.episodes]
            steps += [asdict(s) for s in log.steps]
    return pd.DataFrame(episodes), pd.DataFrame(steps)
