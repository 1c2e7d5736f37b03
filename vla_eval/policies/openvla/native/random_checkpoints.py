"""Random-weight OpenVLA checkpoints, in the released layout, for tests and benchmarks.

No weights can be downloaded everywhere this runs, so the native model is exercised on
checkpoints written here in the full released layout (``layout.py``: every config field,
safetensors metadata, every tensor incl. the never-run ones, Llama-2's tokenizer where it is
installed, shards and their index as the hub has them), with random weights, nonzero
everywhere (LayerScale, norms, biases too), so a key mapped to the wrong place cannot hide
behind a zero or a one. Each tensor is drawn from its own seeded generator and written before
the next is made (``shards.py``): OpenVLA-7B's 15 GB folder is written in ~1 GB of memory.

    size    vision backbones               LLM                   parameters
    tiny    tiny DINOv2 + SigLIP at 56 px   2 layers, 64 wide     ~5 M
    small   OpenVLA-7B's (ViT-L + So400m)   2 layers, 64 wide     ~0.73 B: the smallest the official code accepts
    7b      OpenVLA-7B's                    Llama-2-7B            7,498 M, OpenVLA-7B's exact architecture
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

from vla_eval.policies.openvla.native.vit import VISION_ARCHS

OPENVLA_7B_TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
TINY_TIMM_IDS = ["vla-eval/tiny-dinov2-reg4", "vla-eval/tiny-siglip"]


TINY_LLM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4)
SIZES = ("tiny", "small", "7b")
RELEASED_SHARD_BYTES = 7 * 10**9  # OpenVLA's conversion script: save_pretrained(max_shard_size="7GB")


def _demo_stats(scale: float) -> dict:
    return {"action": {"q01": [-scale] * 6 + [0.0], "q99": [scale] * 6 + [1.0], "mask": [True] * 6 + [False]}}


def hf_config(size: str = "tiny") -> dict:
    """``config.json`` in the released layout for one of ``SIZES``."""
    from vla_eval.errors import bad_choice
    from vla_eval.policies.openvla.tokens import shipped_norm_stats
    from vla_eval.policies.openvla.native.layout import openvla_config

    if size not in SIZES:
        raise bad_choice("size", size, SIZES)
    text = {"model_type": "llama", "vocab_size": 32064, "pad_token_id": 32000, "torch_dtype": "bfloat16"}
    if size != "7b":
        text.update(TINY_LLM)
    ids = TINY_TIMM_IDS if size == "tiny" else OPENVLA_7B_TIMM_IDS
    # A fine-tuned checkpoint's key (only the _no_noops variant, as the released ones), plus
    # the base model's bridge_orig statistics.
    norm_stats = {"libero_object_no_noops": _demo_stats(0.9),
                  "bridge_orig": {"action": shipped_norm_stats("bridge_orig")["action"]}}
    # The official code accepts only its known backbone ids, so "small" names the 7B's.
    return openvla_config(ids, [VISION_ARCHS[i].img_size for i in ids], text, norm_stats,
                          vision_backbone_id="tiny-dinosiglip-56px" if size == "tiny" else "dinosiglip-vit-so-224px",
                          llm_backbone_id="tiny-llama2" if size == "tiny" else "llama2-7b-pure")


def char_tokenizer():
    """A character-level fast tokenizer with Llama's special ids (<unk> 0, <s> 1, </s> 2) that
    prepends BOS like Llama's: prompts become real, distinct token sequences."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def random_value(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """O(1) random values by role: matrices ~ N(0, 1/fan_in), norm weights and LayerScale around 1
    and 0.1, biases small but nonzero (transformers' init leaves ones and zeros)."""
    noise = torch.randn(shape, generator=generator)
    if len(shape) > 1:
        return noise.mul_(shape[-1] ** -0.5)
    if name.endswith(".scale_factor"):
        return noise.mul_(0.05).add_(0.1)
    if "norm" in name and name.endswith("weight"):
        return noise.mul_(0.1).add_(1.0)
    return noise.mul_(0.02)


def steer_to_action_bins(head: torch.Tensor, action_vocab_size: int, n_bins: int) -> torch.Tensor:
    """Zero the LM-head rows of non-action tokens: a random model then emits action tokens
    (whose choice depends on the image and prompt) instead of arbitrary words, so its actions
    move and the pre-flight image check and the drills have something to see."""
    keep = torch.zeros(head.shape[0], dtype=torch.bool)
    keep[action_vocab_size - n_bins:action_vocab_size] = True
    head[~keep] = 0.0
    return head


def random_entries(config: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> list:
    """Every tensor of a released checkpoint for ``config``, in the remote model's order (each
    ViT's parameters, then the ones OpenVLA never runs, projector, LLM), each from its own
    generator seeded by (seed, position): made only when written."""
    from vla_eval.policies.openvla.native.checkpoint import released_shapes
    from vla_eval.policies.openvla.native.layout import VIT_PREFIXES, unused_value, unused_vit_shapes
    from vla_eval.policies.openvla.native.model import NativeConfig
    from vla_eval.policies.openvla.native.shards import Entry

    cfg = NativeConfig.from_hf(config)
    shapes = released_shapes(cfg)
    unused = unused_vit_shapes(cfg.vision)
    ordered: dict[str, tuple[int, ...]] = {}
    for prefix in VIT_PREFIXES:
        ordered.update({k: s for k, s in shapes.items() if k.startswith(prefix)})
        ordered.update({k: s for k, s in unused.items() if k.startswith(prefix)})
    ordered.update({k: s for k, s in shapes.items() if k not in ordered})

    def make(i: int, name: str, shape: tuple[int, ...]):
        def build() -> torch.Tensor:
            g = torch.Generator().manual_seed(seed * 1_000_003 + i)
            value = unused_value(shape, g) if name in unused else random_value(name, shape, g)
            if name == "language_model.lm_head.weight":
                steer_to_action_bins(value, cfg.action_vocab_size, cfg.n_action_bins)
            return value
        return build

    return [Entry(name, shape, dtype, make(i, name, shape)) for i, (name, shape) in enumerate(ordered.items())]


def write_random_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0, tokenizer: str = "auto",
                            max_shard_bytes: int | None = None, dtype: torch.dtype | None = None,
                            official_code: Path | None = None) -> Path:
    """The released folder for ``size`` with random weights. ``tokenizer``: "llama2" (the cached
    Llama-2 tokenizer), "char" (the character-level one), or "auto" (Llama-2 where installed).
    ``dtype``: float32 for tiny (exact comparisons in tests), else bfloat16 as released.
    ``official_code``: a folder with OpenVLA's ``*_prismatic.py``, copied in as the hub has them."""
    from vla_eval.policies.openvla.native import llama_tokenizer
    from vla_eval.policies.openvla.native.layout import write_released_files
    from vla_eval.policies.openvla.native.model import NativeConfig
    from vla_eval.policies.openvla.native.shards import write_sharded

    if tokenizer not in ("auto", "llama2", "char"):
        raise ValueError(f"tokenizer {tokenizer!r}: auto, llama2 or char")
    use_llama = tokenizer == "llama2" or (tokenizer == "auto" and llama_tokenizer.is_installed())
    config = hf_config(size)
    dtype = dtype or (torch.float32 if size == "tiny" else torch.bfloat16)
    out = Path(out_dir)
    write_sharded(out, random_entries(config, seed, dtype), max_shard_bytes)
    write_released_files(out, config, NativeConfig.from_hf(config).vision,
                         tokenizer_source=llama_tokenizer.tokenizer_dir() if use_llama else None,
                         tokenizer=None if use_llama else char_tokenizer(), official_code=official_code)
    return out
