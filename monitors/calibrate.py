"""Fit monitor thresholds on healthy runs so that all predicates together alarm on at most a
chosen fraction ``alpha`` of healthy runs (split conformal, over the union of the checks).

Every statistic comes from replaying the streaming monitor itself (``stream.replay``): the
score a threshold is set at is exactly the number its check compares, so there is no second
implementation to drift and no tolerance nudge at the threshold.

The union rule: each check's threshold sits at the r-th most extreme healthy score of its
statistic (the r-th itself does not alarm), with one rank r for all; r is the largest rank at
which at most ``k = floor(alpha (n + 1))`` of the n calibration runs reach any threshold. For a
single check that is the usual split-conformal rule; for several it keeps their union, not each
one, at alpha (where their extremes fall on different runs that needs more runs: up to
``m / alpha - 1`` for m checks). Held-out healthy runs then give the measured rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np

from vla_eval.errors import UsageError
from vla_eval.monitors.predicates import StreamState, Thresholds
from vla_eval.monitors.stream import evaluate, replay


@dataclass(frozen=True)
class Check:
    """One thresholded statistic: its score on a run, which side alarms, the field it sets."""
    name: str
    field: str
    score: Callable[[StreamState], float | None]  # None: not measurable on this run (the check stays off)
    low: bool  # alarms below the threshold (True) or at/above it (False)
    margin: float = 1.0  # threshold = margin x the rank-r score (the too-small side keeps a 2x margin)


CALM = Check("calm window (bad_prompt)", "prompt_norm", lambda s: s.min_window_mean, low=True)
LARGE = Check("large translations (bad_unnorm)", "unnorm_frac", lambda s: s.max_big_frac, low=False)
SMALL = Check("small translations (bad_unnorm)", "unnorm_small", lambda s: s.early_max_xyz, low=True, margin=0.5)
CONFIDENCE = Check("token confidence (no_flip)", "conf_min", lambda s: s.conf_mean, low=True)
CONSISTENCY = Check("direction consistency (no_flip)", "cos_min",
                    lambda s: math.inf if s.cos_mean is None else s.cos_mean, low=True)
# Half the earliest healthy first-close step: a healthy run's grasp comes once the arm is there.
EARLY_GRASP = Check("early grasp (no_flip)", "grasp_min",
                    lambda s: math.inf if s.first_close is None else s.first_close, low=True, margin=0.5)
NO_FLIP_CANDIDATES = {"direction consistency": (CONSISTENCY,), "token confidence": (CONFIDENCE,),
                      "early grasp": (EARLY_GRASP,),
                      "both": (CONFIDENCE, CONSISTENCY)}  # singles first: a tie keeps one signal
OFF = {"conf_min": 0.0, "cos_min": -1.0, "grasp_min": 0}  # the values that switch the online no_flip checks off


def min_runs(alpha: float) -> int:
    """Healthy runs needed for one check at ``alpha`` (conformal: n + 1 >= 1/alpha)."""
    return max(1, math.ceil(1.0 / alpha) - 1)


def conformal_k(alpha: float, n: int) -> int:
    return math.floor(alpha * (n + 1) + 1e-9)


def states(traces: Sequence, th: Thresholds) -> list[StreamState]:
    """Each run's final streaming state: the monitor replayed over it."""
    return [replay(t, th)[0].state for t in traces]


def scores(runs: Sequence[StreamState], check: Check) -> np.ndarray:
    """The check's statistic on each run (NaN where not measurable)."""
    return np.array([np.nan if (v := check.score(s)) is None else v for s in runs], dtype=float)


def _threshold(sorted_extreme_first: np.ndarray, r: int, check: Check) -> float:
    v = float(sorted_extreme_first[r - 1]) * check.margin
    if not check.low:  # alarm at or above: the r-th itself must not alarm
        v = float(np.nextafter(v, math.inf))
    return v


def _occupied(x: np.ndarray, r: int, t: float, check: Check) -> np.ndarray:
    """The calibration runs a check's threshold at rank r accounts for: its r most extreme
    (ties broken by order, as a single check's conformal rank counts them), or, for a check with
    a margin, the runs at or beyond its actual threshold."""
    if check.margin != 1.0:
        return x <= t if check.low else x >= t
    mask = np.zeros(len(x), dtype=bool)
    mask[np.argsort(x if check.low else -x, kind="stable")[:r]] = True
    return mask


def union_thresholds(table: dict[Check, np.ndarray], alpha: float) -> tuple[dict[Check, float], int, int]:
    """Thresholds at one rank r for every check: (check -> threshold, r, runs reaching any).
    Refuses when even r = 1 puts more than k runs at a threshold."""
    n = len(next(iter(table.values())))
    k = conformal_k(alpha, n)
    ordered = {c: np.sort(x)[:: 1 if c.low else -1] for c, x in table.items()}
    best = None
    for r in range(1, n + 1):
        ths = {c: _threshold(ordered[c], r, c) for c in table}
        reach = np.zeros(n, dtype=bool)
        for c, x in table.items():
            reach |= _occupied(x, r, ths[c], c)
        if reach.sum() > k:
            break
        best = (ths, r, int(reach.sum()))
    if best is None:
        m = len(table)
        raise UsageError(f"calibration at alpha={alpha} over {m} checks needs more healthy runs: with {n}, the most "
                         f"extreme scores of the checks fall on more than {k} run(s); up to {math.ceil(m / alpha) - 1} "
                         f"runs may be needed, or ask for a larger alpha")
    return best


