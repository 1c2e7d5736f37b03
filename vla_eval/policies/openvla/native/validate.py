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
from dataclasses import dataclass
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
    from vla_eval.safe_json import read_json

    try:
        return read_json(path, "checkpoint file")
    except UsageError as e:
        raise UsageError(f"broken {e}; {REFETCH}") from None


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


def check_safetensors(path: Path, dtypes: dict[str, str] | None = None,
                      spans: dict[str, tuple[int, int]] | None = None) -> dict[str, list[int]]:
    """Header -> {tensor name: shape}; every byte range inside the file, the file complete.
    ``dtypes``, if given, receives {tensor name: safetensors dtype}; ``spans`` {tensor name:
    (first byte, end) in the file}."""
    try:
        size = path.stat().st_size
    except OSError as e:  # a link loop or a dangling link
        raise _broken(path, f"cannot be read ({e.strerror or e})") from None
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
    shapes, ranges = {}, []
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
        ranges.append((begin, stop))
        if dtypes is not None:
            dtypes[name] = entry["dtype"]
        if spans is not None:
            spans[name] = (8 + n + begin, 8 + n + stop)
    if not shapes:
        raise _broken(path, "holds no tensors")
    ranges.sort()
    if ranges[0][0] != 0 or any(a[1] != b[0] for a, b in zip(ranges, ranges[1:])):
        raise _broken(path, "its tensors' byte ranges overlap or leave gaps (a damaged header)")
    want = 8 + n + ranges[-1][1]
    if size != want:
        raise _broken(path, f"truncated: {size} of {want} bytes" if size < want else
                      f"{size} bytes where its header describes {want} (bytes added or the header damaged)")
    return shapes


@dataclass
class Scan:
    """What a checkpoint folder's headers say, read without reading a tensor."""
    config: dict
    shapes: dict[str, list[int]]  # tensor -> shape
    owner: dict[str, Path]  # tensor -> the weight file that holds it
    dtypes: dict[str, str]  # tensor -> safetensors dtype ("BF16", ...)
    spans: dict[str, tuple[int, int]]  # tensor -> its bytes in its file


def check_checkpoint_dir(ckpt_dir: Path) -> dict:
    """Every file the native backend reads; returns config.json. Raises one UsageError naming the file."""
    return scan_checkpoint_dir(ckpt_dir).config


def scan_checkpoint_dir(ckpt_dir: Path) -> Scan:
    """``check_checkpoint_dir``, returning the headers' tensors too."""
    ckpt_dir = Path(ckpt_dir)
    try:
        ckpt_dir.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop on older Pythons
        raise UsageError(f"checkpoint folder {ckpt_dir} cannot be opened ({getattr(e, 'strerror', None) or e})") from None
    cfg = check_config(ckpt_dir / "config.json")
    weight_map = _weight_map(ckpt_dir)
    owner: dict[str, Path] = {}  # tensor -> the file that holds it
    shapes: dict[str, list[int]] = {}
    dtypes: dict[str, str] = {}
    spans: dict[str, tuple[int, int]] = {}
    for path in _weight_files(ckpt_dir, weight_map):
        for name, shape in check_safetensors(path, dtypes, spans).items():
            if name in owner:
                raise _broken(path, f"tensor {name!r} is also in {owner[name].name} (a duplicated or stray shard)",
                              f"keep only the files {INDEX} names")
            owner[name], shapes[name] = path, shape
    if weight_map is not None:
        _check_index(ckpt_dir / INDEX, weight_map, owner)
    _check_dtypes_and_sizes(ckpt_dir / "config.json", cfg, dtypes, shapes, owner)
    tokenizer = ckpt_dir / "tokenizer.json"
    if not tokenizer.is_file() and not (ckpt_dir / "tokenizer.model").is_file():
        raise UsageError(f"{ckpt_dir} has no tokenizer (tokenizer.json or tokenizer.model); {REFETCH}")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"):
        if (ckpt_dir / name).is_file():
            read_json_object(ckpt_dir / name)
    return Scan(cfg, shapes, owner, dtypes, spans)


