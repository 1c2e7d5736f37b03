"""``vla-eval bench-monitor``: update() latency of all predicates together (target p99 <= 50 us)."""
from __future__ import annotations

import time

import numpy as np

from vla_eval.argtypes import int_at_least


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("bench-monitor", help=VERBS["bench-monitor"].help)
    p.add_argument("--steps", type=int_at_least(100, " (for a p99)"), default=20000)
    p.add_argument("--forecaster", metavar="F.json", help="also time a fitted failure forecaster (vla-eval forecast fit)")
    p.set_defaults(fn=lambda a: run(a.steps, a.forecaster))


def _time(monitor, steps: int, rng) -> np.ndarray:
    """update() wall times (us) over ``steps`` steps with native OpenVLA's per-token statistics."""
    actions = rng.uniform(-1, 1, size=(steps, 7))
    probs, ents = rng.uniform(0.3, 1, size=(steps, 7)), rng.uniform(0, 3, size=(steps, 7))
    times = np.empty(steps)
    for i, a in enumerate(actions):
        rec = {"action": a, "reward": 0.0, "done": False, "token_prob": float(probs[i].mean()),
               "token_probs": probs[i], "token_entropy": ents[i]}
        t = time.perf_counter_ns()
        monitor.update(rec)
        times[i] = time.perf_counter_ns() - t
        if i % 280 == 279:  # a fresh episode's state every step limit
            monitor.__init__(monitor.th, monitor.forecaster)
    return times / 1e3


def run(steps: int = 20000, forecaster: str | None = None) -> int:
    from vla_eval.monitors import RuntimeMonitor

    rows = [("all predicates", RuntimeMonitor())]
    if forecaster:
        from vla_eval.monitors.forecast import Forecaster

        f = Forecaster.load(forecaster)
        rows.append((f"all predicates + forecaster ({f.model}, {len(f.signals)} signals)", RuntimeMonitor(forecaster=f)))
    for name, m in rows:
        us = _time(m, steps, np.random.default_rng(0))
        print(f"RuntimeMonitor.update over {steps} steps ({name}): "
              f"p50 {np.percentile(us, 50):.1f} us, p99 {np.percentile(us, 99):.1f} us, max {us.max():.1f} us")
    return 0
