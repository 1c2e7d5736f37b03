"""DAgger for the tiny OpenVLA: roll out the current policy, label every state it reaches with
the stateless expert, aggregate, fine-tune, repeat.

Reads top to bottom: config -> one round (rollouts -> training -> held-out eval) -> the loop.

    <out>/dagger.json                    the config the folder was made with (a resume must match)
    <out>/curve.csv                      one row per round: beta, rollouts, their success, frames,
                                         validation token accuracy, held-out success with its Wilson CI
    <out>/round<R>/rollouts/task<T>/scene<K>.parquet
                                         one rollout, the demo shard layout (``demos.py``) plus
        round int, actor str ("policy" | "expert": who acted at that step), policy_action 7 float,
        success bool, end str ("done" | "hopeless" | "cap")
    <out>/round<R>/train/                ``train-tiny``'s run folder (fine-tuned from round R-1)
    <out>/round<R>/eval/                 a sweep run folder on the held-out stored init states

Round 0 is the starting checkpoint: it is only evaluated. In round R >= 1 the rollouts run the
checkpoint of round R-1 on freshly sampled scenes (scene seed ``DAGGER_SCENE_BASE + 10000 R +
1000 T + K``; never the 50 stored init states, never the demos' scenes); at every step the env
executes the expert's action with probability ``beta0 * decay**(R-1)``, else the policy's, and
the expert's action is the label either way. Training fine-tunes the previous weights on the
demos plus every round's rollouts so far, keeping the starting checkpoint's norm stats.

Every stage resumes: a rollout shard is written atomically when its episode ends (an episode
cut by a kill is redone from its seed, nothing is duplicated), training resumes from
``train_state.pt``, the eval is a resumable sweep folder.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError
from vla_eval.rundir import same_path

DAGGER_SCENE_BASE = 200_000  # the demos use 100_000 + 1000 T + K: disjoint for K < 1000 and R >= 1
# An episode is cut at the suite's step limit: the eval never sees states beyond it either.
END_REASONS = ("done", "hopeless", "cap")


@dataclass(frozen=True)
class DaggerConfig:
    out: Path
    demos: Path                       # the expert demos (``collect-demos --expert stateless``)
    start: Path                       # round 0's checkpoint (``train-tiny``'s export)
    tokenizer: Path
    suite: str = "libero_object"
    tasks: tuple[int, ...] = (0,)
    rounds: int = 3
    rollouts_per_task: int = 10       # per round
    beta0: float = 0.5                # round 1's chance that the expert acts at a step
    decay: float = 0.5                # beta of round R: beta0 * decay**(R-1)
    train_steps: int = 1500           # fine-tune steps per round
    lr: float = 5e-4
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # stored init states: held out from every round; () none
    workers: int = 2
    threads: int = 1                  # torch threads per rollout worker
    max_steps: int | None = None      # rollout and eval step cap; None: the suite's (280 for libero_object)

    def beta(self, r: int) -> float:
        return self.beta0 * self.decay ** (r - 1)

    def scene_seed(self, r: int, task: int, k: int) -> int:
        return DAGGER_SCENE_BASE + 10_000 * r + 1000 * task + k

    def round_dir(self, r: int) -> Path:
        return self.out / f"round{r}"

    def checkpoint(self, r: int) -> Path:
        return self.start if r == 0 else self.round_dir(r) / "train" / "checkpoint"


def check_config(cfg: DaggerConfig) -> None:
    """Values and folders checked before any work; a folder made with other settings is refused."""
    from vla_eval.sims.protocol import N_INIT_STATES, check_task_id

    for t in cfg.tasks:
        check_task_id(cfg.suite, t)
    bad = [s for s in cfg.eval_seeds if not 0 <= s < N_INIT_STATES]
    if bad:
        raise UsageError(f"--eval-seeds {bad[0]} has no stored init state; valid: 0..{N_INIT_STATES - 1}")
    if not (0 <= cfg.beta0 <= 1 and 0 <= cfg.decay <= 1):
        raise UsageError(f"--beta and --decay must lie in [0, 1]; got {cfg.beta0}, {cfg.decay}")
    if cfg.rollouts_per_task >= 1000:
        raise UsageError(f"--rollouts {cfg.rollouts_per_task}: at most 999 per task and round (scene seeds)")
    from vla_eval.tinyvla.train import require_checkpoint, shard_paths

    require_checkpoint("--start", cfg.start)

    shard_paths(cfg.demos)  # "no demonstration shards ... collect them first"
    meta = cfg.out / "dagger.json"
    mine = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
            for k, v in asdict(cfg).items()
            if k not in ("out", "tokenizer", "rounds", "workers", "threads") and not (k == "max_steps" and v is None)}
    if meta.exists():
        from vla_eval.safe_json import read_json

        try:
            theirs = read_json(meta, "DAgger record", max_bytes=2**20)
        except UsageError as e:
            raise UsageError(f"{e}; it records how {cfg.out} was made: restore it or use another --out") from None
        diff = {k: (theirs.get(k), v) for k, v in mine.items()
                if not (same_path(theirs.get(k), v) if k in ("demos", "start") else theirs.get(k) == v)}
        if diff:
            raise UsageError(f"{cfg.out} was made with other settings ({diff}); use another --out")
    else:
        cfg.out.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(mine, indent=1) + "\n")
        os.replace(tmp, meta)


# -- rollouts ----------------------------------------------------------------------------------
def mixed_rollout(env, policy, expert, beta: float, seed: int, max_steps: int, rng: np.random.Generator):
    """One mixed rollout in a sampled scene -> (kept steps, success, end reason).

    Each kept step is (obs, label, executed, policy action, actor); no-op labels are dropped as
    in the demos."""
    from vla_eval.tinyvla.demos import is_noop

    obs, kept, prev_grip = env.reset_sampled(seed), [], None
    for _ in range(max_steps):
        label = expert.action(obs)
        proposed = policy.act([obs]).actions[0]
        actor = "expert" if rng.random() < beta else "policy"
        executed = label if actor == "expert" else proposed
        if not is_noop(label, prev_grip):
            kept.append((obs, label, executed, proposed, actor))
        prev_grip = label[6]
        result = env.step(executed)
        obs = result.obs
        if result.done:
            return kept, True, "done"
        if expert.hopeless(obs):
            return kept, False, "hopeless"
    return kept, False, "cap"


def rollout_shard(cfg: DaggerConfig, r: int, task: int, k: int) -> Path:
    return cfg.round_dir(r) / "rollouts" / f"task{task}" / f"scene{k}.parquet"


def _rollout_worker(cfg: DaggerConfig, r: int, jobs) -> None:
    import torch

    from vla_eval.policies.factory import OpenVLAOptions, make_policy
    from vla_eval.policies.scripted import StatelessExpert
    from vla_eval.sims.libero_env import LiberoEnv, configure_gl
    from vla_eval.sims.protocol import suite_spec
    from vla_eval.tinyvla.demos import _write_atomic, demo_row

    from vla_eval.sims.stopping import die_with_parent

    die_with_parent()
    torch.set_num_threads(cfg.threads)
    configure_gl()
    policy = make_policy("openvla", cfg.suite, openvla=OpenVLAOptions(
        checkpoint=str(cfg.checkpoint(r - 1)), device="cpu", dtype="float32"))
    expert, max_steps, envs = StatelessExpert(), cfg.max_steps or suite_spec(cfg.suite).max_steps, {}
    try:
        while (job := jobs.get()) is not None:
            task, k = job
            path = rollout_shard(cfg, r, task, k)
            if path.exists():
                continue
            if task not in envs:  # one env per task, reused across its scenes (soft resets)
                envs[task] = LiberoEnv(cfg.suite, task, cameras=True, hard_reset=False, camera_names=("agentview",))
            seed = cfg.scene_seed(r, task, k)
            kept, success, end = mixed_rollout(envs[task], policy, expert, cfg.beta(r), seed, max_steps,
                                         np.random.default_rng(seed))
            rows = [dict(demo_row(o, task, k, i, label, executed), round=r, actor=actor,
                         policy_action=proposed.astype(np.float32).tolist(), success=success, end=end)
                    for i, (o, label, executed, proposed, actor) in enumerate(kept)]
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(rows, path)
    finally:
        for env in envs.values():
            env.close()


def run_rollouts(cfg: DaggerConfig, r: int, progress: bool = True) -> None:
    todo = [(t, k) for t in cfg.tasks for k in range(cfg.rollouts_per_task) if not rollout_shard(cfg, r, t, k).exists()]
    if not todo:
        return
    from vla_eval.tinyvla.demos import run_worker_pool

    run_worker_pool(_rollout_worker, (cfg, r), todo, min(cfg.workers, len(todo)), len(cfg.tasks) * cfg.rollouts_per_task,
                    lambda: len(list((cfg.round_dir(r) / "rollouts").glob("task*/scene*.parquet"))),
                    f"round {r} rollouts", progress)


def rollout_summary(cfg: DaggerConfig, r: int) -> dict:
    """Success, frames and who acted, over a round's rollout shards."""
    import pandas as pd

    from vla_eval.tinyvla.train import shard_paths

    n = ok = frames = by_policy = 0
    for path in shard_paths(cfg.round_dir(r) / "rollouts"):
        try:
            df = pd.read_parquet(path, columns=["success", "actor"])
        except Exception as e:
            why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise UsageError(f"rollout shard {path} is unreadable ({why}); delete it and re-run the same command, "
                             f"which rolls that scene out again") from e
        n, frames = n + 1, frames + len(df)
        ok += bool(len(df) and df["success"].iloc[0])
        by_policy += int((df["actor"] == "policy").sum())
    return {"rollouts": n, "rollout_success": ok, "frames": frames, "policy_frames": by_policy}


