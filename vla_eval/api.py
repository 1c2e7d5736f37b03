"""Python entry points: ``run_episode`` for one rollout with any of the three toggles."""
from __future__ import annotations

import tempfile
from pathlib import Path

from vla_eval.policies.factory import OpenVLAOptions, Toggles, make_policy, model_options
from vla_eval.records import EpisodeRecord, JsonlWriter
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
) -> EpisodeRecord:
    """One episode: seed -> init state, RNGs seeded from it; step records go to ``log_path``.

    ``unnorm_key=None`` uses the suite's key (``libero_object`` -> ``libero_object_no_noops``
    if the checkpoint only has that), as the published eval does. ``model``: OpenVLA options
    (``factory.model_options``); default: the policy's own (``tiny``: shipped checkpoint, CPU).
    """
    toggles = Toggles(flip_image, prompt_template, unnorm_key)
    pol = make_policy(policy, suite, toggles, model or model_options(policy))
    jobs = make_jobs(suite, [task_id], [seed])
    cameras = pol.uses_images if cameras is None else cameras  # default: render only for pixel policies
    cfg = RunConfig(cameras=cameras, hard_reset=hard_reset, max_steps=max_steps)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(log_path) if log_path else Path(tmp) / "episode.jsonl"
        with JsonlWriter(path) as writer:
            (ep,) = run_episodes(pol, jobs, writer, toggles.tag, cfg)
    return ep
