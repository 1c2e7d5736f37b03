"""Every file the toolkit accepts is read with a bound, every number has a range, the same data is
never counted twice, and a checkpoint is validated before its weights are read: each bad input is
one clear UsageError (CLI: one line, exit 2), never a traceback, a hang or a silent wrong result."""
from __future__ import annotations

import json
import os
import shutil
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_eval.errors import UsageError
from vla_eval.safe_json import MAX_DEPTH, read_json


# -- the bounded reader ---------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    (b"[" * 100_000 + b"]" * 100_000, "nested more than"),
    (b'{"a": ' * 70 + b"1" + b"}" * 70, "nested more than"),
    (b'{"x": NaN}', "NaN is not a number"),
    (b'{"x": -Infinity}', "-Infinity is not a number"),
    (b'{"x": 1e400}', "out of range"),
    (b'{"x": 1' + b"0" * 400 + b"}", "out of range"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{oops", "not valid JSON"),
    (b"[1, 2]", "holds a JSON list, expected an object"),
])
def test_the_reader_refuses_what_is_not_a_small_finite_json_object(tmp_path, content, message):
    path = tmp_path / "f.json"
    path.write_bytes(content)
    with pytest.raises(UsageError, match=message) as e:
        read_json(path, "thresholds file")
    assert str(path) in str(e.value) and "thresholds file" in str(e.value)


