"""The reference rollout: one episode of the published loop, top to bottom.

    obs = env.reset(init state)  ->  (policy.act(obs) -> env.step(action)) until done or max_steps

``api.run_episode`` runs this loop. The sweep's runner (``runner.run_episodes``: several env
slots, one batched policy call per step, optional overlap) does the same per slot, and is
tested to give the same actions and records. Both build their records with ``step_record``
and ``episode_record`` below.
"""
from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import replace

import numpy as np

from vla_eval.failure_modes import UnknownPredicate, classify
from vla_eval.policies.base import ActionBatch, Policy
from vla_eval.records import EpisodeRecord, StepRecord, first_close_step, new_attempt_id
from vla_eval.sims.protocol import Env, StepResult


def rollout(env: Env, policy: Policy, seed: int, max_steps: int | None = None, run_tag: str = "baseline",
            monitor=None) -> tuple[EpisodeRecord, list[StepRecord]]:
    """Seed ``seed`` (stored init state ``seed``) on ``env``: the episode and its steps.
    ``monitor``: a ``RuntimeMonitor`` (or anything with ``update``/``finish``)."""
    seed_everything(seed)
    attempt, steps, outcome, error, reset_s, goals = new_attempt_id(), [], "failure", None, 0.0, ()
    t0 = time.perf_counter()
    try:
        obs = env.reset(seed)
        goals = getattr(obs, "goals", ())
        t0, reset_s = time.perf_counter(), time.perf_counter() - t0
        policy.reset(0)
        for t in range(max_steps or env.max_steps):
            t_act = time.perf_counter()
            batch = policy.act([obs])
            t_step = time.perf_counter()
            result = env.step(batch.actions[0])
            step = step_record(run_tag, env.task_id, seed, attempt, t, batch, 0, result,
                               t_step - t_act, time.perf_counter() - t_step)
            if monitor is not None:  # with the model's hidden-state summary, when it returns one
                features = None if batch.features is None else batch.features[0]
                step = replace(step, alerts=tuple(monitor.update(step, features=features)))
            steps.append(step)
            obs = result.obs
            if result.done:
                outcome = "success"
                break
    except Exception as e:  # noqa: BLE001 - the env's or policy's error is this episode's outcome
        outcome, error = "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"[-4000:]
    episode = episode_record(run_tag, env.suite, env.task_id, seed, attempt, outcome, steps, env.instruction,
                             t0, reset_s, error, goals)
    if monitor is not None:
        alerts = [a for s in steps for a in s.alerts] + monitor.finish(episode)
        episode = replace(episode, alerts=tuple(dict.fromkeys(alerts)))
    return episode, steps


def seed_everything(seed: int) -> None:
    """Python, numpy and (if loaded) torch RNGs. Exact for one slot; with several slots
    running at once, episodes share the process RNG and only the init state is exact."""
    random.seed(seed)
    np.random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def step_record(run_tag: str, task_id: int, seed: int, attempt: str, step: int, batch: ActionBatch, row: int,
                result: StepResult, policy_s: float, sim_s: float) -> StepRecord:
    """Row ``row`` of a policy call and the env's answer to it, as a step record."""
    img_mean, token_prob = batch.img_mean, batch.token_prob

    def per_token(values) -> tuple[float, ...] | None:
        return None if values is None else tuple(round(float(x), 3) for x in values[row])

    return StepRecord(
        run_tag=run_tag, task_id=task_id, seed=seed, attempt=attempt, step=step,
        action=tuple(round(float(x), 4) for x in batch.actions[row]),
        img_mean=None if img_mean is None else round(float(img_mean[row]), 3),
        reward=float(result.reward), done=result.done, policy_s=round(policy_s, 5), sim_s=round(sim_s, 5),
        token_prob=None if token_prob is None else round(float(token_prob[row]), 4),
        token_probs=per_token(batch.token_probs), token_entropy=per_token(batch.token_entropy),
        task=getattr(result, "task", None),
    )


def episode_record(run_tag: str, suite: str, task_id: int, seed: int, attempt: str, outcome: str,
                   steps: list[StepRecord], instruction: str, t0: float, reset_s: float,
                   error: str | None = None, goals: tuple[str, ...] = ()) -> EpisodeRecord:
    """The episode line of ``steps``: timing sums theirs, ``wall_s`` runs from ``t0`` (its first
    step; the reset is ``reset_s``, timed apart). A failure gets its mode from the recorded task
    state (``failure_modes``); a goal outside the taxonomy leaves it unnamed, never stops the run."""
    episode = EpisodeRecord(
        run_tag=run_tag, suite=suite, task_id=task_id, seed=seed, init_state=seed, attempt=attempt,
        outcome=outcome, steps=len(steps), first_close_step=first_close_step(s.action[6] for s in steps),
        wall_s=round(time.perf_counter() - t0, 3), policy_s=round(sum(s.policy_s for s in steps), 4),
        sim_s=round(sum(s.sim_s for s in steps), 4), instruction=instruction, error=error,
        reset_s=round(reset_s, 3), goals=tuple(goals),
    )
    try:
        failure = classify(episode, steps)
    except UnknownPredicate:
        failure = None
    if failure is None:
        return episode
    return replace(episode, failure_mode=failure.mode, failure_step=failure.step, failure_evidence=failure.evidence)
