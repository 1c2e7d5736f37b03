"""The scripted experts: pick-and-place from privileged sim state (a phase machine, and the stateless
labeller DAgger uses)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vla_eval.sims.protocol import Observation
from vla_eval.errors import UsageError
from vla_eval.policies.base import ActionBatch
from vla_eval.policies.registry import PolicySpec, register_policy, state_builder
from vla_eval.policies.zero import CLOSE, OPEN


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


PHASES = ("approach", "descend", "close", "lift", "carry", "lower", "release", "done")


def phase_command(phase: str, g: ExpertGains, obj: np.ndarray, place: np.ndarray,
                  eef: np.ndarray) -> tuple[np.ndarray, float]:
    """(target position, gripper command) of a phase: the one place both experts act from."""
    if phase == "approach":
        return obj + [0, 0, g.hover], OPEN
    if phase in ("descend", "close"):
        return obj + [0, 0, g.grasp_dz], OPEN if phase == "descend" else CLOSE
    if phase == "lift":
        return np.array([eef[0], eef[1], g.carry_z]), CLOSE
    if phase == "carry":
        return np.array([place[0], place[1], g.carry_z]), CLOSE
    if phase in ("lower", "release"):
        return place + [0, 0, g.release_dz], CLOSE if phase == "lower" else OPEN
    return np.array([eef[0], eef[1], g.carry_z]), OPEN  # done


def _to_action(g: ExpertGains, target: np.ndarray, eef: np.ndarray, grip: float) -> np.ndarray:
    action = np.zeros(7)
    action[:3] = np.clip(g.k_pos * (target - eef), -1.0, 1.0)  # proportional control, zero rotation
    action[6] = grip
    return action


def _poses(o: Observation) -> tuple[np.ndarray, np.ndarray]:
    obj_name, place_name = parse_pick_place(o.instruction)
    return o.objects[obj_name + "_pos"], o.objects[place_name + "_pos"]


class ScriptedExpert:
    """Pick-and-place from privileged state (object, basket and gripper poses), for CPU runs.

    Phases: approach (hover over the object) -> descend -> close -> lift -> carry (over the
    basket) -> release -> done, advanced by a per-slot phase machine (a stalled descent closes
    after 40 steps, the gripper closes for 12). Proportional position control, zero rotation.
    It reads no pixels, so runs with cameras off; image toggles do not apply to it. It can
    only label the states of its own episodes: ``StatelessExpert`` labels any state.
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

    def _finished(self, plan: _Plan, target: np.ndarray, eef: np.ndarray) -> bool:
        g, err = self.g, target - eef
        return {
            "approach": lambda: np.linalg.norm(err[:2]) < g.tol and abs(err[2]) < 2 * g.tol,
            "descend": lambda: np.linalg.norm(err) < g.tol or plan.ticks > 40,
            "close": lambda: plan.ticks >= g.close_steps,
            "lift": lambda: abs(err[2]) < 2 * g.tol,
            "carry": lambda: np.linalg.norm(err[:2]) < g.tol,
            "lower": lambda: np.linalg.norm(err) < g.tol or plan.ticks > 30,
            "release": lambda: plan.ticks >= g.release_steps,
            "done": lambda: False,
        }[plan.phase]()

    def _targets(self, o: Observation) -> tuple[np.ndarray, np.ndarray]:
        """(object, place) positions the phases act on (the failing variants move them)."""
        return _poses(o)

    def _next(self, phase: str, plan: _Plan) -> str:
        return PHASES[PHASES.index(phase) + 1]

    def _act_one(self, o: Observation, plan: _Plan) -> np.ndarray:
        obj, place = self._targets(o)
        plan.ticks += 1
        # Phases advance in order; one step may pass several (each checked with ticks 0).
        while True:
            target, grip = phase_command(plan.phase, self.g, obj, place, o.eef_pos)
            if not self._finished(plan, target, o.eef_pos):
                break
            nxt = self._next(plan.phase, plan)
            if nxt == plan.phase:
                break
            plan.phase, plan.ticks = nxt, 0
        return _to_action(self.g, target, o.eef_pos, grip)


