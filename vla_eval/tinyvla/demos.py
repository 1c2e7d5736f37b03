"""Scripted-expert demonstrations on real LIBERO, recorded as an OpenVLA fine-tuning set.

Scenes are freshly sampled placements (``LiberoEnv.reset_sampled``, scene seed
``SCENE_SEED_BASE + 1000 * task + k``), never the 50 stored init states: every evaluation
seed (seed i -> stored init state i) stays unseen by training.

Storage (``$VLA_EVAL_CACHE/demos/<suite>/``), one parquet file per successful episode,
written atomically, so an interrupted collection resumes where it stopped:

    task<T>/scene<K>.parquet   one row per kept step: every ``frame_every``-th step is
                               rendered and kept (no-ops dropped, as OpenVLA's
                               "<suite>_no_noops" data), columns:
        task_id int, scene int, step int, instruction str,
        image bytes      the upright 256x256 agentview frame as JPEG (q95, 4:2:0): the bytes
                         the eval chain makes before its resize and crop
        action  7 float  the expert's action (the label; LIBERO convention, gripper -1 open)
        executed 7 float what the env received: in noisy episodes the label + DART noise on
                         xyz, and now and then a perturbation burst (below)
        eef_pos 3 float, gripper_qpos 2 float
    task<T>/scene<K>.failed    the expert failed that scene: skipped on resume
    collection.json            the config the folder was collected with

    pd.read_parquet(path)  # any shard is a plain DataFrame

Perturbation bursts (noisy episodes only): Gaussian DART noise alone moves the arm ~0.5 cm
off the expert's path (the P-controller pulls it back within a few steps), while the trained
policy drifts by centimetres and then closes its gripper beside or above the object. So now
and then the recorder executes a few steps of its own instead of the expert's (a push of
2-10 cm sideways or up while approaching, descending or carrying, or a premature gripper
close before the grasp) and keeps the expert's labels: the frames that follow show the
states a drifting policy reaches, labelled with the way back.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError, require

SCENE_SEED_BASE = 100_000  # far from the stored init states' indices 0..49
DEFAULT_NOISE = 0.2
DEFAULT_BURSTS = 0.0  # measured: 0.04 did not help the tiny policy (README); off, so the shipped data reproduces


def demos_root() -> Path:
    return Path(os.environ.get("VLA_EVAL_CACHE", Path.home() / ".cache" / "vla-eval")) / "demos"


@dataclass(frozen=True)
class DemoConfig:
    suite: str = "libero_object"
    tasks: tuple[int, ...] = tuple(range(10))
    per_task: int = 20  # successful episodes per task
    noise: float = DEFAULT_NOISE  # DART: std of Gaussian noise on the executed xyz action
    clean_every: int = 3  # every third episode runs without noise
    burst_prob: float = DEFAULT_BURSTS  # per-step chance of starting a perturbation burst (noisy episodes)
    burst_steps: tuple[int, int] = (3, 8)  # a burst lasts this many steps (inclusive range)
    burst_speed: float = 0.8  # executed xyz action magnitude during a push (~1 cm per step)
    grip_burst_share: float = 0.3  # share of bursts before the grasp that close the gripper instead
    max_steps: int = 280
    # Rendering is ~80% of a step's cost on CPU: rendering every 2nd step gives ~1.7x the
    # scenes for the same time, and neighbouring frames are near-duplicates anyway.
    frame_every: int = 2
    workers: int = 2
    expert: str = "scripted"  # "stateless": the phase read off the state (the DAgger labeller)
    out: Path = field(default_factory=lambda: demos_root() / "libero_object")

    def scene_seed(self, task: int, k: int) -> int:
        return SCENE_SEED_BASE + 1000 * task + k

    def noise_of(self, k: int) -> float:
        return 0.0 if k % self.clean_every == 0 else self.noise


def task_dir(out: Path, task: int) -> Path:
    return out / f"task{task}"


def successes(out: Path, task: int) -> int:
    return len(list(task_dir(out, task).glob("scene*.parquet")))


def is_noop(action: np.ndarray, prev_grip: float | None) -> bool:
    """OpenVLA's no-op filter: no motion and the gripper command unchanged."""
    return bool(np.linalg.norm(action[:6]) < 1e-4 and prev_grip is not None and action[6] == prev_grip)


_PUSH_PHASES = ("approach", "descend", "lift", "carry")  # the expert recovers from a push in these
_PRE_GRASP = ("approach", "descend")


