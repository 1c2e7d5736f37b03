"""Python entry points for notebooks: ``run_episode`` (one rollout of the reference loop,
``rollout.rollout``, baseline or any faults of ``vla_eval.faults``), ``load_run`` (a run folder
as pandas DataFrames, committed attempts only), and the sweep's own typed entry points,
re-exported: ``run_sweep(SweepConfig(...), out, model, Execution(...))``, ``run_suites``, ``resume``."""
from __future__ import annotations

from pathlib import Path

from vla_eval.errors import UsageError
from vla_eval.policies.factory import OpenVLAOptions, Toggles, make_policy, model_options
from vla_eval.records import JsonlWriter
from vla_eval.sweep import Execution, SweepConfig, resume, run_suites, run_sweep  # noqa: F401  (the API)


def run_episode(
    flip_image: bool | None = None,
    prompt_template: str | None = None,
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

    ``fault``: a fault name of ``vla_eval.faults.FAULTS`` (or names joined by ``+``), the one
    way to change the loop, and/or a perturbation ``family:level`` (``vla_eval.perturbations``:
    ``"camera:2"``, ``"no_flip+light:1"``); the episode's run tag is that string, as a sweep records it.
    ``model``: OpenVLA options (``factory.model_options``); default: the policy's own (``tiny``:
    shipped checkpoint, CPU). The suite's unnorm key is used (``libero_object`` ->
    ``libero_object_no_noops`` if the checkpoint only has that), as the published eval does.
    Returns the ``EpisodeRecord``, or ``(episode, steps)`` with ``return_steps=True``.

    Deprecated (kept for one release, with a warning): the keywords ``flip_image``,
    ``prompt_template`` and ``unnorm_key``, applied on top of ``fault``.
    """
    import warnings
    from dataclasses import replace

    from vla_eval.faults import toggles_for
    from vla_eval.perturbations import perturbation_of
    from vla_eval.rollout import rollout
    from vla_eval.sims.parallel import EnvSpec
    from vla_eval.sims.protocol import CAMERAS

    toggles = toggles_for(fault) if fault else Toggles()  # an unknown fault names the valid ones
    legacy = {k: v for k, v in (("flip", None if flip_image is None else "rotate" if flip_image else "none"),
                                ("prompt_template", prompt_template), ("unnorm_key", unnorm_key)) if v is not None}
    if legacy:
        warnings.warn("run_episode(flip_image=, prompt_template=, unnorm_key=) is deprecated: name the fault instead, "
                      "e.g. run_episode(fault='no_flip'); the keywords go in the next release",
                      DeprecationWarning, stacklevel=2)
        toggles = replace(toggles, **legacy)
    tag = toggles.tag if legacy else (fault or "baseline")
    SweepConfig(suite, (task_id,), (seed,), policy, tags=(tag,), max_steps=max_steps)  # the one gate, before any model
    pol = make_policy(policy, suite, toggles, model or model_options(policy))
    cameras = pol.uses_images if cameras is None else cameras  # default: render only for pixel policies
    if not cameras and pol.uses_images:
        raise UsageError(f"policy {pol.name!r} reads images; run it with cameras on")
    perturbation = perturbation_of(tag)
    env = EnvSpec(suite, task_id, cameras, hard_reset=hard_reset, camera_names=tuple(pol.cameras) or CAMERAS,
                  perturbation=perturbation).build()
    try:
        ep, steps = rollout(env, pol, seed, max_steps, tag)
    finally:
        env.close()
    if perturbation is not None:
        ep = replace(ep, perturbation=perturbation.tag, perturbation_seed=perturbation.seed)
    if log_path:
        with JsonlWriter(Path(log_path)) as writer:
            for s in steps:
                writer.write(s)
            writer.write(ep)
    return (ep, steps) if return_steps else ep


def load_run(run_dir: str | Path, tags: list[str] | None = None):
    """A run folder as two DataFrames, with the reader's rules (killed attempts' steps dropped,
    the last committed attempt of an episode wins): ``(episodes, steps)``, one row per record,
    the ``run_tag`` column telling the runs of a drill apart. Needs pandas (extra ``data``)."""
    from dataclasses import asdict

    from vla_eval.errors import require
    from vla_eval.rundir import config_from_manifest, read_tag

    pd = require("pandas", "data", "load_run")
    run_dir = Path(run_dir)
    cfg = config_from_manifest(run_dir)
    episodes, steps = [], []
    for tag in tags or cfg.tags:
        log = read_tag(run_dir, tag, cfg)
        if log is not None:
            episodes += [asdict(e) for e in log.episodes]
            steps += [asdict(s) for s in log.steps]
    return pd.DataFrame(episodes), pd.DataFrame(steps)