def test_the_reader_refuses_devices_pipes_folders_loops_and_big_files_without_reading_them(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2048 + b"{}")
    cases = [("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (tmp_path, "is a folder"),
             (loop, "cannot be read"), (tmp_path / "nope.json", "no such file")]
    done = []

    def run():  # a hang would leave the thread alive
        for path, message in cases:
            with pytest.raises(UsageError, match=message):
                read_json(path, "manifest")
            done.append(path)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert len(done) == len(cases), f"hung or failed after {done}"
    with pytest.raises(UsageError, match="2,050 bytes, more than the 1,024"):
        read_json(big, "manifest", max_bytes=1024)


def test_a_file_nested_to_the_limit_still_reads(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('{"a": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}")
    assert isinstance(read_json(path, "x")["a"], list)


def _readers():
    """Every reader of a user's file: (name, fn(path)) where fn raises UsageError on bad input."""
    from vla_eval.diagnose import load_library
    from vla_eval.monitors import Thresholds
    from vla_eval.policies.openvla.native.validate import read_json_object
    from vla_eval.records import read_jsonl
    from vla_eval.rundir import load_manifest

    return [("thresholds", Thresholds.load), ("library", load_library), ("checkpoint json", read_json_object),
            ("jsonl log", read_jsonl), ("manifest", lambda p: load_manifest(p.parent))]


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                           max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode())))
def test_random_bytes_and_random_json_are_refused_cleanly_by_every_reader(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("r")
    for name, read in _readers():
        path = folder / ("manifest.json" if name == "manifest" else "f.json")
        path.write_bytes(data)
        try:
            read(path)
        except UsageError:
            pass  # the one allowed failure: a clear message


# -- duplicates -----------------------------------------------------------------------------------
def test_the_same_log_twice_is_refused(tmp_path, cli_run):
    from conftest import make_run

    run = make_run(tmp_path / "r", {(0, 0): "success", (0, 1): "failure"})
    r = cli_run("monitor", run / "baseline.jsonl", tmp_path / "r" / ".." / "r" / "baseline.jsonl")
    assert r.returncode == 2 and "is given twice" in r.stderr and "Traceback" not in r.stderr


def test_two_results_for_one_episode_are_refused_but_a_rerun_error_is_replaced(tmp_path, cli_run):
    from conftest import make_episode, make_run
    from vla_eval.records import JsonlWriter
    from vla_eval.rundir import read_tag

    run = make_run(tmp_path / "r", {(0, 0): "error", (0, 1): "failure"})
    with JsonlWriter(run / "baseline.jsonl") as w:
        w.write(make_episode("rerun", seed=0, outcome="success"))  # the documented exception
    assert {e.seed: e.outcome for e in read_tag(run, "baseline").episodes} == {0: "success", 1: "failure"}
    with JsonlWriter(run / "baseline.jsonl") as w:
        w.write(make_episode("again", seed=1, outcome="success"))  # a failure, then a success
    for argv in (("report", run), ("compare", run, run), ("monitor", run / "baseline.jsonl")):
        r = cli_run(*argv)
        assert r.returncode == 2 and "a second result (success) for task 0 seed 1" in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr


# -- missing pieces and misleading messages -------------------------------------------------------
def test_a_tag_the_run_folder_lacks_is_named_with_the_logs_it_has(tmp_path, cli_run):
    from conftest import make_run

    run = make_run(tmp_path / "r", {(0, 0): "success"})
    r = cli_run("monitor", run / "no_flip.jsonl")
    assert r.returncode == 2 and "no such log file" in r.stderr and "baseline.jsonl" in r.stderr


def test_the_monitor_given_a_path_is_a_clear_type_error():
    from vla_eval.monitors import RuntimeMonitor

    with pytest.raises(TypeError, match=r"Thresholds.load\('x'\)"):
        RuntimeMonitor("x")


def test_compare_of_two_suites_names_both(tmp_path, cli_run):
    from conftest import make_run

    a = make_run(tmp_path / "a", {(0, 0): "success"})
    b = make_run(tmp_path / "b", {(0, 0): "success"})
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["config"]["suite"] = "libero_goal"
    (b / "manifest.json").write_text(json.dumps(manifest))
    r = cli_run("compare", a, b)
    assert r.returncode == 2 and "libero_object run" in r.stderr and "libero_goal run" in r.stderr


def test_a_thresholds_file_that_is_a_device_is_refused_at_once(tmp_path, cli_run):
    from conftest import make_run

    run = make_run(tmp_path / "r", {(0, 0): "success"})
    r = cli_run("monitor", run / "baseline.jsonl", "--thresholds", "/dev/zero")
    assert r.returncode == 2 and "not a regular file" in r.stderr


# -- checkpoints: every file the index names, once; dtypes and sizes agree; finite weights -----------
def _header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _relabel(ckpt, dtype):
    header, data = _header(ckpt / "model.safetensors")
    for k, v in header.items():
        if k != "__metadata__" and v["dtype"] == "BF16":
            v["dtype"] = dtype
    _write(ckpt / "model.safetensors", header, data)


def _shard(ckpt, extra=None, drop=None):
    """Split into two shards + index, as the hub does; ``extra``: a stray copy; ``drop``: a shard removed."""
    header, data = _header(ckpt / "model.safetensors")
    meta = header.pop("__metadata__", None)
    names = sorted(header)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        out, blob, off = {}, b"", 0
        for name in part:
            b0, b1 = header[name]["data_offsets"]
            out[name] = {**header[name], "data_offsets": [off, off + b1 - b0]}
            blob += data[b0:b1]
            off += b1 - b0
            weight_map[name] = file
        _write(ckpt / file, {**({"__metadata__": meta} if meta else {}), **out}, blob)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if extra:
        shutil.copy(ckpt / "model-00001-of-00002.safetensors", ckpt / extra)
    if drop:
        (ckpt / drop).unlink()


def _set_config(ckpt, **text):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"].update(text)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def _nan_weights(ckpt):
    header, data = _header(ckpt / "model.safetensors")
    name = next(k for k in sorted(header) if k != "__metadata__")
    b0 = header[name]["data_offsets"][0]
    data = data[:b0] + b"\xc0\x7f" + data[b0 + 2:]  # bf16 NaN
    _write(ckpt / "model.safetensors", header, data)


BAD_CHECKPOINTS = [
    ("bf16 relabelled f16", lambda c: _relabel(c, "F16"), "stored as F16 but config.json says torch_dtype bfloat16"),
    ("pad id outside the vocabulary", lambda c: _set_config(c, pad_token_id=40000), "pad_token_id 40000 is outside"),
    ("vocabulary not the embedding's", lambda c: _set_config(c, vocab_size=32063), "has shape [32064, 96]"),
    ("a shard missing", lambda c: _shard(c, drop="model-00002-of-00002.safetensors"), "a shard missing"),
    ("a duplicated shard", lambda c: _shard(c, extra="model-00001-of-00002 (1).safetensors"), "stray shard"),
    ("NaN weights", _nan_weights, "holds NaN or inf"),
]


@pytest.mark.parametrize("what, damage, message", BAD_CHECKPOINTS, ids=[b[0] for b in BAD_CHECKPOINTS])
def test_a_checkpoint_that_disagrees_with_itself_is_one_line_naming_the_file(tmp_path, cli_run, what, damage, message):
    from vla_eval.configs import shipped_checkpoint

    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped_checkpoint("tiny", "libero_object"), ckpt)
    damage(ckpt)
    r = cli_run("bench-policy", "--checkpoint", ckpt, "--device", "cpu", "--batches", "1", "--iters", "1")
    assert r.returncode == 2 and message in r.stderr and str(ckpt) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_sharded_checkpoint_with_its_index_loads(tmp_path):
    from vla_eval.configs import shipped_checkpoint
    from vla_eval.policies.openvla.native.validate import check_checkpoint_dir, weight_files

    ckpt = tmp_path / "ckpt"
    shutil.copytree(shipped_checkpoint("tiny", "libero_object"), ckpt)
    _shard(ckpt)
    check_checkpoint_dir(ckpt)
    assert [p.name for p in weight_files(ckpt)] == ["model-00001-of-00002.safetensors",
                                                    "model-00002-of-00002.safetensors"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("x"), "is a file"),
    (lambda p: p.symlink_to(p), "leads nowhere"),
])
def test_a_checkpoint_path_that_is_no_folder_is_named_as_such(tmp_path, make, message):
    from vla_eval.policies.openvla.hub import resolve_checkpoint_dir

    path = tmp_path / "ckpt"
    make(path)
    with pytest.raises(UsageError, match=message):
        resolve_checkpoint_dir(str(path), None)


@pytest.mark.parametrize("window", [0, -5, 2.5, True, 10**9])
def test_diagnose_features_refuse_a_window_out_of_range(window):
    from vla_eval.diagnose import episode_features

    with pytest.raises(UsageError, match="window"):
        episode_features([], window)
