"""Failure modes: the taxonomy on hand-built task-state sequences (every mode, every branch), the
schema-3 records, and the classifier on real LIBERO episodes that fail on purpose."""
from __future__ import annotations

import json

import pytest

from vla_eval.failure_modes import MODE_NAMES, UnknownPredicate, classify
from vla_eval.records import (EpisodeRecord, GoalState, StepRecord, TaskState, from_dict, read_jsonl, to_json)

GOAL = "in ketchup_1 basket_1_contain_region"


def _state(reach=0.3, held=False, lift=0.0, to_goal=0.5, met=False, gap=0.079, holding=None, moved=(), knocked=(),
           goals=None) -> TaskState:
    g = GoalState(met=met, reach=reach, held=held, lift=lift, to_goal=to_goal)
    return TaskState(goals=goals or (g,), gap=gap, held=holding if holding else ("ketchup_1" if held else None),
                     moved=tuple(moved), knocked=tuple(knocked))


def _episode(states, grip=None, outcome="failure", goals=(GOAL,), error=None):
    grip = grip or [-1.0] * len(states)
    steps = [StepRecord("baseline", 4, 0, "a", t, (0, 0, 0, 0, 0, 0, g), None, 0.0, False, 0.0, 0.0, task=s)
             for t, (s, g) in enumerate(zip(states, grip))]
    ep = EpisodeRecord("baseline", "libero_object", 4, 0, 0, "a", outcome, len(steps), None, 1.0, 0.0, 0.0,
                       goals=goals, error=error)
    return ep, steps


def _mode(states, grip=None, **kw):
    ep, steps = _episode(states, grip, **kw)
    return classify(ep, steps)


def test_never_reached_names_the_closest_approach():
    f = _mode([_state(reach=0.3 - 0.01 * t) for t in range(10)] + [_state(reach=0.25)] * 20)
    assert f.mode == "never_reached" and f.step == 9 and "21.0 cm" in f.evidence
    assert _mode([_state(reach=0.3)] * 3 + [_state(reach=0.11)] * 5).mode == "never_reached"


def test_missed_grasp_counts_the_closings_beside_the_object():
    near_closed, near_open = _state(reach=0.05, gap=0.02), _state(reach=0.05)
    states = [_state()] * 5 + [near_open, near_closed, near_closed, near_open, near_closed] + [near_open] * 5
    f = _mode(states, grip=[-1] * 6 + [1, 1, -1, 1] + [-1] * 5)
    assert f.mode == "missed_grasp" and f.step == 6 and "2 time(s)" in f.evidence


def test_held_but_never_lifted_is_a_missed_grasp():
    held = _state(reach=0.05, held=True, gap=0.03)
    assert _mode([_state()] * 3 + [held] * 10).mode == "missed_grasp"
    assert _mode([_state()] * 3 + [held] * 10 + [_state(reach=0.05)] * 3).mode == "missed_grasp"


def test_stalled_near_without_closing():
    f = _mode([_state()] * 3 + [_state(reach=0.06)] * 20)
    assert f.mode == "stalled" and f.step == 3


def test_stalled_while_holding_away_from_the_goal():
    f = _mode([_state()] * 3 + [_state(reach=0.05, held=True, lift=0.1, to_goal=0.4)] * 10)
    assert f.mode == "stalled" and "40 cm from the basket" in f.evidence


def test_dropped_after_lifting():
    carry = [_state(reach=0.05, held=True, lift=0.15, to_goal=0.4 - 0.01 * t) for t in range(5)]
    f = _mode([_state()] * 3 + carry + [_state(reach=0.2, lift=0.0, to_goal=0.35)] * 5)
    assert f.mode == "dropped" and f.step == 8


