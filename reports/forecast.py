"""The report's forecast section: how early the run's failure forecaster saw each failure coming.

A sweep run with ``--forecaster F.json`` keeps a copy of it in the run folder
(``forecaster.json``), so the report can replay it on every episode of the main run tag: the
ROC-AUC of its score against the step, each episode's score trace against the alarm band, and
each episode's first warning (also in the episode table). Episodes of seeds the forecaster was
fitted on are named: a score judged on its own calibration seeds flatters it.
"""
from __future__ import annotations

import base64
from pathlib import Path

from vla_eval.rundir import FORECASTER_COPY


def forecast_section(run_dir: Path, tag: str, log, cfg, max_steps: int) -> dict | None:
    """None when the run had no forecaster; else the numbers, the plot and {(task, seed): first warning}.
    ``log``, ``cfg``: the tag's ``RunLog`` and the run's config, as the report has read them."""
    path = Path(run_dir) / FORECASTER_COPY
    if not path.is_file():
        return None
    from vla_eval.errors import UsageError
    from vla_eval.forecasting.evaluate import FRACTIONS, forecast_plot, judge, metrics
    from vla_eval.forecasting.fit import check_signals, episodes_of
    from vla_eval.monitors.forecast import Forecaster

    try:
        f = Forecaster.load(path)
    except UsageError as e:
        return {"note": f"the run's forecaster could not be replayed: {e}", "rows": [], "plot": None, "alarms": {}}
    episodes = episodes_of(Path(run_dir), tag, log, cfg)
    if not episodes:
        return None
    try:
        check_signals(episodes, f.signals, f.feature_width)  # e.g. a feature forecaster, features not recorded
    except UsageError as e:
        return {"note": f"the run's forecaster could not be replayed: {e}", "rows": [], "plot": None, "alarms": {}}
    judged = judge(f, episodes, max_steps)
    m = metrics(judged, max_steps)
    fitted = set(f.identity.get("seeds", []))
    overlap = sorted({e.seed for e in episodes} & fitted)
    pct = lambda x: "–" if x != x else f"{100 * x:.0f}%"  # noqa: E731
    num = lambda x: "–" if x != x else f"{x:.2f}"  # noqa: E731
    rows = [{"at": f"{int(fr * 100)}% ({int(fr * max_steps)} steps)", "auroc": num(m.auroc[i]),
             "auprc": num(m.auprc[i]), "within": num(m.within_task[i]), "balanced": num(m.balanced_acc[i])}
            for i, fr in enumerate(FRACTIONS)]
    note = (f"seeds {', '.join(map(str, overlap))} of this run are among the forecaster's calibration seeds: "
            f"judged on them, its numbers flatter it" if overlap else "")
    return {
        "model": f"{f.model} over {', '.join(f.signals)}" + (
            f" + hidden-state features ({f.feature_width} wide)" if f.features else ""), "fitted_on": ", ".join(f.identity.get("fitted_on", [])),
        "n": m.n, "failures": m.failures, "rows": rows, "false_alarms": pct(m.false_alarms),
        "lead": "–" if m.median_lead is None else f"{m.median_lead:.0f}", "note": note,
        "plot": base64.b64encode(forecast_plot(f, episodes, max_steps)).decode() if m.failures and m.n > m.failures
        else None,
        "alarms": {(j.episode.task_id, j.episode.seed): j.alarm for j in judged},
    }