class Bursts:
    """Perturbation bursts of one noisy episode: ``apply`` turns the expert's label into what
    the env executes. A burst starts with ``burst_prob`` per step in a perturbable phase
    (descend only in its first 25 steps, so the expert's descend timeout never closes the
    gripper off target) and holds one executed command for its length."""

    def __init__(self, cfg: DemoConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.left = 0
        self.push: np.ndarray | None = None  # the burst's executed xyz; None: an early gripper close

    def apply(self, executed: np.ndarray, phase: str, ticks: int) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        perturbable = phase in _PUSH_PHASES and not (phase == "descend" and ticks > 25)
        if self.left == 0 and perturbable and rng.random() < cfg.burst_prob:
            self.left = int(rng.integers(cfg.burst_steps[0], cfg.burst_steps[1] + 1))
            if phase in _PRE_GRASP and rng.random() < cfg.grip_burst_share:
                self.push = None
            else:
                d = np.array([*rng.normal(0.0, 1.0, 2), rng.uniform(-0.3, 0.6)])  # sideways, rather up than down
                self.push = cfg.burst_speed * d / np.linalg.norm(d)
        if self.left == 0 or not perturbable:
            self.left = 0
            return executed
        self.left -= 1
        executed = executed.copy()
        if self.push is None:
            executed[6] = 1.0  # close early (LIBERO convention: +1 closes)
        else:
            executed[:3] = self.push
        return executed


EXPERTS = ("scripted", "stateless")


def make_expert(name: str):
    from vla_eval.policies.scripted import ScriptedExpert, StatelessExpert

    return {"scripted": ScriptedExpert, "stateless": StatelessExpert}[name]()


def demo_row(obs, task: int, k: int, step: int, label: np.ndarray, executed: np.ndarray) -> dict:
    """One kept step in the shard layout above."""
    from vla_eval.policies.openvla.preprocess import jpeg_encode

    return {
        "task_id": task, "scene": k, "step": step, "instruction": obs.instruction,
        "image": jpeg_encode(obs.agentview[::-1, ::-1]),  # upright, as the training data
        "action": label.astype(np.float32).tolist(), "executed": executed.astype(np.float32).tolist(),
        "eef_pos": obs.eef_pos.astype(np.float32).tolist(),
        "gripper_qpos": obs.gripper_qpos.astype(np.float32).tolist(),
    }


def record_episode(env, expert, cfg: DemoConfig, task: int, k: int) -> tuple[list[dict], bool]:
    """One expert episode in a sampled scene -> (rows, success)."""
    rng = np.random.default_rng(cfg.scene_seed(task, k))
    env.render_next(True)
    obs = env.reset_sampled(cfg.scene_seed(task, k))
    expert.reset(0)
    noise, rows, prev_grip = cfg.noise_of(k), [], None
    bursts = Bursts(cfg, rng) if noise > 0 and cfg.burst_prob > 0 else None
    for step in range(cfg.max_steps):
        label = expert.act([obs]).actions[0]
        executed = label.copy()
        if noise > 0:
            executed[:3] = np.clip(executed[:3] + rng.normal(0.0, noise, 3), -1.0, 1.0)
        if bursts is not None:
            executed = bursts.apply(executed, *expert.phase(0))
        if obs.agentview is not None and not is_noop(label, prev_grip):
            rows.append(demo_row(obs, task, k, step, label, executed))
        prev_grip = label[6]
        env.render_next((step + 1) % cfg.frame_every == 0)
        result = env.step(executed)
        obs = result.obs
        if result.done:
            return rows, True
    return rows, False


def _write_atomic(rows: list[dict], path: Path) -> None:
    import pandas as pd

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, path)  # a kill leaves a .tmp, never a half-written shard


def _worker(cfg: DemoConfig, tasks) -> None:
    """Take tasks from the shared queue until its end marker (a hard task keeps one worker busy,
    the others move on)."""
    from vla_eval.sims.libero_env import LiberoEnv, configure_gl

    from vla_eval.sims.stopping import die_with_parent

    die_with_parent()
    configure_gl()
    expert = make_expert(cfg.expert)
    while (task := tasks.get()) is not None:
        folder = task_dir(cfg.out, task)
        folder.mkdir(parents=True, exist_ok=True)
        if successes(cfg.out, task) >= cfg.per_task:
            continue
        with LiberoEnv(cfg.suite, task, cameras=True, hard_reset=False, camera_names=("agentview",)) as env:
            k = 0
            while successes(cfg.out, task) < cfg.per_task:
                shard, failed = folder / f"scene{k}.parquet", folder / f"scene{k}.failed"
                if not shard.exists() and not failed.exists():
                    rows, ok = record_episode(env, expert, cfg, task, k)
                    if ok:
                        _write_atomic(rows, shard)
                    else:
                        failed.write_text(f"expert failed after {len(rows)} steps\n")
                k += 1