def test_misplaced_released_beside_the_goal_or_never_released():
    carry = [_state(reach=0.05, held=True, lift=0.15, to_goal=0.3 - 0.05 * t) for t in range(5)]
    f = _mode([_state()] * 2 + carry + [_state(reach=0.2, to_goal=0.11)] * 4)
    assert f.mode == "misplaced" and f.step == 7 and "11.0 cm" in f.evidence
    f = _mode([_state()] * 2 + carry + [_state(reach=0.05, held=True, lift=0.15, to_goal=0.1)] * 4)
    assert f.mode == "misplaced" and "never releasing" in f.evidence


def test_wrong_object_held_or_shoved():
    f = _mode([_state()] * 3 + [_state(reach=0.3, holding="milk_1", gap=0.03)] * 5)
    assert f.mode == "wrong_object" and "milk" in f.evidence and f.step == 3
    f = _mode([_state()] * 3 + [_state(reach=0.3, moved=("milk_1",))] * 5)
    assert f.mode == "wrong_object" and f.step == 3


def test_going_for_another_object_is_wrong_object_even_if_it_knocked_the_target_over_on_the_way():
    states = [_state()] * 3 + [_state(knocked=("ketchup_1",))] * 3 + [_state(holding="milk_1", knocked=("ketchup_1",))] * 4
    f = _mode(states)
    assert f.mode == "wrong_object" and f.step == 6


def test_knocked_off_unless_it_fell_from_the_grasp_or_was_a_bystander():
    f = _mode([_state()] * 3 + [_state(knocked=("ketchup_1",))] * 5)
    assert f.mode == "knocked_off" and f.step == 3
    f = _mode([_state()] * 3 + [_state(knocked=("milk_1",))] * 5)
    assert f.mode == "never_reached" and f.evidence.endswith("; also knocked over: milk at step 3")  # a bystander
    held = [_state(reach=0.05, held=True, lift=0.1, to_goal=0.4)] * 3
    assert _mode([_state()] * 2 + held + [_state(knocked=("ketchup_1",), to_goal=0.4)] * 20).mode == "dropped"


def test_undone_and_the_failed_sub_goal_of_a_long_task():
    goals = ("in alphabet_soup_1 basket_1_contain_region", "in tomato_sauce_1 basket_1_contain_region")
    done, todo = GoalState(True, 0.1, False, 0.0, 0.02), GoalState(False, 0.3, False, 0.0, 0.5)
    undone = GoalState(False, 0.1, False, 0.0, 0.2)
    f = _mode([_state(goals=(todo, todo))] * 2 + [_state(goals=(done, todo))] * 3 + [_state(goals=(undone, todo))] * 2,
              goals=goals)
    assert f.mode == "undone" and f.step == 5 and f.goal == 0
    f = _mode([_state(goals=(todo, todo))] * 2 + [_state(goals=(done, todo))] * 5, goals=goals)
    assert f.mode == "never_reached" and f.goal == 1 and f.evidence.startswith("sub-goal 2/2")


def test_articulation_goals():
    goal = ("open wooden_cabinet_1_middle_region",)
    far, near = GoalState(False, 0.3, False), GoalState(False, 0.05, False)
    assert _mode([_state(goals=(far,))] * 5, goals=goal).mode == "never_reached"
    assert _mode([_state(goals=(far,))] * 2 + [_state(goals=(near,), gap=0.03)] * 3, grip=[-1, -1, 1, 1, 1],
                 goals=goal).mode == "missed_grasp"
    held = GoalState(False, 0.05, True)
    assert _mode([_state(goals=(far,))] * 2 + [_state(goals=(held,), gap=0.03)] * 3, goals=goal).mode == "stalled"


def test_success_error_and_unrecorded_state():
    assert _mode([_state(met=True)], outcome="success") is None
    f = _mode([_state()], outcome="error", error="RuntimeError: boom\ntraceback...")
    assert f.mode == "env_error" and f.evidence == "RuntimeError: boom"
    ep, steps = _episode([_state()] * 3)
    assert classify(ep, [StepRecord(**{**s.__dict__, "task": None}) for s in steps]) is None  # schema 2: no state


