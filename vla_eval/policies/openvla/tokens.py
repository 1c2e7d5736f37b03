"""OpenVLA's action head: 7 tokens -> 256-bin centres -> unnormalised actions.

Same arithmetic as ``predict_action`` in OpenVLA's released code: the last 256 ids of the
32000-token Llama vocabulary are action bins (token id = vocab_size - bin), the 256 bin
edges span [-1, 1] giving 255 centres, and actions are unnormalised from the dataset's
1st/99th percentiles where ``mask`` is true (the gripper is left as is).
"""
from __future__ import annotations

import numpy as np

from vla_eval.errors import UsageError

N_BINS = 256
VOCAB_SIZE = 32000  # Llama-2's; the embedding table is padded to 32064


def bin_centres(n_bins: int = N_BINS) -> np.ndarray:
    edges = np.linspace(-1.0, 1.0, n_bins)
    return (edges[:-1] + edges[1:]) / 2.0  # (255,)


def tokens_to_normalized(token_ids: np.ndarray, vocab_size: int = VOCAB_SIZE, n_bins: int = N_BINS) -> np.ndarray:
    """(..., 7) int token ids -> (..., 7) normalised actions in [-1, 1]."""
    centres = bin_centres(n_bins)
    idx = np.clip(vocab_size - np.asarray(token_ids) - 1, 0, len(centres) - 1)
    return centres[idx]


def libero_to_training_gripper(actions: np.ndarray) -> np.ndarray:
    """LIBERO's gripper (-1 open, +1 close) -> OpenVLA's training convention (1 open, 0 close),
    as its RLDS transform does (clip to [0, 1], then invert). Works on (..., 7)."""
    a = np.array(actions, dtype=np.float64, copy=True)
    a[..., 6] = 1.0 - np.clip(a[..., 6], 0.0, 1.0)
    return a


def normalize(actions: np.ndarray, stats: dict) -> np.ndarray:
    """Inverse of ``unnormalize``: masked dims to [-1, 1] by q01/q99 (clipped), the rest as is."""
    q01, q99 = np.asarray(stats["q01"], dtype=np.float64), np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    scaled = np.clip(2.0 * (actions - q01) / (q99 - q01 + 1e-8) - 1.0, -1.0, 1.0)
    return np.where(mask, scaled, actions)


def normalized_to_tokens(normalized: np.ndarray, vocab_size: int = VOCAB_SIZE, n_bins: int = N_BINS) -> np.ndarray:
    """OpenVLA's ActionTokenizer: digitize into ``n_bins`` edges over [-1, 1], token = vocab - bin."""
    edges = np.linspace(-1.0, 1.0, n_bins)
    return vocab_size - np.digitize(np.clip(normalized, -1.0, 1.0), edges)


def unnormalize(normalized: np.ndarray, stats: dict) -> np.ndarray:
    """``stats`` is a checkpoint's ``norm_stats[key]["action"]`` (q01, q99, optional mask)."""
    q01, q99 = np.asarray(stats["q01"], dtype=np.float64), np.asarray(stats["q99"], dtype=np.float64)
    mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
    return np.where(mask, 0.5 * (normalized + 1.0) * (q99 - q01) + q01, normalized)


def resolve_unnorm_key(norm_stats: dict, suite: str, requested: str | None) -> str:
    """The key the published eval would use: the suite name, else ``<suite>_no_noops``.
    A missing key is an error listing the checkpoint's keys, before any episode runs."""
    key = requested or suite
    if key not in norm_stats and f"{key}_no_noops" in norm_stats:
        key = f"{key}_no_noops"
    if key not in norm_stats:
        raise UsageError(f"unnorm_key {key!r} is not in the checkpoint's norm_stats; valid: {', '.join(sorted(norm_stats))}")
    return key


def shipped_norm_stats(key: str) -> dict | None:
    """Statistics shipped in configs/norm_stats (e.g. bridge_orig for the bad-unnorm drill)."""
    from vla_eval.configs import CONFIG_DIR
    from vla_eval.safe_json import read_json

    path = CONFIG_DIR / "norm_stats" / f"{key}.json"
    return read_json(path, "norm stats file") if path.exists() else None
