"""Shared fixtures. LIBERO tests use the real simulator on CPU (physics only unless a test
needs pixels); one env per module keeps the suite inside CI's budget."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture(scope="module")
def object_env():
    """libero_object task 0, cameras off, soft resets (same init states, faster)."""
    from vla_eval.sims.libero_env import LiberoEnv

    env = LiberoEnv("libero_object", 0, cameras=False, hard_reset=False)
    yield env
    env.close()
