"""The released layout as a user meets it: sharded weights + index and the hub's other files, loaded
through ``--checkpoint DIR``; broken folders refused before a weight is read; ``check-fullsize``
end to end at tiny size. The OpenVLA-7B and official-code checks run by hand (``-m fullsize``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, strategies as st  # noqa: E402

from vla_eval.errors import UsageError  # noqa: E402
from vla_eval.policies.openvla.native import checkpoint as ckpt_mod  # noqa: E402
from vla_eval.policies.openvla.native.layout import CODE_FILES, HUB_FILES, NOT_WRITTEN  # noqa: E402
from vla_eval.policies.openvla.native.random_checkpoints import (  # noqa: E402
    hf_config, random_entries, write_random_checkpoint)
from vla_eval.policies.openvla.native.shards import Entry, plan_shards  # noqa: E402

DATA = Path(__file__).parent / "data"
FRAMES = DATA / "libero_frames.npz"


def _three_shards() -> int:
    """A shard size that splits the tiny model into three files, as OpenVLA-7B's 7 GB splits its 15 GB."""
    entries = random_entries(hf_config("tiny"))
    total = sum(e.nbytes for e in entries)
    return next(limit for limit in range(total // 3, total, 4096) if len(plan_shards(entries, limit)) == 3)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("sharded") / "ckpt", max_shard_bytes=_three_shards())


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "vla_eval.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_the_written_folder_is_the_hubs_file_set(sharded):
    want = set(HUB_FILES) - set(NOT_WRITTEN) - set(CODE_FILES)
    assert {p.name for p in sharded.iterdir()} == want
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert index["metadata"]["total_size"] == sum(e.nbytes for e in random_entries(hf_config("tiny")))
    assert json.loads((sharded / "generation_config.json").read_text())["pad_token_id"] == 32000


def test_sharded_and_single_file_folders_act_the_same(sharded, tmp_path):
    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.check_backend import inputs
    from vla_eval.policies.openvla.native.backend import load_native_backend

    single = write_random_checkpoint(tmp_path / "single")
    assert (single / "model.safetensors").is_file() and not (single / "model.safetensors.index.json").exists()
    images, prompts = inputs(np.load(FRAMES)["frames"][:2], ["put the bowl on the plate"])
    opts = OpenVLAOptions(device="cpu", dtype="float32")
    a = load_native_backend(str(sharded), opts).predict(images, prompts, "libero_object_no_noops")
    b = load_native_backend(str(single), opts).predict(images, prompts, "libero_object_no_noops")
    assert np.array_equal(a, b) and np.ptp(a, axis=0).max() > 0  # same weights, and the actions move


@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), st.integers(1, 120))
def test_shards_are_consecutive_and_within_the_limit(sizes, limit):
    entries = [Entry(f"t{i}", (n,), torch.float32, lambda: None) for i, n in enumerate(sizes)]
    shards = plan_shards(entries, limit)
    assert [e for s in shards for e in s] == entries and all(shards)
    assert all(sum(e.nbytes for e in s) <= limit or len(s) == 1 for s in shards)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("break_it, names", [
    (lambda d: (d / "model-00002-of-00003.safetensors").unlink(), ["model.safetensors.index.json",
                                                                   "model-00002-of-00003.safetensors", "missing"]),
    (lambda d: (d / "model.safetensors.index.json").write_text(
        (d / "model.safetensors.index.json").read_text().replace("model-00003-of-00003", "model-00004-of-00003")),
     ["model-00004-of-00003.safetensors", "not in"]),
    (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"intermediate_size": 128', '"intermediate_size": 96')),
     ["model-0000", "(128, 64)", "(96, 64)", "disagree", "shape mismatches"]),
    (lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')),
     ["layers.2", "held by no weight file"]),
])
def test_a_broken_folder_is_refused_before_any_weight_is_read(sharded, tmp_path, monkeypatch, break_it, names):
    folder = _copy(sharded, tmp_path / "ckpt")
    break_it(folder)

    def no_reading(*a, **k):
        raise AssertionError("a weight was read before the folder was checked")

    monkeypatch.setattr(ckpt_mod, "read_weights", no_reading)
    with pytest.raises(UsageError) as err:
        ckpt_mod.load_native(folder, "cpu", "float32")
    assert all(n in str(err.value) for n in names), str(err.value)


def test_check_fullsize_cli_at_tiny_size(tmp_path):
    out = tmp_path / "ckpt"
    r = _cli("check-fullsize", "--checkpoint", out, "--write", "--size", "tiny", "--skip-official",
             "--frames", FRAMES, "--n", "2", "--json", tmp_path / "numbers.json")
    assert r.returncode == 0, r.stdout + r.stderr
    numbers = json.loads((tmp_path / "numbers.json").read_text())
    assert numbers["inputs"] == 4 and numbers["batched_unexplained"] == 0
    assert "peak RSS" in r.stdout and "official code: not run" in r.stdout
    # --write never writes into a folder that has files; a shard missing is one line, exit 2
    before = sorted(p.name for p in out.iterdir())
    r = _cli("check-fullsize", "--checkpoint", out, "--write", "--size", "tiny", "--skip-official")
    assert r.returncode == 2 and "not an empty folder" in r.stderr and sorted(p.name for p in out.iterdir()) == before
    (out / "model.safetensors").unlink()
    r = _cli("check-fullsize", "--checkpoint", out, "--skip-official", "--frames", FRAMES)
    assert r.returncode == 2 and "no *.safetensors files" in r.stderr, r.stderr


def test_bad_arguments_are_refused(tmp_path):
    r = _cli("check-fullsize", "--checkpoint", tmp_path / "none", "--skip-official")
    assert r.returncode == 2 and "no such folder" in r.stderr
    r = _cli("check-fullsize", "--checkpoint", tmp_path / "new", "--write", "--size", "tiny")
    assert r.returncode == 2 and "--official-code DIR" in r.stderr and not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    r = _cli("check-fullsize", "--checkpoint", tmp_path / "old")
    assert r.returncode == 2 and "has no OpenVLA code files" in r.stderr
    r = _cli("check-fullsize", "--checkpoint", tmp_path / "x", "--write", "--size", "huge")
    assert r.returncode == 2 and "huge" in r.stderr and "7b" in r.stderr


# -- by hand: pytest -m fullsize tests/test_fullsize.py ---------------------------------------------------------
OFFICIAL_CODE = os.environ.get("VLA_EVAL_OPENVLA_CODE")  # OpenVLA's prismatic/extern/hf folder
needs_official = pytest.mark.skipif(not OFFICIAL_CODE, reason="set VLA_EVAL_OPENVLA_CODE to OpenVLA's "
                                                              "prismatic/extern/hf folder")


@pytest.mark.fullsize
@needs_official
@pytest.mark.parametrize("size, dtype", [("small", "float32"), ("7b", "bfloat16")])
def test_native_and_official_code_agree(tmp_path, size, dtype):
    out = Path(os.environ.get("VLA_EVAL_FULLSIZE_DIR", tmp_path)) / f"openvla-{size}-random"
    write = [] if out.is_dir() else ["--write", "--size", size, "--official-code", OFFICIAL_CODE]
    r = _cli("check-fullsize", "--checkpoint", out, *write, "--frames", FRAMES, "--dtype", dtype,
             "--json", tmp_path / "numbers.json", timeout=3600)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
