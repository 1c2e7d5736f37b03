"""Fit monitor thresholds on baseline runs at a chosen false-alarm rate (split conformal).

For each streaming predicate we take its score on every baseline run (the smallest
windowed mean ||a[:6]|| for bad_prompt; the fraction of steps with |a[:3]| above the
absolute threshold for bad_unnorm) and set the threshold at the order statistic that
lets at most ``alpha`` of exchangeable baseline runs alarm. Held-out baseline runs then
give the measured false-alarm rate.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from vla_eval.monitors.predicates import Thresholds
from vla_eval.monitors.stream import evaluate


def _actions(trace) -> np.ndarray:
    rows = [s["action"] if isinstance(s, dict) else s.action for s in trace]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 7)


def prompt_score(trace, window: int) -> float:
    """Smallest windowed mean ||a[:6]|| over the run (low = collapsed)."""
    norms = np.linalg.norm(_actions(trace)[:, :6], axis=1)
    if len(norms) < window:
        return float("inf")
    return float(np.convolve(norms, np.ones(window) / window, mode="valid").min())


def unnorm_score(trace, abs_threshold: float, min_steps: int) -> float:
    """Largest running fraction of steps with |a[:3]| above the absolute threshold, from
    ``min_steps`` on: exactly what the streaming check compares at each step."""
    a = _actions(trace)
    if len(a) < min_steps:
        return 0.0
    big = np.abs(a[:, :3]).max(axis=1) > abs_threshold
    running = np.cumsum(big) / np.arange(1, len(big) + 1)
    return float(running[min_steps - 1:].max())


def calibrate(baseline: Sequence, alpha: float = 0.05, base: Thresholds = Thresholds()) -> Thresholds:
    """``baseline``: traces of healthy (successful) runs. Needs n >= 1/alpha - 1 runs for the
    guarantee to be non-trivial; with fewer, the most extreme baseline score is used."""
    n = len(baseline)
    if n == 0:
        raise ValueError("calibration needs at least one baseline run")
    k = max(1, math.floor(alpha * (n + 1)))  # conformal rank from the alarming end
    lows = np.sort([prompt_score(t, base.window) for t in baseline])
    highs = np.sort([unnorm_score(t, base.unnorm_abs, base.min_steps) for t in baseline])[::-1]
    prompt_thr = float(lows[min(k, n) - 1]) * (1 - 1e-9)  # alarm strictly below the k-th lowest
    unnorm_frac = float(highs[min(k, n) - 1]) + 1e-9  # alarm strictly above the k-th highest
    # A threshold above 1 disables bad_unnorm: healthy runs already move at full scale.
    return replace(base, prompt_norm=prompt_thr, unnorm_frac=unnorm_frac)


def false_alarm_rate(traces: Sequence, th: Thresholds) -> float:
    """Fraction of (held-out baseline) runs on which any streaming predicate fired."""
    fired = [any(v.step is not None for v in evaluate(t, th)[0]) for t in traces]
    return float(np.mean(fired)) if fired else float("nan")


def detection_latency(trace, th: Thresholds, predicate: str) -> int | None:
    """Steps from the start to the first alert of ``predicate`` (None: never fired)."""
    for v in evaluate(trace, th)[0]:
        if v.predicate == predicate:
            return v.step
    return None