# -- training and eval -------------------------------------------------------------------------
def train_round(cfg: DaggerConfig, r: int, progress: bool = True) -> Path:
    from vla_eval.tinyvla.train import TrainConfig, train

    ckpt = cfg.checkpoint(r)
    if (ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file():
        return ckpt
    tc = TrainConfig(demos=cfg.demos, out=cfg.round_dir(r) / "train", tokenizer=cfg.tokenizer,
                     steps=cfg.train_steps, lr=cfg.lr, warmup=min(100, cfg.train_steps // 10), threads=None,
                     extra_demos=tuple(cfg.round_dir(i) / "rollouts" for i in range(1, r + 1)),
                     init_from=cfg.checkpoint(r - 1))
    return train(tc, progress=progress)


def evaluate(cfg: DaggerConfig, r: int, progress: bool = True) -> tuple[int, int]:
    """Held-out success of round r's checkpoint on the stored init states ``eval_seeds``."""
    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.sweep import Execution, SweepConfig, run_sweep

    sc = SweepConfig(suite=cfg.suite, task_ids=cfg.tasks, seeds=cfg.eval_seeds, policy="openvla",
                     checkpoint=str(cfg.checkpoint(r)), hard_reset=False, max_steps=cfg.max_steps)
    workers = min(2, cfg.workers) if cfg.workers > 1 else 0  # one env: in this process, no spawn
    result = run_sweep(sc, cfg.round_dir(r) / "eval", OpenVLAOptions(device="cpu", dtype="float32"),
                       Execution(workers=workers, progress=progress, videos="none"))
    eps = result.episodes["baseline"]
    return sum(e.outcome == "success" for e in eps), len(eps)


def _val_acc(cfg: DaggerConfig, r: int) -> str:
    log = cfg.round_dir(r) / "train" / "train_log.csv"
    if not log.exists():
        return ""
    rows = list(csv.DictReader(log.open()))
    return rows[-1]["val_token_acc"] if rows else ""


CURVE_FIELDS = ["round", "beta", "rollouts", "rollout_success", "frames", "policy_frames", "val_token_acc",
                "heldout_success", "heldout_n", "wilson_lo", "wilson_hi"]


def _write_curve(cfg: DaggerConfig, rows: list[dict]) -> None:
    path = cfg.out / "curve.csv"
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CURVE_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def run(cfg: DaggerConfig, progress: bool = True) -> list[dict]:
    """Every round not yet finished; returns the curve (one dict per round, round 0 first)."""
    from vla_eval.reports.stats import Rate

    check_config(cfg)
    curve = []
    for r in range(cfg.rounds + 1):
        row = {"round": r, "beta": f"{cfg.beta(r):.3f}" if r else "", "rollouts": 0, "rollout_success": 0,
               "frames": 0, "policy_frames": 0, "val_token_acc": ""}
        if r:
            run_rollouts(cfg, r, progress)
            row.update(rollout_summary(cfg, r))
            train_round(cfg, r, progress)
            row["val_token_acc"] = _val_acc(cfg, r)
        held = "no evaluation"
        if cfg.eval_seeds:
            k, n = evaluate(cfg, r, progress)
            lo, hi = Rate(k, n).wilson95
            row.update(heldout_success=k, heldout_n=n, wilson_lo=f"{lo:.3f}", wilson_hi=f"{hi:.3f}")
            held = f"held-out {k}/{n} (Wilson {lo:.0%}-{hi:.0%})"
        curve.append(row)
        _write_curve(cfg, curve)
        print(f"round {r}: {held}"
              + (f"; rollouts {row['rollout_success']}/{row['rollouts']} succeeded (beta {row['beta']}), "
                 f"{row['frames']} frames, {row['policy_frames']} where the policy acted" if r else ""), flush=True)
    return curve
