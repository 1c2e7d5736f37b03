"""Hidden-state summaries beside a run's logs (``sweep --record-features``), one file per episode.

    <run>/features/<tag>/t<task>-s<seed>-<attempt>.npy     (steps, 2, d) float16

Row t is step t's summary: the middle and the last decoder layer's output at the positions that
produced the action tokens, averaged over them (``NativeOpenVLA.generate_action_tokens``). They
stay out of the JSONL (a 7B model's two 4096-wide rows would be ~30x a step record). A file is
written whole (temporary name, then renamed) before its episode's line, and named by the
attempt id, so a resumed run never overwrites one and a reader joins files to committed
episodes only (an interrupted attempt's file is ignored).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

FEATURES_DIR = "features"
LAYERS = ("middle", "last")  # the summary's rows


def feature_path(run_dir: Path, tag: str, task_id: int, seed: int, attempt: str) -> Path:
    return Path(run_dir) / FEATURES_DIR / tag / f"t{task_id}-s{seed}-{attempt}.npy"


class FeatureKeeper:
    """Gets each finished episode's per-step summaries from the runner and writes them."""

    def __init__(self, run_dir: Path, tag: str):
        self.run_dir, self.tag = Path(run_dir), tag

    def finish(self, task_id: int, seed: int, attempt: str, rows: Sequence[np.ndarray]) -> None:
        if not rows:  # an episode that ended before its first step (a failed reset)
            return
        path = feature_path(self.run_dir, self.tag, task_id, seed, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.stack(rows).astype(np.float16))
        os.replace(tmp, path)


def read_features(run_dir: Path, tag: str, episode) -> np.ndarray | None:
    """(steps, 2, d) float16 of a committed episode, or None if the run did not record them. A file
    whose row count differs from the episode's steps is damaged: refused by name."""
    from vla_eval.errors import UsageError

    path = feature_path(run_dir, tag, episode.task_id, episode.seed, episode.attempt)
    if not path.is_file():
        return None
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UsageError(f"{path}: not a readable feature file ({e}); re-run the episode (delete it and its "
                         f"episode line) or record the run again") from None
    if x.ndim != 3 or x.shape[0] != episode.steps or x.shape[1] != len(LAYERS):
        raise UsageError(f"{path}: shape {x.shape} does not match the episode's {episode.steps} steps x "
                         f"{len(LAYERS)} layers; the file is damaged or from another attempt")
    return x
