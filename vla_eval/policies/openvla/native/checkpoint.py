"""Load OpenVLA's released safetensors into ``NativeOpenVLA`` by key mapping.

Checkpoint keys are the remote code's module paths. One rename: the remote code patches
timm's LayerScale to store ``scale_factor`` (HF's loader used to rewrite any ``gamma``), and
the native ViT keeps timm's ``gamma``. Keys for parts the native model never runs (the
ViTs' last block, final norm, SigLIP's attention-pool head) are skipped and counted; any
other unknown key, a parameter the checkpoint lacks or a shape config.json disagrees with is
refused by name from the files' headers, before memory is allocated or a weight is read.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vla_eval.errors import UsageError, bad_choice
from vla_eval.policies.openvla.native.model import NativeConfig, NativeOpenVLA
from vla_eval.policies.openvla.native.shards import SAFETENSORS_DTYPES

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_VIT_PREFIXES = ("vision_backbone.featurizer.", "vision_backbone.fused_featurizer.")


def hf_to_native_key(key: str) -> str:
    return re.sub(r"\.(ls[12])\.scale_factor$", r".\1.gamma", key)


def native_to_hf_key(key: str) -> str:
    return re.sub(r"\.(ls[12])\.gamma$", r".\1.scale_factor", key)


def is_unused_vit_key(key: str, vision) -> bool:
    """Parameters of the ViT parts after the feature block (``vision``: the two ``ViTConfig``):
    present in the checkpoint, never run."""
    for prefix, vit in zip(_VIT_PREFIXES, vision):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            m = re.match(r"blocks\.(\d+)\.", rest)
            if m:
                return int(m.group(1)) > vit.feature_block
            return rest.split(".")[0] in ("norm", "fc_norm", "attn_pool", "head")
    return False


def released_shapes(cfg: NativeConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the native model runs, by its checkpoint name, with its shape (in the model's
    order; built on the meta device: no memory)."""
    with torch.device("meta"):
        model = NativeOpenVLA(cfg)
    return {native_to_hf_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass
class LoadReport:
    loaded: int = 0
    skipped_unused: int = 0


TORCH_DTYPES = {name: dt for dt, name in SAFETENSORS_DTYPES.items()}


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


def read_weights(model: NativeOpenVLA, scan) -> LoadReport:
    """Each tensor's bytes read from its file straight into its parameter (through one temporary
    only where the dtype or device differs): no file mapping held while loading, so peak memory
    is the model plus its largest tensor. A float tensor holding NaN or inf is refused by name."""
    params, report = model.state_dict(), LoadReport()
    by_file: dict[Path, list[str]] = {}
    for name in sorted(scan.shapes, key=lambda k: scan.spans[k][0]):
        by_file.setdefault(scan.owner[name], []).append(name)
    with torch.no_grad():
        for path, names in by_file.items():
            with open(path, "rb", buffering=0) as f:
                for name in names:
                    key = hf_to_native_key(name)
                    if key not in params:  # check_architecture let only never-run ViT tensors through
                        report.skipped_unused += 1
                        continue
                    param, stored = params[key], TORCH_DTYPES.get(scan.dtypes[name])
                    if stored is None:
                        raise UsageError(f"broken checkpoint file {path}: tensor {name!r} is stored as "
                                         f"{scan.dtypes[name]}; valid: {', '.join(TORCH_DTYPES)}")
                    direct = param.device.type == "cpu" and param.dtype == stored and param.is_contiguous()
                    buf = param if direct else torch.empty(param.shape, dtype=stored)
                    start, stop = scan.spans[name]
                    f.seek(start)
                    if f.readinto(_bytes_of(buf)) != stop - start:
                        raise UsageError(f"broken checkpoint file {path}: truncated while reading {name!r}; "
                                         f"re-download the checkpoint into an empty folder")
                    if buf.is_floating_point() and not bool(torch.isfinite(buf).all()):
                        raise UsageError(f"broken checkpoint file {path}: tensor {name!r} holds NaN or inf values; "
                                         f"re-download the checkpoint (or re-export it) into an empty folder")
                    if not direct:
                        param.copy_(buf)
                    report.loaded += 1
    return report


@contextmanager
def skip_init():
    """Parameters allocated but not initialised (every one is then read from the checkpoint, and
    ``check_architecture`` has made sure each is there): at 7B, a minute of random init saved."""
    from transformers import PreTrainedModel

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    saved_init = PreTrainedModel.init_weights
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
        PreTrainedModel.init_weights = lambda self: None
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)
        PreTrainedModel.init_weights = saved_init


