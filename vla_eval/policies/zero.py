"""Zero actions with the gripper open: a policy for smoke tests (it never succeeds)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from vla_eval.policies.base import ActionBatch
from vla_eval.policies.registry import PolicySpec, register_policy, state_builder
from vla_eval.sims.protocol import Observation

OPEN, CLOSE = -1.0, 1.0  # LIBERO's gripper commands


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


register_policy(PolicySpec("zero", "zero actions, gripper open (smoke tests)", reads_images=False,
                           build=state_builder(ZeroPolicy)))
