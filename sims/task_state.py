"""The task's state read off the simulator after every step, for any policy: how far the gripper
is from what the goal moves, whether the fingers hold it, how high it is and how far from the
goal region, which other objects moved or fell. The failure modes (``vla_eval.failure_modes``)
are read from these records, so a log can be re-explained later with the same code.

The goal comes from the task's BDDL file (LIBERO's ``parsed_problem["goal_state"]``):

    ("in" | "on", mover, destination)   placing goals: the mover is carried to the destination
    ("open" | "close" | "turnon" | "turnoff", fixture)   articulation goals: the fixture is operated

A predicate of another kind is recorded as met or not, with no distances (``failure_modes``
then refuses to name a mode for that task rather than guess).
"""
from __future__ import annotations

import numpy as np

from vla_eval.records import GoalState, TaskState

PLACING = ("in", "on")
ARTICULATION = ("open", "close", "turnon", "turnoff")
KNOWN_PREDICATES = PLACING + ARTICULATION
MOVED_M = 0.05  # an object no goal names counts as moved beyond this displacement
FALLEN_M = 0.10  # below its start by this much: it fell (off the table, or off what it stood on)
TIPPED_COS = 0.5  # its up axis turned past 60 degrees from the start: knocked over
EMPTY_GAP = 0.01  # fingers closer than this hold nothing between them (closed fingers pushing touch with both)


def goal_strings(goal_state) -> tuple[str, ...]:
    """``[['in', 'ketchup_1', 'basket_1_contain_region']]`` -> ``("in ketchup_1 basket_1_contain_region",)``."""
    return tuple(" ".join(str(x) for x in g) for g in goal_state)


class TaskStateReader:
    """Reads a LIBERO problem env's task state. Build it after every reset (a hard reset rebuilds
    the MuJoCo model, so body and geom ids change); ``read()`` after every step.

    Cost: one pass over the active contacts and a few body lookups per step (measured by
    ``vla-eval bench-sim --task-state``)."""

    def __init__(self, inner):
        self.env, self.sim = inner, inner.sim
        self.goal_state = [list(g) for g in inner.parsed_problem["goal_state"]]
        self.goals = goal_strings(self.goal_state)
        model = self.sim.model
        # Every body of an object or fixture (its root and the bodies under it) -> its name.
        roots = {int(inner.obj_body_id[n]): n for n in inner.obj_body_id}
        parent = model.body_parentid
        body_owner = {}
        for b in range(model.nbody):
            a = b
            while a not in roots and a != 0:
                a = int(parent[a])
            if a in roots:
                body_owner[b] = roots[a]
        self._geom_owner = np.array([body_owner.get(int(model.geom_bodyid[g])) for g in range(model.ngeom)], dtype=object)
        fingers = inner.robots[0].gripper.important_geoms
        self._left = {model.geom_name2id(n) for n in fingers["left_finger"]}
        self._right = {model.geom_name2id(n) for n in fingers["right_finger"]}
        self._grip_site = inner.robots[0].eef_site_id
        self._gripper_qpos = [model.get_joint_qpos_addr(j) for j in inner.robots[0].gripper.joints]
        movers = {self._mover(g) for g in self.goal_state}
        self._movable = [n for n in inner.objects_dict if n in inner.obj_body_id]
        self._others = [n for n in self._movable if n not in movers]
        self._start = {n: self._pose(n) for n in self._movable}

    def _mover(self, goal: list) -> str:
        """The object or fixture a goal moves or operates (a region site stands for its fixture)."""
        name = goal[1]
        site = self.env.object_sites_dict.get(name)
        return site.parent_name if site is not None and name not in self.env.obj_body_id else name

    def _pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        b = self.env.obj_body_id[name]
        return self.sim.data.body_xpos[b].copy(), self.sim.data.body_xmat[b].reshape(3, 3)[:, 2].copy()

    def _held(self, gap: float) -> str | None:
        """The object between the fingers: both touch it and they are not shut."""
        if gap < EMPTY_GAP:
            return None
        data = self.sim.data
        left, right = set(), set()
        for i in range(data.ncon):
            c = data.contact[i]
            for finger, other in ((c.geom1, c.geom2), (c.geom2, c.geom1)):
                owner = self._geom_owner[other]
                if owner is None:
                    continue
                if finger in self._left:
                    left.add(owner)
                elif finger in self._right:
                    right.add(owner)
        both = left & right
        return min(both) if both else None

    def _goal(self, goal: list, grip: np.ndarray, held: str | None) -> GoalState:
        try:
            met = bool(self.env._eval_predicate(goal))
        except Exception:  # noqa: BLE001 - a predicate LIBERO cannot evaluate is simply not met
            met = False
        kind = goal[0]
        if kind not in KNOWN_PREDICATES:
            return GoalState(met=met, reach=None, held=False)
        mover = self._mover(goal)
        states = self.env.object_states_dict
        pos = np.asarray(states[goal[1]].get_geom_state()["pos"] if goal[1] in states else self._pose(mover)[0])
        reach = _mm(np.linalg.norm(grip - pos))
        if kind in ARTICULATION:
            return GoalState(met=met, reach=reach, held=held == mover)
        dest = np.asarray(states[goal[2]].get_geom_state()["pos"])
        start = self._start.get(mover)
        lift = _mm(pos[2] - start[0][2]) if start is not None else None
        return GoalState(met=met, reach=reach, held=held == mover, lift=lift, to_goal=_mm(np.linalg.norm((pos - dest)[:2])))

    def read(self) -> TaskState:
        data = self.sim.data
        grip = data.site_xpos[self._grip_site]
        gap = float(data.qpos[self._gripper_qpos[0]] - data.qpos[self._gripper_qpos[1]])
        held = self._held(gap)
        moved, knocked = [], []
        for name in self._movable:
            pos, up = self._pose(name)
            pos0, up0 = self._start[name]
            if pos0[2] - pos[2] > FALLEN_M or float(up @ up0) < TIPPED_COS:
                knocked.append(name)
            elif name in self._others and np.linalg.norm(pos - pos0) > MOVED_M:
                moved.append(name)
        return TaskState(goals=tuple(self._goal(g, grip, held) for g in self.goal_state), gap=round(gap, 4),
                         held=held, moved=tuple(moved), knocked=tuple(knocked))


def _mm(x) -> float:
    return round(float(x), 3)
