"""OpenVLA's released checkpoint layout, written for checkpoints made here (random test
weights, the trained tiny policy), so the official remote code could read them too.

    config.json              every ``OpenVLAConfig`` field the released openvla-7b has
                             (backbone ids, arch specifier, resize strategy, act-layer
                             overrides, ``auto_map``, ...), norm_stats per unnorm key
    model.safetensors        (or model-0000k-of-0000n.safetensors + model.safetensors.index.json)
                             the remote code's key names (``ls1.scale_factor``), metadata
                             ``{"format": "pt"}``, and every tensor, incl. the ViTs' last block,
                             final norms and SigLIP's attention-pool head that OpenVLA never runs
    generation_config.json   as save_pretrained writes it
    preprocessor_config.json the ``PrismaticImageProcessor`` fields
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                             Llama-2's tokenizer with OpenVLA's settings (``<PAD>`` = 32000,
                             model inputs ``input_ids`` and ``attention_mask`` only)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vla_eval.policies.openvla.native.vit import ViTConfig
from vla_eval.policies.openvla.native.llama_tokenizer import portable_merges, rewrite_portable

VIT_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")
AUTO_MAP = {"AutoConfig": "configuration_prismatic.OpenVLAConfig",
            "AutoModelForVision2Seq": "modeling_prismatic.OpenVLAForActionPrediction"}


def openvla_config(timm_ids: list[str], image_sizes: list[int], text_config: dict, norm_stats: dict, *,
                   vision_backbone_id: str, llm_backbone_id: str, hf_llm_id: str = "meta-llama/Llama-2-7b-hf") -> dict:
    """config.json with the released checkpoint's fields (OpenVLAConfig's constructor arguments)."""
    return {
        "architectures": ["OpenVLAForActionPrediction"], "auto_map": AUTO_MAP, "model_type": "openvla",
        "vision_backbone_id": vision_backbone_id, "llm_backbone_id": llm_backbone_id, "hf_llm_id": hf_llm_id,
        "arch_specifier": "no-align+fused-gelu-mlp", "use_fused_vision_backbone": True,
        "image_resize_strategy": "resize-naive", "timm_model_ids": list(timm_ids),
        "timm_override_act_layers": [None] * len(timm_ids), "image_sizes": list(image_sizes),
        "llm_max_length": 2048, "pad_token_id": 32000, "pad_to_multiple_of": 64, "n_action_bins": 256,
        "output_projector_states": False, "text_config": text_config, "norm_stats": norm_stats,
        "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
    }


def preprocessor_config(vision: tuple[ViTConfig, ...]) -> dict:
    return {
        "image_processor_type": "PrismaticImageProcessor", "auto_map": {
            "AutoImageProcessor": "processing_prismatic.PrismaticImageProcessor",
            "AutoProcessor": "processing_prismatic.PrismaticProcessor"},
        "processor_class": "PrismaticProcessor", "image_resize_strategy": "resize-naive",
        "input_sizes": [[3, v.img_size, v.img_size] for v in vision], "interpolations": ["bicubic"] * len(vision),
        "means": [list(v.mean) for v in vision], "stds": [list(v.std) for v in vision],
        "tvf_crop_params": [{"output_size": [v.img_size, v.img_size]} for v in vision],
        "tvf_do_letterbox": False, "tvf_letterbox_fill": None, "tvf_normalize_params": [
            {"mean": list(v.mean), "std": list(v.std), "inplace": False} for v in vision],
        "tvf_resize_params": [{"antialias": True, "interpolation": 3, "max_size": None,
                               "size": [v.img_size, v.img_size]} for v in vision],
        "use_fused_vision_backbone": len(vision) == 2,
    }


def unused_vit_shapes(vision: tuple[ViTConfig, ...]) -> dict[str, tuple[int, ...]]:
    """Every tensor a released checkpoint holds beyond what OpenVLA runs: each ViT's last block
    (timm's names), its final norm, and SigLIP's attention-pool head (no class token)."""
    out: dict[str, tuple[int, ...]] = {}
    for prefix, v in zip(VIT_PREFIXES, vision):
        d, h = v.embed_dim, v.mlp_hidden
        last = f"{prefix}blocks.{v.depth - 1}."
        shapes = {"norm1.weight": (d,), "norm1.bias": (d,), "attn.qkv.weight": (3 * d, d), "attn.qkv.bias": (3 * d,),
                  "attn.proj.weight": (d, d), "attn.proj.bias": (d,), "norm2.weight": (d,), "norm2.bias": (d,),
                  "mlp.fc1.weight": (h, d), "mlp.fc1.bias": (h,), "mlp.fc2.weight": (d, h), "mlp.fc2.bias": (d,)}
        if v.layer_scale:
            shapes.update({"ls1.scale_factor": (d,), "ls2.scale_factor": (d,)})
        out.update({last + k: s for k, s in shapes.items()})
        out.update({prefix + "norm.weight": (d,), prefix + "norm.bias": (d,)})
        if not v.class_token:  # SigLIP's "map" pooling head
            pool = {"latent": (1, 1, d), "q.weight": (d, d), "q.bias": (d,), "kv.weight": (2 * d, d),
                    "kv.bias": (2 * d,), "proj.weight": (d, d), "proj.bias": (d,), "norm.weight": (d,),
                    "norm.bias": (d,), "mlp.fc1.weight": (h, d), "mlp.fc1.bias": (h,), "mlp.fc2.weight": (d, h),
                    "mlp.fc2.bias": (d,)}
            out.update({f"{prefix}attn_pool.{k}": s for k, s in pool.items()})
    return out


def unused_value(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random, nonzero values for a never-run tensor: nothing here may be read, and a loader that
    did would show."""
    return torch.randn(shape, generator=generator).mul_(0.02).add_(0.01)


def unused_vit_tensors(vision: tuple[ViTConfig, ...], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: unused_value(s, g) for k, s in unused_vit_shapes(vision).items()}


def tokenizer_config() -> dict:
    """OpenVLA's tokenizer settings: Llama-2's, BOS added, ``<PAD>`` appended as id 32000."""
    return {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<PAD>",
            "model_max_length": 2048, "padding_side": "right", "legacy": False, "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"]}


