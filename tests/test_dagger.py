"""The stateless expert (DAgger's labeller) and `vla-eval dagger` on real LIBERO at tiny sizes."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from vla_eval.policies.scripted import CLOSE, OPEN, ScriptedExpert, StatelessExpert
from vla_eval.sims.protocol import Observation

SOUP = "pick up the alphabet soup and place it in the basket"


def _obs(eef, obj, gap=0.079, finger_v=0.0, ctrl=-1.0, place=(0.0, 0.3, -0.005), arm_v=0.3) -> Observation:
    return Observation(SOUP, np.array(eef, float), np.array([0, 0, 0, 1.0]), np.array([gap / 2, -gap / 2]),
                       objects={"alphabet_soup_1_pos": np.array(obj, float), "basket_1_pos": np.array(place, float)},
                       gripper_qvel=np.array([finger_v / 2, -finger_v / 2]), joint_vel=np.full(7, arm_v),
                       gripper_ctrl=ctrl)


@pytest.mark.parametrize("case, obs, phase, grip", [
    ("far above the object, open", _obs([0.2, 0.0, 0.3], [0, 0, 0.04]), "approach", OPEN),
    ("aligned below the hover point", _obs([0.0, 0.0, 0.09], [0, 0, 0.04]), "descend", OPEN),
    ("at the object, open", _obs([0.0, 0.0, 0.045], [0, 0, 0.04]), "close", CLOSE),
    ("stalled 3 cm above it", _obs([0.01, 0.0, 0.07], [0, 0, 0.04], arm_v=0.001), "close", CLOSE),
    ("fingers still on it, command still ramping", _obs([0, 0, 0.045], [0, 0, 0.04], gap=0.063, ctrl=0.5), "close", CLOSE),
    ("squeezed on it, low", _obs([0, 0, 0.045], [0, 0, 0.04], gap=0.063, ctrl=1.0), "lift", CLOSE),
    ("squeezed, carried high", _obs([0, 0.1, 0.28], [0, 0.1, 0.275], gap=0.063, ctrl=1.0), "carry", CLOSE),
    ("squeezed, over the basket", _obs([0, 0.3, 0.25], [0, 0.3, 0.245], gap=0.063, ctrl=1.0), "lower", CLOSE),
    ("squeezed, at the release point", _obs([0, 0.3, 0.155], [0, 0.3, 0.15], gap=0.063, ctrl=1.0), "release", OPEN),
    ("closed on nothing at the object", _obs([0, 0, 0.045], [0, 0, 0.04], gap=0.005, ctrl=1.0), "approach", OPEN),
    ("half closed, away from the object", _obs([0.05, 0.05, 0.12], [0, 0, 0.04], gap=0.03, ctrl=1.0), "approach", OPEN),
    ("object in the basket", _obs([0, 0.3, 0.16], [0, 0.3, 0.02], gap=0.079), "release", OPEN),
])
def test_stateless_expert_reads_the_phase_off_the_state(case, obs, phase, grip):
    expert = StatelessExpert()
    assert expert.infer_phase(obs) == phase, case
    assert expert.action(obs)[6] == grip, case


@pytest.mark.libero
def test_stateless_expert_agrees_with_the_phase_machine_and_finishes(object_env):
    """On the phase-machine expert's own successful episode the stateless expert gives the same
    action on >= 90% of the steps (the differences: it moves on when the gripper is fully
    squeezed or the arm stalls, a few steps before the machine's timers); run alone from the
    same scene it finishes the task."""
    scripted, stateless = ScriptedExpert(), StatelessExpert()
    obs, same, steps = object_env.reset_sampled(300_000), 0, 0
    scripted.reset(0)
    for steps in range(1, 281):
        a, b = scripted.act([obs]).actions[0], stateless.act([obs]).actions[0]
        same += bool(np.abs(a[:3] - b[:3]).max() <= 0.1 and a[6] == b[6])
        result = object_env.step(a)
        obs = result.obs
        if result.done:
            break
    assert result.done
    assert same / steps >= 0.90, f"{same}/{steps}"
    assert _finishes(object_env, stateless, object_env.reset_sampled(300_000))


def _finishes(env, expert, obs, max_steps: int = 280) -> bool:
    """Run ``expert`` from ``obs`` until the task is done or the step limit."""
    for _ in range(max_steps):
        result = env.step(expert.act([obs]).actions[0])
        if result.done:
            return True
        obs = result.obs
    return False


@pytest.mark.libero
def test_stateless_expert_finishes_from_a_state_a_bad_policy_left(object_env):
    """Handed the env after 30 steps of a policy that closed its gripper in mid-air and drifted
    away, the stateless expert opens, re-approaches and completes the task."""
    obs = object_env.reset_sampled(300_001)
    for _ in range(30):
        obs = object_env.step(np.array([0.5, 0.3, 0.2, 0, 0, 0, CLOSE])).obs
    assert obs.gripper_qpos[0] - obs.gripper_qpos[1] < 0.02  # closed on nothing
    assert _finishes(object_env, StatelessExpert(), obs)


@pytest.fixture(scope="module")
def tiny_demos(tmp_path_factory):
    """A demo folder in the collect-demos layout: one short stateless-expert episode, real frames."""
    from vla_eval.sims.libero_env import LiberoEnv
    from vla_eval.tinyvla.demos import DemoConfig, _write_atomic, record_episode

    out = tmp_path_factory.mktemp("demos")
    cfg = DemoConfig(tasks=(0,), max_steps=8, frame_every=1, out=out)
    with LiberoEnv("libero_object", 0, cameras=True, hard_reset=False, camera_names=("agentview",)) as env:
        rows, _ = record_episode(env, StatelessExpert(), cfg, 0, 0)
    (out / "task0").mkdir()
    _write_atomic(rows, out / "task0" / "scene0.parquet")
    return out


@pytest.mark.libero
def test_dagger_round_end_to_end_and_resume(tiny_demos, tmp_path):
    """Round 0 evaluated, one round of two capped rollouts (beta 0.5), a fine-tune from the
    shipped checkpoint, its eval; the curve and the shard columns; a re-run redoes nothing."""
    import pandas as pd

    from vla_eval.configs import shipped_checkpoint
    from vla_eval.policies.openvla.native import llama_tokenizer
    from vla_eval.tinyvla.dagger import DaggerConfig, rollout_shard, run

    cfg = DaggerConfig(out=tmp_path / "dagger", demos=tiny_demos, start=shipped_checkpoint("tiny", "libero_object"),
                       tokenizer=llama_tokenizer.install(), tasks=(0,), rounds=1, rollouts_per_task=2,
                       train_steps=2, eval_seeds=(0,), workers=1, max_steps=6)
    curve = run(cfg, progress=False)
    assert [row["round"] for row in curve] == [0, 1]
    assert all(row["heldout_n"] == 1 for row in curve)
    shards = [rollout_shard(cfg, 1, 0, k) for k in range(2)]
    df = pd.concat([pd.read_parquet(p) for p in shards])
    assert {"round", "actor", "policy_action", "success", "end", "image", "action", "executed"} <= set(df.columns)
    assert set(df["end"]) == {"cap"} and set(df["round"]) == {1} and set(df["actor"]) <= {"policy", "expert"}
    policy_rows = df[df["actor"] == "policy"]
    assert all(np.allclose(a, b) for a, b in zip(policy_rows["executed"], policy_rows["policy_action"]))
    assert (cfg.checkpoint(1) / "model.safetensors").is_file()
    with open(cfg.out / "curve.csv") as f:
        assert [r["round"] for r in csv.DictReader(f)] == ["0", "1"]
    stamps = [p.stat().st_mtime_ns for p in shards]
    assert [row["heldout_success"] for row in run(cfg, progress=False)] == [r["heldout_success"] for r in curve]
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # nothing rolled out again

    shards[0].write_bytes(b"not parquet")  # a damaged shard: named, with the fix
    from vla_eval.errors import UsageError
    from vla_eval.tinyvla.dagger import rollout_summary

    with pytest.raises(UsageError, match="scene0.parquet is unreadable.*delete it and re-run"):
        rollout_summary(cfg, 1)


def test_dagger_refuses_bad_input_before_any_work(tmp_path, cli_main):
    from vla_eval.configs import shipped_checkpoint

    ckpt = shipped_checkpoint("tiny", "libero_object")
    base = ["dagger", "--out", tmp_path / "d", "--no-progress"]
    demos = tmp_path / "demos"
    (demos / "task0").mkdir(parents=True)
    cases = [
        (["--demos", demos, "--start", tmp_path / "none"], "no checkpoint there"),
        (["--demos", demos, "--start", ckpt], "no demonstration shards"),
        (["--demos", demos, "--start", ckpt, "--tasks", "12"], "task id 12 out of range"),
        (["--demos", demos, "--start", ckpt, "--beta", "1.5"], "--beta and --decay must lie in [0, 1]"),
    ]
    for args, message in cases:
        code, err = cli_main(*base, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "d").exists()  # nothing written


def test_dagger_folder_made_with_other_settings_is_refused(tmp_path, monkeypatch):
    from vla_eval.configs import shipped_checkpoint
    from vla_eval.errors import UsageError
    from vla_eval.tinyvla import dagger

    monkeypatch.setattr("vla_eval.tinyvla.train.shard_paths", lambda folder: [folder])
    cfg = dagger.DaggerConfig(out=tmp_path / "d", demos=tmp_path, start=shipped_checkpoint("tiny", "libero_object"),
                              tokenizer=tmp_path)
    dagger.check_config(cfg)
    assert json.loads((cfg.out / "dagger.json").read_text())["beta0"] == 0.5
    from dataclasses import replace

    with pytest.raises(UsageError, match="made with other settings.*beta0"):
        dagger.check_config(replace(cfg, beta0=0.9))
    monkeypatch.chdir(tmp_path)  # the same folders named relative to the working directory resume the run
    dagger.check_config(replace(cfg, demos=Path("."), start=Path(os.path.relpath(cfg.start, tmp_path))))
    (cfg.out / "dagger.json").write_text("{torn")
    with pytest.raises(UsageError, match="dagger.json: is not valid JSON.*restore it"):
        dagger.check_config(cfg)


def test_eval_seeds_none_skips_the_per_round_evaluation(tmp_path):
    from vla_eval.cli import build_parser

    args = build_parser().parse_args(["dagger", "--demos", "d", "--start", "s", "--out", str(tmp_path / "x"),
                                      "--eval-seeds", "none"])
    assert args.eval_seeds == ()
    assert build_parser().parse_args(["dagger", "--demos", "d", "--start", "s", "--out", str(tmp_path / "x"),
                                      "--eval-seeds", "5-6"]).eval_seeds == (5, 6)