def test_a_goal_outside_the_taxonomy_is_refused_by_name():
    with pytest.raises(UnknownPredicate, match="'grasp'.*known: in, on, open"):
        _mode([_state()] * 3, goals=("grasp ketchup_1",))


def test_every_mode_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "failure_modes.md").read_text()
    assert all(f"`{m}`" in doc for m in MODE_NAMES)


# -- records ------------------------------------------------------------------------------------
def test_task_state_round_trips_and_old_schemas_still_read(tmp_path):
    ep, steps = _episode([_state(reach=0.05, held=True, moved=("milk_1",))] * 2)
    for rec in (steps[0], ep):
        assert from_dict(json.loads(to_json(rec))) == rec
    old = {k: v for k, v in json.loads(to_json(steps[0])).items() if k != "task"} | {"v": 2}
    assert from_dict(old).task is None


@pytest.mark.parametrize("task", [
    {"goals": [{"met": "yes", "held": False}], "gap": 0.0},
    {"goals": [{"met": True, "held": False, "reach": 1e9}], "gap": 0.0},
    {"goals": [], "gap": 0.0, "held": 5},
    {"goals": [], "gap": 0.0, "extra": 1},
    [],
])
def test_a_crafted_task_state_is_a_file_line_error(tmp_path, task):
    from vla_eval.errors import UsageError

    ep, steps = _episode([_state()])
    line = json.loads(to_json(steps[0])) | {"task": task}
    path = tmp_path / "baseline.jsonl"
    path.write_text(json.dumps(line) + "\n" + to_json(ep) + "\n")
    with pytest.raises(UsageError, match=r"baseline.jsonl:1: task="):
        read_jsonl(path)


# -- real LIBERO: the scripted expert failing on purpose ------------------------------------------
@pytest.mark.libero
def test_constructed_failures_are_named_on_real_libero():
    from vla_eval.policies.failing import FailingExpert, expected_mode
    from vla_eval.rollout import rollout
    from vla_eval.sims.libero_env import LiberoEnv

    with LiberoEnv("libero_object", 4, cameras=False, hard_reset=False) as env:
        for variant, steps in (("never_reached", 40), ("missed_grasp", 70), ("knocked_off", 90), ("dropped", 140)):
            ep, recorded = rollout(env, FailingExpert(variant), 0, max_steps=steps)
            assert ep.failure_mode == expected_mode(variant), (variant, ep.failure_evidence)
            assert ep.failure_step is not None and ep.goals == (GOAL,)
            assert all(s.task is not None and len(s.task.goals) == 1 for s in recorded)