@dataclass(frozen=True)
class Calibration:
    thresholds: Thresholds
    rank: int  # r: each threshold sits at the r-th most extreme healthy score
    calibration_alarms: int  # calibration runs that reach some threshold (at most k)
    k: int
    no_flip_caught: dict  # no_flip candidate -> calibration no_flip runs it flags
    note: str  # what was chosen and why, for the user


def calibrate(baseline: Sequence, alpha: float = 0.05, base: Thresholds = Thresholds(),
              no_flip: Sequence = ()) -> Calibration:
    """``baseline``: traces of healthy runs (successes and ordinary failures), the calibration
    seeds only. ``no_flip``: no_flip runs of the same seeds; with them the online no_flip check
    keeps the candidate signal(s) that flag most of them (ties: one signal), else both where
    measurable. Never switches bad_unnorm off: when healthy runs exceed ``unnorm_abs`` on almost
    every step, the absolute scale is lifted above the healthy range instead."""
    n = len(baseline)
    if n < min_runs(alpha):
        raise UsageError(f"calibration at alpha={alpha} needs at least {min_runs(alpha)} successful baseline runs, "
                         f"got {n}: run more baseline seeds, or ask for a larger alpha")
    k = conformal_k(alpha, n)
    runs = states(baseline, base)
    if np.sort(scores(runs, LARGE))[::-1][k - 1] >= 0.999:  # healthy runs move at this scale all the time: lift it
        xyz = np.concatenate([np.abs(np.asarray([_action(s) for s in t])[:, :3]).max(axis=1) for t in baseline])
        base = replace(base, unnorm_abs=float(np.quantile(xyz, 0.99)) * 1.05)
        runs = states(baseline, base)
    table = {c: scores(runs, c) for c in (CALM, LARGE, SMALL) if c is not SMALL or base.unnorm_small > 0}
    measurable = {name: checks for name, checks in NO_FLIP_CANDIDATES.items()
                  if not any(np.isnan(scores(runs, c)).any() for c in checks)}
    results = {}
    for name, checks in measurable.items():
        try:
            results[name] = union_thresholds({**table, **{c: scores(runs, c) for c in checks}}, alpha)
        except UsageError:
            continue  # this candidate needs more runs; another may not
    if not results:
        results[None] = union_thresholds(table, alpha)  # no online no_flip check fits: raises if nothing does
    alerts = {name: _no_flip_alert_steps(no_flip, _apply(base, results[name][0]))
              for name in results if name is not None} if no_flip else {}
    caught = {c: len(steps) for c, steps in alerts.items()}
    if caught:
        earliest = {c: float(np.median(steps)) if steps else math.inf for c, steps in alerts.items()}
        name = max(caught, key=lambda c: (caught[c], -earliest[c]))  # most flagged, then the earliest alert
        why = "no_flip runs of the calibration seeds flagged: " + ", ".join(f"{c} {v}/{len(no_flip)}"
                                                                            for c, v in caught.items())
        if caught[name] == 0:  # a check that flags none of them would only spend false-alarm budget
            results.setdefault(None, union_thresholds(table, alpha))
            name, why = None, why.replace("flagged:", "flagged by no candidate:")
    else:
        name = "both" if "both" in results else next(iter(results))
        why = ("no candidate fits alpha with these runs" if name is None
               else "no no_flip runs of the calibration seeds to choose on")
    ths, r, reach = results[name]
    skipped = [c for c in NO_FLIP_CANDIDATES if c not in results]
    note = (f"online no_flip signal: {name or 'none (elimination at episode end only)'} ({why}"
            + (f"; not possible with {n} runs: {', '.join(skipped)}" if skipped else "") + f"); every check at "
            f"rank {r} of {n}: {reach} calibration run(s) reach a threshold, at most k={k} at alpha {alpha}")
    return Calibration(_apply(base, ths), r, reach, k, caught, note)


def _apply(base: Thresholds, ths: dict[Check, float]) -> Thresholds:
    """Thresholds with the fitted fields; a check whose rank-r score is not finite (too few steps
    on that run) keeps the base value, an online no_flip check is then off."""
    values = {**OFF, **{c.field: t for c, t in ths.items() if math.isfinite(t)}}
    values.setdefault("prompt_norm", base.prompt_norm)
    values.setdefault("unnorm_frac", base.unnorm_frac)
    values["unnorm_small"] = min(values.get("unnorm_small", base.unnorm_small), 1e6)
    values["prompt_norm"] = max(values["prompt_norm"], 0.0)
    values["unnorm_frac"] = max(values["unnorm_frac"], 1e-6)
    if values["unnorm_frac"] > 1.0:
        raise UsageError("cannot calibrate bad_unnorm on these runs: healthy actions are at their maximum on "
                         "every step, so no scale threshold separates them")
    values["conf_min"] = min(max(values["conf_min"], 0.0), 1.0)
    values["cos_min"] = float(np.clip(values["cos_min"], -1.0, 1.0))
    values["grasp_min"] = max(int(math.floor(values["grasp_min"])), 0)  # alarms below it: round down
    return replace(base, **values)


def _action(step):
    return step["action"] if isinstance(step, dict) else step.action


def _no_flip_alert_steps(traces, th: Thresholds) -> list[int]:
    """The step of the online no_flip alert on each run it fires on (the monitor replayed)."""
    return [v.step for t in traces for v in evaluate(t, th)[0] if v.predicate == "no_flip" and v.online]


def false_alarm_rate(traces: Sequence, th: Thresholds) -> float:
    """Fraction of (held-out healthy) runs on which any streaming predicate fired."""
    fired = [any(v.online for v in evaluate(t, th)[0]) for t in traces]
    return float(np.mean(fired)) if fired else float("nan")
