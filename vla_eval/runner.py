"""The rollout runner: policy x env slots -> step and episode records.

Slots are env workers (or one in-process env). Each slot runs one episode at a time;
a slot whose episode ends takes the next job, so early successes never leave a worker
idle. Per step the policy sees the observations of all active slots in one batch.

With ``overlap``, the slots form two groups that take turns: while one group's envs step,
the policy computes the other group's actions, so neither the GPU nor the simulators idle
(each call then holds half the slots).

    config -> EnvSpec + policy -> run_episodes -> JSONL (+ monitors) -> report
"""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Protocol, Sequence

from vla_eval.sims.parallel import EnvSpec, WorkerError
from vla_eval.sims.pools import Pool, make_pool
from vla_eval.sims.protocol import CAMERAS, suite_spec
from vla_eval.sims.stopping import raise_if_stopping, stop_on_signals
from vla_eval.errors import UsageError
from vla_eval.perturbations import perturbation_of
from vla_eval.policies.base import ActionBatch, Policy
from vla_eval.records import EpisodeRecord, JsonlWriter, StepRecord, new_attempt_id
from vla_eval.rundir import EpisodeShape
from vla_eval.rollout import episode_record, seed_everything, step_record  # noqa: F401  (seed_everything: API)


@dataclass(frozen=True)
class EpisodeJob:
    suite: str
    task_id: int
    seed: int  # seed i -> stored init state i, as in the published eval

    @property
    def init_state(self) -> int:
        return self.seed


@dataclass(frozen=True)
class Execution:
    """How a run's episodes execute. None of it changes what an episode is, so none of it is
    recorded as the run's identity: a resume may change any of these."""
    workers: int = 0  # env processes (0: the env in this process); also the model's batch
    overlap: bool = False  # two env groups alternate between simulating and waiting for the policy
    env_timeout_s: float | None = None  # worker reset/step watchdog (None: the pool's defaults)
    ray_address: str | None = None  # env workers as Ray actors: "local" or a cluster address
    policy_actors: int | None = None  # with Ray: the policy in N actors (None: one per GPU for a CUDA model)
    videos: str = "default"  # which agentview videos to keep (``vla_eval.videos``)
    record_features: bool = False  # per-step hidden-state summaries to features/ (native OpenVLA)
    check_world: bool = False  # pre-flight: the first task's world against the suite's published reference
    monitor: bool = False  # the runtime monitor (this policy's shipped thresholds) on every episode
    stop_on_alert: bool = False  # end an episode at its monitor's first alert
    forecaster: str | None = None  # a failure forecaster file for the monitor (``monitors.forecast``)
    retry_errors: bool = False  # redo committed episodes that ended in an env error
    progress: bool = True

    def __post_init__(self):
        from vla_eval.videos import parse_policy

        if not (isinstance(self.workers, int) and self.workers >= 0):
            raise UsageError(f"--workers {self.workers!r}: 0 (the env in this process) or more")
        parse_policy(self.videos)
        slot_groups(max(self.workers, 1), self.overlap)  # a bad --overlap before any model loads
        if self.env_timeout_s is not None and not self.env_timeout_s > 0:
            raise UsageError(f"--env-timeout {self.env_timeout_s!r}: seconds, more than 0")
        if self.ray_address is not None and self.workers < 1:
            raise UsageError("--ray runs the envs as Ray actors: give their number with --workers N (or --batch N)")
        if self.policy_actors is not None and (self.ray_address is None or self.policy_actors < 0):
            raise UsageError(f"--policy-actors {self.policy_actors}: policy actors live on a Ray cluster; add --ray "
                             f"and give 0 (the policy in this process) or more")


MAX_REQUEUES = 3  # an episode whose env worker was lost (Ray actor/node) is re-run at most this often


def make_jobs(suite: str, task_ids: Iterable[int], seeds: Sequence[int]) -> list[EpisodeJob]:
    """Every (task, seed) of a run; the names and ranges were checked by ``SweepConfig``."""
    return [EpisodeJob(suite, t, s) for t in task_ids for s in seeds]


@dataclass
class _Active:
    job: EpisodeJob
    obs: object
    attempt: str = field(default_factory=new_attempt_id)
    t0: float = field(default_factory=time.perf_counter)
    steps: list = field(default_factory=list)  # its StepRecords
    alerts: list = field(default_factory=list)
    monitor: Monitor | None = None
    reset_s: float = 0.0  # wall time of the reset call that started this episode
    frames: list = field(default_factory=list)  # small upright agentview frames, if videos are kept
    features: list = field(default_factory=list)  # per step (2, d) hidden-state summaries, if recorded


class Monitor(Protocol):
    """What the runner feeds (``vla_eval.monitors.RuntimeMonitor`` fits): alerts per step and at the end."""

    def update(self, step: StepRecord, features=None) -> list[str]: ...  # features: (2, d), when recorded

    def finish(self, episode: EpisodeRecord) -> list[str]: ...


