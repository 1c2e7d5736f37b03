"""The env pool on a Ray cluster: one Ray actor per env slot, on any node with a free CPU.

Same interface as ``EnvPool`` (reset / send_step / gather / query / close), so the runner,
its run-folder rules and the report do not change: the driver process holds the policy and
is the only writer of the run folder; actors only simulate.

    pool = RayPool(4, address="auto")        # or None: a local Ray instance for this run
    obs = pool.reset({0: (EnvSpec("libero_object", 0), 0), ...})

Failure handling: an exception inside the env is that episode's ``error`` (as locally); an
actor that dies or whose node is lost gives ``WorkerError(kind="lost")``, which the runner
re-queues (the half-run attempt has no episode line, so readers ignore its steps): every
(task, seed) ends up exactly once. A reset/step past its timeout is an ``error`` episode and
the actor is replaced, as with local workers.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from vla_eval.errors import UsageError, require
from vla_eval.sims.parallel import RESET_TIMEOUT_S, STEP_TIMEOUT_S, EnvHolder, EnvSpec, WorkerError


def ray_initialized() -> bool:
    import sys

    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def connect(address: str | None, local_cpus: int | None = None):
    """``ray`` connected to ``address`` (None: a local instance with at least ``local_cpus``
    logical CPUs, so every actor the run asks for fits); a clear message if unreachable."""
    ray = require("ray", "ray", "vla-eval sweep --ray")
    if not ray.is_initialized():
        local = {} if address else {"num_cpus": max(os.cpu_count() or 1, local_cpus or 0)}
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UsageError(f"--ray {address or '(local)'}: could not reach a Ray cluster ({e}); start one with "
                             f"`ray start --head` and pass its address, or pass no address for a local one") from e
    return ray


class EnvActor(EnvHolder):
    """One LIBERO env in a Ray worker process (rebuilt when the spec changes)."""

    def __init__(self, gl_backend: str | None = None):
        from vla_eval.sims.libero_env import configure_gl

        if gl_backend:
            os.environ.setdefault("MUJOCO_GL", gl_backend)
        configure_gl()
        super().__init__()

    def pid(self) -> int:
        return os.getpid()

    def step(self, action: np.ndarray):
        return self.env.step(action)

    def query(self, fn):
        return fn(self.env)


class RayPool:
    def __init__(self, n_workers: int, address: str | None = None, reset_timeout_s: float = RESET_TIMEOUT_S,
                 step_timeout_s: float = STEP_TIMEOUT_S):
        if n_workers < 1:
            raise UsageError(f"--ray needs at least one env worker (--workers or --batch), got {n_workers}")
        self._own = not ray_initialized()
        self.ray = connect(address)
        self.reset_timeout_s, self.step_timeout_s = reset_timeout_s, step_timeout_s
        # SPREAD: env actors on as many nodes as possible (a lost node loses fewer episodes)
        self._cls = self.ray.remote(num_cpus=1, max_restarts=0, scheduling_strategy="SPREAD")(EnvActor)
        self._gl = os.environ.get("MUJOCO_GL")
        self._actors = [self._cls.remote(self._gl) for _ in range(n_workers)]
        self.restarts = 0
        self._wait_placed(reset_timeout_s)

    def _wait_placed(self, timeout_s: float) -> None:
        """Refuse at once when the cluster has no room for the env actors (else every reset times out)."""
        pending = [a.pid.remote() for a in self._actors]
        ready, _ = self.ray.wait(pending, num_returns=len(pending), timeout=timeout_s)
        if len(ready) < len(pending):
            free = self.ray.available_resources().get("CPU", 0)
            self.close()
            raise UsageError(f"the Ray cluster placed {len(ready)} of {len(pending)} env actors within {timeout_s:.0f} s "
                             f"(each needs 1 CPU; {free:g} CPUs free): use fewer --workers or add CPU nodes")

    @property
    def n_workers(self) -> int:
        return len(self._actors)

    def pid(self, slot: int) -> int:
        return self.ray.get(self._actors[slot].pid.remote(), timeout=self.reset_timeout_s)

    def _replace(self, slot: int) -> None:
        try:
            self.ray.kill(self._actors[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - already dead, or its node is gone
            pass
        self._actors[slot] = self._cls.remote(self._gl)
        self.restarts += 1

    def _gather(self, refs: Mapping[int, object], timeout_s: float) -> dict:
        exc = self.ray.exceptions
        out = {}
        for slot, ref in refs.items():
            if isinstance(ref, WorkerError):
                out[slot] = ref
                continue
            try:
                out[slot] = self.ray.get(ref, timeout=timeout_s)
            except exc.GetTimeoutError:
                out[slot] = WorkerError(slot, "timeout", f"Ray env actor gave no answer within {timeout_s:.0f} s")
            except exc.RayTaskError as e:  # the env raised: the episode's own error
                out[slot] = WorkerError(slot, "exception", str(e.cause if hasattr(e, "cause") else e)[:500],
                                        str(e)[-4000:])
            except (exc.RayActorError, exc.ObjectLostError, exc.WorkerCrashedError, exc.NodeDiedError) as e:
                out[slot] = WorkerError(slot, "lost", f"Ray env actor lost ({type(e).__name__}): {str(e)[:300]}")
            if isinstance(out[slot], WorkerError) and out[slot].kind != "exception":
                self._replace(slot)
        return out

    def reset(self, jobs: Mapping[int, tuple[EnvSpec, int]]) -> dict:
        refs = {s: self._actors[s].reset.remote(spec, idx) for s, (spec, idx) in jobs.items()}
        return self._gather(refs, self.reset_timeout_s)

    def step(self, actions: Mapping[int, np.ndarray]) -> dict:
        return self.gather(self.send_step(actions))

    def send_step(self, actions: Mapping[int, np.ndarray]) -> dict:
        return {s: self._actors[s].step.remote(np.asarray(a)) for s, a in actions.items()}

    def gather(self, sent: dict) -> dict:
        return self._gather(sent, self.step_timeout_s)

    def query(self, slot: int, fn):
        return self._gather({slot: self._actors[slot].query.remote(fn)}, self.step_timeout_s)[slot]

    def close(self) -> None:
        for actor in self._actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - closing must not raise over a dead actor
                pass
        if self._own:
            self.ray.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
