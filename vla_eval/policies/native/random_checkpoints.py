"""Random-weight OpenVLA checkpoints, in the released layout, for tests and benchmarks.

No weights can be downloaded everywhere this runs, so the native model is exercised on
checkpoints written here: the real file layout (``config.json``, ``model.safetensors`` with
OpenVLA's key names including ``scale_factor`` and the never-run ViT tensors, a tokenizer),
with random weights. Two sizes: ``7b`` (OpenVLA-7B's exact architecture, built in memory for
``bench-policy``) and ``tiny`` (same structure, ~5 M parameters, written to disk in a second).
"""
from __future__ import annotations

import string
from pathlib import Path

import torch

from vla_eval.policies.native.vit import VISION_ARCHS, ViTConfig

OPENVLA_7B_TIMM_IDS = ["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"]
TINY_TIMM_IDS = ["vla-eval/tiny-dinov2-reg4", "vla-eval/tiny-siglip"]


def _demo_stats(scale: float) -> dict:
    return {"action": {"q01": [-scale] * 6 + [0.0], "q99": [scale] * 6 + [1.0], "mask": [True] * 6 + [False]}}


def hf_config(size: str = "tiny") -> dict:
    """``config.json`` as OpenVLA's remote code writes it (the fields the native model reads)."""
    from vla_eval.policies.action_tokens import shipped_norm_stats

    text = {"model_type": "llama", "vocab_size": 32064, "pad_token_id": 32000}
    if size == "tiny":
        text.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4)
    elif size != "7b":
        raise ValueError(f"size {size!r}: tiny or 7b")
    ids = TINY_TIMM_IDS if size == "tiny" else OPENVLA_7B_TIMM_IDS
    return {
        "model_type": "openvla", "use_fused_vision_backbone": True, "timm_model_ids": ids,
        "image_sizes": [VISION_ARCHS[i].img_size for i in ids], "text_config": text,
        "n_action_bins": 256, "pad_to_multiple_of": 64,
        # A fine-tuned checkpoint's key (only the _no_noops variant, as the released ones),
        # plus the base model's bridge_orig statistics.
        "norm_stats": {"libero_object_no_noops": _demo_stats(0.9),
                       "bridge_orig": {"action": shipped_norm_stats("bridge_orig")["action"]}},
    }


def unused_vit_tensors(vision: tuple[ViTConfig, ...]) -> dict[str, torch.Tensor]:
    """What a real checkpoint also holds: each ViT's last block and final norm (and SigLIP's
    attention-pool head), none of which OpenVLA's features use."""
    out = {}
    for prefix, v in zip(("vision_backbone.featurizer.", "vision_backbone.fused_featurizer."), vision):
        d = v.embed_dim
        last = f"{prefix}blocks.{v.depth - 1}."
        out.update({last + "norm1.weight": torch.ones(d), last + "attn.qkv.weight": torch.zeros(3 * d, d),
                    last + "mlp.fc2.bias": torch.zeros(d), prefix + "norm.weight": torch.ones(d)})
        if v.layer_scale:
            out[last + "ls1.scale_factor"] = torch.ones(d)
        if not v.class_token:
            out[prefix + "attn_pool.latent"] = torch.zeros(1, 1, d)
    return out


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


def write_random_checkpoint(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    from vla_eval.policies.native.checkpoint import build_model, save_hf_layout
    from vla_eval.policies.native.model import NativeConfig

    cfg_dict = hf_config(size)
    cfg = NativeConfig.from_hf(cfg_dict)
    torch.manual_seed(seed)
    model = build_model(cfg, "cpu", "float32")
    for p in model.parameters():  # transformers' init leaves the ViT/projector at default; make all O(1)
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    steer_head_to_action_bins(model)
    out = save_hf_layout(model, out_dir, cfg_dict, extra=unused_vit_tensors(cfg.vision))
    char_tokenizer().save_pretrained(str(out))
    return out
