"""Regenerate tests/data/prompt_ids.json: OpenVLA prompt token ids as transformers 4.40.1
(OpenVLA's pin) tokenizes them, for every LIBERO instruction of the five suites and both
prompt templates, plus llama.cpp's golden strings.

Run once in a scratch environment, never in the project's:

    pip install "transformers==4.40.1" "tokenizers==0.19.1" sentencepiece protobuf gguf
    python tests/data/make_prompt_ids.py VOCAB.gguf tests/data/libero_instructions.json tests/data/prompt_ids.json

VOCAB.gguf is ``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`` from the llama-cpp-python
sdist (Llama-2's 32000 SentencePiece pieces with their scores and types). The script rebuilds
Llama-2's ``tokenizer.model`` from it, then tokenizes three ways that must agree: SentencePiece
itself, transformers' slow ``LlamaTokenizer`` and the fast tokenizer converted from it, both
with OpenVLA's tokenizer settings (BOS added, no EOS, ``legacy=False``, pad token ``<PAD>``).
"""
import json
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
import transformers
from gguf import GGUFReader
from transformers.utils import sentencepiece_model_pb2_new as pb  # one proto registry for both
from transformers import LlamaTokenizer, LlamaTokenizerFast

TEMPLATES = {  # vla_eval.policies.openvla.preprocess.PROMPT_TEMPLATES
    "default": "In: What action should the robot take to {instruction_lower}?\nOut:",
    "rephrased": "What action should the robot take? {instruction}",
}


def field(reader: GGUFReader, key: str) -> list:
    f = reader.fields[key]
    return [f.parts[i].tobytes().decode() if f.types[-1].name == "STRING" else f.parts[i][0] for i in f.data]


def spm_model(gguf_path: str) -> bytes:
    """Llama-2's SentencePiece model proto from the GGUF vocabulary (BPE, byte fallback,
    dummy prefix, whitespace escaped, nothing else normalised)."""
    reader = GGUFReader(gguf_path)
    tokens, scores, types = (field(reader, f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
    m = pb.ModelProto()
    for t, s, ty in zip(tokens, scores, types):
        m.pieces.add(piece=t, score=float(s), type=int(ty))
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.split_digits = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True
    return m.SerializeToString()


def main(gguf_path: str, instructions_path: str, dst: str) -> None:
    proto = spm_model(gguf_path)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    golden_in = Path(gguf_path + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    golden_out = [[int(t) for t in line.split()] for line in Path(gguf_path + ".out").read_text().split("\n")]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.model").write_bytes(proto)
        kw = dict(add_bos_token=True, add_eos_token=False, legacy=False, pad_token="<PAD>")
        slow = LlamaTokenizer(str(Path(tmp) / "tokenizer.model"), **kw)
        fast = LlamaTokenizerFast(vocab_file=str(Path(tmp) / "tokenizer.model"), from_slow=True, **kw)
    golden_ok = sum(sp.encode(s) == ids for s, ids in zip(golden_in, golden_out))
    rows = []
    for suite, instructions in json.loads(Path(instructions_path).read_text()).items():
        for task, instruction in enumerate(instructions):
            for name, template in TEMPLATES.items():
                prompt = template.format(instruction_lower=instruction.lower(), instruction=instruction)
                ids = fast(prompt).input_ids
                assert ids == slow(prompt).input_ids == [1] + sp.encode(prompt), prompt
                rows.append({"suite": suite, "task": task, "template": name, "prompt": prompt, "ids": ids})
    Path(dst).write_text(json.dumps({
        "transformers": transformers.__version__, "sentencepiece": spm.__version__,
        "golden_matched_by_sentencepiece": f"{golden_ok}/{len(golden_in)}", "prompts": rows}, indent=0) + "\n")
    print(dst, len(rows), "prompts; golden strings matched by SentencePiece:", f"{golden_ok}/{len(golden_in)}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
