"""The policy on a Ray cluster: one policy actor per GPU, each batching the observations of
the env actors it serves.

    driver:  runner loop -> RayPolicy.act(obs of all active env slots)
                               | rows split by slot % K (a slot always meets the same actor,
                               | so a stateful policy keeps its per-slot state)
    actors:  PolicyActor 0 .. K-1, each holds the weights once and one policy per run tag;
             one batched model call per step for its rows
    driver:  rows reassembled in the runner's order -> the same ActionBatch as locally

The driver stays the only writer of the run folder. A policy actor that dies is restarted
once by Ray and the step retried (``max_restarts=1, max_task_retries=1``); after a second
loss its episodes end as errors (the runner records a raising policy that way): re-run with
``--retry-errors``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_eval.errors import UsageError
from vla_eval.policies.base import ActionBatch
from vla_eval.policies.factory import OpenVLAOptions, Toggles


class PolicyActor:
    """Builds the tag policies in its own process (on its GPU when the device is CUDA)."""

    def __init__(self, name: str, suite: str, toggles: Sequence[Toggles], opts: OpenVLAOptions):
        from vla_eval.policies.factory import make_policies

        self.policies = make_policies(name, suite, list(toggles), opts)

    def describe(self) -> dict:
        p = self.policies[0]
        return {"name": p.name, "uses_images": p.uses_images, "cameras": tuple(getattr(p, "cameras", ()))}

    def reset(self, tag: int, slot: int) -> None:
        self.policies[tag].reset(slot)

    def act(self, tag: int, obs: list, slots: list[int]) -> ActionBatch:
        return self.policies[tag].act(obs, slots)


def default_actor_count(ray, device: str) -> int:
    """CUDA: one actor per GPU of the cluster; CPU: none (the policy stays in the driver)."""
    if not device.startswith("cuda"):
        return 0
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        raise UsageError(f"--device {device} with --ray: the cluster has no GPU; use --device cpu or add GPU nodes")
    return gpus


@dataclass
class RayPolicy:
    """The Policy protocol over K policy actors, for one run tag."""

    actors: list
    tag: int
    name: str
    uses_images: bool
    cameras: tuple[str, ...]

    def reset(self, slot: int = 0) -> None:
        self.actors[slot % len(self.actors)].reset.remote(self.tag, slot)  # ordered before the next act

    def act(self, obs: Sequence, slots: Sequence[int] | None = None) -> ActionBatch:
        import ray

        slots = list(range(len(obs))) if slots is None else list(slots)
        rows: dict[int, list[int]] = {}  # actor -> row indices
        for i, s in enumerate(slots):
            rows.setdefault(s % len(self.actors), []).append(i)
        refs = {k: self.actors[k].act.remote(self.tag, [obs[i] for i in idx], [slots[i] for i in idx])
                for k, idx in rows.items()}
        try:
            parts = {k: ray.get(ref) for k, ref in refs.items()}
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"a policy actor was lost twice ({type(e).__name__}); its episodes end as errors: "
                               f"re-run the same command with --retry-errors") from e
        return _reassemble(parts, rows, len(obs))


def _reassemble(parts: dict[int, ActionBatch], rows: dict[int, list[int]], n: int) -> ActionBatch:
    actions = np.zeros((n, 7))
    first = next(iter(parts.values()))
    fields = {f: (np.zeros((n, *np.shape(getattr(first, f))[1:])) if all(getattr(p, f) is not None for p in parts.values())
                  else None) for f in ("img_mean", "token_prob", "token_probs", "token_entropy", "features")}
    for k, idx in rows.items():
        actions[idx] = parts[k].actions
        for f, arr in fields.items():
            if arr is not None:
                arr[idx] = getattr(parts[k], f)
    return ActionBatch(actions, **fields)


def make_ray_policies(ray, n_actors: int, name: str, suite: str, toggles_per_tag: Sequence[Toggles],
                      opts: OpenVLAOptions, gpu: bool) -> list[RayPolicy]:
    """``n_actors`` policy actors (one GPU each with ``gpu``, one CPU each otherwise); one
    RayPolicy per tag, all sharing the actors. Set-up errors inside an actor surface here."""
    cls = ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1, max_restarts=1,
                     max_task_retries=1)(PolicyActor)
    actors = [cls.remote(name, suite, list(toggles_per_tag), opts) for _ in range(n_actors)]
    try:
        info = ray.get(actors[0].describe.remote())
        ray.get([a.describe.remote() for a in actors[1:]])
    except ray.exceptions.RayTaskError as e:  # the actor's __init__ raised: show its own error
        _kill(ray, actors)
        cause = getattr(e, "cause", None)
        if isinstance(cause, UsageError):
            raise UsageError(str(cause)) from None
        raise
    return [RayPolicy(actors, tag, info["name"], info["uses_images"], info["cameras"])
            for tag in range(len(toggles_per_tag))]


def release(ray, policies) -> None:
    """Kill the policy actors behind ``policies`` (other policies are ignored): on a shared
    cluster they would hold their GPUs after the run."""
    _kill(ray, {id(a): a for p in policies if isinstance(p, RayPolicy) for a in p.actors}.values())


def _kill(ray, actors) -> None:
    for actor in actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
