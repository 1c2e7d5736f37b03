"""N simulator envs in spawned worker processes, stepped together.

Each worker builds its env lazily from a picklable ``EnvSpec`` on the first reset (and
rebuilds it when the spec changes). A worker that raises, hangs, or dies (MuJoCo
instability, a segfault in a GL driver) becomes a ``WorkerError`` for that slot's episode,
with the traceback kept; the worker is restarted and the other slots carry on.

    pool = EnvPool(2)
    obs = pool.reset({0: (EnvSpec("libero_object", 0), 0), 1: (EnvSpec("libero_object", 0), 1)})
    out = pool.step({0: action0, 1: action1})   # {slot: StepResult | WorkerError}
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from vla_eval.perturbations import Perturbation
from vla_eval.sims.protocol import CAMERAS, RESOLUTION, Observation, StepResult
from vla_eval.sims.stopping import Stopped, stop_signal_of


@dataclass(frozen=True)
class EnvSpec:
    """Everything needed to build one LIBERO env in another process."""

    suite: str
    task_id: int
    cameras: bool = True
    resolution: int = RESOLUTION
    hard_reset: bool = True
    seed: int = 0
    camera_names: tuple[str, ...] = CAMERAS  # rendered when cameras is on
    perturbation: Perturbation | None = None  # vla_eval.perturbations; None: the published scene

    def build(self):
        from vla_eval.sims.libero_env import LiberoEnv

        return LiberoEnv(self.suite, self.task_id, self.cameras, self.resolution, self.hard_reset, self.seed,
                         self.camera_names, self.perturbation)


class EnvHolder:
    """One env, built from its spec on the first reset and rebuilt when the spec changes: what
    a spawned worker, the in-process pool and a Ray actor each hold."""

    def __init__(self):
        self.env, self.spec = None, None

    def reset(self, spec: EnvSpec, init_index: int) -> Observation:
        if spec != self.spec:
            self.close()  # stays cleared if the build below raises
            self.env, self.spec = spec.build(), spec
        return self.env.reset(init_index)

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.env, self.spec = None, None


@dataclass(frozen=True)
class WorkerError:
    """An episode lost to its worker: ``kind`` is 'exception', 'crash' or 'timeout'."""

    slot: int
    kind: str
    message: str
    traceback: str = ""


def _worker_main(conn) -> None:
    from vla_eval.sims.stopping import die_with_parent, ignore_interrupts_in_worker

    die_with_parent()
    ignore_interrupts_in_worker()  # SIGINT/TERM/HUP: the parent decides when to stop; no tracebacks here
    holder = EnvHolder()
    while True:
        try:
            cmd, payload = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            break
        if cmd == "close":
            break
        try:
            if cmd == "reset":
                conn.send(("ok", holder.reset(*payload)))
            elif cmd == "step":
                conn.send(("ok", holder.env.step(payload)))
            elif cmd == "eval":  # privileged read-only queries, e.g. sim state for scripted policies
                conn.send(("ok", payload(holder.env)))
            else:
                conn.send(("error", f"unknown command {cmd!r}", ""))
        except (BrokenPipeError, ConnectionResetError):
            break  # the parent is gone: leave quietly
        except Exception as e:  # reported to the parent, the worker lives on
            try:
                conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
            except OSError:
                break
    holder.close()


RESET_TIMEOUT_S, STEP_TIMEOUT_S = 180.0, 60.0  # a hung env becomes an error episode after these


class EnvPool:
    def __init__(self, n_workers: int, reset_timeout_s: float = RESET_TIMEOUT_S, step_timeout_s: float = STEP_TIMEOUT_S):
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self._ctx = mp.get_context("spawn")  # fork would copy GL contexts and torch threads
        self.reset_timeout_s, self.step_timeout_s = reset_timeout_s, step_timeout_s
        self._procs: list = [None] * n_workers
        self._conns: list = [None] * n_workers
        self.restarts = 0
        for slot in range(n_workers):
            self._start(slot)

    @property
    def n_workers(self) -> int:
        return len(self._procs)

    def pid(self, slot: int) -> int:
        return self._procs[slot].pid

    def _start(self, slot: int) -> None:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child,), daemon=True, name=f"env-worker-{slot}")
        proc.start()
        child.close()
        self._procs[slot], self._conns[slot] = proc, parent

    def _restart(self, slot: int) -> None:
        proc, conn = self._procs[slot], self._conns[slot]
        conn.close()
        if proc.is_alive():
            proc.kill()
        proc.join(timeout=10)
        self.restarts += 1
        self._start(slot)

    def _call(self, commands: Mapping[int, tuple], timeout_s: float) -> dict:
        """Send every command first (the workers run in parallel), then gather replies."""
        return self._gather(self._send(commands), timeout_s)

    def _send(self, commands: Mapping[int, tuple]) -> dict:
        sent = {}
        for slot, msg in commands.items():
            try:
                self._conns[slot].send(msg)
                sent[slot] = True
            except (BrokenPipeError, OSError) as e:
                self._raise_if_stopped(slot)
                sent[slot] = WorkerError(slot, "crash", f"worker was dead before {msg[0]}: {e!r}")
        return sent

    def _gather(self, sent: dict, timeout_s: float) -> dict:
        out = {}
        for slot, ok in sent.items():
            out[slot] = self._receive(slot, timeout_s) if ok is True else ok
            if isinstance(out[slot], WorkerError) and out[slot].kind != "exception":
                self._restart(slot)
        return out

    def _receive(self, slot: int, timeout_s: float):
        conn, proc = self._conns[slot], self._procs[slot]
        try:
            if not conn.poll(timeout_s):
                return WorkerError(slot, "timeout", f"worker gave no answer within {timeout_s:.0f} s")
            reply = conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            self._raise_if_stopped(slot)
            return WorkerError(slot, "crash", f"worker process died (exit code {proc.exitcode})")
        if reply[0] == "ok":
            return reply[1]
        return WorkerError(slot, "exception", reply[1], reply[2])

    def _raise_if_stopped(self, slot: int) -> None:
        """A worker killed by a stop signal means the run is being stopped (the signal went to the
        whole process group before the worker could ignore it): the episode in flight is no result."""
        proc = self._procs[slot]
        proc.join(timeout=5)
        signum = stop_signal_of(proc.exitcode)
        if signum is not None:
            raise Stopped(signum)

    def reset(self, jobs: Mapping[int, tuple[EnvSpec, int]]) -> dict[int, Observation | WorkerError]:
        """``{slot: (spec, init_state_index)}`` -> ``{slot: first observation | WorkerError}``."""
        return self._call({s: ("reset", job) for s, job in jobs.items()}, self.reset_timeout_s)

    def step(self, actions: Mapping[int, np.ndarray]) -> dict[int, StepResult | WorkerError]:
        return self.gather(self.send_step(actions))

    def send_step(self, actions: Mapping[int, np.ndarray]) -> dict:
        """Start a step in these workers and return at once; ``gather`` the results later, so
        the caller can compute the next actions of other slots while these envs step."""
        return self._send({s: ("step", np.asarray(a)) for s, a in actions.items()})

    def gather(self, sent: dict) -> dict[int, StepResult | WorkerError]:
        return self._gather(sent, self.step_timeout_s)

    def query(self, slot: int, fn):
        """Run a picklable ``fn(env)`` in the worker; for privileged state reads."""
        return self._call({slot: ("eval", fn)}, self.step_timeout_s)[slot]

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalPool:
    """The EnvPool interface with one env in this process: no spawn, no second 2.3 GB env.

    Exceptions become ``WorkerError('exception')`` as in the pool; a real crash (segfault)
    takes this process down, which is what ``EnvPool`` is for.
    """

    n_workers = 1

    def __init__(self):
        self._holder = EnvHolder()

    def reset(self, jobs: Mapping[int, tuple[EnvSpec, int]]) -> dict:
        ((slot, (spec, init_index)),) = jobs.items()
        return {slot: _guarded(slot, self._holder.reset, spec, init_index)}

    def step(self, actions: Mapping[int, np.ndarray]) -> dict:
        ((slot, action),) = actions.items()
        return {slot: _guarded(slot, lambda a: self._holder.env.step(a), action)}

    def send_step(self, actions: Mapping[int, np.ndarray]) -> dict:
        return self.step(actions)  # one in-process env: the step runs now, nothing overlaps

    def gather(self, sent: dict) -> dict:
        return sent

    def query(self, slot: int, fn):
        return fn(self._holder.env)

    def close(self) -> None:
        self._holder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _guarded(slot: int, fn, *args):
    try:
        return fn(*args)
    except Exception as e:
        return WorkerError(slot, "exception", f"{type(e).__name__}: {e}", traceback.format_exc())
