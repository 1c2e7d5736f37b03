"""``vla-eval bench-monitor``: update() latency of all predicates together (target p99 <= 50 us)."""
from __future__ import annotations

import time

import numpy as np

from vla_eval.argtypes import int_at_least


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("bench-monitor", help=VERBS["bench-monitor"].help)
    p.add_argument("--steps", type=int_at_least(100, " (for a p99)"), default=20000)
    p.set_defaults(fn=lambda a: run(a.steps))


def run(steps: int = 20000) -> int:
    from vla_eval.monitors import RuntimeMonitor

    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(steps, 7))
    m = RuntimeMonitor()
    times = np.empty(steps)
    for i, a in enumerate(actions):
        rec = {"action": a, "reward": 0.0, "done": False}
        t = time.perf_counter_ns()
        m.update(rec)
        times[i] = time.perf_counter_ns() - t
    us = times / 1e3
    print(f"RuntimeMonitor.update over {steps} steps (all predicates): "
          f"p50 {np.percentile(us, 50):.1f} us, p99 {np.percentile(us, 99):.1f} us, max {us.max():.1f} us")
    return 0
