"""``vla-eval bench-threads``: the SmallPolicy drills alone, then next to a tiny-policy sweep.

A shared workstation runs a sweep next to a notebook. Both are torch processes on the same cores;
this prints how much slower the drills get when a sweep runs beside them (goal: at most 2.5x).
``--spin`` measures with idle OpenMP threads spinning (what two processes did before the toolkit
sized its waits).

    vla-eval bench-threads                  # ~2 min alone + the time together
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vla_eval.argtypes import format_ids, out_dir, seeds


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("bench-threads", help=VERBS["bench-threads"].help)
    p.add_argument("--sweep-seeds", type=seeds("--sweep-seeds", count=True), default="40-49",
                   help="seeds of the background sweep, a count N or ids as in sweep --seeds (all 10 libero_object "
                        "tasks; default 40-49)")
    p.add_argument("--spin", action="store_true", help="idle OpenMP threads spin as long as libgomp's default "
                                                       "(GOMP_SPINCOUNT=300000): the behaviour before the toolkit "
                                                       "sized its waits")
    p.add_argument("--out", type=out_dir, default=Path("runs/bench-threads"),
                   help="a new sub-folder per call holds both drill folders and the sweep")
    p.set_defaults(fn=run)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vla_eval.cli", *args]


def _timed_drill(out: Path, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(_cli("small", "all", "--out", str(out)), env=env, capture_output=True, text=True)
    if r.returncode not in (0, 1):  # 1: a drill's signature did not match, still a timing
        raise RuntimeError(f"small all failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.perf_counter() - t


def _steps(log: Path) -> int:
    return log.read_text().count('"kind":"step"') if log.exists() else 0


def run(args) -> int:
    root = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    env = dict(os.environ)
    if args.spin:
        env.update(GOMP_SPINCOUNT="300000", KMP_BLOCKTIME="200")  # libgomp's and Intel's own defaults
    waits = ", ".join(f"{k}={env[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in env)
    print(f"bench-threads: {root} ({waits or 'OpenMP defaults'}; {os.cpu_count()} cores)", flush=True)
    alone = _timed_drill(root / "small-alone", env)
    print(f"  drills alone:           {alone:7.1f} s", flush=True)

    sweep_dir = root / "sweep"
    sweep = subprocess.Popen(_cli("sweep", "--policy", "tiny", "--all-tasks", "--seeds", format_ids(args.sweep_seeds),
                                  "--batch", "2", "--videos", "none", "--no-report", "--no-progress",
                                  "--out", str(sweep_dir)),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        log = sweep_dir / "baseline.jsonl"
        deadline = time.time() + 600
        while _steps(log) == 0 and sweep.poll() is None and time.time() < deadline:
            time.sleep(1)
        if _steps(log) == 0:
            raise RuntimeError(f"the background sweep never stepped: {sweep.stderr.read()[-2000:]}")
        steps0, t0 = _steps(log), time.perf_counter()
        together = _timed_drill(root / "small-together", env)
        sweep_rate = (_steps(log) - steps0) / (time.perf_counter() - t0) * 60
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGTERM)  # the group, as a cluster's pre-emption would: a clean stop
        sweep.wait(timeout=120)
    print(f"  drills next to a sweep: {together:7.1f} s  ({together / alone:.2f}x alone; goal <= 2.5x)")
    print(f"  the sweep meanwhile:    {sweep_rate:7.0f} env steps/min (2 env workers, tiny policy on the CPU)")
    return 0
