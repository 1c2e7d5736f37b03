"""LIBERO behind the Env protocol, following OpenVLA's published evaluation protocol.

Heavy imports (robosuite, mujoco, libero, torch) happen in ``LiberoEnv.__init__``, after
the GL backend is chosen and LIBERO's config and assets are in place.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from functools import lru_cache

import numpy as np

from vla_eval.sims.assets import SetupError, prepare_libero
from vla_eval.sims.task_state import TaskStateReader
from vla_eval.perturbations import Perturbation
from vla_eval.sims.protocol import (
    ACTION_DIM,
    CAMERAS,
    NUM_WAIT_STEPS,
    RESOLUTION,
    WAIT_ACTION,
    Observation,
    StepResult,
    check_task_id,
    suite_spec,
)
from vla_eval.errors import UsageError, bad_choice

GL_BACKENDS = ("egl", "osmesa", "glfw")


def configure_gl() -> str:
    """Choose MuJoCo's GL backend before robosuite is imported. Default: EGL (headless;
    on a CPU-only machine it runs on Mesa llvmpipe)."""
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend not in GL_BACKENDS:
        raise bad_choice("MUJOCO_GL backend", backend, GL_BACKENDS)
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    return backend


# robosuite warns on every import that no private macro file exists (harmless: the defaults
# are what LIBERO expects); only these three lines are dropped, other robosuite warnings pass.
_MACRO_NOISE = ("No private macro file found", "It is recommended to use a private macro file",
                "To setup, run: python")


class _DropMacroNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_MACRO_NOISE)


def quiet_third_party() -> None:
    """Before robosuite is imported: filter its macro-file warnings at their logger."""
    logger = logging.getLogger("robosuite_logs")
    if not any(isinstance(f, _DropMacroNoise) for f in logger.filters):
        logger.addFilter(_DropMacroNoise())


# What the simulator imports, and the extra that installs each (libero itself comes --no-deps).
SIM_MODULES = ("torch", "mujoco", "robosuite", "bddl", "matplotlib", "easydict", "gymnasium")


def require_sim() -> None:
    """LIBERO's stack is importable, or one message naming what to install (a pip install of
    the core package without the ``sim`` extra, or without LIBERO itself)."""
    from vla_eval.errors import MissingDependency, require

    quiet_third_party()
    for module in SIM_MODULES:
        require(module, "sim", "the LIBERO simulator")
    try:
        import libero  # noqa: F401
    except ImportError as e:
        raise MissingDependency(f"the LIBERO simulator needs libero ({e}). Fix: pip install --no-deps libero==0.1.1, "
                                f"then vla-eval setup") from e


@lru_cache(maxsize=None)
def _suite(suite: str):
    require_sim()
    prepare_libero()
    from libero.libero import benchmark

    # LIBERO prints "[info] using task orders [...]" when a suite is built: keep anything else it prints.
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        bench = benchmark.get_benchmark_dict()[suite]()
    for line in captured.getvalue().splitlines():
        if not line.startswith("[info] using task orders"):
            print(line, file=sys.stdout)
    return bench


def task_instruction(suite: str, task_id: int) -> str:
    """The task's language instruction, without creating an env."""
    suite_spec(suite)
    check_task_id(suite, task_id)
    return _suite(suite).get_task(task_id).language


def _to_observation(raw: dict, instruction: str, gripper_ctrl: float | None = None,
                    goals: tuple[str, ...] = ()) -> Observation:
    objects = {
        k: np.asarray(v, dtype=np.float64)
        for k, v in raw.items()
        if (k.endswith("_pos") or k.endswith("_quat"))
        and not k.startswith("robot0_")
        and "_to_robot0_" not in k
    }
    return Observation(
        instruction=instruction,
        eef_pos=np.asarray(raw["robot0_eef_pos"], dtype=np.float64),
        eef_quat=np.asarray(raw["robot0_eef_quat"], dtype=np.float64),
        gripper_qpos=np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
        agentview=raw.get("agentview_image"),
        wrist=raw.get("robot0_eye_in_hand_image"),
        objects=objects,
        gripper_qvel=np.asarray(raw["robot0_gripper_qvel"], dtype=np.float64) if "robot0_gripper_qvel" in raw else None,
        joint_vel=np.asarray(raw["robot0_joint_vel"], dtype=np.float64) if "robot0_joint_vel" in raw else None,
        gripper_ctrl=gripper_ctrl,
        goals=goals,
    )