@dataclass(frozen=True)
class StateCues:
    """Thresholds on privileged state that stand in for the phase machine's memory."""

    still_arm: float = 0.01  # rad/s: every arm joint slower than this: a stalled descent
    still_fingers: float = 0.03  # finger gap speed below this: the fingers have stopped (a held object jitters ~0.01)
    at_fingers: float = 0.06  # m: object centre this close to the grip point is between the fingers (held: up to ~5 cm)
    open_gap: float = 0.075  # finger gap (qpos[0] - qpos[1]) above this: open (~0.079 fully open)
    empty_gap: float = 0.012  # below this: closed on nothing (~0.005 fully closed)
    placed_xy: float = 0.05  # m: object this close to the place's centre in xy, and low, is placed
    placed_dz: float = 0.08  # m above the place's origin
    squeezed: float = 0.99  # the gripper's ramped command (-1 open .. 1) above this: full grip force
    low_xy: float = 0.035  # m: below the hover point, the descent goes on while this well aligned (a pushed object)


class StatelessExpert:
    """The scripted expert's actions from the current state alone, so it can label any state,
    also one a trained policy reached (DAgger). The phase is read off the sim state:

        object between still fingers (neither open nor empty): holding -> lift / carry / lower /
            release by where the gripper is relative to the basket;
        object placed in the basket: release (open, hold);
        fingers closing on the object, or the grip point at the object (or stalled near it): close;
        gripper closed or half-closed away from the object: approach (open, back to the hover point);
        aligned over the object below the hover point: descend; else approach.

    Where the phase machine keeps time (a stalled descent closes after 40 steps, the gripper
    closes for 12) it reads the state instead (the arm has stopped; the simulator's ramped
    gripper command has reached full force), so it moves on a few steps earlier.
    """

    name = "stateless"
    uses_images = False
    cameras: tuple[str, ...] = ()

    def __init__(self, gains: ExpertGains = ExpertGains(), cues: StateCues = StateCues()):
        self.g, self.cues = gains, cues

    def reset(self, slot: int = 0) -> None:
        pass  # nothing to forget: every action comes from the state

    def act(self, obs: Sequence[Observation], slots=None) -> ActionBatch:
        return ActionBatch(np.stack([self.action(o) for o in obs]))

    def action(self, o: Observation) -> np.ndarray:
        obj, place = _poses(o)
        target, grip = phase_command(self.infer_phase(o), self.g, obj, place, o.eef_pos)
        return _to_action(self.g, target, o.eef_pos, grip)

    def infer_phase(self, o: Observation) -> str:
        g, c = self.g, self.cues
        obj, place = _poses(o)
        eef = o.eef_pos
        gap = float(o.gripper_qpos[0] - o.gripper_qpos[1])
        finger_v = 0.0 if o.gripper_qvel is None else float(o.gripper_qvel[0] - o.gripper_qvel[1])
        arm_still = o.joint_vel is not None and float(np.abs(o.joint_vel).max()) < c.still_arm
        grasp = obj + [0, 0, g.grasp_dz]
        d_obj = float(np.linalg.norm(grasp - eef))
        between = d_obj < c.at_fingers
        squeezed = o.gripper_ctrl is None or o.gripper_ctrl > c.squeezed
        if between and c.empty_gap < gap < c.open_gap and abs(finger_v) < c.still_fingers:
            phase = self._holding_phase(eef, place)
            return phase if squeezed or phase == "release" else "close"  # fingers on it: squeeze fully first
        if np.linalg.norm((obj - place)[:2]) < c.placed_xy and obj[2] < place[2] + c.placed_dz:
            return "release"
        if between and gap > c.empty_gap and (finger_v < -c.still_fingers or d_obj < g.tol or arm_still):
            return "close"
        if gap < c.open_gap:
            return "approach"  # closed or half-closed without the object: open, go back up
        hover_z = obj[2] + g.hover
        xy_obj = float(np.linalg.norm((obj - eef)[:2]))
        if (xy_obj < 1.5 * g.tol and eef[2] < hover_z + 2 * g.tol) or (xy_obj < c.low_xy and eef[2] < hover_z - 2 * g.tol):
            return "descend"
        return "approach"

    def _holding_phase(self, eef: np.ndarray, place: np.ndarray) -> str:
        g = self.g
        release = place + [0, 0, g.release_dz]
        if np.linalg.norm(release - eef) < g.tol:
            return "release"
        xy_place = float(np.linalg.norm((place - eef)[:2]))
        low = eef[2] < g.carry_z - 2 * g.tol
        if xy_place < g.tol or (xy_place < 2 * g.tol and low):
            return "lower"
        return "lift" if low else "carry"

    @staticmethod
    def hopeless(o: Observation) -> bool:
        """The object has fallen off the table (below the table top): no expert can finish."""
        obj, _ = _poses(o)
        return bool(obj[2] < -0.05)


register_policy(PolicySpec("scripted", "the scripted expert (privileged sim state)", reads_images=False,
                           build=state_builder(ScriptedExpert)))
