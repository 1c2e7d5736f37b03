"""``vla-eval bench-report``: the HTML report's cost on synthetic run folders of growing size.

Each size is a drill folder (baseline + one fault) of N episodes per tag, written with the real
record writer; the time covers reading the logs, the statistics, the monitor replay, the plots
and the template (``html.render``). A linear report costs about 10x from 50 to 500 episodes.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from vla_eval.argtypes import int_at_least


def _sizes(text: str) -> tuple[int, ...]:
    import argparse

    try:
        sizes = tuple(int(x) for x in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or max(sizes) > 500:
        raise argparse.ArgumentTypeError(f"--episodes takes comma-separated counts 1..500, e.g. 50,500; got {text!r}")
    return sizes


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("bench-report", help=VERBS["bench-report"].help)
    p.add_argument("--episodes", type=_sizes, default=(50, 500),
                   help="episodes per run tag, one folder each (default 50,500)")
    p.add_argument("--steps", type=int_at_least(1), default=150, help="steps per episode (default 150)")
    p.set_defaults(fn=lambda a: run(a.episodes, a.steps))


def synthetic_run(folder: Path, episodes: int, steps: int, seed: int = 0) -> Path:
    """A drill folder (baseline + no_flip) of ``episodes`` per tag over the 10 libero_object tasks."""
    from vla_eval.records import EpisodeRecord, JsonlWriter, StepRecord
    from vla_eval.rundir import SweepConfig, check_or_write_manifest

    rng = np.random.default_rng(seed)
    seeds = -(-episodes // 10)  # 10 tasks x up to 50 stored init states
    tags = ("baseline", "no_flip")
    check_or_write_manifest(folder, SweepConfig("libero_object", tuple(range(10)), seeds, "tiny", tags))
    for tag in tags:
        with JsonlWriter(folder / f"{tag}.jsonl") as w:
            for e in range(episodes):
                task, s, att = e % 10, e // 10, f"{tag}-{e}"
                actions = np.round(rng.uniform(-1, 1, (steps, 7)), 4)
                for t, a in enumerate(actions):
                    w.write(StepRecord(tag, task, s, att, t, tuple(a.tolist()), 120.0, 0.0, False, 0.02, 0.1,
                                       token_prob=0.9))
                w.write(EpisodeRecord(tag, "libero_object", task, s, s, att, rng.choice(["success", "failure"]),
                                      steps, int(rng.integers(steps)), 30.0, 3.0, 15.0, f"task {task}"))
    return folder


def run(sizes, steps: int) -> int:
    from vla_eval.reports.html import render

    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = synthetic_run(Path(tmp) / f"run{n}", n, steps)
            t = time.perf_counter()
            html = render(folder)
            times[n] = time.perf_counter() - t
            print(f"{n:5d} episodes per tag x 2 tags x {steps} steps: report in {times[n]:.2f} s "
                  f"({1e3 * times[n] / (2 * n):.1f} ms per episode, {len(html) / 2**20:.1f} MB)")
    if len(times) > 1:
        (a, ta), (b, tb) = min(times.items()), max(times.items())
        print(f"{b / a:.0f}x the episodes: {tb / ta:.1f}x the time (linear: {b / a:.0f}x)")
    return 0