def load_weights(model: NativeOpenVLA, ckpt_dir: str | Path) -> LoadReport:
    """A checkpoint folder's weights into an existing model of the same architecture (checked first)."""
    from vla_eval.policies.openvla.native.validate import scan_checkpoint_dir

    scan = scan_checkpoint_dir(Path(ckpt_dir))
    check_architecture(model.cfg, scan, Path(ckpt_dir) / "config.json")
    return read_weights(model, scan)


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
                attn_implementation: str = "sdpa", init: bool = True) -> NativeOpenVLA:
    """Random-weight model of the checkpoint's architecture, allocated on ``device`` in ``dtype``
    (``init=False``: uninitialised memory, for a model about to be loaded)."""
    from contextlib import nullcontext

    dev, dt = check_device(device), parse_dtype(dtype)
    with torch.device(dev), default_dtype(dt), (nullcontext() if init else skip_init()):
        model = NativeOpenVLA(cfg, attn_implementation)
    return model.eval()


def read_config(ckpt_dir: Path) -> dict:
    from vla_eval.policies.openvla.native.validate import check_config

    return check_config(Path(ckpt_dir) / "config.json")


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_architecture(cfg: NativeConfig, scan, config_path: Path) -> None:
    """The weight files' headers against the architecture config.json describes (built on the meta
    device: no memory): one line listing the missing, unexpected and misshapen tensors, by file."""
    want = released_shapes(cfg)
    missing = [k for k in want if k not in scan.shapes]
    unexpected = [f"{k} (in {scan.owner[k].name})" for k in scan.shapes
                  if k not in want and not is_unused_vit_key(k, cfg.vision)]
    mismatched = [f"{k} in {scan.owner[k].name} is {tuple(scan.shapes[k])}, {config_path.name}'s sizes need "
                  f"{want[k]}" for k in want if k in scan.shapes and tuple(scan.shapes[k]) != want[k]]
    problems = [f"{len(items)} {what}: {_listing(items)}" for what, items in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if items]
    if problems:
        hint = " (missing: described by config.json, held by no weight file)" if missing else ""
        raise UsageError(f"broken checkpoint {config_path.parent}: {config_path.name} and the weight files disagree: "
                         + "; ".join(problems) + hint + "; are both from the same checkpoint?")


def load_native(ckpt_dir: str | Path, device: str = "cpu", dtype: str = "bfloat16",
                attn_implementation: str = "sdpa") -> tuple[NativeOpenVLA, LoadReport]:
    from vla_eval.policies.openvla.native.validate import scan_checkpoint_dir

    ckpt_dir = Path(ckpt_dir)
    scan = scan_checkpoint_dir(ckpt_dir)  # every file, before any tensor is read
    cfg = NativeConfig.from_hf(scan.config)
    check_architecture(cfg, scan, ckpt_dir / "config.json")  # before 15 GB are allocated
    model = build_model(cfg, device, dtype, attn_implementation, init=False)
    return model, read_weights(model, scan)


def save_weights(model: NativeOpenVLA, out_dir: str | Path, extra: dict | None = None,
                 max_shard_bytes: int | None = None) -> None:
    """``model``'s weight files in the released layout (keys renamed back, ``extra`` tensors added
    as-is), sharded as ``save_pretrained(max_shard_size=max_shard_bytes)`` would."""
    from vla_eval.policies.openvla.native.shards import Entry, write_sharded

    state = {native_to_hf_key(k): v.detach() for k, v in model.state_dict().items()}
    state.update(extra or {})
    write_sharded(Path(out_dir), [Entry(k, tuple(v.shape), v.dtype, lambda v=v: v) for k, v in state.items()],
                  max_shard_bytes)
