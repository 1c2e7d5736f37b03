"""Record schema round trip and the crash-safety rules of the JSONL files."""
import json
import os

import pytest

from vla_eval.errors import UsageError
from conftest import make_episode as _episode, make_step as _step
from vla_eval.records import (
    JsonlWriter, first_close_step, from_dict, read_jsonl, to_json,
)


def test_round_trip_keeps_every_field():
    for rec in (_step(), _episode(), _step().__class__(**{**_step().__dict__, "alerts": ("no_flip",)})):
        assert from_dict(json.loads(to_json(rec))) == rec


def test_unknown_schema_version_is_refused():
    d = json.loads(to_json(_step()))
    d["v"] = 99
    with pytest.raises(ValueError, match="schema version 99"):
        from_dict(d)


def test_first_close_step_is_the_first_positive_gripper_command():
    assert first_close_step([-1, -1, 1, -1, 1]) == 2
    assert first_close_step([-1, -1]) is None
    assert first_close_step([]) is None


def test_steps_of_killed_attempts_are_ignored(tmp_path):
    path = tmp_path / "baseline.jsonl"
    with JsonlWriter(path) as w:
        w.write(_step("dead", 0))  # attempt killed before its episode line
        w.write(_step("dead", 1))
        w.write(_step("live", 0))
        w.write(_episode("live"))
    log = read_jsonl(path)
    assert [e.attempt for e in log.episodes] == ["live"]
    assert len(log.steps) == 1 and log.orphan_steps == 2


def test_torn_final_line_is_dropped_and_cut_before_appending(tmp_path):
    path = tmp_path / "baseline.jsonl"
    with JsonlWriter(path) as w:
        w.write(_step())
        w.write(_episode())
    with open(path, "a") as f:
        f.write('{"run_tag": "base')  # killed mid-write
    log = read_jsonl(path)
    assert log.torn_tail and len(log.episodes) == 1
    with JsonlWriter(path) as w:  # resume: the torn tail must not glue onto the next line
        w.write(_episode("a2", seed=1))
    log = read_jsonl(path)
    assert not log.torn_tail and sorted(e.seed for e in log.episodes) == [0, 1]


def test_malformed_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "baseline.jsonl"
    path.write_text(to_json(_step()) + "\nnot json\n" + to_json(_episode()) + "\n")
    with pytest.raises(UsageError, match=r"baseline\.jsonl:2: malformed JSON line"):
        read_jsonl(path)


@pytest.mark.parametrize("field, text", [
    ("wall_s", "Infinity"), ("wall_s", "-1"), ("steps", "1" + "0" * 400), ("first_close_step", "10000000000"),
])
def test_values_that_cannot_be_true_are_refused_in_episodes(tmp_path, field, text):
    d = json.loads(to_json(_episode()))
    d[field] = "@"
    line = json.dumps(d).replace('"@"', text)
    path = tmp_path / "log.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UsageError, match=rf"log.jsonl:1: {field}="):
        read_jsonl(path)


@pytest.mark.parametrize("change", [
    lambda d: {**d, "reward": float("nan")},
    lambda d: {**d, "action": [0.0, 0.1, 0.2]},
    lambda d: {**d, "action": [float("inf")] + [0.0] * 6},
])
def test_values_that_cannot_be_true_are_refused_in_steps(tmp_path, change):
    from dataclasses import asdict

    path = tmp_path / "log.jsonl"
    path.write_text(json.dumps(change(asdict(_step())), allow_nan=True) + "\n" + to_json(_episode()) + "\n")
    with pytest.raises(UsageError, match=r"log.jsonl:1: (reward|action)="):
        read_jsonl(path)


def test_a_line_nested_past_the_stack_or_too_long_is_one_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n" + to_json(_episode()) + "\n")
    with pytest.raises(UsageError, match="deep.jsonl:1: malformed JSON line"):
        read_jsonl(path)
    path.write_text('{"kind": "' + "x" * (2 << 20) + '"}\n')
    with pytest.raises(UsageError, match="deep.jsonl:1: a line over"):
        read_jsonl(path)


def test_the_writer_creates_the_file_with_its_first_line_and_undoes_a_failed_line(tmp_path, monkeypatch):
    from vla_eval.records import JsonlWriter

    path = tmp_path / "ep.jsonl"
    with JsonlWriter(path):
        pass
    assert not path.exists()  # nothing written: no file
    with JsonlWriter(path) as w:
        w.write(_step())
        good = path.read_bytes()
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        with pytest.raises(OSError):
            w.write(_episode())
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == good  # the failed line is gone, the earlier one kept
    fresh = tmp_path / "fresh.jsonl"
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError), JsonlWriter(fresh) as w:
        w.write(_episode())
    assert not fresh.exists()  # a file it created for a line that failed is removed
