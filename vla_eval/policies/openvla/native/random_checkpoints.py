"""Random-weight OpenVLA checkpoints, in the released layout, for tests and benchmarks.

No weights can be downloaded everywhere this runs, so the native model is exercised on
checkpoints written here in the full released layout (``layout.py``: every config field,
safetensors metadata, every tensor incl. the never-run ones, Llama-2's tokenizer where it is
installed), with random weights, nonzero everywhere (LayerScale, norms, biases too), so a key
mapped to the wrong place cannot hide behind a zero or a one. Two sizes: ``7b`` (OpenVLA-7B's exact architecture, built in memory for
``bench-policy``) and ``tiny`` (same structure, ~5 M parameters, written to disk in a second).
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

from vla_eval.policies.openvla.native.vit import VISION_ARCHS

OPENVLA_7B_TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
TINY_TIMM_IDS = ["vla-eval/tiny-dinov2-reg4", "vla-eval/tiny-siglip"]


def _demo_stats(scale: float) -> dict:
    return {"action": {"q01": [-scale] * 6 + [0.0], "q99": [scale] * 6 + [1.0], "mask": [True] * 6 + [False]}}


def hf_config(size: str = "tiny") -> dict:
    """``config.json`` in the released layout, for OpenVLA-7B's architecture or the tiny one."""
    from vla_eval.policies.openvla.tokens import shipped_norm_stats
    from vla_eval.policies.openvla.native.layout import openvla_config

    text = {"model_type": "llama", "vocab_size": 32064, "pad_token_id": 32000, "torch_dtype": "bfloat16"}
    if size == "tiny":
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4)
    elif size != "7b":
        raise ValueError(f"size {size!r}: tiny or 7b")
    ids = TINY_TIMM_IDS if size == "tiny" else OPENVLA_7B_TIMM_IDS
    # A fine-tuned checkpoint's key (only the _no_noops variant, as the released ones), plus
    # the base model's bridge_orig statistics.
    norm_stats = {"libero_object_no_noops": _demo_stats(0.9),
                  "bridge_orig": {"action": shipped_norm_stats("bridge_orig")["action"]}}
    return openvla_config(ids, [VISION_ARCHS[i].img_size for i in ids], text, norm_stats,
                          vision_backbone_id="dinosiglip-vit-so-224px" if size == "7b" else "tiny-dinosiglip-56px",
                          llm_backbone_id="llama2-7b-pure" if size == "7b" else "tiny-llama2")


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


def steer_head_to_action_bins(model) -> None:
    """Zero the LM-head rows of non-action tokens: a random model then emits action tokens
    (whose choice depends on the image and prompt) instead of arbitrary words, so its actions
    move and the pre-flight image check and the drills have something to see."""
    head = model.language_model.lm_head.weight
    n_bins, vocab = model.cfg.n_action_bins, model.cfg.action_vocab_size
    with torch.no_grad():
        keep = torch.zeros(head.shape[0], dtype=torch.bool, device=head.device)
        keep[vocab - n_bins:vocab] = True
        head[~keep] = 0.0


def randomize(model, seed: int = 0) -> None:
    """O(1) random weights everywhere: matrices ~ N(0, 1/fan_in), norm weights and LayerScale
    around 1 and 0.1, biases small but nonzero (transformers' init leaves ones and zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() > 1:
                p.copy_(noise * p.shape[-1] ** -0.5)
            elif name.endswith(".gamma"):
                p.copy_(0.1 + 0.05 * noise)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.02 * noise)


def write_random_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0, tokenizer: str = "auto") -> Path:
    """``tokenizer``: "llama2" (the cached Llama-2 tokenizer), "char" (the character-level one),
    or "auto" (Llama-2 where installed)."""
    from vla_eval.policies.openvla.native import llama_tokenizer
    from vla_eval.policies.openvla.native.checkpoint import build_model
    from vla_eval.policies.openvla.native.layout import save_released
    from vla_eval.policies.openvla.native.model import NativeConfig

    if tokenizer not in ("auto", "llama2", "char"):
        raise ValueError(f"tokenizer {tokenizer!r}: auto, llama2 or char")
    use_llama = tokenizer == "llama2" or (tokenizer == "auto" and llama_tokenizer.is_installed())
    cfg_dict = hf_config(size)
    model = build_model(NativeConfig.from_hf(cfg_dict), "cpu", "float32")
    randomize(model, seed)
    steer_head_to_action_bins(model)
    return save_released(model, out_dir, cfg_dict, seed=seed,
                         tokenizer_source=llama_tokenizer.tokenizer_dir() if use_llama else None,
                         tokenizer=None if use_llama else char_tokenizer())