class LiberoEnv:
    """One LIBERO task. ``cameras=False`` skips rendering (physics only, ~10x faster on CPU)
    for policies that read state, not pixels.

    ``hard_reset=True`` (robosuite's default, used by the published eval) rebuilds the
    MuJoCo model on every reset (3-10 s on CPU); ``False`` reuses it (~0.5 s). Both then
    load the stored initial state, so the scene is the same.
    """

    def __init__(
        self,
        suite: str,
        task_id: int,
        cameras: bool = True,
        resolution: int = RESOLUTION,
        hard_reset: bool = True,
        seed: int = 0,
        camera_names: tuple[str, ...] = CAMERAS,
        perturbation: Perturbation | None = None,
    ):
        spec = suite_spec(suite)
        check_task_id(suite, task_id)
        require_sim()
        configure_gl()
        self.suite, self.task_id, self.cameras = suite, task_id, cameras
        self.max_steps = spec.max_steps
        benchmark = _suite(suite)
        task = benchmark.get_task(task_id)
        self.instruction: str = task.language
        self._init_states = benchmark.get_task_init_states(task_id)  # (50, state_dim)
        self.n_init_states = len(self._init_states)
        from libero.libero import get_libero_path

        bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        unknown = [c for c in camera_names if c not in CAMERAS]
        if unknown or not camera_names:
            raise bad_choice("camera", unknown[0] if unknown else "(none)", CAMERAS)
        self.camera_names = tuple(camera_names)
        self._task: TaskStateReader | None = None  # built at each reset
        self._env = self._make(bddl, cameras, resolution, hard_reset, self.camera_names)
        self._env.seed(seed)  # the published eval seeds the env with 0; init states fix the scene
        self.perturbation = perturbation
        self._perturber = None
        if perturbation is not None:  # built only when asked: the published protocol's path stays as it is
            from vla_eval.sims.perturb import Perturber

            others = [benchmark.get_task(i).language for i in range(spec.n_tasks)]
            self._perturber = Perturber(self._env, perturbation, others)

    @staticmethod
    def _make(bddl: str, cameras: bool, resolution: int, hard_reset: bool, camera_names: tuple[str, ...]):
        from libero.libero.envs.env_wrapper import ControlEnv

        kwargs = dict(
            bddl_file_name=bddl,
            hard_reset=hard_reset,
            camera_heights=resolution,
            camera_widths=resolution,
            camera_names=list(camera_names),  # render only what the policy reads
            has_renderer=False,
            has_offscreen_renderer=cameras,
            use_camera_obs=cameras,
        )
        try:
            return ControlEnv(**kwargs)
        except Exception as e:  # GL context creation fails deep inside robosuite
            if cameras and any(s in repr(e) for s in ("EGL", "GL", "OSMesa", "glfw", "render")):
                raise SetupError(
                    f"MUJOCO_GL={os.environ.get('MUJOCO_GL')} could not start a renderer ({e!r}). "
                    f"Fix: install Mesa EGL (apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri), "
                    f"or try MUJOCO_GL=osmesa; valid backends: {', '.join(GL_BACKENDS)}; "
                    f"or run with cameras off."
                ) from e
            raise

    def reset(self, init_state_index: int) -> Observation:
        if not 0 <= init_state_index < self.n_init_states:
            raise UsageError(
                f"episode index {init_state_index} beyond the {self.n_init_states} stored init states "
                f"of {self.suite} task {self.task_id}; valid: 0..{self.n_init_states - 1}"
            )
        self._env.reset()
        raw = self._env.set_init_state(self._init_states[init_state_index])
        if self._perturber is not None:  # before the settle steps, so they settle it
            self._perturber.at_reset(self.task_id, init_state_index)
        for _ in range(NUM_WAIT_STEPS):
            raw, _, _, _ = self._env.step(WAIT_ACTION.tolist())
        self._task = TaskStateReader(self._env.env)  # starts from the settled scene
        return self._observation(raw)

    def reset_sampled(self, scene_seed: int) -> Observation:
        """A freshly sampled scene (object placements drawn from the task's BDDL regions with
        ``scene_seed``), not one of the stored init states: demonstrations come from these, so
        the 50 stored init states stay evaluation-only."""
        self._env.seed(scene_seed)
        self._env.reset()
        raw = None
        for _ in range(NUM_WAIT_STEPS):
            raw, _, _, _ = self._env.step(WAIT_ACTION.tolist())
        self._task = TaskStateReader(self._env.env)
        return self._observation(raw)

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        raw, reward, done, _ = self._env.step(action.tolist())
        task = self._task.read() if self._task is not None else None
        return StepResult(self._observation(raw), float(reward), bool(done), task)

    def _observation(self, raw: dict) -> Observation:
        # robosuite ramps the gripper's command by a fixed amount per step (PandaGripper.speed);
        # where the ramp stands is state a stateless expert reads ("fully squeezed").
        gripper = getattr(self._env.env.robots[0], "gripper", None)
        ramp = getattr(gripper, "current_action", None)
        ctrl = None if ramp is None or len(ramp) == 0 else float(-np.asarray(ramp)[0])
        goals = self._task.goals if self._task is not None else ()
        instruction = self.instruction
        if self._perturber is not None:
            raw = {k: self._perturber.frame(v) if k.endswith("_image") else v for k, v in raw.items()}
            instruction = self._perturber.instruction(instruction)
        return _to_observation(raw, instruction, ctrl, goals)

    def render_next(self, on: bool) -> None:
        """Render the cameras on the next ``step`` or not (physics only; the observation then
        has no frames). Demo collection renders every k-th step: rendering is ~80% of a step."""
        if not self.cameras:
            return
        inner = self._env.env
        for cam in self.camera_names:
            observable = inner._observables[f"{cam}_image"]
            # Not set_enabled(): that resets the sampling clock, and a re-enabled camera would
            # then render at the first substep instead of the last (a frame one step early).
            # Freezing the flag keeps the clock where continuous rendering has it (robosuite 1.4).
            observable._enabled = on

    @property
    def sim(self):
        """The underlying MuJoCo sim (privileged access for scripted policies and tests)."""
        return self._env.sim

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
