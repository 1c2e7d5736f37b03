"""Property: whatever bytes a run folder's files or a checkpoint's files hold, the commands that
read them end with exit 0, 1 or 2, at most one error line, no traceback, and nothing of the
user's deleted. Real folders (real writer, real manifest, the shipped checkpoint) are corrupted
at random: truncated, bytes flipped, spliced into, emptied, replaced by JSON of another shape."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_eval.records import JsonlWriter
from vla_eval.rundir import SweepConfig, check_or_write_manifest

from conftest import make_episode as _episode, make_step as _step

JSON_SHAPES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=8)


@st.composite
def corruption(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "empty", "json"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "splice":
        i = draw(st.integers(0, len(data)))
        return data[:i] + draw(st.binary(min_size=1, max_size=64)) + data[i:]
    if kind == "empty":
        return b""
    return json.dumps(draw(JSON_SHAPES)).encode()


def _run_folder(root: Path) -> Path:
    run = root / "run"
    check_or_write_manifest(run, SweepConfig(suite="libero_object", task_ids=(0,), seeds=2, policy="scripted",
                                              cameras=False))
    with JsonlWriter(run / "baseline.jsonl") as w:
        for seed in (0, 1):
            w.write(_step(step=0, seed=seed, attempt=f"a{seed}"))
            w.write(_episode(seed=seed, attempt=f"a{seed}"))
    return run


def _main(*argv) -> tuple[int, str]:
    from vla_eval.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue()


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), target=st.sampled_from(["baseline.jsonl", "manifest.json"]))
def test_a_corrupt_run_folder_gives_one_line_never_a_traceback(tmp_path_factory, data, target):
    root = tmp_path_factory.mktemp("run")
    run = _run_folder(root)
    path = run / target
    path.write_bytes(data.draw(corruption(path.read_bytes())))
    before = _listing(run)
    for argv in (("report", run), ("monitor", run / "baseline.jsonl"),
                 ("merge", root / "merged", run)):
        code, err = _main(*argv)
        assert code in (0, 1, 2), (argv, code, err)
        assert "Traceback" not in err and len([ln for ln in err.splitlines() if "error" in ln]) <= 1, (argv, err)
    assert _listing(run) >= before  # nothing of the user's deleted


@pytest.fixture(scope="module")
def shipped_copy(tmp_path_factory):
    from vla_eval.configs import shipped_checkpoint

    src = tmp_path_factory.mktemp("ckpt") / "ckpt"
    shutil.copytree(shipped_checkpoint("tiny", "libero_object"), src)
    return src


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), target=st.sampled_from(["config.json", "model.safetensors", "tokenizer.json",
                                               "preprocessor_config.json"]))
def test_a_corrupt_checkpoint_is_one_usage_error_naming_a_file(shipped_copy, tmp_path_factory, data, target):
    from vla_eval.errors import UsageError
    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.policy import load_backend

    ckpt = tmp_path_factory.mktemp("broken") / "ckpt"
    shutil.copytree(shipped_copy, ckpt)
    original = (ckpt / target).read_bytes()
    broken = data.draw(corruption(original))
    (ckpt / target).write_bytes(broken)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            load_backend("libero_object", OpenVLAOptions(checkpoint=str(ckpt), device="cpu", dtype="float32"))
    except UsageError as e:
        assert str(ckpt) in str(e) and "\n" not in str(e).strip(), str(e)
    # else: the corruption left a loadable checkpoint (e.g. a flipped byte inside a weight)
