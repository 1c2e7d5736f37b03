"""Score the predicates on tagged runs: per episode the predicates it matched, a confusion
matrix (run tag x predicate), and per predicate its true-positive rate on its own fault, its
false-alarm rate on the baseline and on the other faults, and its median detection latency.
Shared by ``vla-eval monitor`` and the HTML report (numpy only, like the rest of monitors)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_eval.faults import FAULTS, RUN_TAGS
from vla_eval.monitors.predicates import PREDICATES, Thresholds, Verdict
from vla_eval.monitors.stream import classify, evaluate

COLUMNS = PREDICATES + ("none",)


def expected_predicate(tag: str) -> str | None:
    """The predicate the fault table says catches this run tag's fault (None: not the monitor's)."""
    fault = FAULTS.get(tag)
    layers = fault.caught_by if fault else ()
    return next((layer.split(":", 1)[1] for layer in layers if layer.startswith("monitor:")), None)


# The run tags the monitor is judged on: the baseline and every fault the table says a predicate catches.
FAULT_TAGS = ("baseline",) + tuple(t for t in FAULTS if expected_predicate(t))


@dataclass(frozen=True)
class Scored:
    tag: str
    seed: int
    task_id: int
    outcome: str
    got: frozenset
    verdicts: tuple[Verdict, ...]

    @property
    def matches(self) -> bool:
        """A fault's run matches exactly its own predicate; a baseline run matches none."""
        want = expected_predicate(self.tag)
        return self.got == (frozenset({want}) if want else frozenset())


def latency(v: Verdict) -> int | None:
    """Steps the monitor needed to raise an alert: one at step index t (0-based) came after t + 1
    steps; None for an end-of-episode verdict. The one definition every table uses."""
    return v.step + 1 if v.online else None


def first_alert_latency(trace, th: Thresholds, predicate: str) -> int | None:
    """The latency of ``predicate``'s alert on a replayed trace (None: it never fired online)."""
    return next((latency(v) for v in evaluate(trace, th)[0] if v.predicate == predicate and v.online), None)


def score(episodes, th: Thresholds) -> list[Scored]:
    """``episodes``: (EpisodeRecord, its step records) pairs."""
    out = []
    for ep, steps in episodes:
        verdicts, _ = evaluate(steps, th)
        out.append(Scored(ep.run_tag, ep.seed, ep.task_id, ep.outcome, frozenset(classify(verdicts)), tuple(verdicts)))
    return out


def confusion(rows: list[Scored]) -> dict[str, dict[str, int]]:
    """Run tag x predicate counts: the baseline, then the faults in the fault table's order."""
    table = {t: {c: 0 for c in COLUMNS} for t in RUN_TAGS}
    for r in rows:
        counts = table.setdefault(r.tag, {c: 0 for c in COLUMNS})  # a combined tag (a+b) after the table's
        for g in r.got or {"none"}:
            counts[g] += 1
    return {t: c for t, c in table.items() if sum(c.values())}


def predicate_table(rows: list[Scored]) -> list[dict]:
    out = []
    for pred in PREDICATES:
        own = [r for r in rows if expected_predicate(r.tag) == pred]  # the faults the table gives it
        base = [r for r in rows if r.tag == "baseline"]
        other = [r for r in rows if expected_predicate(r.tag) not in (None, pred)]
        steps = sorted(latency(v) for r in own for v in r.verdicts if v.predicate == pred and v.online)
        rate = lambda xs: (sum(pred in r.got for r in xs) / len(xs)) if xs else float("nan")  # noqa: E731
        out.append({"predicate": pred, "tpr": rate(own), "n_own": len(own), "fa_baseline": rate(base),
                    "n_baseline": len(base), "fa_other": rate(other), "n_other": len(other),
                    "latency": float(np.median(steps)) if steps else None,
                    "exact": sum(r.matches for r in own) / len(own) if own else float("nan")})
    return out


def healthy_false_alarms(rows: list[Scored]) -> dict[str, tuple[int, int]]:
    """Baseline runs on which any predicate raised an online alert (the union the calibration
    budgets), over successful and failed baseline runs apart: outcome -> (alarmed, runs). The
    end-of-episode no_flip verdict is not an alarm: it names every failure that no online check
    explains (see ``unexplained_failures``)."""
    out = {}
    for outcome in ("success", "failure"):
        runs = [r for r in rows if r.tag == "baseline" and r.outcome == outcome]
        out[outcome] = (sum(any(v.online for v in r.verdicts) for r in runs), len(runs))
    return out


def unexplained_failures(rows: list[Scored]) -> tuple[int, int]:
    """(failed baseline runs whose only verdicts came at episode end, failed baseline runs)."""
    failed = [r for r in rows if r.tag == "baseline" and r.outcome == "failure"]
    return sum(bool(r.verdicts) and not any(v.online for v in r.verdicts) for r in failed), len(failed)