MonitorFactory = Callable[[], Monitor]  # a fresh monitor per episode


class VideoSink(Protocol):
    """Gets each finished episode's frames (``vla_eval.videos.VideoKeeper`` fits)."""

    wants_frames: bool

    def finish(self, task_id: int, seed: int, outcome: str, frames: list) -> None: ...


class FeatureSink(Protocol):
    """Gets each finished episode's per-step hidden-state summaries (``features.FeatureKeeper`` fits)."""

    def finish(self, task_id: int, seed: int, attempt: str, rows: list) -> None: ...


def run_episodes(
    policy: Policy,
    jobs: Sequence[EpisodeJob],
    writer: JsonlWriter,
    run_tag: str,
    shape: EpisodeShape = EpisodeShape(),
    execution: Execution | None = None,
    monitor_factory: MonitorFactory | None = None,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
    pool: Pool | None = None,
    videos: VideoSink | None = None,
    features: FeatureSink | None = None,
) -> list[EpisodeRecord]:
    """Run ``jobs``; records go to ``writer``. Pass an open ``pool`` to reuse its envs across
    calls (e.g. the tags of a drill); else one is made and closed. ``videos`` gets each
    finished episode's frames, ``features`` its hidden-state summaries (when the policy returns
    them). Per slot this is ``rollout.rollout``'s loop (tested equal)."""
    if shape.cameras is False and policy.uses_images:
        raise UsageError(f"policy {policy.name!r} reads images; run it with cameras on")
    own_pool = pool is None
    ex = execution or Execution()
    pool = make_pool(ex.workers, ex.env_timeout_s, ex.ray_address) if own_pool else pool
    try:
        groups = slot_groups(pool.n_workers, ex.overlap)
        return _Rollout(policy, deque(jobs), writer, run_tag, shape, ex.stop_on_alert, monitor_factory, on_episode,
                        pool, videos, features).run(groups)
    finally:
        if own_pool:
            pool.close()


def slot_groups(n_slots: int, overlap: bool) -> list[list[int]]:
    """The groups that take turns: all slots together, or (overlap) even and odd slots."""
    if overlap and n_slots < 2:
        raise UsageError(f"--overlap needs two env groups: --batch (or --workers) of at least 2, got {n_slots}")
    slots = range(n_slots)
    return [list(slots[0::2]), list(slots[1::2])] if overlap else [list(slots)]


@dataclass(frozen=True)
class _InFlight:
    """A group's step: sent to its envs, results not yet gathered."""

    slots: list[int]
    batch: ActionBatch
    policy_s: float  # per observation
    sent: dict
    t_sent: float


