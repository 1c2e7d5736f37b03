"""The Llama-2 tokenizer, fetched once into the cache (nothing of it is vendored in the repo).

OpenVLA tokenizes prompts with Llama-2's SentencePiece vocabulary. Without hub access the
vocabulary comes from PyPI: the llama-cpp-python sdist ships llama.cpp's test vocabulary
``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`` (Llama-2's 32000 pieces, with golden
``.inp``/``.out`` token ids). transformers converts it (``gguf_file=``, needs ``gguf``) and
the result is saved as a plain fast-tokenizer folder:

    $VLA_EVAL_CACHE/llama2-tokenizer/   tokenizer.json, tokenizer_config.json, golden.inp/.out

    python -m vla_eval.policies.native.llama_tokenizer install
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

SDIST = "llama-cpp-python==0.3.36"
VOCAB = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"


def tokenizer_dir() -> Path:
    return Path(os.environ.get("VLA_EVAL_CACHE", Path.home() / ".cache" / "vla-eval")) / "llama2-tokenizer"


def is_installed(folder: Path | None = None) -> bool:
    return ((folder or tokenizer_dir()) / "tokenizer.json").exists()


def install(folder: Path | None = None) -> Path:
    """Fetch the sdist with pip (PyPI only), convert the vocabulary, save it; idempotent."""
    folder = folder or tokenizer_dir()
    if is_installed(folder):
        return folder
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, SDIST], check=True)
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.split("/", 1)[-1].startswith(VOCAB)]
            tar.extractall(tmp, members=members, filter="data")
        vocab = next(Path(tmp).rglob(Path(VOCAB).name))
        tok = AutoTokenizer.from_pretrained(str(vocab.parent), gguf_file=vocab.name)
        staging = folder.with_name(folder.name + ".tmp")
        tok.save_pretrained(str(staging))
        for suffix in (".inp", ".out"):  # llama.cpp's golden strings and ids, for the tests
            (staging / f"golden{suffix}").write_bytes(vocab.with_name(vocab.name + suffix).read_bytes())
    _portable_config(staging)
    staging.replace(folder)  # appears whole or not at all
    return folder


def _portable_config(folder: Path) -> None:
    """Name the class every transformers version knows (4.40.1 has no ``TokenizersBackend``)."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(tokenizer_class="LlamaTokenizerFast", add_bos_token=True, add_eos_token=False, legacy=True)
    for key in ("backend", "is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=1))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] not in (["install"], ["check"]):
        print("usage: python -m vla_eval.policies.native.llama_tokenizer {install,check}", file=sys.stderr)
        return 2
    if argv[0] == "check":
        print("Llama-2 tokenizer:", tokenizer_dir() if is_installed() else "not installed")
        return 0 if is_installed() else 1
    print("Llama-2 tokenizer:", install())
    return 0


if __name__ == "__main__":
    sys.exit(main())
