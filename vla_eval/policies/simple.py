"""Policies that need no model: the scripted expert (privileged state) and zero actions."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from vla_eval.sims.protocol import Observation
from vla_eval.errors import UsageError
from vla_eval.policies.base import ActionBatch

OPEN, CLOSE = -1.0, 1.0


class ZeroPolicy:
    """Holds still with the gripper open. For smoke tests: it never succeeds."""

    name = "zero"
    uses_images = False
    cameras: tuple[str, ...] = ()

    def reset(self, slot: int = 0) -> None:
        pass

    def act(self, obs: Sequence[Observation], slots=None) -> ActionBatch:
        actions = np.zeros((len(obs), 7))
        actions[:, 6] = OPEN
        return ActionBatch(actions)


_PICK_PLACE = re.compile(r"pick up the (?P<obj>.+?) and place it in the (?P<place>.+)$")


def parse_pick_place(instruction: str) -> tuple[str, str]:
    """'pick up the alphabet soup and place it in the basket' -> ('alphabet_soup_1', 'basket_1')."""
    m = _PICK_PLACE.match(instruction.strip().lower())
    if not m:
        raise UsageError(
            f"the scripted expert handles 'pick up the X and place it in the Y' tasks "
            f"(libero_object); got {instruction!r}"
        )
    return tuple(m.group(k).replace(" ", "_") + "_1" for k in ("obj", "place"))  # type: ignore[return-value]


@dataclass
class _Plan:
    phase: str = "approach"
    ticks: int = 0  # steps spent in the current phase
    hold_xy: np.ndarray | None = field(default=None)


@dataclass(frozen=True)
class ExpertGains:
    k_pos: float = 12.0  # action per metre of error (1.0 ~ 1.2 cm/step under OSC_POSE at 20 Hz)
    hover: float = 0.10  # m above the object before descending
    grasp_dz: float = 0.0  # grasp height relative to the object's centre
    carry_z: float = 0.28  # m, world height for carrying over the scene
    release_dz: float = 0.16  # m above the basket centre when releasing
    close_steps: int = 12
    release_steps: int = 12
    tol: float = 0.012  # m


class ScriptedExpert:
    """Pick-and-place from privileged state (object, basket and gripper poses), for CPU runs.

    Phases: approach (hover over the object) -> descend -> close -> lift -> carry (over the
    basket) -> release -> done. Proportional position control, zero rotation. It reads no
    pixels, so runs with cameras off; image toggles do not apply to it.
    """

    name = "scripted"
    uses_images = False
    cameras: tuple[str, ...] = ()

    def __init__(self, gains: ExpertGains = ExpertGains()):
        self.g = gains
        self._plans: dict[int, _Plan] = {}

    def reset(self, slot: int = 0) -> None:
        self._plans[slot] = _Plan()

    def phase(self, slot: int = 0) -> tuple[str, int]:
        """(phase, steps spent in it) of a slot's plan: the demo recorder perturbs some phases only."""
        plan = self._plans.setdefault(slot, _Plan())
        return plan.phase, plan.ticks

    def act(self, obs: Sequence[Observation], slots: Sequence[int] | None = None) -> ActionBatch:
        slots = range(len(obs)) if slots is None else slots
        return ActionBatch(np.stack([self._act_one(o, self._plans.setdefault(s, _Plan())) for o, s in zip(obs, slots)]))

    def _act_one(self, o: Observation, plan: _Plan) -> np.ndarray:
        g = self.g
        obj_name, place_name = parse_pick_place(o.instruction)
        obj, place = o.objects[obj_name + "_pos"], o.objects[place_name + "_pos"]
        eef = o.eef_pos
        plan.ticks += 1
        grip = OPEN
        if plan.phase == "approach":
            target = obj + [0, 0, g.hover]
            if np.linalg.norm((target - eef)[:2]) < g.tol and abs(target[2] - eef[2]) < 2 * g.tol:
                plan.phase, plan.ticks = "descend", 0
        if plan.phase == "descend":
            target = obj + [0, 0, g.grasp_dz]
            if np.linalg.norm(target - eef) < g.tol or plan.ticks > 40:
                plan.phase, plan.ticks = "close", 0
        if plan.phase == "close":
            target, grip = obj + [0, 0, g.grasp_dz], CLOSE
            if plan.ticks >= g.close_steps:
                plan.phase, plan.ticks = "lift", 0
        if plan.phase == "lift":
            target, grip = np.array([eef[0], eef[1], g.carry_z]), CLOSE
            if abs(g.carry_z - eef[2]) < 2 * g.tol:
                plan.phase, plan.ticks = "carry", 0
        if plan.phase == "carry":
            target, grip = np.array([place[0], place[1], g.carry_z]), CLOSE
            if np.linalg.norm((target - eef)[:2]) < g.tol:
                plan.phase, plan.ticks = "lower", 0
        if plan.phase == "lower":
            target, grip = place + [0, 0, g.release_dz], CLOSE
            if np.linalg.norm(target - eef) < g.tol or plan.ticks > 30:
                plan.phase, plan.ticks = "release", 0
        if plan.phase == "release":
            target, grip = place + [0, 0, g.release_dz], OPEN
            if plan.ticks >= g.release_steps:
                plan.phase, plan.ticks = "done", 0
        if plan.phase == "done":
            target = np.array([eef[0], eef[1], g.carry_z])
        action = np.zeros(7)
        action[:3] = np.clip(g.k_pos * (target - eef), -1.0, 1.0)
        action[6] = grip
        return action