@dataclass
class _Rollout:
    policy: Policy
    queue: deque
    writer: JsonlWriter
    run_tag: str
    shape: EpisodeShape
    stop_on_alert: bool
    monitor_factory: MonitorFactory | None
    on_episode: Callable[[EpisodeRecord], None] | None
    pool: Pool
    videos: VideoSink | None = None
    features: FeatureSink | None = None
    active: dict = field(default_factory=dict)  # slot -> _Active
    done: list = field(default_factory=list)
    requeued: dict = field(default_factory=dict)  # job -> times re-queued after a lost worker

    def run(self, groups: list[list[int]]) -> list[EpisodeRecord]:
        in_flight: dict[int, _InFlight] = {}  # group index -> its pending step
        with stop_on_signals():
            while self.queue or self.active:
                self._round(groups, in_flight)
        return self.done

    def _round(self, groups: list[list[int]], in_flight: dict) -> None:
        for g, group in enumerate(groups):
            raise_if_stopping()  # between steps: the in-flight episodes are dropped, never recorded
            if g in in_flight:
                self._collect(in_flight.pop(g))
            self._start(group)
            mine = [s for s in group if s in self.active]
            if not mine:
                continue
            t = time.perf_counter()
            try:
                batch = self.policy.act([self.active[s].obs for s in mine], mine)
            except Exception as e:  # noqa: BLE001 - the policy's bug ends these episodes, not the sweep
                self._policy_failed(mine, e)
                continue
            policy_s = (time.perf_counter() - t) / len(mine)
            t_sent = time.perf_counter()  # before send_step: an in-process env steps inside it
            sent = self.pool.send_step({s: batch.actions[i] for i, s in enumerate(mine)})
            in_flight[g] = _InFlight(mine, batch, policy_s, sent, t_sent)

    def _start(self, group: list[int]) -> None:
        starting = {}
        for slot in group:
            if slot not in self.active and self.queue:
                starting[slot] = self.queue.popleft()
        if not starting:
            return
        # Render only the cameras the policy reads (OpenVLA: agentview); all when it reads none.
        cams = tuple(getattr(self.policy, "cameras", ())) or CAMERAS
        perturbation = perturbation_of(self.run_tag, self.shape.perturb_seed)
        specs = {s: (EnvSpec(j.suite, j.task_id, self.shape.cameras, hard_reset=self.shape.hard_reset, camera_names=cams,
                             perturbation=perturbation), j.init_state) for s, j in starting.items()}
        if len(starting) == 1:
            seed_everything(next(iter(starting.values())).seed)
        t = time.perf_counter()
        firsts = self.pool.reset(specs)
        reset_s = time.perf_counter() - t  # the parallel reset's wall time, for every slot in it
        for slot, first in firsts.items():
            self.active[slot] = _Active(starting[slot], first, reset_s=reset_s)
            self._frame(self.active[slot], first)
            if isinstance(first, WorkerError):
                self._fail(slot, first)
                continue
            self.policy.reset(slot)
            if self.monitor_factory is not None:
                self.active[slot].monitor = self.monitor_factory()

    def _collect(self, step: _InFlight) -> None:
        results = self.pool.gather(step.sent)
        sim_s = time.perf_counter() - step.t_sent  # with overlap: includes the other group's policy call
        for i, slot in enumerate(step.slots):
            a, res = self.active[slot], results[slot]
            if isinstance(res, WorkerError):
                self._fail(slot, res)
                continue
            rec = step_record(self.run_tag, a.job.task_id, a.job.seed, a.attempt, len(a.steps), step.batch, i, res,
                              step.policy_s, sim_s)
            feats = step.batch.features[i] if step.batch.features is not None else None
            alerts = a.monitor.update(rec, features=feats) if a.monitor is not None else []
            if alerts:
                rec = replace(rec, alerts=tuple(alerts))
                a.alerts.extend(alerts)
            self.writer.write(rec)
            if self.features is not None and feats is not None:
                a.features.append(feats)
            a.obs = res.obs
            a.steps.append(rec)
            self._frame(a, res.obs)
            max_steps = self.shape.max_steps or suite_spec(a.job.suite).max_steps
            if res.done:
                self._finish(slot, "success")
            elif len(a.steps) >= max_steps or (self.stop_on_alert and alerts):
                self._finish(slot, "failure")

    def _frame(self, a: _Active, obs) -> None:
        frame = getattr(obs, "agentview", None)
        if self.videos is not None and self.videos.wants_frames and frame is not None:
            from vla_eval.videos import small_upright

            a.frames.append(small_upright(frame))

    def _fail(self, slot: int, err: WorkerError) -> None:
        """A lost worker (a Ray actor or node that died) says nothing about the episode: it
        is re-queued, its partial steps left without an episode line (readers skip them).
        Anything else the env did is the episode's own error."""
        job = self.active[slot].job
        if err.kind == "lost" and self.requeued.get(job, 0) < MAX_REQUEUES:
            self.requeued[job] = self.requeued.get(job, 0) + 1
            del self.active[slot]
            self.queue.appendleft(job)
            print(f"note: env worker lost during task {job.task_id} seed {job.seed}; re-queued", file=sys.stderr)
            return
        self._finish(slot, "error", _describe(err))

    def _policy_failed(self, slots: list[int], e: Exception) -> None:
        """The policy raised on this batch: its episodes end as errors with the traceback (a
        re-run with --retry-errors repeats them); the other slots and the queue go on."""
        import traceback

        tb = traceback.format_exc()
        for slot in slots:
            job = self.active[slot].job
            print(f"note: the policy raised on task {job.task_id} seed {job.seed} ({type(e).__name__}: {e}); "
                  f"episode recorded as an error", file=sys.stderr)
            self._finish(slot, "error", f"policy: {type(e).__name__}: {e}\n{tb}"[-4000:])

    def _finish(self, slot: int, outcome: str, error: str | None = None) -> None:
        a = self.active.pop(slot)
        ep = episode_record(self.run_tag, a.job.suite, a.job.task_id, a.job.seed, a.attempt, outcome, a.steps,
                            getattr(a.obs, "instruction", ""), a.t0, a.reset_s, error, getattr(a.obs, "goals", ()))
        perturbation = perturbation_of(self.run_tag, self.shape.perturb_seed)
        if perturbation is not None:
            ep = replace(ep, perturbation=perturbation.tag, perturbation_seed=perturbation.seed)
        if a.monitor is not None:
            a.alerts.extend(a.monitor.finish(ep))
        ep = replace(ep, alerts=tuple(dict.fromkeys(a.alerts)))
        if self.videos is not None:  # before the episode line: a kept episode never lacks its video
            self.videos.finish(ep.task_id, ep.seed, outcome, a.frames)
        if self.features is not None:  # likewise its features
            self.features.finish(ep.task_id, ep.seed, ep.attempt, a.features)
        self.writer.write(ep)
        self.done.append(ep)
        if self.on_episode:
            self.on_episode(ep)


def _describe(err: WorkerError) -> str:
    return f"{err.kind}: {err.message}" + (f"\n{err.traceback}" if err.traceback else "")
