"""The scripted expert, made to fail on purpose in one named way: episodes whose failure mode is
known by construction, to validate ``vla_eval.failure_modes`` (``scripts/failure_mode_check.py``).

Each variant changes where the expert's phases aim or which phase follows which; the rest is the
expert of ``scripted.py`` (libero_object pick-and-place).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vla_eval.errors import bad_choice
from vla_eval.policies.scripted import ExpertGains, ScriptedExpert, _Plan, _poses, parse_pick_place
from vla_eval.sims.protocol import Observation


@dataclass(frozen=True)
class Sabotage:
    mode: str  # the variant's name: the failure mode it constructs (misplaced_held: misplaced)
    how: str
    tasks: tuple[int, ...] = tuple(range(10))  # the libero_object tasks where the construction works


_VARIANTS = (
    Sabotage("never_reached", "stops 22 cm above the object and stays there"),
    Sabotage("missed_grasp", "closes 5 cm beside the object, then carries nothing to the basket"),
    Sabotage("wrong_object", "picks up the nearest other object and places it in the basket"),
    Sabotage("dropped", "opens the gripper 8 steps into the carry"),
    Sabotage("misplaced", "releases the object 12 cm beside the basket's centre"),
    Sabotage("misplaced_held", "carries the object over the basket and never lowers or releases it"),
    # Only the bottles tip over (tasks 2, 3, 4, 7, 9); pushed cans and boxes slide, knocking bystanders
    # at most, which is not the goal's object knocked over: no knocked_off to construct there.
    Sabotage("knocked_off", "pushes the object over from the side at 5 cm above its base",
             tasks=(2, 3, 4, 7, 9)),
    Sabotage("stalled", "hovers just above the object, open, for the rest of the episode"),
)
SABOTAGES = {s.mode: s for s in _VARIANTS}


def expected_mode(variant: str) -> str:
    """The failure mode a variant constructs ('misplaced_held' is a misplaced episode too)."""
    return variant.split("_held")[0]


class FailingExpert(ScriptedExpert):
    """``ScriptedExpert`` that fails the way ``variant`` (a key of ``SABOTAGES``) says."""

    name = "failing"

    def __init__(self, variant: str, gains: ExpertGains = ExpertGains()):
        if variant not in SABOTAGES:
            raise bad_choice("failing variant", variant, SABOTAGES)
        super().__init__(gains)
        self.variant = variant

    def _targets(self, o: Observation) -> tuple[np.ndarray, np.ndarray]:
        obj, place = _poses(o)
        v = self.variant
        if v == "never_reached":
            return obj + [0, 0, 0.12], place
        if v == "missed_grasp":
            return obj + [0.05, 0, 0], place
        if v == "wrong_object":
            return _nearest_other(o, obj), place
        if v == "misplaced":
            return obj, place + [0.12, 0, 0]
        if v == "knocked_off":
            return obj, place
        if v == "stalled":
            return obj + [0, 0, 0.03], place
        return obj, place

    def _next(self, phase: str, plan: _Plan) -> str:
        v = self.variant
        stay = {"never_reached": "approach", "stalled": "descend", "misplaced_held": "carry"}.get(v)
        if phase == stay:
            return phase
        if v == "dropped" and phase == "carry":
            return "done"
        return super()._next(phase, plan)

    def _finished(self, plan: _Plan, target: np.ndarray, eef: np.ndarray) -> bool:
        if self.variant == "dropped" and plan.phase == "carry":
            return plan.ticks >= 8
        return super()._finished(plan, target, eef)

    def _act_one(self, o: Observation, plan: _Plan) -> np.ndarray:
        if self.variant == "knocked_off":
            return self._push_over(o, plan)
        return super()._act_one(o, plan)

    def _push_over(self, o: Observation, plan: _Plan) -> np.ndarray:
        """Closed gripper to 12 cm on the robot's side of the object at 5 cm above its base, then
        straight through it."""
        obj, _ = _poses(o)
        plan.ticks += 1
        side = obj + [-0.12, 0, 0.05]
        if plan.phase == "approach":
            target = side + [0, 0, 0.10] if np.linalg.norm((side - o.eef_pos)[:2]) > 0.02 else side
            if np.linalg.norm(side - o.eef_pos) < 0.015:
                plan.phase = "push"
        else:
            target = obj + [0.20, 0, 0.05]
        action = np.zeros(7)
        action[:3] = np.clip(self.g.k_pos * (target - o.eef_pos), -1.0, 1.0)
        action[6] = 1.0
        return action


def _nearest_other(o: Observation, obj: np.ndarray) -> np.ndarray:
    target, place = parse_pick_place(o.instruction)
    others = [v for k, v in o.objects.items() if k.endswith("_pos") and k[:-4] not in (target, place)]
    return min(others, key=lambda p: float(np.linalg.norm((p - obj)[:2])))
