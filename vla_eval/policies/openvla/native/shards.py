"""Writing safetensors shards one tensor at a time, as ``save_pretrained(max_shard_size=...)`` lays them out.

A checkpoint is a list of ``Entry`` (name, shape, dtype and a function that makes the tensor);
each tensor is made, written and dropped before the next, so writing OpenVLA-7B's 15 GB never
holds more than its largest tensor (the 32064 x 4096 embedding). The layout is transformers':

    one file        model.safetensors
    several         model-00001-of-0000N.safetensors ... + model.safetensors.index.json
                    ({"metadata": {"total_size": bytes}, "weight_map": {tensor: file}})

Tensors fill a shard in the given order until the next would pass ``max_shard_bytes`` (a tensor
larger than that gets a shard of its own), the rule transformers 4.40 applies. Every file
carries the metadata ``{"format": "pt"}``, as transformers writes it.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from vla_eval.policies.openvla.native.validate import INDEX

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
                      torch.int64: "I64", torch.int32: "I32"}  # torch dtype -> its name in a header


@dataclass(frozen=True)
class Entry:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]  # -> a tensor of exactly this shape (cast to ``dtype`` on write)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def plan_shards(entries: list[Entry], max_shard_bytes: int | None) -> list[list[Entry]]:
    """Consecutive groups of entries, none over ``max_shard_bytes`` unless a single tensor is."""
    if max_shard_bytes is None:
        return [list(entries)]
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def shard_names(n: int) -> list[str]:
    return ["model.safetensors"] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def write_safetensors(path: Path, entries: list[Entry]) -> None:
    """One safetensors file, the header first (all offsets are known from the shapes), then
    each tensor's bytes as it is made."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in entries:
        if e.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{e.name}: dtype {e.dtype} cannot be written; valid: {sorted(map(str, SAFETENSORS_DTYPES))}")
        header[e.name] = {"dtype": SAFETENSORS_DTYPES[e.dtype], "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # tensor data 8-byte aligned, as safetensors pads
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for e in entries:
            tensor = e.make().detach().to("cpu", e.dtype).contiguous()
            if tuple(tensor.shape) != tuple(e.shape):
                raise ValueError(f"{e.name}: made shape {tuple(tensor.shape)}, declared {e.shape}")
            # bf16 has no numpy dtype: write the raw 16-bit words
            data = tensor.view(torch.int16) if e.dtype in (torch.bfloat16, torch.float16) else tensor
            f.write(data.numpy().tobytes())
            del tensor, data


def write_sharded(out_dir: Path, entries: list[Entry], max_shard_bytes: int | None = None) -> list[str]:
    """The weight files (and the index when there are several) -> the file names written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(entries, max_shard_bytes)
    names = shard_names(len(shards))
    for name, shard in zip(names, shards):
        write_safetensors(out_dir / name, shard)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(e.nbytes for e in entries)},
                 "weight_map": {e.name: name for name, shard in zip(names, shards) for e in shard}}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        names.append(INDEX)
    return names
