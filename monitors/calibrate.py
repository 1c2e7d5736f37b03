"""Fit monitor thresholds on baseline runs at a chosen false-alarm rate (split conformal).

For each streaming predicate we take its score on every baseline run (the smallest
windowed mean ||a[:6]|| for bad_prompt; the fraction of steps with |a[:3]| above the
absolute threshold for bad_unnorm) and set the threshold at the order statistic that
lets at most ``alpha`` of exchangeable baseline runs alarm. Held-out baseline runs then
give the measured false-alarm rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
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


def small_score(trace, min_steps: int) -> float:
    """Largest |a[:3]| of the first ``min_steps`` steps (low = translations shrunk)."""
    a = _actions(trace)
    return float(np.abs(a[:min_steps, :3]).max()) if len(a) >= min_steps else float("inf")


def confidence_score(trace, window: int) -> float | None:
    """Mean token_prob over the first ``window`` steps that report one (None: not logged)."""
    probs = [(s.get("token_prob") if isinstance(s, dict) else getattr(s, "token_prob", None)) for s in trace]
    probs = [p for p in probs if p is not None][:window]
    return float(np.mean(probs)) if len(probs) == window else None


def consistency_score(trace, window: int) -> float:
    """Mean cosine between consecutive translation directions over the first ``window`` steps."""
    x = _actions(trace)[:window, :3]
    if len(x) < window:
        return float("inf")
    n = np.linalg.norm(x, axis=1)
    ok = (n[1:] * n[:-1]) > 1e-9
    cos = np.where(ok, (x[1:] * x[:-1]).sum(1) / np.where(ok, n[1:] * n[:-1], 1.0), 1.0)
    return float(cos.mean())


def min_runs(alpha: float) -> int:
    """Baseline runs needed for a false-alarm guarantee of ``alpha`` (conformal: n + 1 >= 1/alpha)."""
    return max(1, math.ceil(1.0 / alpha) - 1)


def calibrate(baseline: Sequence, alpha: float = 0.05, base: Thresholds = Thresholds(),
              no_flip: Sequence = (), choice: "NoFlipChoice | None" = None) -> Thresholds:
    """``baseline``: traces of runs without a fault (successes and ordinary failures). Refuses
    fewer than ``min_runs(alpha)`` runs (no guarantee is possible). Never switches a predicate
    off: when healthy runs already exceed ``unnorm_abs`` on almost every step, the absolute
    threshold is raised above the healthy range instead of pushing the fraction past 1. The
    too-small side sits at half the k-th smallest healthy score (a 2x shrink is caught).
    ``no_flip``: traces of no_flip runs of the same (calibration) seeds; with them, the online
    no_flip check keeps the signal or pair of signals that flags most of them (``choose_no_flip_signals``;
    pass its result as ``choice`` when already made)."""
    from vla_eval.errors import UsageError

    n = len(baseline)
    if n < min_runs(alpha):
        raise UsageError(f"calibration at alpha={alpha} needs at least {min_runs(alpha)} successful baseline runs, "
                         f"got {n}: run more baseline seeds, or ask for a larger alpha")
    k = max(1, math.floor(alpha * (n + 1)))  # conformal rank from the alarming end
    lows = np.sort([prompt_score(t, base.window) for t in baseline])
    prompt_thr = float(lows[k - 1]) * (1 - 1e-9)  # alarm strictly below the k-th lowest
    unnorm_abs = base.unnorm_abs
    highs = np.sort([unnorm_score(t, unnorm_abs, base.min_steps) for t in baseline])[::-1]
    if highs[k - 1] >= 0.999:  # healthy runs move at this scale all the time: lift the scale
        xyz = np.concatenate([np.abs(_actions(t)[:, :3]).max(axis=1) for t in baseline])
        unnorm_abs = float(np.quantile(xyz, 0.99)) * 1.05
        highs = np.sort([unnorm_score(t, unnorm_abs, base.min_steps) for t in baseline])[::-1]
    unnorm_frac = float(highs[k - 1]) + 1e-9  # alarm strictly above the k-th highest
    if unnorm_frac >= 1.0:
        raise UsageError("cannot calibrate bad_unnorm on these runs: healthy actions are at their maximum on "
                         "every step, so no scale threshold separates them")
    smalls = np.sort([small_score(t, base.min_steps) for t in baseline])
    unnorm_small = min(0.5 * float(smalls[k - 1]), 1e6) if base.unnorm_small > 0 else 0.0
    choice = choice or choose_no_flip_signals(baseline, no_flip, alpha, base)
    return replace(base, prompt_norm=max(prompt_thr, 0.0), unnorm_abs=unnorm_abs, unnorm_frac=max(unnorm_frac, 1e-6),
                   unnorm_small=unnorm_small, conf_min=choice.conf_min, cos_min=choice.cos_min)


def _lowest(scores: Sequence[float], k: int, off: float) -> float:
    """Alarm strictly below the k-th lowest healthy score; ``off`` (the switched-off value) when
    a run has no score (token_prob not logged, or a run shorter than the window)."""
    scores = np.sort(np.asarray(scores, dtype=float))
    if np.isnan(scores).any() or not np.isfinite(scores[k - 1]):
        return off
    return float(scores[k - 1] - 1e-9 * max(1.0, abs(scores[k - 1])))


def no_flip_flagged(trace, conf_min: float, cos_min: float, base: Thresholds) -> bool:
    """Would the online no_flip check with these two thresholds fire on this run? (The streaming
    monitor itself is replayed, so this can never disagree with it.)"""
    verdicts, _ = evaluate(trace, replace(base, conf_min=conf_min, cos_min=cos_min))
    return any(v.predicate == "no_flip" and v.step is not None for v in verdicts)


@dataclass(frozen=True)
class NoFlipChoice:
    conf_min: float  # 0: token confidence off
    cos_min: float  # -1: direction consistency off
    caught: dict  # candidate -> no_flip runs of the calibration seeds it flags
    note: str  # what was chosen and why, for the user


def choose_no_flip_signals(baseline: Sequence, no_flip: Sequence, alpha: float,
                           base: Thresholds = Thresholds()) -> NoFlipChoice:
    """Thresholds of the online no_flip check. Candidates: token confidence alone and direction
    consistency alone (each at the full ``alpha``), or both (alpha/2 each, Bonferroni) - the
    pair only when there are enough runs for alpha/2 (``min_runs``): with fewer, each of its
    thresholds would sit at the most extreme healthy score and the pair could alarm on up to
    2/(n+1) of healthy runs, above alpha. With no_flip runs of the calibration seeds (never
    held-out ones) the candidate that flags most of them wins; ties go to a single signal."""
    n = len(baseline)
    k, k2 = max(1, math.floor(alpha * (n + 1))), max(1, math.floor(alpha / 2 * (n + 1)))
    conf = [confidence_score(t, base.conf_window) for t in baseline]
    conf = [np.nan if c is None else c for c in conf]
    cons = [consistency_score(t, base.cos_window) for t in baseline]
    conf_at = lambda r: max(_lowest(conf, r, 0.0), 0.0)  # noqa: E731
    cos_at = lambda r: float(np.clip(_lowest(cons, r, -1.0), -1.0, 1.0))  # noqa: E731
    candidates = {"token confidence": (conf_at(k), -1.0), "direction consistency": (0.0, cos_at(k))}
    pair_ok = n >= min_runs(alpha / 2)
    if pair_ok:
        candidates["both"] = (conf_at(k2), cos_at(k2))
    short = "" if pair_ok else (f"; the pair needs {min_runs(alpha / 2)} baseline runs at alpha {alpha} "
                                f"(alpha/2 each), got {n}")
    if not no_flip:
        name = "both" if pair_ok else "direction consistency"
        conf, cos = candidates[name]
        return NoFlipChoice(conf, cos, {}, f"{name} (no no_flip runs of the calibration seeds to choose on{short})")
    caught = {name: sum(no_flip_flagged(t, c, d, base) for t in no_flip) for name, (c, d) in candidates.items()}
    name = max(caught, key=caught.get)  # the first best: singles come before the pair
    conf, cos = candidates[name]
    counts = ", ".join(f"{k_} {v}/{len(no_flip)}" for k_, v in caught.items())
    return NoFlipChoice(conf, cos, caught, f"{name} (no_flip runs of the calibration seeds flagged: {counts}{short})")


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