def write_tokenizer(out_dir: Path, source: Path | None = None, tokenizer=None) -> None:
    """The tokenizer files: Llama-2's from ``source`` (a folder with tokenizer.json), else the
    given fast tokenizer object (tests' character tokenizer); OpenVLA's config either way."""
    out_dir = Path(out_dir)
    if source is not None:
        tok = json.loads((Path(source) / "tokenizer.json").read_text(encoding="utf-8"))
        if not any(t["content"] == "<PAD>" for t in tok["added_tokens"]):
            tok["added_tokens"].append({"id": 32000, "content": "<PAD>", "single_word": False, "lstrip": False,
                                        "rstrip": False, "normalized": False, "special": True})
        (out_dir / "tokenizer.json").write_text(json.dumps(portable_merges(tok), ensure_ascii=False, indent=2),
                                                encoding="utf-8")
        cfg = tokenizer_config()
    else:
        tokenizer.save_pretrained(str(out_dir))
        rewrite_portable(out_dir / "tokenizer.json")
        cfg = {**tokenizer_config(), "pad_token": None, "legacy": True}  # no <PAD> in a character vocabulary
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            (out_dir / name).unlink(missing_ok=True)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))
    special = {k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if cfg[k]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=1))


# The hub folder of openvla/openvla-7b: what OpenVLA's conversion script writes (model, image processor
# and processor through save_pretrained, weights sharded at 7 GB) plus its remote code. Written here:
# all but the ones in NOT_WRITTEN; the code files only from a folder of OpenVLA's code.
HUB_FILES = ("config.json", "generation_config.json", "model-00001-of-00003.safetensors",
             "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors", "model.safetensors.index.json",
             "preprocessor_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
             "special_tokens_map.json", "added_tokens.json", "configuration_prismatic.py", "modeling_prismatic.py",
             "processing_prismatic.py", "README.md", ".gitattributes")
CODE_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
NOT_WRITTEN = {"tokenizer.model": "the SentencePiece model is not derivable from tokenizer.json; transformers "
                                  "loads tokenizer.json first",
               "README.md": "the hub's model card", ".gitattributes": "the hub's git settings"}


def generation_config() -> dict:
    return {"_from_model_config": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 32000,
            "transformers_version": "4.40.1"}


def check_official_code(folder: Path) -> None:
    from vla_eval.errors import UsageError

    missing = [f for f in CODE_FILES if not (folder / f).is_file()]
    if missing:
        raise UsageError(f"--official-code {folder} has no {missing[0]}; give OpenVLA's prismatic/extern/hf folder "
                         f"(or a hub snapshot), which holds {', '.join(CODE_FILES)}")


def write_released_files(out_dir: Path, config: dict, vision: tuple[ViTConfig, ...], tokenizer_source: Path | None = None,
                         tokenizer=None, official_code: Path | None = None) -> None:
    """Everything but the weights: config, generation config, processor, tokenizer, and OpenVLA's
    code files when ``official_code`` holds them (one line naming the missing file otherwise)."""
    import shutil

    out_dir = Path(out_dir)
    if official_code is not None:
        check_official_code(Path(official_code))
    (out_dir / "config.json").write_text(json.dumps(config, indent=1))
    (out_dir / "generation_config.json").write_text(json.dumps(generation_config(), indent=1))
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(vision), indent=1))
    write_tokenizer(out_dir, tokenizer_source, tokenizer)
    if tokenizer_source is not None:
        (out_dir / "added_tokens.json").write_text(json.dumps({"<PAD>": 32000}, indent=1))
    for name in CODE_FILES if official_code is not None else ():
        shutil.copyfile(Path(official_code) / name, out_dir / name)


def save_released(model, out_dir: str | Path, config: dict, dtype: torch.dtype | None = None, seed: int = 0,
                  tokenizer_source: Path | None = None, tokenizer=None, max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` in the released layout (see the module docstring)."""
    from vla_eval.policies.openvla.native.checkpoint import save_weights

    extra = unused_vit_tensors(model.cfg.vision, seed)
    if dtype is not None:
        extra = {k: v.to(dtype) for k, v in extra.items()}
    save_weights(model, out_dir, extra=extra, max_shard_bytes=max_shard_bytes)
    write_released_files(Path(out_dir), config, model.cfg.vision, tokenizer_source, tokenizer)
    return Path(out_dir)