def _check_config(cfg: DemoConfig) -> None:
    """A folder collected with other settings is never mixed with this collection."""
    from vla_eval.sims.protocol import check_task_id, suite_spec

    suite_spec(cfg.suite)
    for t in cfg.tasks:
        check_task_id(cfg.suite, t)
    if (cfg.per_task < 1 or cfg.workers < 1 or cfg.frame_every < 1 or not 0 <= cfg.noise <= 1
            or not 0 <= cfg.burst_prob <= 1 or cfg.expert not in EXPERTS
            or (cfg.expert != "scripted" and cfg.burst_prob > 0)):
        raise UsageError(f"--per-task, --workers and --frame-every must be at least 1, --noise and --bursts in "
                         f"[0, 1], --expert one of {', '.join(EXPERTS)} (--bursts needs the scripted one); got "
                         f"{cfg.per_task}, {cfg.workers}, {cfg.frame_every}, {cfg.noise}, {cfg.burst_prob}, "
                         f"{cfg.expert}")
    meta = cfg.out / "collection.json"
    mine = {"suite": cfg.suite, "noise": cfg.noise, "clean_every": cfg.clean_every, "max_steps": cfg.max_steps,
            "scene_seed_base": SCENE_SEED_BASE, "frame_every": cfg.frame_every, "format": 2}
    if cfg.expert != "scripted":
        mine["expert"] = cfg.expert
    if cfg.burst_prob > 0:  # without bursts the shards equal the earlier collections' (same rng draws)
        mine.update(burst_prob=cfg.burst_prob, burst_steps=list(cfg.burst_steps), burst_speed=cfg.burst_speed,
                    grip_burst_share=cfg.grip_burst_share)
    if meta.exists():
        from vla_eval.safe_json import read_json

        try:
            theirs = read_json(meta, "collection record", max_bytes=2**20)
        except UsageError as e:
            raise UsageError(f"{e}; it records how {cfg.out} was collected: restore it, or collect into another "
                             f"--out") from None
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise UsageError(f"{cfg.out} was collected with other settings ({diff}); use another --out")
    elif any(cfg.out.glob("task*/scene*.parquet")):
        raise UsageError(f"{cfg.out} holds demo shards but no collection.json, so their settings are unknown; "
                         f"collect into another --out (or restore collection.json)")
    else:
        cfg.out.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(mine, indent=1) + "\n")


def collect(cfg: DemoConfig, progress: bool = True) -> dict[int, int]:
    """Collect until every task has ``per_task`` successful episodes; returns successes per task."""
    require("pandas", "data", "collecting demonstrations")
    require("pyarrow", "data", "collecting demonstrations")
    _check_config(cfg)
    order = sorted((t for t in cfg.tasks if successes(cfg.out, t) < cfg.per_task), key=lambda t: successes(cfg.out, t))
    run_worker_pool(_worker, (cfg,), order, min(cfg.workers, len(order)), cfg.per_task * len(cfg.tasks),
                    lambda: sum(min(successes(cfg.out, t), cfg.per_task) for t in cfg.tasks), "demos", progress)
    return {t: successes(cfg.out, t) for t in cfg.tasks}


def run_worker_pool(target, args: tuple, items, n_workers: int, total: int, done, desc: str, progress: bool) -> None:
    """``n_workers`` spawned processes run ``target(*args, queue)`` over a queue of ``items``
    followed by one ``None`` per worker (its end marker); a progress bar follows ``done()``
    (work counted on disk, so a resumed run starts where it stopped). A worker that dies is an
    error naming the way to resume. Nothing is spawned when there are no items."""
    from multiprocessing.connection import wait

    from tqdm import tqdm

    items = list(items)
    if not items:
        return
    ctx = mp.get_context("spawn")  # MuJoCo/EGL state must not be forked
    queue = ctx.Queue()
    for item in [*items, *[None] * n_workers]:
        queue.put(item)
    procs = [ctx.Process(target=target, args=(*args, queue), daemon=True) for _ in range(n_workers)]
    for p in procs:
        p.start()
    bar = tqdm(total=total, initial=done(), desc=desc, unit="ep", disable=not progress)
    try:
        while alive := [p.sentinel for p in procs if p.is_alive()]:
            wait(alive, timeout=2.0)  # returns as soon as a worker exits
            bar.update(done() - bar.n)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        bar.close()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{desc} workers exited with {failed}; re-run the same command to resume")
