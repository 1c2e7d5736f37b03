"""The monitors on real traces of the shipped tiny OpenVLA (tests/data/tiny_traces: tasks 3
and 7, stored init state 0, full episodes of every run tag; held-out for the calibration in
configs/monitors/tiny-libero_object.json, which was fitted on seeds 10-29 only)."""
import subprocess
import sys
from pathlib import Path

import pytest

from vla_eval.configs import shipped_thresholds
from vla_eval.monitors import Thresholds, classify, evaluate
from vla_eval.records import read_jsonl

TRACES = Path(__file__).parent / "data" / "tiny_traces"


def runs(tag: str):
    log = read_jsonl(TRACES / f"{tag}.jsonl")
    assert len(log.episodes) == 2
    return [log.steps_of(e) for e in log.episodes]


@pytest.fixture(scope="module")
def shipped() -> Thresholds:
    path = shipped_thresholds("tiny", "libero_object")
    assert path is not None
    th = Thresholds.load(path)
    assert th.grasp_min > 0 and th.unnorm_small > 0  # calibrated: the online checks are on
    return th


def test_a_wrong_unnorm_key_is_caught_and_only_by_its_predicate(shipped):
    for th in (shipped, Thresholds()):  # calibrated and generic defaults alike
        for trace in runs("bad_unnorm"):
            verdicts, _ = evaluate(trace, th)
            assert classify(verdicts) == {"bad_unnorm"} and verdicts[0].step == th.min_steps - 1
            assert verdicts[0].evidence["side"] == "too small"


def test_an_unflipped_image_is_flagged_online(shipped):
    for trace in runs("no_flip"):
        verdicts, _ = evaluate(trace, shipped)
        assert "no_flip" in classify(verdicts)
        assert min(v.step for v in verdicts if v.predicate == "no_flip") < shipped.grasp_min  # early grasp


def test_a_rephrased_prompt_is_flagged_but_not_told_apart_from_no_flip(shipped):
    """Measured on this policy: a rephrased prompt confuses the model the way an upside-down
    image does (it closes the gripper before reaching anything), so the online no_flip check
    fires on most held-out bad_prompt runs; the frozen-policy signature of bad_prompt on few."""
    for trace in runs("bad_prompt"):
        assert classify(evaluate(trace, shipped)[0])  # flagged as abnormal


def test_baseline_runs_stay_quiet(shipped):
    got = [classify(evaluate(trace, shipped)[0]) for trace in runs("baseline")]
    assert not any(got)  # two failed healthy runs: no online alert, no verdict
    for trace in runs("baseline"):  # the generic defaults raise no ERROR on healthy runs
        assert all(v.level != "ERROR" for v in evaluate(trace)[0])


def test_monitor_cli_prints_the_table_on_real_traces():
    out = subprocess.run([sys.executable, "-m", "vla_eval.cli", "monitor", *map(str, sorted(TRACES.glob("*.jsonl"))),
                          "--thresholds", str(shipped_thresholds("tiny", "libero_object"))],
                         capture_output=True, text=True)
    assert "TPR (own)" in out.stdout and "confusion" in out.stdout and "Traceback" not in out.stderr
