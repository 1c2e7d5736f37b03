"""Choose an env pool: in-process, spawned workers (``parallel``) or Ray actors (``ray_pool``)."""
from __future__ import annotations

from typing import Callable, Mapping, Protocol

import numpy as np

from vla_eval.sims.parallel import EnvPool, EnvSpec, LocalPool, WorkerError
from vla_eval.sims.protocol import Observation, StepResult


class Pool(Protocol):
    """N env slots driven together: what the runner needs from ``LocalPool``, ``EnvPool`` and
    ``RayPool``. A slot whose env failed answers a ``WorkerError`` instead of raising."""

    n_workers: int

    def reset(self, jobs: Mapping[int, tuple[EnvSpec, int]]) -> dict[int, Observation | WorkerError]:
        """slot -> (env spec, init state index): the first observations (envs rebuilt as needed)."""

    def send_step(self, actions: Mapping[int, np.ndarray]) -> dict:
        """Start a step on these slots; ``gather`` its results (an in-process env steps now)."""

    def gather(self, sent: dict) -> dict[int, StepResult | WorkerError]: ...

    def query(self, slot: int, fn: Callable): ...

    def close(self) -> None: ...


def make_pool(n_workers: int, env_timeout_s: float | None = None, ray_address: str | None = None) -> Pool:
    """0: the env lives in this process; N >= 1: N spawned workers, each watched: a reset or
    step that takes longer than ``env_timeout_s`` (default 180 s / 60 s) ends that episode as
    an error and the worker is restarted. (An in-process env cannot be watched that way.)
    ``ray_address``: the N workers are Ray actors instead ("local" starts a Ray instance)."""
    if ray_address is not None:
        from vla_eval.sims.ray_pool import RayPool  # ray is imported only here

        timeouts = {} if env_timeout_s is None else {"reset_timeout_s": env_timeout_s, "step_timeout_s": env_timeout_s}
        return RayPool(n_workers, None if ray_address == "local" else ray_address, **timeouts)
    if n_workers == 0:
        return LocalPool()
    if env_timeout_s is None:
        return EnvPool(n_workers)
    return EnvPool(n_workers, reset_timeout_s=env_timeout_s, step_timeout_s=env_timeout_s)
