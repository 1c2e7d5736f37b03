"""SmallPolicy and its training loop: reads top to bottom, every knob a typed field.

    SmallPolicy: 14 -> 256 -> 256 -> 7, ReLU, no dropout; MSE, Adam, batch 64, 50 epochs.

``train_many`` runs several configs in lockstep (``vla_eval.drills.stacked``); each is the same
training as alone, only batched.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_eval.drills.data import ACT_DIM, OBS_DIM, Dataset


@dataclass(frozen=True)
class OptimConfig:
    """What every SmallPolicy training run sets: Adam's learning rate, the batch, the epochs."""
    lr: float = 1e-3
    batch: int = 64
    epochs: int = 50


@dataclass(frozen=True)
class TrainConfig(OptimConfig):
    seed: int = 0
    normalize: bool = True  # per-dimension observation normalisation
    outlier: bool = False  # one sample per batch gets action[3] = 1e3
    clip_grad: float | None = None
    bimodal: bool = False  # labels from two demonstrators
    log_every: int = 100  # steps


def small_policy(in_dim: int = OBS_DIM, out_dim: int = ACT_DIM, hidden: int = 256):
    import torch.nn as nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, out_dim))


@dataclass
class History:
    step: list
    train_loss: list  # mean over the last log_every steps
    val_loss: list
    grad_norm: list  # mean total grad norm (before clipping) over the last log_every steps

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, dtype=np.float64) for k, v in self.__dict__.items()}


def _inputs(data: Dataset, cfg: TrainConfig):
    prep = data.normalize if cfg.normalize else (lambda o: o)
    return (prep(data.obs_train), data.bimodal_train if cfg.bimodal else data.act_train,
            prep(data.obs_val), data.bimodal_val if cfg.bimodal else data.act_val)


def train_many(data: Dataset, cfgs: Sequence[TrainConfig]) -> tuple[object, list[History]]:
    """Train one SmallPolicy per config (MSE). Configs must share batch, epochs, log_every."""
    import torch

    from vla_eval.drills.stacked import StackedAdam, StackedMLP

    c0 = cfgs[0]
    assert all((c.batch, c.epochs, c.log_every) == (c0.batch, c0.epochs, c0.log_every) for c in cfgs)
    K = len(cfgs)
    parts = [_inputs(data, c) for c in cfgs]
    x, y, xv, yv = (torch.tensor(np.stack([p[i] for p in parts]), dtype=torch.float32) for i in range(4))
    # x (K, 10000, 14), y (K, 10000, 7), xv (K, 2000, 14), yv (K, 2000, 7)
    model = StackedMLP(K, OBS_DIM, ACT_DIM, seeds=[c.seed for c in cfgs])
    opt = StackedAdam(model.parameters(), torch.tensor([c.lr for c in cfgs]),
                      torch.tensor([c.clip_grad or float("inf") for c in cfgs]))
    outlier = torch.tensor([c.outlier for c in cfgs])
    rngs = [np.random.default_rng(c.seed) for c in cfgs]
    ks = torch.arange(K)[:, None]
    hists = [History([], [], [], []) for _ in cfgs]
    run_loss, run_grad, step = torch.zeros(K), torch.zeros(K), 0
    n = x.shape[1]
    for _ in range(c0.epochs):
        order = torch.from_numpy(np.stack([r.permutation(n) for r in rngs]))  # (K, 10000)
        for i in range(0, n, c0.batch):
            idx = order[:, i:i + c0.batch]  # (K, 64)
            xb, yb = x[ks, idx], y[ks, idx].clone()  # (K, 64, 14), (K, 64, 7)
            yb[outlier, 0, 3] = 1e3
            loss_k = ((model(xb) - yb) ** 2).mean(dim=(1, 2))  # (K,)
            loss_k.sum().backward()  # disjoint parameters: each model gets its own gradient
            run_grad += opt.step()
            run_loss += loss_k.detach()
            step += 1
            if step % c0.log_every == 0:
                with torch.no_grad():
                    val = ((model(xv) - yv) ** 2).mean(dim=(1, 2))
                for k, h in enumerate(hists):
                    h.step.append(step)
                    h.train_loss.append(float(run_loss[k]) / c0.log_every)
                    h.val_loss.append(float(val[k]))
                    h.grad_norm.append(float(run_grad[k]) / c0.log_every)
                run_loss.zero_()
                run_grad.zero_()
    return model, hists