INDEX = "model.safetensors.index.json"
FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
EMBEDDING = "language_model.model.embed_tokens.weight"


def weight_files(ckpt_dir: Path) -> list[Path]:
    """The weight files: those the shard index names (each once, each there), else every *.safetensors."""
    return _weight_files(Path(ckpt_dir), _weight_map(Path(ckpt_dir)))


def _weight_map(ckpt_dir: Path) -> dict[str, str] | None:
    """The shard index's tensor -> file map, checked for its form (None: the folder has no index)."""
    index = ckpt_dir / INDEX
    if not index.exists() and not index.is_symlink():
        return None
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(f, str) and f and "/" not in f and f.endswith(".safetensors") for f in weight_map.values()):
        raise _broken(index, "'weight_map' must map tensor names to .safetensors file names in this folder")
    return weight_map


def _weight_files(ckpt_dir: Path, weight_map: dict[str, str] | None) -> list[Path]:
    if weight_map is None:
        weights = sorted(ckpt_dir.glob("*.safetensors"))
        if not weights:
            raise UsageError(f"no *.safetensors files in {ckpt_dir}; {REFETCH}")
        return weights
    named = sorted(set(weight_map.values()))
    for name in named:
        if not (ckpt_dir / name).is_file():
            raise _broken(ckpt_dir / INDEX, f"names {name}, which is not in {ckpt_dir} (a shard missing)")
    stray = sorted(p.name for p in ckpt_dir.glob("*.safetensors") if p.name not in named)
    if stray:
        raise _broken(ckpt_dir / stray[0], f"is a weight file {INDEX} does not name (a duplicated or stray shard)",
                      "remove it, or re-download the checkpoint into an empty folder")
    return [ckpt_dir / n for n in named]


def _check_index(index: Path, weight_map: dict[str, str], owner: dict[str, Path]) -> None:
    """The index and the shards' headers agree tensor by tensor."""
    for name, file in weight_map.items():
        if name not in owner:
            raise _broken(index, f"says tensor {name!r} is in {file}, which has no such tensor")
        if owner[name].name != file:
            raise _broken(index, f"says tensor {name!r} is in {file}; it is in {owner[name].name}")
    missing = sorted(set(owner) - set(weight_map))
    if missing:
        raise _broken(index, f"does not list tensor {missing[0]!r} of {owner[missing[0]].name}")


def _check_dtypes_and_sizes(config: Path, cfg: dict, dtypes: dict[str, str], shapes: dict[str, list[int]],
                            owner: dict[str, Path]) -> None:
    """Float tensors are stored as config.json's torch_dtype says (float32 extras allowed): bf16
    bytes relabelled F16 load without an error and run on garbage. And the text model's sizes
    agree: the embedding holds the vocabulary and the hidden size, the pad id is inside it."""
    want = cfg.get("torch_dtype")
    if isinstance(want, str) and want in FLOAT_DTYPES.values():
        for name, dt in dtypes.items():
            if dt in FLOAT_DTYPES and FLOAT_DTYPES[dt] not in (want, "float32"):
                raise _broken(owner[name], f"tensor {name!r} is stored as {dt} but {config.name} says torch_dtype "
                                           f"{want} (a relabelled or mixed file)")
    text = cfg["text_config"]
    vocab, hidden = text.get("vocab_size"), text.get("hidden_size")
    for where, pad in (("text_config.pad_token_id", text.get("pad_token_id")), ("pad_token_id", cfg.get("pad_token_id"))):
        if isinstance(pad, int) and isinstance(vocab, int) and not 0 <= pad < vocab:
            raise _broken(config, f"{where} {pad} is outside the vocabulary of {vocab} tokens")
    shape = shapes.get(EMBEDDING)
    if shape is not None and isinstance(vocab, int) and isinstance(hidden, int) and shape != [vocab, hidden]:
        raise _broken(owner[EMBEDDING], f"{EMBEDDING} has shape {shape}; {config.name} says vocab_size {vocab} x "
                                        f"hidden_size {hidden}")
