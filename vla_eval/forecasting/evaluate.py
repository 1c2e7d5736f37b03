"""Judging forecasters on held-out episodes: ROC-AUC, AUPRC and balanced accuracy at fixed
fractions of the step limit, false alarms on successes, warning lead times; the two protocols
(unseen tasks: leave one task out; seen tasks: calibration seeds vs judged seeds, stratified by
task) and the task-only score they are measured against.

At time t an episode's score is its score at step min(t, its last step): an episode that already
succeeded keeps its final score (what a monitor has at that time); no signal reads the time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_eval.forecasting.fit import Episode, FitConfig, fit
from vla_eval.monitors.forecast import Forecaster
from vla_eval.reports.stats import auroc, average_precision

FRACTIONS = (0.10, 0.25, 0.50)


@dataclass(frozen=True)
class Judged:
    """One held-out episode's forecast: its score at each fraction and its first alarm."""

    episode: Episode
    at: tuple[float, ...]  # score at each of FRACTIONS
    alarm: int | None


def judge(f: Forecaster, episodes: Sequence[Episode], max_steps: int) -> list[Judged]:
    out = []
    for e in episodes:
        s = f.scores(e.series, e.features)
        at = tuple(float(s[min(int(fr * max_steps), len(s) - 1)]) for fr in FRACTIONS)
        out.append(Judged(e, at, f.first_alarm(s)))
    return out


def task_only(calib: Sequence[Episode], judged: Sequence[Episode]) -> list[Judged]:
    """The score that knows only the task: its failure rate on the calibration episodes. A task not
    among them gets one constant (not the other tasks' pooled rate, which would differ between
    leave-one-out folds and rank unseen tasks by what was left out)."""
    rate = {t: float(np.mean([e.failed for e in calib if e.task_id == t])) for t in {e.task_id for e in calib}}
    return [Judged(e, (rate.get(e.task_id, 0.5),) * len(FRACTIONS), None) for e in judged]


def stratified_auroc(judged: Sequence[Judged], i: int) -> float:
    """ROC-AUC counted only over (failure, success) pairs of the same task: how well the score ranks
    episodes within a task, whatever it knows about tasks."""
    num = den = 0.0
    for task in {j.episode.task_id for j in judged}:
        xs = [j for j in judged if j.episode.task_id == task]
        pos = [j.at[i] for j in xs if j.episode.failed]
        neg = [j.at[i] for j in xs if not j.episode.failed]
        if pos and neg:
            a = auroc(pos + neg, [1] * len(pos) + [0] * len(neg))
            num += a * len(pos) * len(neg)
            den += len(pos) * len(neg)
    return num / den if den else float("nan")


@dataclass(frozen=True)
class Metrics:
    n: int
    failures: int
    auroc: tuple[float, ...]  # at each fraction
    auprc: tuple[float, ...]
    within_task: tuple[float, ...]  # stratified AUROC
    balanced_acc: tuple[float, ...]  # of "an alarm by then"
    false_alarms: float  # share of successes that ever alarmed
    median_lead: float | None  # steps from the first alarm to the step limit, over failures that alarmed
    median_lead_mode: float | None  # steps from the first alarm to the failure mode's step (negative: after it)


def metrics(judged: Sequence[Judged], max_steps: int) -> Metrics:
    y = [j.episode.failed for j in judged]
    fails = [j for j in judged if j.episode.failed]
    oks = [j for j in judged if not j.episode.failed]

    def bal(fr: float) -> float:
        t = int(fr * max_steps)
        tpr = np.mean([j.alarm is not None and j.alarm <= t for j in fails]) if fails else float("nan")
        tnr = np.mean([not (j.alarm is not None and j.alarm <= t) for j in oks]) if oks else float("nan")
        return float((tpr + tnr) / 2)

    leads = [max_steps - j.alarm for j in fails if j.alarm is not None]
    leads_mode = [j.episode.failure_step - j.alarm for j in fails if j.alarm is not None and j.episode.failure_step is not None]
    any_alarm = [j.alarm is not None for j in oks]
    return Metrics(
        len(judged), len(fails),
        tuple(auroc([j.at[i] for j in judged], y) for i in range(len(FRACTIONS))),
        tuple(average_precision([j.at[i] for j in judged], y) for i in range(len(FRACTIONS))),
        tuple(stratified_auroc(judged, i) for i in range(len(FRACTIONS))),
        tuple(bal(fr) for fr in FRACTIONS),
        float(np.mean(any_alarm)) if oks else float("nan"),
        float(np.median(leads)) if leads else None, float(np.median(leads_mode)) if leads_mode else None)


def leave_one_task_out(episodes: Sequence[Episode], cfg: FitConfig) -> tuple[list[Judged], list[Judged]]:
    """Fit on every task but one, judge that one, for each task in turn: (forecaster, task-only)."""
    out, base = [], []
    for task in sorted({e.task_id for e in episodes}):
        calib = [e for e in episodes if e.task_id != task]
        held = [e for e in episodes if e.task_id == task]
        out += judge(fit(calib, cfg), held, cfg.max_steps)
        base += task_only(calib, held)
    return out, base


def seen_tasks(calib: Sequence[Episode], held: Sequence[Episode], cfg: FitConfig) -> tuple[list[Judged], list[Judged]]:
    return judge(fit(calib, cfg), held, cfg.max_steps), task_only(calib, held)


def auroc_over_time(f: Forecaster, episodes: Sequence[Episode], max_steps: int, every: int = 10) -> list[tuple[int, float]]:
    """(step, ROC-AUC of the scores at that step) every ``every`` steps: the curve of the report."""
    scores = [f.scores(e.series, e.features) for e in episodes]
    y = [e.failed for e in episodes]
    return [(t, auroc([s[min(t, len(s) - 1)] for s in scores], y)) for t in range(0, max_steps, every)]


def forecast_plot(f: Forecaster, episodes: Sequence[Episode], max_steps: int) -> bytes:
    """Two panels: ROC-AUC against the step, and every episode's score trace with the alarm band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vla_eval.reports.plots import png_bytes

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=100)
    curve = auroc_over_time(f, episodes, max_steps)
    a.plot([t for t, _ in curve], [v for _, v in curve], marker=".")
    a.axhline(0.5, color="#888", lw=0.8, ls=":")
    a.set_xlabel("policy step")
    a.set_ylabel("ROC-AUC")
    a.set_ylim(0, 1)
    a.set_title(f"ROC-AUC against time ({len(episodes)} episodes)")
    for e in episodes:
        s = f.scores(e.series, e.features)
        b.plot(s, lw=0.7, alpha=0.6, color="#d1495b" if e.failed else "#2a9d4b")
    b.plot([f.threshold(t) for t in range(max_steps)], color="k", lw=1.2, ls="--", label="alarm band")
    b.set_xlabel("policy step")
    b.set_ylabel("score")
    b.set_title("score traces (red: failed, green: succeeded)")
    b.legend(frameon=False, fontsize=8)
    for ax in (a, b):
        ax.spines[["top", "right"]].set_visible(False)
    return png_bytes(fig)
