"""Load OpenVLA's released safetensors into ``NativeOpenVLA`` by key mapping.

Checkpoint keys are the remote code's module paths. One rename: the remote code patches
timm's LayerScale to store ``scale_factor`` (HF's loader used to rewrite any ``gamma``), and
the native ViT keeps timm's ``gamma``. Keys for parts the native model never runs (the
ViTs' last block, final norm, SigLIP's attention-pool head) are skipped and counted; any
other unknown key, or a parameter the checkpoint lacks, is an error that lists them.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vla_eval.errors import UsageError, bad_choice
from vla_eval.policies.openvla.native.model import NativeConfig, NativeOpenVLA

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_VIT_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


def hf_to_native_key(key: str) -> str:
    return re.sub(r"\.(ls[12])\.scale_factor$", r".\1.gamma", key)


def native_to_hf_key(key: str) -> str:
    return re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", key)


def is_unused_vit_key(key: str, model: NativeOpenVLA) -> bool:
    """Parameters of the ViT parts after the feature block: present in the checkpoint, never run."""
    for prefix, vit in zip(_VIT_PREFIXES, model.cfg.vision):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            m = re.match(r"blocks\.(\d+)\.", rest)
            if m:
                return int(m.group(1)) > vit.feature_block
            return rest.split(".")[0] in ("norm", "fc_norm", "attn_pool", "head")
    return False


@dataclass
class LoadReport:
    loaded: int = 0
    skipped_unused: int = 0


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state(model: NativeOpenVLA, tensors) -> LoadReport:
    """Copy ``(hf_key, tensor)`` pairs into ``model`` (cast to its dtype, on its device)."""
    params = model.state_dict()
    report, seen, unexpected, mismatched = LoadReport(), set(), [], []
    with torch.no_grad():
        for hf_key, tensor in tensors:
            key = hf_to_native_key(hf_key)
            if key not in params:
                if is_unused_vit_key(hf_key, model):
                    report.skipped_unused += 1
                else:
                    unexpected.append(hf_key)
                continue
            if tuple(params[key].shape) != tuple(tensor.shape):
                mismatched.append(f"{hf_key} {tuple(tensor.shape)} vs model {tuple(params[key].shape)}")
                continue
            params[key].copy_(tensor.to(params[key].dtype))
            seen.add(key)
            report.loaded += 1
    missing = sorted(set(params) - seen)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(mismatched)}")
    if problems:
        raise UsageError("checkpoint does not match the native OpenVLA architecture: " + "; ".join(problems))
    return report


def iter_safetensors(ckpt_dir: Path, device: str = "cpu"):
    """(name, tensor) over the checkpoint's weight files (the shard index's, if it has one); a
    float tensor holding NaN or inf is refused by name (such a model acts, blind, on garbage)."""
    from safetensors import safe_open

    from vla_eval.policies.openvla.native.validate import weight_files

    for path in weight_files(Path(ckpt_dir)):
        with safe_open(str(path), framework="pt", device=device) as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    raise UsageError(f"broken checkpoint file {path}: tensor {key!r} holds NaN or inf values; "
                                     f"re-download the checkpoint (or re-export it) into an empty folder")
                yield key, tensor


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Build modules directly in ``dtype`` (a 7B model built in fp32 first would need 28 GB)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise bad_choice("dtype", name, DTYPES)
    return DTYPES[name]


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"bad device {device!r} ({e}); valid: cpu, cuda, cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but torch sees no CUDA device. OpenVLA-7B in bf16 needs "
                         "a GPU with ~16 GB. On a CPU-only machine: --policy tiny (the shipped tiny OpenVLA, trained "
                         "here, runs the same loop on CPU), --policy scripted for the privileged expert, or "
                         "--device cpu for a real checkpoint (very slow)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported; valid: cpu, cuda, cuda:N")
    return dev


def build_model(cfg: NativeConfig, device: str = "cpu", dtype: str = "bfloat16",
                attn_implementation: str = "sdpa") -> NativeOpenVLA:
    """Random-weight model of the checkpoint's architecture, allocated on ``device`` in ``dtype``."""
    dev, dt = check_device(device), parse_dtype(dtype)
    with torch.device(dev), default_dtype(dt):
        model = NativeOpenVLA(cfg, attn_implementation)
    return model.eval()


def read_config(ckpt_dir: Path) -> dict:
    from vla_eval.policies.openvla.native.validate import check_config

    return check_config(Path(ckpt_dir) / "config.json")


def check_architecture(cfg: NativeConfig, scan, config_path: Path) -> None:
    """The weight files' headers against the architecture config.json describes (built on the meta
    device: no memory): one line naming the first tensor that is missing, extra or of another shape."""
    with torch.device("meta"):
        model = NativeOpenVLA(cfg)
    want = {native_to_hf_key(k): list(v.shape) for k, v in model.state_dict().items()}
    for name, shape in want.items():
        if name not in scan.shapes:
            raise UsageError(f"broken checkpoint: {config_path} describes tensor {name!r} {tuple(shape)}, which no "
                             f"weight file holds (a shard missing, or config.json from another model)")
        if scan.shapes[name] != shape:
            raise UsageError(f"broken checkpoint file {scan.owner[name]}: tensor {name!r} has shape "
                             f"{tuple(scan.shapes[name])}, but {config_path.name}'s sizes need {tuple(shape)} "
                             f"(config.json and the weights disagree: both from the same checkpoint?)")
    for name in scan.shapes:
        if name not in want and not is_unused_vit_key(name, model):
            raise UsageError(f"broken checkpoint file {scan.owner[name]}: tensor {name!r} is not part of the "
                             f"architecture {config_path.name} describes (config.json and the weights disagree)")


def load_native(ckpt_dir: str | Path, device: str = "cpu", dtype: str = "bfloat16",
                attn_implementation: str = "sdpa") -> tuple[NativeOpenVLA, LoadReport]:
    from vla_eval.policies.openvla.native.validate import scan_checkpoint_dir

    ckpt_dir = Path(ckpt_dir)
    scan = scan_checkpoint_dir(ckpt_dir)  # every file, before any tensor is read
    cfg = NativeConfig.from_hf(scan.config)
    check_architecture(cfg, scan, ckpt_dir / "config.json")  # before 15 GB are allocated
    model = build_model(cfg, device, dtype, attn_implementation)
    report = load_state(model, iter_safetensors(ckpt_dir, device=str(model.device)))
    return model, report


def save_hf_layout(model: NativeOpenVLA, out_dir: str | Path, hf_config: dict, extra: dict | None = None,
                   max_shard_bytes: int | None = None) -> Path:
    """Write ``model`` as an OpenVLA-layout checkpoint (keys renamed back, ``extra`` tensors
    added as-is), sharded as ``save_pretrained(max_shard_size=max_shard_bytes)`` would."""
    from vla_eval.policies.openvla.native.shards import Entry, write_sharded

    out_dir = Path(out_dir)
    state = {native_to_hf_key(k): v.detach() for k, v in model.state_dict().items()}
    state.update(extra or {})
    write_sharded(out_dir, [Entry(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in state.items()],
                  max_shard_bytes)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=1))
    return out_dir
