"""``RuntimeMonitor``: the predicates in a live control loop, and ``evaluate`` for saved
traces through the very same code path (replayed verdicts equal live ones step for step).

    from vla_eval.monitors import RuntimeMonitor
    monitor = RuntimeMonitor()
    while running:
        action = policy(obs)
        for alert in monitor.update({"action": action, "reward": r, "done": done}):
            robot.hold(); log.warning(alert)        # your reaction
        obs, r, done = robot.step(action)
    monitor.finish()                                # end-of-episode predicates (no_flip)
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

from vla_eval.monitors.forecast import SignalState
from vla_eval.monitors.predicates import (
    ERROR, PREDICATE_TABLE, PREDICATES, STREAMING, WARN, StreamState, Thresholds, Verdict, _finite, as_done,
    finite_action,
)

FORECAST = "failure_forecast"  # the forecaster's verdict: a warning, never one of the fault predicates


def _get(step, key, default=None):
    try:
        if type(step) is dict:  # the common case, without the Mapping ABC check (microseconds per step)
            return step.get(key, default)
        if isinstance(step, Mapping):
            return step.get(key, default)
        return getattr(step, key, default)
    except Exception:  # noqa: BLE001 - a hostile object's attribute access must not reach the loop
        return default


def _token_list(value) -> list[float] | None:
    """A per-token statistic from a step, or None if it is not a short list of finite numbers."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        items = value.tolist() if hasattr(value, "tolist") else list(value)
        out = [float(x) for x in items[:64]]
    except (TypeError, ValueError, AttributeError):
        return None
    return out if out and all(math.isfinite(x) for x in out) else None


class RuntimeMonitor:
    """The predicates, and with ``forecaster`` (``Forecaster.load(path)``) a ``failure_forecast``
    WARN at the first step whose forecast score crosses its fitted band."""

    def __init__(self, thresholds: Thresholds | None = None, forecaster=None):
        if thresholds is not None and not isinstance(thresholds, Thresholds):  # a path is a common slip
            hint = f"; load a file with RuntimeMonitor(Thresholds.load({thresholds!r}))" if isinstance(
                thresholds, (str, bytes)) or hasattr(thresholds, "__fspath__") else ""
            raise TypeError(f"RuntimeMonitor takes a Thresholds or None, got {type(thresholds).__name__}{hint}")
        self.th = thresholds or Thresholds()
        self.state = StreamState(self.th)
        self.verdicts: list[Verdict] = []
        self._fired: set[str] = set()
        self._step = 0
        self.forecaster = forecaster
        self._signals = None
        self._features = None
        if forecaster is not None:
            self._tokens = "uncertainty" in forecaster.families
            self._signals = SignalState(uncertainty=self._tokens)
            self._features = forecaster.feature_state()
        self.forecast_score: float | None = None  # the latest step's score

    def _fire(self, v: Verdict | None) -> list[str]:
        if v is None or v.predicate in self._fired:
            return []
        self._fired.add(v.predicate)
        self.verdicts.append(v)
        return [v.predicate]

    def update(self, step, features=None) -> list[str]:
        """One control step: anything with ``action`` (7 floats) and optionally ``reward``,
        ``done`` (a StepRecord or a dict). Returns the names of predicates that fired now.
        ``features``: the model's (2, d) hidden-state summary, for a forecaster that reads them.
        Never raises on bad values: those become a ``bad_action`` ERROR."""
        t = self._step
        self._step += 1
        try:
            action, bad = finite_action(_get(step, "action"), self.th, t)
            if bad is not None:
                return self._fire(bad)
            prob = _get(step, "token_prob")
            prob = _finite(prob, None) if prob is not None else None
            self.state.push(action, _finite(_get(step, "reward", 0.0)), as_done(_get(step, "done", False)),
                            prob if prob is None or 0.0 <= prob <= 1.0 else None)
            out = []
            for check in STREAMING:
                out += self._fire(check(self.state, t))
            if self._signals is not None:
                out += self._forecast(action, step, t, features)
            return out
        except Exception as e:  # noqa: BLE001 - last line of defence: a monitor never breaks a control loop
            return self._fire(Verdict("bad_action", ERROR, t, {"error": f"monitor could not read the step: {e!r}"[:200]}))

    def _forecast(self, action, step, t: int, features) -> list[str]:
        if self._tokens:
            signals = self._signals.push(action, _token_list(_get(step, "token_probs")),
                                         _token_list(_get(step, "token_entropy")))
        else:
            signals = self._signals.push(action)
        feature_inputs = self._features.push(features) if self._features is not None else None
        score = self.forecaster.score(signals, feature_inputs)
        self.forecast_score = score
        limit = self.forecaster.threshold(t)
        if score > limit:
            return self._fire(Verdict(FORECAST, WARN, t, {"score": round(score, 3), "threshold": round(limit, 3)}))
        return []

    def finish(self, episode=None) -> list[str]:
        """The predicate table's end-of-episode checks, only when no predicate explained the run
        already. no_flip by elimination calls every ordinary failure no_flip, so it is a WARN,
        never an ERROR."""
        if self._fired:
            return []
        return [name for p in PREDICATE_TABLE if p.at_end for name in self._fire(p.at_end(self.state))]

    @property
    def level(self) -> str:
        levels = {v.level for v in self.verdicts}
        return "ERROR" if "ERROR" in levels else "WARN" if "WARN" in levels else "OK"


def replay(trace: Iterable, thresholds: Thresholds | None = None) -> tuple[RuntimeMonitor, list[list[str]]]:
    """Offline: a monitor fed a whole trace (step records or dicts), then ``finish``ed, and per
    step the alerts a live monitor would have raised. Its ``state`` holds every statistic's score
    (what calibration reads)."""
    m = RuntimeMonitor(thresholds)
    per_step = [m.update(s) for s in trace]
    m.finish()
    return m, per_step


def evaluate(trace: Iterable, thresholds: Thresholds | None = None) -> tuple[list[Verdict], list[list[str]]]:
    """Offline: the verdicts of a replayed trace and, per step, the alerts raised at that step."""
    m, per_step = replay(trace, thresholds)
    return m.verdicts, per_step


def classify(verdicts: Iterable[Verdict]) -> set[str]:
    """The failure predicates a run matched (bad_action is reported, not a class)."""
    return {v.predicate for v in verdicts if v.predicate in PREDICATES}
