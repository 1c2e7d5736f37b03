"""The monitor inside someone's control loop: it never raises, whatever it is fed, and its
thresholds are validated where they are made or loaded."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_eval.errors import UsageError
from vla_eval.monitors import RuntimeMonitor, Thresholds


class Hostile:
    """An object whose every attribute access raises."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"no {name} for you")


class BadFloat:
    def __float__(self):
        raise ZeroDivisionError("float() exploded")


numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-10**500, max_value=10**500),
                    st.just(BadFloat()), st.text(max_size=3), st.none(), st.booleans())
actions = st.one_of(
    st.lists(numbers, min_size=0, max_size=10),
    st.text(max_size=10), st.binary(max_size=10), numbers,
    st.dictionaries(st.text(max_size=2), numbers, max_size=3),
    st.builds(lambda xs: np.array(xs, dtype=object), st.lists(numbers, max_size=8)),
    st.builds(lambda xs: np.array(xs), st.lists(st.floats(), min_size=7, max_size=7)),
    st.builds(lambda: np.zeros((2, 7))),
)
steps = st.one_of(
    st.fixed_dictionaries({}, optional={"action": actions, "reward": numbers,
                                        "done": st.one_of(numbers, st.just(np.array([True, False])), st.text(max_size=5))}),
    st.just(Hostile()), st.none(), numbers, st.lists(numbers, max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, max_size=30))
def test_update_and_finish_never_raise(trace):
    m = RuntimeMonitor(Thresholds(window=2, min_steps=1))
    for step in trace:
        fired = m.update(step)
        assert isinstance(fired, list) and all(isinstance(x, str) for x in fired)
    m.finish()
    assert m.level in ("OK", "WARN", "ERROR")


@pytest.mark.parametrize("bad", ["1234567", b"1234567", 10**400, [1, 2, 3], [float("nan")] * 7, Hostile(),
                                 {"a": 1}, np.zeros((2, 7)), [10**400] * 7, [BadFloat()] * 7])
def test_hostile_actions_become_one_error_verdict(bad):
    m = RuntimeMonitor()
    assert m.update({"action": bad}) == ["bad_action"] and m.level == "ERROR"


def test_done_must_be_a_real_boolean():
    m = RuntimeMonitor()
    m.update({"action": [0.5] * 6 + [1.0], "done": "False"})
    m.update({"action": [0.5] * 6 + [1.0], "done": np.array([True, True])})
    assert not m.state.done
    m.update({"action": [0.5] * 6 + [1.0], "done": np.bool_(True)})
    assert m.state.done


@pytest.mark.parametrize("field,value", [("window", 0), ("window", -3), ("window", 2.5), ("window", True),
                                         ("unnorm_frac", 0.0), ("unnorm_frac", 1.5), ("prompt_norm", math.nan),
                                         ("action_dim", 6), ("min_steps", "8"), ("unnorm_abs", -1.0)])
def test_bad_thresholds_are_refused_with_their_name(field, value):
    with pytest.raises(UsageError, match=f"threshold {field}="):
        Thresholds(**{field: value})


def test_thresholds_file_errors_name_the_file_and_the_problem(tmp_path):
    p = tmp_path / "th.json"
    with pytest.raises(UsageError, match="thresholds file .*th.json: no such file"):
        Thresholds.load(p)
    p.write_text("{not json")
    with pytest.raises(UsageError, match="is not valid JSON"):
        Thresholds.load(p)
    p.write_text("[1, 2]")
    with pytest.raises(UsageError, match="holds a JSON list, expected an object"):
        Thresholds.load(p)
    p.write_text(json.dumps({"windw": 3}))
    with pytest.raises(UsageError, match="unknown keys windw; valid: window"):
        Thresholds.load(p)
    p.write_text(json.dumps({"window": 0}))
    with pytest.raises(UsageError, match=r"th.json: threshold window=0"):
        Thresholds.load(p)
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="is not UTF-8"):
        Thresholds.load(p)
    p.write_text(json.dumps({"window": 4, "unnorm_abs": 0.5}))
    assert Thresholds.load(p) == Thresholds(window=4, unnorm_abs=0.5)


def test_calibration_refuses_too_few_runs_and_never_switches_a_predicate_off():
    from vla_eval.monitors.calibrate import calibrate, false_alarm_rate, min_runs

    rng = np.random.default_rng(0)

    def saturated_run():  # LIBERO-scale healthy actions: |a[:3]| near 1 on every step
        a = np.concatenate([rng.uniform(0.6, 1.0, (60, 3)) * rng.choice([-1, 1], (60, 3)), np.zeros((60, 3)),
                            np.where(np.arange(60)[:, None] < 30, -1.0, 1.0)], axis=1)
        return [{"action": row} for row in a]

    runs = [saturated_run() for _ in range(60)]
    with pytest.raises(UsageError, match="needs at least 19 successful baseline runs, got 3"):
        calibrate(runs[:3], alpha=0.05)
    assert min_runs(0.1) == 9
    th = calibrate(runs[:30], alpha=0.1).thresholds
    assert th.unnorm_frac < 1.0 and th.unnorm_abs > 0.9  # the scale was lifted, the check stays on
    assert false_alarm_rate(runs[30:], th) <= 0.3  # all predicates together at alpha 0.1, 30 held-out runs
    blown_up = [{"action": list(np.array(s["action"]) * 10)} for s in runs[20]]
    m = RuntimeMonitor(th)
    assert any("bad_unnorm" in m.update(s) for s in blown_up)  # still detects a 10x scale error
