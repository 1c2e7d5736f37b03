"""Run folders and inputs you can trust: locks, safe merge, validated records, bad input refused
before anything is written. Fast tests: no simulator (the signal test is in test_sweep_report)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from vla_eval.errors import UsageError
from conftest import make_episode, make_run
from vla_eval.records import EpisodeRecord, JsonlWriter, read_jsonl
from vla_eval.rundir import SweepConfig, check_or_write_manifest, run_lock
from vla_eval.sweep import merge_runs

CLI = [sys.executable, "-m", "vla_eval.cli"]


def cli(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=300)


def make_shard(folder: Path, i: int, k: int, seeds=None) -> Path:
    """A shard folder with real records written by the real writer (the merge is under test)."""
    return make_run(folder, {(0, s): "success" for s in (seeds if seeds is not None else range(i, 4, k))},
                    seeds=4, shard=f"{i}/{k}", steps=2)


# -- locks ------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_with_the_holders_name(tmp_path):
    run = tmp_path / "run"
    with run_lock(run):
        r = cli("sweep", "--policy", "zero", "--seeds", "1", "--out", run, "--no-report", "--no-progress")
        assert r.returncode == 2, r.stderr
        assert f"is in use by pid {os.getpid()}" in r.stderr and "Traceback" not in r.stderr
        assert not (run / "manifest.json").exists()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run = tmp_path / "run"
    code = (f"import os, signal; from vla_eval.rundir import run_lock\n"
            f"with run_lock({str(run)!r}):\n    os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code])
    assert r.returncode == -signal.SIGKILL and (run / ".lock.holder").exists()
    with run_lock(run):  # the kernel released the dead holder's lock
        pass


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    r = cli("sweep", "--policy", "zero", "--out", f)
    assert r.returncode == 2 and "is a file" in r.stderr and f.read_text() == "mine"


# -- merge ------------------------------------------------------------------------------------
def test_merge_joins_a_complete_set_and_refuses_what_is_not(tmp_path):
    s0, s1 = make_shard(tmp_path / "s0", 0, 2), make_shard(tmp_path / "s1", 1, 2)
    assert merge_runs(tmp_path / "all", [s0, s1]) == {"baseline": 4}
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert manifest["merged"] == {"shards": ["0/2", "1/2"], "of": 2, "partial": False}
    with pytest.raises(UsageError, match="already exists"):
        merge_runs(tmp_path / "all", [s0, s1])
    with pytest.raises(UsageError, match="missing shard.*1/2.*--allow-partial"):
        merge_runs(tmp_path / "half", [s0])
    assert not (tmp_path / "half").exists() and not (tmp_path / "half.partial").exists()
    merge_runs(tmp_path / "half", [s0], allow_partial=True)
    assert json.loads((tmp_path / "half" / "manifest.json").read_text())["merged"]["partial"] is True
    with pytest.raises(UsageError, match="given twice"):
        merge_runs(tmp_path / "twice", [s0, s0])


def test_merge_never_deletes_a_folder_it_did_not_create(tmp_path):
    s0, s1 = make_shard(tmp_path / "s0", 0, 2), make_shard(tmp_path / "s1", 1, 2)
    victim = make_shard(tmp_path / "out.partial", 0, 2)  # a user's folder that happens to have this name
    before = (victim / "baseline.jsonl").read_text()
    with pytest.raises(UsageError, match="out.partial exists"):
        merge_runs(tmp_path / "out", [s0, s1])
    assert (victim / "baseline.jsonl").read_text() == before and not (tmp_path / "out").exists()


def test_a_crafted_tag_cannot_escape_the_output_folder(tmp_path):
    s0, s1 = make_shard(tmp_path / "s0", 0, 2), make_shard(tmp_path / "s1", 1, 2)
    for s in (s0, s1):
        m = json.loads((s / "manifest.json").read_text())
        m["config"]["tags"] = ["../escaped"]
        (s / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UsageError, match=r"tags=\['../escaped'\] is invalid"):
        merge_runs(tmp_path / "out", [s0, s1])
    assert not (tmp_path / "escaped.jsonl").exists() and not (tmp_path / "out").exists()


def test_overlapping_shards_are_refused_and_leave_nothing(tmp_path):
    s0 = make_shard(tmp_path / "s0", 0, 2, seeds=[0, 1])
    s1 = make_shard(tmp_path / "s1", 1, 2, seeds=[1, 3])
    r = cli("merge", tmp_path / "out", s0, s1)
    assert r.returncode == 2 and "seed 1 is not in this shard's slice (0/2)" in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_shard_with_missing_episodes_is_refused_unless_partial_and_then_recorded(tmp_path):
    s0, s1 = make_shard(tmp_path / "s0", 0, 2), make_shard(tmp_path / "s1", 1, 2)
    (s1 / "baseline.jsonl").unlink()  # an unfinished or damaged shard
    with pytest.raises(UsageError, match="2 of the shard's 2 episodes are missing"):
        merge_runs(tmp_path / "out", [s0, s1])
    assert not (tmp_path / "out").exists()
    merge_runs(tmp_path / "out", [s0, s1], allow_partial=True)
    merged = json.loads((tmp_path / "out" / "manifest.json").read_text())["merged"]
    assert merged["partial"] is True and merged["missing_episodes"] == 2


@pytest.mark.parametrize("record, message", [
    (lambda: make_episode("x", seed=3), "task 0 seed 3 is outside this run"),
    (lambda: EpisodeRecord("baseline", "libero_goal", 0, 0, 0, "x", "success", 2, 1, 1.0, 0.1, 0.5, "pick"),
     "an episode of suite 'libero_goal'"),
    (lambda: EpisodeRecord("no_flip", "libero_object", 0, 0, 0, "x", "success", 2, 1, 1.0, 0.1, 0.5, "pick"),
     "a record of run 'no_flip' in the 'baseline' log"),
])
def test_a_record_that_does_not_belong_is_never_counted_or_taken_as_done(tmp_path, record, message):
    from vla_eval.sweep import committed

    run = tmp_path / "run"
    check_or_write_manifest(run, SweepConfig(suite="libero_object", task_ids=(0,), seeds=2, policy="scripted",
                                              cameras=False))
    with JsonlWriter(run / "baseline.jsonl") as w:
        w.write(record())
    with pytest.raises(UsageError, match=f"baseline.jsonl:1: {message}"):
        committed(run, "baseline")  # what a resume reads
    for command in (("report", run), ("monitor", run / "baseline.jsonl")):
        r = cli(*command)
        assert r.returncode == 2 and message.split("'")[0] in r.stderr and "Traceback" not in r.stderr, r.stderr


# -- records ----------------------------------------------------------------------------------
GOOD = json.loads(json.dumps(make_episode(instruction="").__dict__))


@pytest.mark.parametrize("line,message", [
    ("42", "a record is a JSON object, got int"),
    ("[1, 2, 3]", "a record is a JSON object, got list"),
    (json.dumps({**GOOD, "outcome": "timeout"}), "outcome='timeout' is invalid"),
    (json.dumps({**GOOD, "steps": "12"}), "steps='12' is invalid"),
    (json.dumps({**GOOD, "task_id": "<script>"}), "task_id='<script>' is invalid"),
    (json.dumps({**GOOD, "seed": True}), "seed=True is invalid"),
    (json.dumps({**GOOD, "extra": 1}), "unknown EpisodeRecord field"),
    (json.dumps({**GOOD, "kind": "other"}), "unknown record kind"),
])
def test_bad_record_lines_are_file_line_errors(tmp_path, line, message):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(UsageError, match=f"x.jsonl:2: .*{message}".replace("[", r"\[").replace("(", r"\(")):
        read_jsonl(p)


def test_non_utf8_log_is_a_clear_error(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe garbage\n")
    with pytest.raises(UsageError, match="x.jsonl:2: not UTF-8"):
        read_jsonl(p)


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    p = tmp_path / "baseline.jsonl"
    p.write_text(json.dumps(GOOD))  # committed episode, newline lost
    with JsonlWriter(p) as w:  # what a resumed sweep does first
        w.write(make_episode("b", seed=1, instruction=""))
    assert sorted(e.seed for e in read_jsonl(p).episodes) == [0, 1]
    p.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD)[:40])  # a torn line is still cut
    with JsonlWriter(p):
        pass
    assert p.read_text() == json.dumps(GOOD) + "\n"


# -- manifests --------------------------------------------------------------------------------
def test_report_refuses_a_manifest_with_unknown_or_bad_fields(tmp_path):
    s0 = make_shard(tmp_path / "s0", 0, 1)
    m = json.loads((s0 / "manifest.json").read_text())
    (s0 / "manifest.json").write_text(json.dumps({**m, "config": {**m["config"], "seeds": "<img src=x>"}}))
    r = cli("report", s0)
    assert r.returncode == 2 and "seeds='<img src=x>' is invalid" in r.stderr and "Traceback" not in r.stderr
    (s0 / "manifest.json").write_text(json.dumps({**m, "config": {**m["config"], "bogus": 1}}))
    r = cli("report", s0)
    assert r.returncode == 2 and "has unknown fields ['bogus']" in r.stderr


# -- files the user did not ask to overwrite ----------------------------------------------------
def test_run_log_into_a_run_folder_and_calibrate_over_a_file_are_refused(tmp_path):
    s0 = make_shard(tmp_path / "s0", 0, 1)
    before = (s0 / "baseline.jsonl").read_text()
    r = cli("run", "--policy", "zero", "--log", s0 / "baseline.jsonl")
    assert r.returncode == 2 and "inside the run folder" in r.stderr
    assert (s0 / "baseline.jsonl").read_text() == before
    r = cli("monitor", s0 / "baseline.jsonl", "--calibrate", s0 / "baseline.jsonl")
    assert r.returncode == 2 and "is one of the input logs" in r.stderr
    mine = tmp_path / "mine.json"
    mine.write_text("keep me")
    r = cli("monitor", s0 / "baseline.jsonl", "--calibrate", mine)
    assert r.returncode == 2 and "--force" in r.stderr and mine.read_text() == "keep me"


# -- bad command lines: one message, exit 2, nothing written ------------------------------------
BAD_ARGS = [
    (["sweep", "--policy", "scripted", "--suite", "nope"], "unknown suite 'nope'"),
    (["sweep", "--policy", "scripted", "--task", "10"], "task id 10 out of range"),
    (["sweep", "--policy", "scripted", "--seeds", "51"], "seed 50 has no stored init state"),
    (["sweep", "--policy", "scripted", "--seeds", "0"], "--seeds: must be at least 1"),
    (["sweep", "--policy", "scripted", "--shard", "3/2"], "bad --shard '3/2'"),
    (["drill", "--policy", "scripted"], "cannot apply to it"),
    (["train-tiny", "--demos", ".", "--out", "t"], "no demonstration shards in ."),
    (["train-tiny", "--grasp-weight", "0"], "--grasp-weight: must be a finite number > 0"),
    (["sweep", "--workers", "-1"], "--workers: must be at least 0"),
    (["sweep", "--max-steps", "0"], "--max-steps: must be at least 1"),
    (["sweep", "--max-steps", "-5"], "--max-steps: must be at least 1"),
    (["sweep", "--max-steps", "99999999999999999999999"], "--max-steps: must be at most 100,000"),
    (["sweep", "--batch", "100000"], "--batch: must be at most 256"),
    (["sweep", "--workers", "1000000"], "--workers: must be at most 256"),
    (["sweep", "--env-timeout", "1e308"], "--env-timeout: must be a finite number > 0.0 and < 86400.0"),
    (["sweep", "--policy", "scripted", "--threads", "0"], "--threads: must be at least 1"),
    (["monitor", "x.jsonl", "--calib-seeds", "3-1"], "--calib-seeds takes ids and ranges"),
    (["sweep", "--env-timeout", "0"], "--env-timeout: must be a finite number > 0"),
    (["sweep", "--tasks", "1,x"], "--tasks takes ids and ranges"),
    (["sweep", "--policy", "scripted", "--checkpoint", "x"], "--checkpoint configure an OpenVLA model"),
    (["sweep", "--policy", "scripted", "--dtype", "float32"], "--dtype configure an OpenVLA model"),
    (["sweep", "--policy", "zero", "--native"], "--backend configure an OpenVLA model"),
    (["sweep", "--policy", "openvla", "--cameras", "off"], "reads camera images"),
    (["sweep", "--policy", "openvla", "--suite", "libero_nope"], "unknown suite 'libero_nope'"),
    (["sweep", "--policy", "tiny", "--checkpoint", "x"], "runs the shipped tiny checkpoint"),
    (["run", "--seed", "-1"], "--seed: must be at least 0"),
    (["run", "--policy", "zero", "--seeds", "3"], "--seeds apply to sweep and drill"),
    (["run", "--policy", "zero", "--all-tasks"], "--tasks/--all-tasks apply to sweep and drill"),
    (["run", "--policy", "zero", "--out", "somewhere"], "--out apply to sweep and drill"),
    (["monitor", "x.jsonl", "--alpha", "nan"], "--alpha: must be a finite number"),
    (["monitor", "x.jsonl", "--alpha", "-1"], "--alpha: must be a finite number"),
    (["monitor", "x.jsonl", "--alpha", "5"], "--alpha: must be a finite number"),
    (["bench-monitor", "--steps", "0"], "--steps: must be at least 100"),
    (["small", "baseline", "--threads", "0"], "--threads: must be at least 1"),
    (["collect-demos", "--per-task", "0"], "--per-task: must be at least 1"),
    (["collect-demos", "--bursts", "1.5", "--out", "demos", "--no-progress"], "0.2, 1.5, scripted"),
    (["bench-sim", "--steps", "0"], "--steps: must be at least 1"),
    (["bench-sim", "--workers", "-1"], "--workers: must be at least 1"),
    (["small", "baseline", "--seed", "-1"], "--seed: must be at least 0"),
    (["run", "--suite", "libero_nope", "--task", "0"], "unknown suite 'libero_nope'"),  # before the missing GPU
    (["run", "--task", "12"], "task id 12 out of range"),
    (["run", "--seed", "50"], "--seed 50 has no stored init state"),
]


@pytest.mark.parametrize("argv", [
    ["run", "--policy", "zero", "--log", "{f}/x.jsonl"], ["small", "baseline", "--out", "{f}"],
    ["merge", "{f}/out", "{f}"], ["sweep", "--policy", "zero", "--out", "{f}/run"],
    ["train-tiny", "--out", "{f}"], ["dagger", "--demos", "d", "--start", "s", "--out", "{f}/x"],
])
def test_an_output_path_at_or_under_a_file_is_refused_before_any_work(tmp_path, monkeypatch, cli_main, argv):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    monkeypatch.chdir(tmp_path)
    code, err = cli_main(*[a.replace("{f}", str(blocker)) for a in argv])
    assert code == 2 and "Traceback" not in err and str(blocker) in err, err
    assert sorted(tmp_path.iterdir()) == [blocker] and blocker.read_text() == "mine"


@pytest.mark.parametrize("argv,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_input_is_one_clear_message_and_writes_nothing(tmp_path, monkeypatch, cli_main, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = cli_main(*argv)
    assert code == 2, err
    assert message in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err  # one message
    assert list(tmp_path.iterdir()) == []  # no runs/ folder, no partial file


def test_bad_input_through_the_console_script_is_the_same_one_line(tmp_path):
    """The same refusal through a real process (the table above runs cli.main in-process)."""
    r = cli("run", "--suite", "libero_nope", "--task", "0", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "unknown suite 'libero_nope'" in r.stderr
    assert "Traceback" not in r.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("missing, argv, fix", [
    ("robosuite", ["sweep", "--policy", "zero", "--seeds", "1", "--workers", "1"], "pip install 'vla-eval-libero[sim]'"),
    ("libero", ["run", "--policy", "zero", "--max-steps", "2"], "pip install --no-deps libero==0.1.1, then vla-eval setup"),
    ("mujoco", ["collect-demos", "--tasks", "0", "--per-task", "1"], "pip install 'vla-eval-libero[sim]'"),
])
def test_a_missing_simulator_package_is_one_message_naming_the_install(tmp_path, monkeypatch, cli_main, missing, argv,
                                                                       fix):
    """A pip install of the core package alone: the command says what to install, writes nothing."""
    monkeypatch.setitem(sys.modules, missing, None)  # import of it fails as if not installed
    monkeypatch.chdir(tmp_path)
    code, err = cli_main(*argv, "--no-progress")
    assert code == 2 and f"needs {missing}" in err and fix in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_flags_that_would_change_the_run(tmp_path):
    s0 = make_shard(tmp_path / "s0", 0, 1)
    r = cli("sweep", "--resume", s0, "--seeds", "9")
    assert r.returncode == 2 and "drop --seeds" in r.stderr
    r = cli("sweep", "--resume", s0, "--no-flip")
    assert r.returncode == 2 and "drop --no-flip" in r.stderr


def _break(folder, name, how):
    path = folder / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"\x93\x11garbage" * 100)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header":
        path.write_bytes(path.read_bytes()[:4])
    elif how == "delete":
        path.unlink()
    else:
        path.write_text(how)


BROKEN_CHECKPOINTS = [
    ("model.safetensors", "truncate", "truncated:"),
    ("model.safetensors", "garbage", "model.safetensors"),
    ("model.safetensors", "empty", "truncated: 0 bytes"),
    ("model.safetensors", "header", "truncated: 4 bytes"),
    ("config.json", "{not json", "config.json: is not valid JSON"),
    ("config.json", "[1, 2]", "config.json: holds a JSON list"),
    ("config.json", '{"text_config": 3, "timm_model_ids": []}', "'text_config' is int"),
    ("tokenizer.json", "delete", "has no tokenizer"),
    ("tokenizer.json", '{"model": 5}', "tokenizer.json"),
    ("preprocessor_config.json", "{oops", "preprocessor_config.json: is not valid JSON"),
]


@pytest.mark.parametrize("name, how, message", BROKEN_CHECKPOINTS)
def test_a_broken_checkpoint_is_named_before_any_tensor_is_read(tmp_path, name, how, message):
    import shutil

    from vla_eval.configs import shipped_checkpoint
    from vla_eval.errors import UsageError
    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.policy import load_backend

    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped_checkpoint("tiny", "libero_object"), ckpt)
    _break(ckpt, name, how)
    with pytest.raises(UsageError) as e:
        load_backend("libero_object", OpenVLAOptions(checkpoint=str(ckpt), device="cpu", dtype="float32"))
    assert message in str(e.value) and str(ckpt) in str(e.value)


def test_bench_policy_on_a_truncated_checkpoint_is_one_line(tmp_path):
    import shutil

    from vla_eval.configs import shipped_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped_checkpoint("tiny", "libero_object"), ckpt)
    _break(ckpt, "model.safetensors", "truncate")
    r = subprocess.run([sys.executable, "-m", "vla_eval.cli", "bench-policy", "--checkpoint", str(ckpt),
                        "--device", "cpu", "--batches", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "truncated:" in r.stderr, r.stderr


def test_a_demo_folder_with_a_broken_or_missing_collection_json_is_refused(tmp_path):
    from vla_eval.tinyvla.demos import DemoConfig, _check_config

    cfg = DemoConfig(tasks=(0,), out=tmp_path / "demos")
    _check_config(cfg)
    (cfg.out / "collection.json").write_text("[1, 2")
    with pytest.raises(UsageError, match="collection.json: is not valid JSON.*restore it"):
        _check_config(cfg)
    (cfg.out / "collection.json").unlink()
    (cfg.out / "task0").mkdir()
    (cfg.out / "task0" / "scene0.parquet").write_bytes(b"x")
    with pytest.raises(UsageError, match="no collection.json"):
        _check_config(cfg)


def test_train_tiny_names_a_shard_with_corrupt_jpeg_bytes(tmp_path):
    import pandas as pd

    from vla_eval.tinyvla.train import load_demos

    (tmp_path / "task0").mkdir()
    rows = [{"task_id": 0, "scene": 0, "step": 0, "instruction": "pick", "image": b"\xff\xd8 not a jpeg",
             "action": [0.0] * 7}]
    pd.DataFrame(rows).to_parquet(tmp_path / "task0" / "scene0.parquet")
    with pytest.raises(UsageError, match="scene0.parquet: frame 0 is not a decodable JPEG"):
        load_demos(tmp_path, tmp_path / "cache", progress=False)
    pd.DataFrame(rows[:0]).to_parquet(tmp_path / "task0" / "scene0.parquet")
    with pytest.raises(UsageError, match="scene0.parquet is unreadable"):
        load_demos(tmp_path, tmp_path / "cache", progress=False)


def test_a_manifest_with_odd_provenance_or_deep_nesting_is_handled(tmp_path):
    run = make_shard(tmp_path / "s0", 0, 1)
    m = json.loads((run / "manifest.json").read_text())
    m["provenance"] = [1, 2]
    (run / "manifest.json").write_text(json.dumps(m))
    r = cli("report", run)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    (run / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    r = cli("report", run)
    assert r.returncode == 2 and "nested more than 64 levels" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_checkpoint_folder_named_relative_or_absolute_is_the_same_run(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = SweepConfig(suite="libero_object", task_ids=(0,), seeds=2, policy="openvla", checkpoint=str(ckpt))
    check_or_write_manifest(tmp_path / "run", cfg)
    monkeypatch.chdir(tmp_path)
    check_or_write_manifest(tmp_path / "run", replace(cfg, checkpoint="ckpt"))  # resumes: one folder, two names
    with pytest.raises(UsageError, match="checkpoint: folder has"):
        check_or_write_manifest(tmp_path / "run", replace(cfg, checkpoint="openvla/openvla-7b"))


@pytest.mark.parametrize("kw, message", [
    (dict(suite="libero_nope"), "unknown suite 'libero_nope'; valid: libero_spatial"),
    (dict(task_ids=(10,)), "task id 10 out of range for libero_object; valid: 0..9"),
    (dict(tags=("baseline", "no_flop")), "unknown run tag 'no_flop'"),
    (dict(seeds=(50,)), "seed 50 has no stored init state"),
    (dict(max_steps=10**20), "--max-steps 100000000000000000000: valid 1..100000"),
    (dict(shard="3/2"), "bad --shard '3/2'"),
])
def test_the_run_config_is_the_one_gate_and_names_the_bad_value_before_any_simulator_import(
        tmp_path, monkeypatch, kw, message):
    """``SweepConfig`` checks itself: the Python API refuses a bad name or range with the valid
    ones, on a machine without the simulator, and writes nothing."""
    import sys

    from vla_eval.api import SweepConfig, run_sweep

    for mod in ("libero", "robosuite", "mujoco"):
        monkeypatch.setitem(sys.modules, mod, None)  # importing it now raises ImportError
    fields = {**dict(suite="libero_object", task_ids=(0,), seeds=(0,), policy="scripted"), **kw}
    with pytest.raises(UsageError, match=message):
        run_sweep(SweepConfig(**fields), tmp_path / "run")
    assert not (tmp_path / "run").exists()
