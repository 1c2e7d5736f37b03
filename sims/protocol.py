"""The Env protocol, its typed observation, and LIBERO's evaluation constants.

The constants are those of OpenVLA's published LIBERO evaluation: 50 stored initial
states per task chosen by episode index, 10 settle steps with a no-op that keeps the
gripper open, then at most ``max_steps`` policy steps; success is the env's ``done``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np

from vla_eval.errors import UsageError, bad_choice
from vla_eval.records import ACTION_DIM, TaskState  # noqa: F401  (ACTION_DIM re-exported: the env checks actions)

NUM_WAIT_STEPS = 10
# Zero motion, gripper open (-1 = open in LIBERO's convention). Objects settle meanwhile.
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
N_INIT_STATES = 50  # stored initial states per task
RESOLUTION = 256  # agentview and wrist renders, as in the published eval
CAMERAS = ("agentview", "robot0_eye_in_hand")


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    max_steps: int  # policy steps, after the wait steps
    n_tasks: int


SUITES: dict[str, SuiteSpec] = {
    s.name: s
    for s in (
        SuiteSpec("libero_spatial", 220, 10),
        SuiteSpec("libero_object", 280, 10),
        SuiteSpec("libero_goal", 300, 10),
        SuiteSpec("libero_10", 520, 10),
        SuiteSpec("libero_90", 400, 90),
    )
}


def suite_spec(suite: str) -> SuiteSpec:
    if suite not in SUITES:
        raise bad_choice("suite", suite, SUITES)
    return SUITES[suite]


def check_task_id(suite: str, task_id: int) -> None:
    n = suite_spec(suite).n_tasks
    if not 0 <= task_id < n:
        raise UsageError(f"task id {task_id} out of range for {suite}; valid: 0..{n - 1}")


@dataclass(frozen=True)
class Observation:
    """One step's observation.

    Images are (H, W, 3) uint8 exactly as MuJoCo renders them: rotated 180 degrees with
    respect to the frames the OpenVLA LIBERO data was recorded with. Flipping is the
    policy's job (``flip_image``), never the env's, so the no-flip drill is honest.
    ``None`` when the env runs with cameras off.
    """

    instruction: str
    eef_pos: np.ndarray  # (3,) world frame, metres
    eef_quat: np.ndarray  # (4,) x, y, z, w (robosuite order)
    gripper_qpos: np.ndarray  # (2,) finger joint positions; ~±0.04 open, ~0 closed
    agentview: np.ndarray | None = None  # (256, 256, 3) uint8, raw orientation
    wrist: np.ndarray | None = None  # (256, 256, 3) uint8, raw orientation
    # Privileged sim state (object poses), for state-based policies such as the scripted
    # expert: "<object>_pos" (3,) and "<object>_quat" (4,).
    objects: Mapping[str, np.ndarray] = field(default_factory=dict)
    # Velocities (privileged too): a stateless expert reads "fingers still" and "arm stalled" from them.
    gripper_qvel: np.ndarray | None = None  # (2,) finger joint velocities
    joint_vel: np.ndarray | None = None  # (7,) arm joint velocities, rad/s
    gripper_ctrl: float | None = None  # the simulator's ramped gripper command, -1 open .. +1 fully closed
    goals: tuple[str, ...] = ()  # the task's BDDL goal predicates ("in ketchup_1 basket_1_contain_region")


@dataclass(frozen=True)
class StepResult:
    obs: Observation
    reward: float
    done: bool  # LIBERO: the task's goal predicates hold; this is success
    task: TaskState | None = None  # the task state after the step (sims.task_state); None if the env has none


class Env(Protocol):
    """What the runner needs from a simulator; LiberoEnv is the real one."""

    suite: str
    task_id: int
    instruction: str
    max_steps: int
    n_init_states: int

    def reset(self, init_state_index: int) -> Observation:
        """Load stored initial state ``init_state_index`` and run the wait steps."""

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one 7-dim action: xyz delta, rpy delta (both in [-1, 1]), gripper (-1 open, +1 close)."""

    def close(self) -> None: ...
