"""The files the toolkit ships and writes load under OpenVLA's own pins (transformers 4.40.1,
tokenizers 0.19.1, installed by ``vla-eval setup --pins`` in a side folder) and give the prompt
ids the toolkit's stack gives; ``vla-eval setup --check`` reports a bare cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vla_eval.configs import shipped_checkpoint
from vla_eval.policies.openvla.native import llama_tokenizer
from vla_eval.setup import pins_dir, pins_installed

PROMPTS = ["In: What action should the robot take to pick up the alphabet soup and place it in the basket?\nOut:",
           "In: What action should the robot take to put both the alphabet soup and the tomato sauce in the basket?"
           "\nOut:", " leading space", "ünïcode ☃ and\ttabs  double  spaces"]

PINNED = r"""
import json, sys
import tokenizers, transformers
from transformers import AutoTokenizer, LlamaConfig, PretrainedConfig
assert (transformers.__version__, tokenizers.__version__) == ("4.40.1", "0.19.1"), transformers.__file__
folder, prompts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
cfg = PretrainedConfig.from_json_file(folder + "/config.json") if len(sys.argv) > 3 else None
if cfg is not None:
    LlamaConfig(**cfg.text_config)
print(json.dumps([tok(p).input_ids for p in prompts]))
"""


def _pinned_ids(folder, with_config: bool) -> list:
    env = {**os.environ, "PYTHONPATH": str(pins_dir())}
    args = [sys.executable, "-c", PINNED, str(folder), json.dumps(PROMPTS)] + (["config"] if with_config else [])
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _ids(folder) -> list:
    tok = llama_tokenizer.load_tokenizer(folder)
    return [list(tok(p).input_ids) for p in PROMPTS]


needs_pins = pytest.mark.skipif(not pins_installed(), reason="OpenVLA's pinned stack is not installed: "
                                                              "vla-eval setup --pins (make test does it)")


@needs_pins
def test_shipped_checkpoint_loads_under_openvla_pins():
    folder = shipped_checkpoint("tiny", "libero_object")
    assert _pinned_ids(folder, with_config=True) == _ids(folder)


@needs_pins
@pytest.mark.skipif(not llama_tokenizer.is_installed(), reason="Llama-2 tokenizer not installed (vla-eval setup)")
def test_written_checkpoints_and_the_cached_tokenizer_load_under_openvla_pins(tmp_path):
    from vla_eval.policies.openvla.native.random_checkpoints import write_random_checkpoint

    for kind in ("llama2", "char"):
        folder = write_random_checkpoint(tmp_path / kind, tokenizer=kind)
        assert _pinned_ids(folder, with_config=True) == _ids(folder), kind
    assert _pinned_ids(llama_tokenizer.tokenizer_dir(), with_config=False) == _ids(llama_tokenizer.tokenizer_dir())


def test_portable_merges_keeps_the_merges():
    tok = {"model": {"type": "BPE", "merges": [["▁", "t"], ["e", "r"]]}}
    assert llama_tokenizer.portable_merges(tok)["model"]["merges"] == ["▁ t", "e r"]
    assert llama_tokenizer.portable_merges(tok)["model"]["merges"] == ["▁ t", "e r"]  # idempotent
    with pytest.raises(ValueError, match="space"):
        llama_tokenizer.portable_merges({"model": {"merges": [["a b", "c"]]}})


def test_setup_check_on_a_bare_cache_names_what_is_missing_and_writes_nothing(tmp_path):
    env = {**os.environ, "VLA_EVAL_CACHE": str(tmp_path / "cache")}
    env.pop("LIBERO_CONFIG_PATH", None)
    r = subprocess.run([sys.executable, "-m", "vla_eval.cli", "setup", "--check", "--pins"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    for part in ("LIBERO config: missing", "Llama-2 tokenizer: missing", "OpenVLA's pinned stack: missing"):
        assert part in r.stdout
    assert "vla-eval setup" in r.stderr
    assert not (tmp_path / "cache").exists()


def test_setup_check_passes_where_make_test_set_up():
    r = subprocess.run([sys.executable, "-m", "vla_eval.cli", "setup", "--check"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
