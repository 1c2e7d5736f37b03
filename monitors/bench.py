"""``vla-eval bench-monitor``: update() latency of all predicates together (target p99 <= 50 us),
with a fitted forecaster, and with a feature probe as wide as a model's hidden-state summary
(target p99 <= 200 us at 4096)."""
from __future__ import annotations

import time

import numpy as np

from vla_eval.argtypes import int_at_least


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("bench-monitor", help=VERBS["bench-monitor"].help)
    p.add_argument("--steps", type=int_at_least(100, " (for a p99)"), default=20000)
    p.add_argument("--forecaster", metavar="F.json", help="also time a fitted failure forecaster (vla-eval forecast fit)")
    p.add_argument("--feature-width", type=int_at_least(2, high=65536), metavar="D", action="append",
                   help="also time a logistic probe on the action signals + hidden-state summaries D wide (random "
                        "weights: the cost does not depend on them; OpenVLA-7B's summary is 8192); repeatable")
    p.set_defaults(fn=lambda a: run(a.steps, a.forecaster, a.feature_width or ()))


def _time(monitor, steps: int, rng) -> np.ndarray:
    """update() wall times (us) over ``steps`` steps with native OpenVLA's per-token statistics
    (and float16 hidden-state summaries, for a forecaster that reads them)."""
    actions = rng.uniform(-1, 1, size=(steps, 7))
    probs, ents = rng.uniform(0.3, 1, size=(steps, 7)), rng.uniform(0, 3, size=(steps, 7))
    width = monitor.forecaster.feature_width if monitor.forecaster is not None else None
    features = rng.normal(size=(64, 2, width // 2)).astype(np.float16) if width else None
    times = np.empty(steps)
    for i, a in enumerate(actions):
        rec = {"action": a, "reward": 0.0, "done": False, "token_prob": float(probs[i].mean()),
               "token_probs": probs[i], "token_entropy": ents[i]}
        h = features[i % 64] if width else None
        t = time.perf_counter_ns()
        monitor.update(rec, features=h)
        times[i] = time.perf_counter_ns() - t
        if i % 280 == 279:  # a fresh episode's state every step limit
            monitor.__init__(monitor.th, monitor.forecaster)
    return times / 1e3


def feature_probe(width: int, components: int = 8):
    """A logistic forecaster on the action signals and ``width``-wide summaries, random weights."""
    from vla_eval.monitors.forecast import FAMILIES, Forecaster

    rng = np.random.default_rng(0)
    n = len(FAMILIES["action"]) + 2 * components
    return Forecaster(FAMILIES["action"], "logistic", [0.0] * n, [1.0] * n, [rng.normal(size=n).tolist()], 0.0,
                      [0.0] * 280, [1.0] * 280, 3.0, 0.1, {},
                      {"center": rng.normal(size=width).tolist(),
                       "projection": rng.normal(size=(components, width)).tolist()})


def run(steps: int = 20000, forecaster: str | None = None, feature_widths=()) -> int:
    from vla_eval.monitors import RuntimeMonitor

    rows = [("all predicates", RuntimeMonitor())]
    if forecaster:
        from vla_eval.monitors.forecast import Forecaster

        f = Forecaster.load(forecaster)
        what = f"{len(f.signals)} signals" + (f" + {f.feature_width}-wide features" if f.features else "")
        rows.append((f"all predicates + forecaster ({f.model}, {what})", RuntimeMonitor(forecaster=f)))
    for width in feature_widths:
        rows.append((f"all predicates + logistic probe on action signals + {width}-wide features",
                     RuntimeMonitor(forecaster=feature_probe(width))))
    for name, m in rows:
        us = _time(m, steps, np.random.default_rng(0))
        print(f"RuntimeMonitor.update over {steps} steps ({name}): "
              f"p50 {np.percentile(us, 50):.1f} us, p99 {np.percentile(us, 99):.1f} us, max {us.max():.1f} us")
    return 0
