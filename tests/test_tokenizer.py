"""The prompt tokenizer feeds the model the ids OpenVLA's own stack (transformers 4.40.1)
gives: llama.cpp's 47 golden strings, and every OpenVLA prompt of the five LIBERO suites in
both templates (ids generated once by tests/data/make_prompt_ids.py under transformers
4.40.1, cross-checked there against SentencePiece and the slow tokenizer)."""
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from vla_eval.policies.openvla.native import llama_tokenizer  # noqa: E402
from vla_eval.policies.openvla.preprocess import build_prompt  # noqa: E402

DATA = Path(__file__).parent / "data"
SHIPPED = Path(__file__).parent.parent / "configs" / "checkpoints" / "tiny-openvla-libero_object"
REFERENCE = json.loads((DATA / "prompt_ids.json").read_text())


@pytest.fixture(scope="module")
def cached():
    if not llama_tokenizer.is_installed():
        pytest.skip("Llama-2 tokenizer not installed (python -m vla_eval.policies.openvla.native.llama_tokenizer install)")
    return llama_tokenizer.tokenizer_dir()


def golden(folder: Path) -> list[tuple[str, list[int]]]:
    texts = (folder / "golden.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = [[int(t) for t in line.split()] for line in (folder / "golden.out").read_text().split("\n")]
    assert len(texts) == len(ids) == 47
    return list(zip(texts, ids))


def test_golden_ids_all_equal(cached):
    tok = llama_tokenizer.load_tokenizer(cached)
    wrong = [(t, ids) for t, ids in golden(cached) if tok(t, add_special_tokens=False).input_ids != ids]
    assert not wrong, f"{len(wrong)} of 47 golden strings tokenised differently, e.g. {wrong[0]!r}"


def test_reference_covers_every_suite_and_both_templates():
    rows = REFERENCE["prompts"]
    assert REFERENCE["transformers"] == "4.40.1" and REFERENCE["golden_matched_by_sentencepiece"] == "47/47"
    assert {r["suite"] for r in rows} == {"libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90"}
    assert len(rows) == 2 * 130 and {r["template"] for r in rows} == {"default", "rephrased"}


@pytest.mark.parametrize("where", ["cache", "shipped checkpoint"])
def test_openvla_prompts_get_the_4_40_1_ids(cached, where):
    tok = llama_tokenizer.load_tokenizer(cached if where == "cache" else SHIPPED)
    instructions = json.loads((DATA / "libero_instructions.json").read_text())
    for row in REFERENCE["prompts"]:
        prompt = build_prompt(instructions[row["suite"]][row["task"]], row["template"])
        assert prompt == row["prompt"]  # the project's templates are the ones the ids were made for
        assert tok(prompt).input_ids == row["ids"], prompt


def test_a_stale_install_is_not_taken_for_a_good_one(tmp_path, cached):
    """An install from before the normaliser fix (transformers 5's Metaspace) is redone."""
    stale = json.loads((cached / "tokenizer.json").read_text(encoding="utf-8"))
    stale["normalizer"] = None
    stale["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    (tmp_path / "tokenizer.json").write_text(json.dumps(stale), encoding="utf-8")
    assert not llama_tokenizer.is_installed(tmp_path) and llama_tokenizer.is_installed(cached)
