"""One episode's action statistics, defined once.

The streaming monitor accumulates them step by step (``predicates.StreamState``, plain floats),
``diagnose`` and the report compute them from a finished episode's step records with
``episode_stats``; the two are tested equal on the same steps, so a threshold fitted on one
reads the same quantity as the other.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# Below this product of two translation norms a direction is undefined; such a pair counts as
# consistent (cosine 1): holding still is not an upside-down image's zig-zag.
STILL = 1e-9


def pair_cosine(cur: Sequence[float], prev: Sequence[float]) -> float:
    """Cosine between two consecutive translations (xyz); 1.0 where either is still."""
    na = math.sqrt(sum(x * x for x in cur)) * math.sqrt(sum(x * x for x in prev))
    return sum(x * y for x, y in zip(cur, prev)) / na if na > STILL else 1.0


def gripper_step(state: int, g: float) -> tuple[int, int]:
    """One gripper command against the held state (-1 open, +1 closed, 0 none yet): (1 if it
    flips open <-> close else 0, the new state). A zero command keeps the state."""
    sign = (g > 0) - (g < 0)
    return (1 if sign and state and sign != state else 0), (sign or state)


def gripper_flips(grip) -> int:
    """Open <-> close changes of one episode's gripper commands."""
    flips, state = 0, 0
    for g in map(float, grip):
        flip, state = gripper_step(state, g)
        flips += flip
    return flips


@dataclass(frozen=True)
class EpisodeStats:
    """Statistics of an episode's first ``steps`` actions (NaN where a signal is absent)."""

    steps: int
    xyz_mean: float  # mean |a[:3]| over coordinates and steps
    xyz_max: float  # max |a[:3]|
    rot_mean: float  # mean |a[3:6]|
    norm6_mean: float  # mean ||a[:6]||
    direction: float  # mean pair_cosine of consecutive translations (NaN below two steps)
    grip_flips: int
    grip_closed: float  # fraction of steps commanding "close" (a[6] > 0)
    first_close: int | None  # step index of the first "close"
    grip_fractional: float  # fraction of gripper commands that are not +-1 (not binarised)
    img_mean: float  # mean over steps of the model image's mean pixel
    img_std: float  # its spread over steps
    token_prob: float  # mean chosen-token probability


def episode_stats(steps, window: int | None = None) -> EpisodeStats:
    """``EpisodeStats`` of the first ``window`` (default: all) step records (``StepRecord`` or
    anything with ``action``, ``img_mean`` and ``token_prob``)."""
    steps = list(steps)[:window]
    if not steps:
        nan = math.nan
        return EpisodeStats(0, nan, nan, nan, nan, nan, 0, nan, None, nan, nan, nan, nan)
    a = np.array([s.action for s in steps], dtype=np.float64)  # (T, 7)
    xyz, grip = a[:, :3], a[:, 6]
    norms = np.linalg.norm(xyz, axis=1)
    if len(a) > 1:  # pair_cosine, vectorised
        na = norms[1:] * norms[:-1]
        dots = np.sum(xyz[1:] * xyz[:-1], axis=1)
        direction = float(np.mean(np.where(na > STILL, dots / np.where(na > STILL, na, 1.0), 1.0)))
    else:
        direction = math.nan
    closed = grip > 0
    img = [s.img_mean for s in steps if s.img_mean is not None]
    prob = [s.token_prob for s in steps if s.token_prob is not None]
    return EpisodeStats(
        steps=len(a), xyz_mean=float(np.abs(xyz).mean()), xyz_max=float(np.abs(xyz).max()),
        rot_mean=float(np.abs(a[:, 3:6]).mean()), norm6_mean=float(np.linalg.norm(a[:, :6], axis=1).mean()),
        direction=direction, grip_flips=gripper_flips(grip), grip_closed=float(closed.mean()),
        first_close=int(np.argmax(closed)) if closed.any() else None,
        grip_fractional=float(np.mean(~np.isclose(np.abs(grip), 1.0))),
        img_mean=float(np.mean(img)) if img else math.nan, img_std=float(np.std(img)) if img else math.nan,
        token_prob=float(np.mean(prob)) if prob else math.nan)