# -- vla-eval why, the report and compare on a real run folder --------------------------------------
def _cli(*args, check=True):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "vla_eval.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=600)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """The scripted expert cut off at 60 steps (every episode fails mid-task), two tasks x two seeds."""
    out = tmp_path_factory.mktemp("why") / "run"
    _cli("sweep", "--policy", "scripted", "--tasks", "0,4", "--seeds", "2", "--max-steps", "60", "--fast-reset",
         "--no-progress", "--out", out)
    return out


def _rewrite(src, dst, edit):
    """A copy of run folder ``src`` whose log lines pass through ``edit(dict) -> dict``."""
    import shutil

    shutil.copytree(src, dst)
    path = dst / "baseline.jsonl"
    path.write_text("".join(json.dumps(edit(json.loads(x))) + "\n" for x in path.read_text().splitlines()))
    return dst


@pytest.mark.libero
def test_why_prints_the_breakdown_and_one_episodes_evidence(short_run):
    out = _cli("why", short_run).stdout
    assert "baseline: 0/4 succeeded, 4 failed" in out and "share of failures (95% CI)" in out
    assert "per task: 0:" in out
    ep = _cli("why", short_run, "--episode", "4:1").stdout
    assert "task 4 seed 1: failure after 60 steps" in ep and "evidence:" in ep
    html = (short_run / "report.html").read_text()
    assert 'id="failure-modes"' in html and 'id="gripper-hist-modes"' in html


@pytest.mark.libero
@pytest.mark.parametrize("args, message", [
    (["--episode", "9:9"], "no episode '9:9' in this run; valid (TASK:SEED): 0:0, 0:1, 4:0, 4:1"),
    (["--episode", "four"], "valid (TASK:SEED)"),
    (["--tag", "no_flip"], "run tag 'no_flip' is not in this run; valid: baseline"),
])
def test_why_refuses_bad_input_in_one_line(short_run, args, message):
    before = sorted(p.name for p in short_run.iterdir())
    r = _cli("why", short_run, *args, check=False)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in short_run.iterdir()) == before  # nothing written


@pytest.mark.libero
def test_why_on_folders_that_are_not_runs_or_hold_bad_logs(short_run, tmp_path):
    r = _cli("why", tmp_path, check=False)
    assert r.returncode == 2 and "is not a vla-eval run folder" in r.stderr
    bad = _rewrite(short_run, tmp_path / "bad", lambda d: d)
    lines = (bad / "baseline.jsonl").read_text().splitlines()
    lines[3] = lines[3][:40]  # a line torn in the middle of the file
    (bad / "baseline.jsonl").write_text("\n".join(lines) + "\n")
    r = _cli("why", bad, check=False)
    assert r.returncode == 2 and "baseline.jsonl:4: malformed JSON line" in r.stderr
    unknown = _rewrite(short_run, tmp_path / "unknown", lambda d: d | ({"goals": ["grasp ketchup_1"]} if
                                                                          d["kind"] == "episode" else {}))
    r = _cli("why", unknown, check=False)
    assert r.returncode == 2 and "goal predicate 'grasp'" in r.stderr and "known: in, on" in r.stderr


@pytest.mark.libero
def test_why_on_a_run_written_before_task_state_says_not_recorded(short_run, tmp_path):
    old_fields = ("task", "goals", "failure_mode", "failure_step", "failure_evidence")
    old = _rewrite(short_run, tmp_path / "old", lambda d: {k: v for k, v in d.items() if k not in old_fields} | {"v": 2})
    out = _cli("why", old).stdout
    assert "not recorded" in out and "written before schema 3" in out
    assert "not recorded" in _cli("why", old, "--episode", "0:0").stdout


@pytest.mark.libero
def test_compare_shows_how_the_mode_mix_moved(short_run, tmp_path):
    b = tmp_path / "b"
    _cli("sweep", "--policy", "scripted", "--tasks", "0,4", "--seeds", "2", "--max-steps", "20", "--fast-reset",
         "--no-progress", "--no-report", "--out", b)
    out = _cli("compare", short_run, b).stdout
    assert "failure modes, share of each run's failures" in out
    assert "never_reached" in out  # 20 steps: the expert is still on its way


def test_any_recorded_state_sequence_gets_a_mode_from_the_table():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    dist = st.one_of(st.none(), st.floats(0, 2))
    goal = st.builds(GoalState, met=st.booleans(), reach=dist, held=st.booleans(), lift=dist, to_goal=dist)
    names = st.sampled_from(["ketchup_1", "milk_1", "basket_1"])
    state = st.builds(lambda g, gap, held, moved, knocked: TaskState((g,), gap, held, moved, knocked), goal,
                      st.floats(0, 0.08), st.one_of(st.none(), names), st.lists(names, max_size=2).map(tuple),
                      st.lists(names, max_size=2).map(tuple))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(state, min_size=1, max_size=30), st.lists(st.sampled_from([-1.0, 1.0]), min_size=30, max_size=30))
    def check(states, grip):
        f = _mode(states, grip=grip[:len(states)])
        assert f.mode in MODE_NAMES and 0 <= f.step <= len(states) and f.evidence

    check()
