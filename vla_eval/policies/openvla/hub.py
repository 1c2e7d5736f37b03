"""Finding checkpoints: a local folder, the local Hugging Face cache, then the hub.

Shared by both OpenVLA backends (remote code and native), so neither imports the other.
"""
from __future__ import annotations

from pathlib import Path

from vla_eval.errors import UsageError


def not_loadable(checkpoint: str, revision: str | None, err: Exception) -> str:
    return (f"could not load {checkpoint!r}{' @ ' + revision if revision else ''}: {err}. If the weights are "
            f"not in the Hugging Face cache and there is no network: download them where there is "
            f"(huggingface-cli download {checkpoint}) and pass --checkpoint /local/path.")


def resolve_checkpoint_dir(checkpoint: str, revision: str | None) -> Path:
    """A local folder as is; a hub id from the local HF cache (no network needed), else the hub."""
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return path
    if path.exists() or path.is_symlink():  # a file, a dangling link or a link loop: local, never a hub id
        what = "is a file" if path.is_file() else "is a link that leads nowhere (or in a loop)"
        raise UsageError(f"--checkpoint {checkpoint} {what}; give the checkpoint folder (config.json, *.safetensors, "
                         f"tokenizer files) or a hub id")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model"]
    try:
        return Path(snapshot_download(checkpoint, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(checkpoint, revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise UsageError(not_loadable(checkpoint, revision, e)) from e


def checkpoint_fingerprint(checkpoint: str | None, revision: str | None = None) -> str | None:
    """A short id of a checkpoint's weights, so runs on the same weights can be matched across
    machines and paths: sha256 over each ``*.safetensors`` file's name, size and first and
    last MiB (fast on a 15 GB model, and any retraining changes them). A hub id that is not a
    local folder is its own id (with ``@revision``)."""
    import hashlib

    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return checkpoint + (f"@{revision}" if revision else "")
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return "sha256:" + h.hexdigest()[:16]
