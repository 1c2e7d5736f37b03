"""The seven debugging checks, usable on any PyTorch training loop.

1 action_stats      2 check_alignment     3 overfit_small_batch    4 grad_norms
5 assert_finite     6 read_curve          7 LOSS_FAMILY_TABLE
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def action_stats(actions: np.ndarray) -> str:
    """1. Per-dimension mean/std/min/max: catches unnormalised or clipped labels at a glance."""
    a = np.asarray(actions)
    rows = [f"dim {d}: mean {a[:, d].mean():+.3f} std {a[:, d].std():.3f} min {a[:, d].min():+.3f} max {a[:, d].max():+.3f}"
            for d in range(a.shape[1])]
    return "\n".join(rows)


def check_alignment(obs: np.ndarray, act: np.ndarray, max_shift: int = 3) -> int:
    """2. Timestamp alignment: fit action ~ obs by least squares at shifts -k..k and return
    the shift with the best fit (0 = aligned). Off-by-one pairing shows as a non-zero shift."""
    best, best_err = 0, np.inf
    n = len(obs)
    for s in range(-max_shift, max_shift + 1):
        o = obs[max(0, -s): n - max(0, s)]
        a = act[max(0, s): n - max(0, -s)]
        X = np.c_[o, np.ones(len(o))]
        coef, *_ = np.linalg.lstsq(X, a, rcond=None)
        err = float(((X @ coef - a) ** 2).mean())
        if err < best_err:
            best, best_err = s, err
    return best


def overfit_small_batch(model, loss_fn, x, y, steps: int = 10, lr: float = 1e-2) -> tuple[float, float]:
    """3. Overfit 10 steps on a batch of 4: the loss must drop a lot, else the loop is broken
    (detached graph, wrong target, zero lr). Returns (first, last) loss; restores weights."""
    import copy

    import torch

    state = copy.deepcopy(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.load_state_dict(state)
    return losses[0], losses[-1]


def grad_norms(model) -> dict[str, float]:
    """4. Gradient norm per parameter (after backward): zeros mean dead layers or a cut graph."""
    return {n: (float(p.grad.norm()) if p.grad is not None else 0.0) for n, p in model.named_parameters()}


def assert_finite(**tensors) -> None:
    """5. Raise naming the first tensor holding NaN/inf."""
    for name, t in tensors.items():
        arr = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        if not np.isfinite(arr).all():
            raise FloatingPointError(f"{name} holds NaN/inf ({int((~np.isfinite(arr)).sum())} values)")


@dataclass(frozen=True)
class CurveFeatures:
    """6. What a loss curve says, as numbers."""

    non_finite: bool
    rel_decrease: float  # 1 - last/first (finite points)
    oscillation: float  # fraction of sign changes in successive differences of log loss
    spikes: int  # points above 3x the running median of their neighbours
    final: float
    flattened_at: int | None  # first logged step after which the loss stays within 10% of its final value


def read_curve(steps: np.ndarray, loss: np.ndarray) -> CurveFeatures:
    loss = np.asarray(loss, dtype=np.float64)
    finite = np.isfinite(loss)
    if finite.sum() < 2:
        return CurveFeatures(True, 0.0, 0.0, 0, float("nan"), None)
    f = loss[finite]
    d = np.diff(np.log(np.maximum(f, 1e-12)))
    osc = float((np.sign(d[1:]) != np.sign(d[:-1])).mean()) if len(d) > 1 else 0.0
    spikes = 0
    for i in range(len(f)):
        nb = f[max(0, i - 3): i + 4]
        if f[i] > 3 * np.median(nb):
            spikes += 1
    final = float(np.median(f[-5:]))
    within = np.abs(f - final) <= 0.10 * abs(final) + 1e-12
    flattened = None
    for i in range(len(f)):
        if within[i:].all():
            flattened = int(np.asarray(steps)[finite][i])
            break
    return CurveFeatures(bool((~finite).any()), float(1 - f[-1] / f[0]), osc, spikes, final, flattened)


# 7. Where to look first, by loss family.
LOSS_FAMILY_TABLE = [
    ("supervised (BC: MSE / CE)", "loss flat from step 0", "lr too small, labels detached, wrong target"),
    ("supervised (BC: MSE / CE)", "loss NaN or oscillating", "lr too large, unnormalised inputs, outlier labels"),
    ("supervised (BC: MSE / CE)", "plateau well above zero", "multimodal labels (MSE averages modes) or noise floor"),
    ("RL (policy gradient)", "return flat, entropy collapses", "reward scale, advantage normalisation, lr"),
    ("RL (policy gradient)", "value loss explodes", "unnormalised returns, missing done masks"),
    ("self-supervised / denoising", "loss drops then stalls at ~1 per dim", "noise schedule or timestep conditioning ignored"),
    ("self-supervised / denoising", "samples blurry / mean-like", "too few sampling steps, guidance off"),
]
