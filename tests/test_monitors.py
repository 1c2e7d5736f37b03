"""Predicates, the streaming monitor and calibration.

Traces built here by hand are SYNTHETIC: they carry the fault signatures measured on real
LIBERO traces (collapsed actions for a rephrased prompt, translations shrunk ~25x with the
gripper still cycling for a wrong unnorm_key, healthy-looking actions without success for a
missing flip). Real traces come from the runner driving LIBERO with the scripted expert (test
marked `libero`) and from the tiny OpenVLA (tests/data/tiny_traces.jsonl)."""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vla_eval.monitors import RuntimeMonitor, Thresholds, classify, evaluate
from vla_eval.monitors.calibrate import calibrate, false_alarm_rate
from vla_eval.monitors.scoring import first_alert_latency

rng = np.random.default_rng(0)


def synthetic(kind: str, n: int = 60, success: bool = False) -> list[dict]:
    """SYNTHETIC trace with the signature of ``kind``."""
    steps, offset = [], rng.uniform(0, 2 * np.pi)
    for t in range(n):
        a = np.zeros(7)
        if kind == "bad_prompt":  # frozen, gripper included
            a[:6] = rng.normal(0, 0.002, 6)
        elif kind == "bad_unnorm":  # bridge_orig's scale: translations ~25x smaller, the rest still moves
            a[:3] = rng.uniform(-0.04, 0.04, 3)
            a[3:6] = rng.normal(0, 0.05, 3)
        else:  # baseline / no_flip: smooth LIBERO-scale motions within [-1, 1]
            phase = t / 10 + offset
            a[:3] = 0.6 * np.array([np.cos(phase), np.sin(phase), 0.4]) + rng.normal(0, 0.05, 3)
            a[3:6] = rng.normal(0, 0.02, 3)
        a[6] = (1.0 if (t // 15) % 2 else -1.0) if kind != "bad_prompt" else -1.0  # gripper cycles
        done = success and t == n - 1
        steps.append({"action": a, "reward": float(done), "done": done})
    return steps


@pytest.mark.parametrize("kind", ["bad_prompt", "bad_unnorm", "no_flip"])
def test_each_synthetic_fault_matches_exactly_its_predicate(kind):
    verdicts, _ = evaluate(synthetic(kind))
    assert classify(verdicts) == {kind}
    v = verdicts[0]
    assert v.level in ("WARN", "ERROR") and v.evidence


def test_successful_synthetic_baseline_raises_nothing():
    verdicts, _ = evaluate(synthetic("baseline", success=True))
    assert verdicts == []


def test_alerts_fire_within_a_few_steps():
    th = Thresholds()
    assert first_alert_latency(synthetic("bad_prompt"), th, "bad_prompt") == th.window
    assert first_alert_latency(synthetic("bad_unnorm"), th, "bad_unnorm") == th.min_steps


def test_replayed_verdicts_equal_live_ones_step_for_step():
    trace = synthetic("bad_prompt") + synthetic("bad_unnorm")
    live = RuntimeMonitor()
    live_alerts = [live.update(s) for s in trace]
    live.finish()
    verdicts, replayed = evaluate(trace)
    assert replayed == live_alerts and verdicts == live.verdicts


@pytest.mark.parametrize("bad", [[np.nan] * 7, [1.0] * 6, [np.inf] + [0.0] * 6, "abc", None])
def test_bad_actions_become_error_alerts_not_exceptions(bad):
    m = RuntimeMonitor()
    assert m.update({"action": bad}) == ["bad_action"]
    assert m.verdicts[0].level == "ERROR" and "error" in m.verdicts[0].evidence
    assert m.update({"action": [0.0] * 7}) == []  # the loop goes on


def test_edges_empty_and_one_step_runs():
    assert evaluate([])[0] == []
    assert evaluate(synthetic("bad_prompt", n=1))[0] == []  # too short to judge


def test_calibration_holds_its_false_alarm_rate_on_held_out_runs(tmp_path):
    baselines = [synthetic("baseline", success=True) for _ in range(80)]
    cal = calibrate(baselines[:40], alpha=0.1)
    th = cal.thresholds
    assert cal.calibration_alarms <= cal.k == 4  # the union of every check, not each one, at alpha
    assert false_alarm_rate(baselines[:40], th) <= 0.1 and false_alarm_rate(baselines[40:], th) <= 0.2
    th.save(tmp_path / "th.json")
    assert Thresholds.load(tmp_path / "th.json") == th


def test_no_flip_signals_are_chosen_on_calibration_fault_runs_only():
    """SYNTHETIC: token confidence overlaps between healthy and no_flip runs, direction
    consistency separates them. With no_flip runs of the calibration seeds the check keeps
    consistency alone; without them it keeps both where the union allows it."""
    def run(conf: float, zigzag: bool) -> list[dict]:
        steps = synthetic("baseline")
        for t, s in enumerate(steps):
            s["token_prob"] = conf
            if zigzag:
                s["action"][:3] *= (-1) ** t
        return steps

    probs = np.random.default_rng(1).uniform(0.7, 0.95, 50)
    healthy = [run(c, False) for c in probs[:40]]
    flipped = [run(c, True) for c in probs[40:]]
    cal = calibrate(healthy, alpha=0.1, no_flip=flipped)
    th = cal.thresholds
    assert th.conf_min == 0.0 and th.cos_min > -1 and "online no_flip signal: direction consistency" in cal.note
    assert cal.no_flip_caught["direction consistency"] == 10 and cal.no_flip_caught["both"] == 10
    assert all("no_flip" in classify(evaluate(t, th)[0]) for t in flipped)
    assert false_alarm_rate(healthy, th) <= 0.1  # in-sample: the union of all checks
    both = calibrate(healthy, alpha=0.1).thresholds
    assert both.conf_min > 0 and both.cos_min > -1
    # 20 runs at alpha 0.1 (k = 2): five checks whose extremes fall on different runs do not fit
    small = calibrate(healthy[:20], alpha=0.1, no_flip=flipped)
    assert small.calibration_alarms <= small.k == 2
    assert "signal: none (elimination at episode end only)" in small.note and "no no_flip runs" not in small.note


def test_early_grasp_is_chosen_when_no_flip_runs_close_the_gripper_at_once():
    """SYNTHETIC, with the signature measured on the tiny policy: healthy runs first close the
    gripper at step 15 or later, no_flip runs at step 0. Calibration keeps the early-grasp check;
    it alarms on every no_flip run at the step the gripper closes and on no healthy run."""
    def run(first_close: int) -> list[dict]:
        steps = synthetic("baseline")
        for t, s in enumerate(steps):
            s["action"][6] = 1.0 if t >= first_close else -1.0
        return steps

    healthy = [run(15 + i % 20) for i in range(40)]
    flipped = [run(0) for _ in range(10)]
    cal = calibrate(healthy, alpha=0.1, no_flip=flipped)
    assert "online no_flip signal: early grasp" in cal.note and cal.thresholds.grasp_min == 7  # half of 15
    for t in flipped:
        v = [v for v in evaluate(t, cal.thresholds)[0] if v.predicate == "no_flip"]
        assert v and v[0].online and v[0].step == 0 and v[0].evidence["first_close_step"] == 0
    assert not any(v.predicate == "no_flip" and v.online for t in healthy for v in evaluate(t, cal.thresholds)[0])
    assert false_alarm_rate(healthy, cal.thresholds) <= 0.1  # in-sample: the union of all checks
    assert not any(v.predicate == "no_flip" for v in evaluate(run(0), Thresholds())[0] if v.online)  # off by default


def test_union_calibration_refuses_when_the_checks_need_more_runs():
    """SYNTHETIC: independent checks put their extremes on different runs; at alpha 0.05 with
    19 runs (k = 1) no common rank keeps the union at one run."""
    from vla_eval.errors import UsageError

    runs = [synthetic("baseline") for _ in range(19)]
    for t, r in enumerate(runs):
        for s in r:
            s["token_prob"] = 0.5 + 0.02 * t
    with pytest.raises(UsageError, match="needs more healthy runs"):
        calibrate(runs, alpha=0.05)


def test_monitor_imports_numpy_only():
    # vla_eval itself (its __init__ holds only the version) loads; nothing heavy, no other part.
    code = ("import sys, vla_eval.monitors; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'scipy', 'pandas') or (m.startswith('vla_eval.') and "
            "not m.startswith(('vla_eval.monitors', 'vla_eval.errors')))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


@pytest.mark.libero
def test_runner_feeds_the_monitor_and_calibration_fits_real_baselines(tmp_path):
    """Real LIBERO traces (scripted expert): the default thresholds raise nothing on these
    healthy LIBERO-scale actions, and calibration on them keeps every predicate on."""
    from vla_eval.policies.scripted import ScriptedExpert
    from vla_eval.records import JsonlWriter, read_jsonl
    from vla_eval.runner import EpisodeShape, make_jobs, run_episodes

    path = tmp_path / "baseline.jsonl"
    with JsonlWriter(path) as w:
        eps = run_episodes(ScriptedExpert(), make_jobs("libero_object", [0], [0, 1, 2, 3]), w, "baseline",
                           EpisodeShape(cameras=False, hard_reset=False), monitor_factory=RuntimeMonitor)
    log = read_jsonl(path)
    assert all(e.success for e in eps)
    assert not any(e.alerts for e in eps) and not any(s.alerts for s in log.steps)
    traces = [log.steps_of(e) for e in log.episodes]
    th = calibrate(traces, alpha=0.4).thresholds  # n = 4, k = 2: rank 1 at most, the most extreme baseline scores
    assert 0 < th.unnorm_small < 1.0 and th.unnorm_frac < 1.0 and th.prompt_norm > 0
    assert false_alarm_rate(traces, th) == 0.0  # in-sample; held-out rates need n >> 1/alpha runs
    faulty = [{"action": np.r_[np.zeros(6), -1.0]} for _ in range(20)]  # SYNTHETIC collapsed actions
    assert first_alert_latency(faulty, th, "bad_prompt") == th.window


def _write_log(path, tag, traces, success):
    """SYNTHETIC run log: step records of synthetic traces under a run tag."""
    from vla_eval.records import EpisodeRecord, JsonlWriter, StepRecord

    with JsonlWriter(path) as w:
        for seed, trace in enumerate(traces):
            att = f"{tag}-{seed}"
            for t, s in enumerate(trace):
                w.write(StepRecord(tag, 0, seed, att, t, tuple(float(x) for x in s["action"]), 100.0,
                                   s["reward"], s["done"], 0.0, 0.0))
            w.write(EpisodeRecord(tag, "libero_object", 0, seed, seed, att, "success" if success else "failure",
                                  len(trace), None, 1.0, 0.0, 0.0))


def test_monitor_cli_confusion_matrix_calibration_and_self_check(tmp_path, cli_run):
    _write_log(tmp_path / "baseline.jsonl", "baseline", [synthetic("baseline", success=True) for _ in range(40)], True)
    for tag in ("bad_prompt", "bad_unnorm", "no_flip"):
        _write_log(tmp_path / f"{tag}.jsonl", tag, [synthetic(tag) for _ in range(2)], False)
    logs = [str(tmp_path / f"{t}.jsonl") for t in ("baseline", "bad_prompt", "bad_unnorm", "no_flip")]
    ok = cli_run("monitor", *logs)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "confusion" in ok.stdout
    cal = cli_run("monitor", *logs, "--calibrate", tmp_path / "th.json", "--alpha", "0.25")
    assert "false-alarm rate (any predicate) on 20 held-out baseline runs" in cal.stdout, cal.stdout + cal.stderr
    assert "every check at rank" in cal.stdout
    assert "baseline runs with an online alert (false alarms): " in cal.stdout and "on failed runs 0/0" in cal.stdout, cal.stdout
    assert "latency" in cal.stdout and (tmp_path / "th.json").exists()
    # A run tagged no_flip whose trace has the bad-prompt signature: the toggle is wrong.
    _write_log(tmp_path / "wrong.jsonl", "no_flip", [synthetic("bad_prompt")], False)
    bad = cli_run("monitor", tmp_path / "wrong.jsonl")
    assert bad.returncode == 1 and "check the toggle" in bad.stderr


def test_an_end_of_episode_verdict_is_a_hypothesis_not_a_false_alarm():
    from vla_eval.monitors.predicates import ERROR, WARN, Verdict
    from vla_eval.monitors.scoring import Scored, healthy_false_alarms, unexplained_failures

    online = Verdict("bad_unnorm", ERROR, 4, {})
    at_end = Verdict("no_flip", WARN, None, {})
    rows = [Scored("baseline", 0, 0, "failure", frozenset({"no_flip"}), (at_end,)),
            Scored("baseline", 1, 0, "failure", frozenset({"bad_unnorm", "no_flip"}), (online, at_end)),
            Scored("baseline", 2, 0, "success", frozenset(), ()),
            Scored("no_flip", 0, 0, "failure", frozenset({"no_flip"}), (at_end,))]
    assert healthy_false_alarms(rows) == {"success": (0, 1), "failure": (1, 2)}
    assert unexplained_failures(rows) == (1, 2)


def test_monitor_judges_runs_with_the_thresholds_shipped_for_their_checkpoint(tmp_path):
    """``--policy openvla --checkpoint <the shipped tiny folder>`` is the tiny policy: the sweep's
    monitor, the report and ``vla-eval monitor`` all take its calibrated thresholds."""
    from conftest import make_run
    from vla_eval.configs import shipped_checkpoint, shipped_thresholds
    from vla_eval.errors import UsageError
    from vla_eval.monitors.cli import _shipped_thresholds_of

    tiny = shipped_checkpoint("tiny", "libero_object")
    calibrated = shipped_thresholds("tiny", "libero_object")
    assert calibrated is not None and shipped_thresholds("openvla", "libero_object", str(tiny)) == calibrated
    assert shipped_thresholds("openvla", "libero_object", str(tmp_path)) is None  # another checkpoint: defaults
    by_path = make_run(tmp_path / "a", {(0, 0): "success"}, policy="openvla", checkpoint=str(tiny))
    other = make_run(tmp_path / "b", {(0, 0): "success"}, policy="zero")
    assert _shipped_thresholds_of([by_path / "baseline.jsonl"]) == calibrated
    assert _shipped_thresholds_of([other / "baseline.jsonl"]) is None
    with pytest.raises(UsageError, match="different shipped thresholds"):
        _shipped_thresholds_of([by_path / "baseline.jsonl", other / "baseline.jsonl"])


def test_the_predicate_table_owns_every_threshold_and_every_monitor_fault_names_a_row():
    """One table: each Thresholds field belongs to one predicate (or is shared), the streaming
    checks are the table's, and every ``monitor:<name>`` in the fault table names a row."""
    from dataclasses import fields

    from vla_eval.faults import FAULTS
    from vla_eval.monitors.predicates import PREDICATE_TABLE, PREDICATES, SHARED_FIELDS, STREAMING, Thresholds

    owned = [f for p in PREDICATE_TABLE for f in p.fields]
    assert len(owned) == len(set(owned))
    assert sorted(owned + list(SHARED_FIELDS)) == sorted(f.name for f in fields(Thresholds))
    assert STREAMING == tuple(c for p in PREDICATE_TABLE for c in p.streaming)
    named = {layer.split(":", 1)[1] for f in FAULTS.values() for layer in f.caught_by if layer.startswith("monitor:")}
    assert named == set(PREDICATES)


_coord = st.sampled_from([-1.0, -0.3, 0.0, 0.0, 0.05, 0.4, 1.0])  # zeros: still steps, whose direction is undefined


@given(st.lists(st.tuples(_coord, _coord, _coord, _coord, st.sampled_from([-1.0, -0.3, 0.0, 0.4, 1.0])),
                min_size=1, max_size=30), st.integers(2, 12))
def test_the_streaming_statistics_are_the_one_episode_definition(rows, cos_window):
    """What the monitor (predicates and forecaster) accumulates step by step is what diagnose and
    the report compute from the finished episode (monitors/episode_stats.py), still steps included."""
    from types import SimpleNamespace

    from vla_eval.monitors.episode_stats import episode_stats
    from vla_eval.monitors.forecast import SIGNAL_NAMES, signal_series

    m = RuntimeMonitor(Thresholds(cos_window=cos_window))
    steps = [SimpleNamespace(action=[x, y, z, r, 0.0, 0.0, g], img_mean=None, token_prob=None, token_probs=None,
                             token_entropy=None)
             for x, y, z, r, g in rows]
    for s in steps:
        m.update({"action": s.action, "reward": 0.0, "done": False})
    whole, early = episode_stats(steps), episode_stats(steps, window=cos_window)
    state = m.state
    assert state.grip_flips == whole.grip_flips and state.first_close == whole.first_close
    assert state.max_xyz == whole.xyz_max and state.norm_sum / state.n == pytest.approx(whole.norm6_mean)
    if len(steps) >= cos_window:
        assert state.cos_mean == pytest.approx(early.direction)
    else:
        assert state.cos_mean is None
    last = dict(zip(SIGNAL_NAMES, signal_series(steps)[-1]))  # the forecaster's running signals
    assert last["flips"] == whole.grip_flips and last["closed_frac"] == pytest.approx(whole.grip_closed)
