"""The Policy protocol: reset a slot, act on a batch of observations.

A batch row is one env slot. Stateful policies (the scripted expert) keep per-slot state,
which ``reset(slot)`` clears when that slot starts a new episode; stateless ones ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from vla_eval.sims.protocol import Observation


@dataclass(frozen=True)
class ActionBatch:
    actions: np.ndarray  # (B, 7) env-ready: xyz, rpy in [-1, 1]; gripper -1 open / +1 close
    # (B,) mean pixel value of the image actually fed to the model (after any flip and
    # preprocessing); None for policies that read no pixels.
    img_mean: np.ndarray | None = None
    # (B,) mean probability of the chosen action tokens (native OpenVLA); None for other policies.
    token_prob: np.ndarray | None = None
    # (B, n) per action token: the chosen token's probability and its distribution's entropy (nats).
    token_probs: np.ndarray | None = None
    token_entropy: np.ndarray | None = None
    # (B, 2, d) float16 hidden-state summary (middle and last decoder layer at the action tokens),
    # only when asked for (``--record-features``); kept in a side file, never in the step records.
    features: np.ndarray | None = None


@dataclass(frozen=True)
class TokenStats:
    """A model's confidence in the action tokens it chose, per row and token."""

    probs: np.ndarray  # (B, n) probability of each chosen token
    entropy: np.ndarray  # (B, n) entropy of each token's distribution, nats
    features: np.ndarray | None = None  # (B, 2, d) hidden-state summary, when asked for


class Backend(Protocol):
    """A VLA model behind a policy (``OpenVLAPolicy``): one batched call per control step.

    ``confidence`` says whether ``predict_with_confidence`` works: the native model returns the
    mean probability of its chosen action tokens with the actions and takes the decoding knobs
    some faults turn; OpenVLA's remote code has neither. New per-step model signals (token
    entropy, hidden-state summaries) come through this protocol."""
    norm_stats: dict
    confidence: bool

    def predict(self, images: list[np.ndarray], prompts: list[str], unnorm_key: str) -> np.ndarray:
        """(B, 7) model actions, gripper in [0, 1]."""

    def predict_with_confidence(self, images: list[np.ndarray], prompts: list[str], unnorm_key: str,
                                **decoding) -> tuple[np.ndarray, TokenStats]:
        """((B, 7) actions, the chosen tokens' probabilities and entropies); only where ``confidence``."""


class Policy(Protocol):
    name: str
    uses_images: bool  # False: the env may run with cameras off
    cameras: tuple[str, ...]  # the views it reads (the env renders only these); () for state policies

    def reset(self, slot: int = 0) -> None: ...

    def act(self, obs: Sequence[Observation], slots: Sequence[int] | None = None) -> ActionBatch:
        """``obs[i]`` comes from env slot ``slots[i]`` (default: ``i``)."""
