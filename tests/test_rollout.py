"""The reference rollout (``rollout.rollout``, what ``api.run_episode`` runs) and the sweep's
batched runner give the same episodes: same actions, same step and episode records (timing
and attempt ids aside). Real LIBERO."""
from dataclasses import asdict

import pytest

from vla_eval.records import JsonlWriter, read_jsonl
from vla_eval.rollout import rollout
from vla_eval.runner import EpisodeShape, Execution, make_jobs, run_episodes
from vla_eval.sims.parallel import EnvSpec

pytestmark = pytest.mark.libero

TIMING = ("attempt", "policy_s", "sim_s", "wall_s", "reset_s")


def comparable(record) -> dict:
    return {k: v for k, v in asdict(record).items() if k not in TIMING}


def runner_episodes(policy, seeds, shape: EpisodeShape, path, execution: Execution | None = None,
                    features=None) -> dict:
    with JsonlWriter(path) as w:
        run_episodes(policy, make_jobs("libero_object", [0], seeds), w, "baseline", shape, execution,
                     features=features)
    log = read_jsonl(path)
    return {e.seed: (e, log.steps_of(e)) for e in log.episodes}


def assert_same(reference: dict, batched: dict) -> None:
    assert reference.keys() == batched.keys()
    for seed, (ep, steps) in reference.items():
        b_ep, b_steps = batched[seed]
        assert comparable(ep) == comparable(b_ep)
        assert [comparable(s) for s in steps] == [comparable(s) for s in b_steps]


def test_two_overlapped_env_workers_equal_the_reference_loop(tmp_path):
    """Scripted expert, physics only, hard resets: two worker slots in two alternating groups."""
    from vla_eval.policies.scripted import ScriptedExpert

    env = EnvSpec("libero_object", 0, cameras=False, hard_reset=True).build()
    try:
        reference = {seed: rollout(env, ScriptedExpert(), seed, max_steps=60) for seed in (0, 1)}
    finally:
        env.close()
    batched = runner_episodes(ScriptedExpert(), [0, 1], EpisodeShape(cameras=False, max_steps=60), tmp_path / "b.jsonl",
                              Execution(workers=2, overlap=True))
    assert_same(reference, batched)
    assert all(len(steps) == 60 or ep.success for ep, steps in reference.values())


class FeaturesSeen:
    """A monitor that keeps the hidden-state summaries it is fed, step by step."""

    def __init__(self):
        self.per_step = []

    def update(self, step, features=None) -> list[str]:
        self.per_step.append(features)
        return []

    def finish(self, episode) -> list[str]:
        return []


class FeaturesKept:
    """The runner's feature sink: each finished episode's summaries."""

    def __init__(self):
        self.episodes = []

    def finish(self, task_id, seed, attempt, rows) -> None:
        self.episodes.append(rows)


def test_the_tiny_openvla_in_the_runner_equals_the_reference_loop(tmp_path):
    """Pixels in, tokens out: the same actions, img_mean and token probabilities; with the
    hidden-state summaries asked for, the reference loop's monitor gets those the runner keeps."""
    from dataclasses import replace

    import numpy as np

    from vla_eval.policies.factory import make_policy, model_options

    policy = make_policy("tiny", "libero_object", openvla=replace(model_options("tiny"), features=True))
    env = EnvSpec("libero_object", 0, cameras=True, hard_reset=True, camera_names=policy.cameras).build()
    monitor = FeaturesSeen()
    try:
        reference = {2: rollout(env, policy, 2, max_steps=6, monitor=monitor)}
    finally:
        env.close()
    sink = FeaturesKept()
    assert_same(reference, runner_episodes(policy, [2], EpisodeShape(max_steps=6), tmp_path / "b.jsonl", features=sink))
    steps = reference[2][1]
    assert len(steps) == 6 and all(s.img_mean is not None and s.token_prob is not None for s in steps)
    assert len(monitor.per_step) == 6 and monitor.per_step[0].shape[0] == 2
    np.testing.assert_array_equal(np.stack(monitor.per_step), np.stack(sink.episodes[0]))


def test_the_python_api_starts_the_same_typed_run_as_the_cli(tmp_path):
    """``run_sweep(SweepConfig, out, model, Execution)``: a seed set, resumable, recorded in the manifest."""
    import json

    from vla_eval.api import Execution, SweepConfig, resume, run_sweep

    cfg = SweepConfig(suite="libero_object", task_ids=(0,), seeds=(3, 5), policy="scripted", cameras=False,
                      hard_reset=False, max_steps=5)
    ex = Execution(progress=False, videos="none")
    first = run_sweep(cfg, tmp_path / "run", execution=ex)
    assert first.ran == 2 and sorted(e.seed for e in first.episodes["baseline"]) == [3, 5]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]["seeds"] == [3, 5]
    again = resume(tmp_path / "run", execution=ex)
    assert again.ran == 0 and again.skipped == 2


def test_run_episode_records_the_fault_as_given_and_the_old_keywords_warn(monkeypatch):
    """``fault=`` is the one toggle path of the API: the run tag is the string given (as a sweep
    records it), an unknown fault names the valid ones, the old keywords still work with a warning."""
    import warnings

    import pytest

    import vla_eval.rollout as rollout_module
    from vla_eval.api import run_episode
    from vla_eval.errors import UsageError
    from vla_eval.sims.parallel import EnvSpec

    seen = []

    class NoEnv:
        def close(self):
            pass

    monkeypatch.setattr(EnvSpec, "build", lambda self: NoEnv())
    monkeypatch.setattr(rollout_module, "rollout",
                        lambda env, pol, seed, max_steps, tag: (seen.append((tag, pol.toggles)), ("ep", []))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fault path warns about nothing
        run_episode(policy="tiny", fault="no_jpeg+no_crop")
    assert seen[-1][0] == "no_jpeg+no_crop" and seen[-1][1].jpeg is False and seen[-1][1].center_crop is False
    with pytest.warns(DeprecationWarning, match="fault='no_flip'"):
        run_episode(False, policy="tiny")
    assert seen[-1][0] == "no_flip" and seen[-1][1].flip == "none"
    with pytest.raises(UsageError, match="unknown run tag 'no_flop'"):
        run_episode(policy="tiny", fault="no_flop")
