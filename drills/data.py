"""The SmallPolicy task: synthetic inverse dynamics, generated once from a seed and cached.

obs (14) = 7 joint angles + 7 joint velocities, raw scale ~50 (degrees-like units), so
skipping normalisation is a real fault. action (7) = A @ (obs / 50) + N(0, sigma^2).
``bimodal``: two demonstrators whose dimension-0 actions differ by +-offset (50/50).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OBS_DIM, ACT_DIM = 14, 7
RAW_SCALE = 50.0


@dataclass(frozen=True)
class DataConfig:
    seed: int = 0
    n_train: int = 10_000
    n_val: int = 2_000
    noise: float = 0.1  # action noise std: the MSE floor is noise**2
    bimodal_offset: float = 1.0


@dataclass(frozen=True)
class Dataset:
    obs_train: np.ndarray  # (10000, 14) raw
    act_train: np.ndarray  # (10000, 7)
    obs_val: np.ndarray  # (2000, 14)
    act_val: np.ndarray  # (2000, 7)
    bimodal_train: np.ndarray  # (10000, 7) the same obs, labels from two demonstrators
    bimodal_val: np.ndarray
    mean: np.ndarray  # (14,) per-dimension obs statistics of the training split
    std: np.ndarray

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        return (obs - self.mean) / self.std


def _generate(cfg: DataConfig) -> dict:
    rng = np.random.default_rng(cfg.seed)
    n = cfg.n_train + cfg.n_val
    obs = rng.normal(0.0, RAW_SCALE, size=(n, OBS_DIM)) + rng.uniform(-20, 20, size=OBS_DIM)
    A = rng.normal(0.0, 1.0 / np.sqrt(OBS_DIM), size=(ACT_DIM, OBS_DIM))
    act = (obs / RAW_SCALE) @ A.T + rng.normal(0.0, cfg.noise, size=(n, ACT_DIM))
    bimodal = act.copy()
    bimodal[:, 0] += cfg.bimodal_offset * rng.choice([-1.0, 1.0], size=n)
    t = cfg.n_train
    return dict(obs_train=obs[:t], act_train=act[:t], obs_val=obs[t:], act_val=act[t:],
                bimodal_train=bimodal[:t], bimodal_val=bimodal[t:],
                mean=obs[:t].mean(0), std=obs[:t].std(0))


def load_dataset(cfg: DataConfig = DataConfig(), cache_dir: Path | None = None) -> Dataset:
    """Generated once per config and reused by every drill (``$VLA_EVAL_CACHE/drills``)."""
    cache_dir = cache_dir or Path(os.environ.get("VLA_EVAL_CACHE", Path.home() / ".cache" / "vla-eval")) / "drills"
    path = cache_dir / f"inverse_dynamics_s{cfg.seed}_n{cfg.n_train}_{cfg.n_val}_sig{cfg.noise}_off{cfg.bimodal_offset}.npz"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **_generate(cfg))
        tmp.replace(path)
    with np.load(path) as z:
        return Dataset(**{k: z[k] for k in z.files})


def mse_floor(cfg: DataConfig, bimodal: bool) -> float:
    """Best achievable per-element MSE: the noise variance, plus offset^2 on 1 of 7 dims
    when the labels are bimodal (the conditional mean sits between the modes)."""
    return cfg.noise**2 + (cfg.bimodal_offset**2 / ACT_DIM if bimodal else 0.0)
