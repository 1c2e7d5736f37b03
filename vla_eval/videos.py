"""Rollout videos: which episodes to keep, and WebM (VP9) encoding with PyAV.

The runner hands each finished episode's agentview frames (upright, downscaled to 128 px) to
``VideoKeeper``; it writes ``<run>/videos/<tag>-t<task>-s<seed>.webm`` atomically for the
episodes the policy selects. Kept with the episode, so a resumed sweep keeps its videos.

Policies: ``none`` | ``failures`` | ``all`` | ``first:K`` (the first K episodes per tag) |
``default`` (every failure plus one success per tag, at most ``DEFAULT_CAP`` per tag).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError, require

DEFAULT_CAP = 8
FPS = 20  # LIBERO's control rate: the video plays in real time
SIDE = 128  # 256 px frames halved: ~20-60 kB per episode in VP9


def parse_policy(text: str) -> str:
    if text in ("none", "failures", "all", "default"):
        return text
    if text.startswith("first:") and text[6:].isdigit() and int(text[6:]) >= 1:
        return text
    raise UsageError(f"unknown video policy {text!r}; valid: none, failures, all, default, first:K (K >= 1)")


def video_name(tag: str, task_id: int, seed: int) -> str:
    return f"{tag}-t{task_id}-s{seed}.webm"


def small_upright(frame: np.ndarray) -> np.ndarray:
    """(256, 256, 3) raw MuJoCo frame -> (128, 128, 3) upright (the eval's flip, then 2x2 mean)."""
    f = frame[::-1, ::-1].astype(np.uint16)
    h, w = f.shape[0] // 2 * 2, f.shape[1] // 2 * 2
    f = f[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
    return f.astype(np.uint8)


def encode_webm(frames: list[np.ndarray], path: Path, fps: int = FPS) -> Path:
    """VP9 WebM, written to a temporary name and renamed: a kill never leaves half a video."""
    av = require("av", "report", "rollout videos")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), mode="w", format="webm") as out:
            stream = out.add_stream("libvpx-vp9", rate=fps)
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "40", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class VideoKeeper:
    """Decides per finished episode whether its video is kept, and writes it."""

    def __init__(self, folder: Path, policy: str, tag: str):
        self.folder, self.policy, self.tag = Path(folder), parse_policy(policy), tag
        existing = sorted(self.folder.glob(f"{tag}-t*-s*.webm")) if self.folder.exists() else []
        self.kept = len(existing)  # a resumed sweep counts what it already has
        self.successes = 0

    @property
    def wants_frames(self) -> bool:
        return self.policy != "none"

    def keep(self, outcome: str) -> bool:
        if self.policy == "none":
            return False
        if self.policy == "all":
            return True
        if self.policy == "failures":
            return outcome != "success"
        if self.policy.startswith("first:"):
            return self.kept < int(self.policy[6:])
        if self.kept >= DEFAULT_CAP:
            return False
        return outcome != "success" or self.successes == 0

    def finish(self, task_id: int, seed: int, outcome: str, frames: list[np.ndarray]) -> Path | None:
        keep = bool(frames) and self.keep(outcome)
        if outcome == "success":
            self.successes += 1
        if not keep:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.kept += 1
        return encode_webm(frames, self.folder / video_name(self.tag, task_id, seed))
