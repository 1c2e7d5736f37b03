"""A checkpoint folder checked before any tensor is read: each broken file named with its fix.

An interrupted download is the usual way a user gets a broken folder, so every file the
native backend reads is checked for what a cut-off or garbled copy looks like:

    config.json               parses to an object with the fields the backend needs, of the right types
    *.safetensors             8-byte header length, a JSON header that fits the file, every tensor's
                              byte range inside it, the file as long as the header says ("N of M bytes")
    tokenizer.json            parses (tokenizer_config.json and special_tokens_map.json too, if present)
    preprocessor_config.json  parses to an object, if present

Only the standard library: the check runs before torch or safetensors touch the files.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from vla_eval.errors import UsageError

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header
REFETCH = "re-download the checkpoint (or re-export it) into an empty folder"
# config.json fields the native backend reads, and their JSON types
CONFIG_FIELDS = {"text_config": dict, "timm_model_ids": list}
OPTIONAL_CONFIG_FIELDS = {"image_sizes": list, "norm_stats": dict, "n_action_bins": int, "pad_to_multiple_of": int,
                          "use_fused_vision_backbone": bool}
TEXT_FIELDS = {"vocab_size": int, "hidden_size": int, "num_hidden_layers": int, "num_attention_heads": int}


def _broken(path: Path, problem: str, fix: str = REFETCH) -> UsageError:
    return UsageError(f"broken checkpoint file {path}: {problem}; {fix}")


def read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _broken(path, f"not readable JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(value, dict):
        raise _broken(path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def check_config(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path.parent} has no config.json (not a Hugging Face OpenVLA checkpoint folder); {REFETCH}")
    cfg = read_json_object(path)
    for name, kind in CONFIG_FIELDS.items():
        if name not in cfg:
            raise _broken(path, f"no {name!r} field (is this an OpenVLA checkpoint?)")
    for name, kind in {**CONFIG_FIELDS, **OPTIONAL_CONFIG_FIELDS}.items():
        if name in cfg and (not isinstance(cfg[name], kind) or (kind is int and isinstance(cfg[name], bool))):
            raise _broken(path, f"{name!r} is {type(cfg[name]).__name__}, expected {kind.__name__}")
    for name, kind in TEXT_FIELDS.items():
        value = cfg["text_config"].get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) or value < 1):
            raise _broken(path, f"text_config.{name} is {value!r}, expected a positive {kind.__name__}")
    return cfg


def check_safetensors(path: Path) -> dict[str, list[int]]:
    """Header -> {tensor name: shape}; every byte range inside the file, the file complete."""
    size = path.stat().st_size
    if size < 8:
        raise _broken(path, f"truncated: {size} bytes, not even the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER or 8 + n > size:
            raise _broken(path, f"truncated or not safetensors: its header claims {n} bytes, the file has {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _broken(path, "its header is not JSON (garbage or not a safetensors file)") from None
    if not isinstance(header, dict):
        raise _broken(path, "its header is not a JSON object")
    shapes, spans = {}, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            shape = [int(d) for d in entry["shape"]]
            width = DTYPE_BYTES[entry["dtype"]]
            ok = 0 <= begin <= stop and min(shape, default=0) >= 0 and stop - begin == width * math.prod(shape)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _broken(path, f"tensor {name!r} has a malformed header entry")
        shapes[name] = shape
        spans.append((begin, stop))
    if not shapes:
        raise _broken(path, "holds no tensors")
    spans.sort()
    if spans[0][0] != 0 or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise _broken(path, "its tensors' byte ranges overlap or leave gaps (a damaged header)")
    want = 8 + n + spans[-1][1]
    if size != want:
        raise _broken(path, f"truncated: {size} of {want} bytes" if size < want else
                      f"{size} bytes where its header describes {want} (bytes added or the header damaged)")
    return shapes


def check_checkpoint_dir(ckpt_dir: Path) -> dict:
    """Every file the native backend reads; returns config.json. Raises one UsageError naming the file."""
    ckpt_dir = Path(ckpt_dir)
    cfg = check_config(ckpt_dir / "config.json")
    weights = sorted(ckpt_dir.glob("*.safetensors"))
    if not weights:
        raise UsageError(f"no *.safetensors files in {ckpt_dir}; {REFETCH}")
    for path in weights:
        check_safetensors(path)
    tokenizer = ckpt_dir / "tokenizer.json"
    if not tokenizer.is_file() and not (ckpt_dir / "tokenizer.model").is_file():
        raise UsageError(f"{ckpt_dir} has no tokenizer (tokenizer.json or tokenizer.model); {REFETCH}")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
        if (ckpt_dir / name).is_file():
            read_json_object(ckpt_dir / name)
    return cfg
