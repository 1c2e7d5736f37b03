"""Applying a perturbation (``vla_eval.perturbations``) inside a LIBERO env.

``Perturber(env, perturbation)`` is built once per env. At every reset, after the stored init
state is loaded and before the settle steps, ``at_reset(task_id, init_state)`` restores the model's
own values, draws this episode's perturbation from its seed and applies it (camera, light, table,
layout, robot_init), so the settle steps settle it; ``frame(image)`` perturbs each rendered frame
(noise) and ``instruction(text)`` the instruction (language). With no perturbation none of this
is built: the published protocol's code path is untouched.
"""
from __future__ import annotations

import re

import numpy as np

from vla_eval.perturbations import Perturbation

CAMERA = ((0.02, 2.0), (0.05, 5.0), (0.10, 10.0))  # metres, degrees per level
LIGHT = ((0.2, 10.0, 0.05), (0.4, 20.0, 0.10), (0.6, 35.0, 0.20))  # intensity +-, turn degrees, tint
TABLE = (0.20, 0.45, 0.75)  # blend toward a random colour
LAYOUT = (0.015, 0.03, 0.05)  # metres, in the table plane
ROBOT = (0.03, 0.07, 0.12)  # radians per joint
NOISE = ((4.0, False, None), (8.0, True, None), (12.0, True, 30))  # sigma, 3x3 blur, JPEG quality
APPEARANCE = ("table", "floor")  # materials whose names hold one of these are the table's and floor's

# Paraphrases per level: (pattern, replacement) rewrites tried in order; the first that matches is used.
PARAPHRASES = {
    1: ((r"^pick up the (.+) and place it in the (.+)$", r"grab the \1 and put it in the \2"),
        (r"^put the (.+) on (.+)$", r"place the \1 on \2"), (r"^put (.+)$", r"place \1"),
        (r"^turn on (.+)$", r"switch on \1"), (r"^open (.+)$", r"pull open \1"), (r"^close (.+)$", r"shut \1"),
        (r"^pick up (.+)$", r"grab \1")),
    2: ((r"^pick up the (.+) and place it in the (.+)$", r"the \1 belongs in the \2, move it there"),
        (r"^put the (.+) on (.+)$", r"move the \1 so that it rests on \2"),
        (r"^(.+)$", r"please \1, then stop")),
}


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    a = np.radians(degrees)
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _quat_mul(q: np.ndarray, r: np.ndarray) -> np.ndarray:  # MuJoCo's w, x, y, z
    w1, x1, y1, z1 = q
    w2, x2, y2, z2 = r
    return np.array([w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2, w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                     w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2, w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2])


def _unit(rng) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def paraphrase(text: str, level: int, other_instructions: list[str], rng) -> str:
    if level == 3:
        choices = [t for t in other_instructions if t != text]
        return choices[int(rng.integers(len(choices)))] if choices else text
    for pattern, repl in PARAPHRASES[level]:
        if re.match(pattern, text):
            return re.sub(pattern, repl, text)
    return text


class Perturber:
    def __init__(self, env, perturbation: Perturbation, other_instructions: list[str] = ()):
        self.env, self.p = env, perturbation
        self.others = list(other_instructions)
        self._saved = None  # (model object id, its own values) to restore before each draw
        self.rng = np.random.default_rng(0)
        self._instruction: str | None = None

    # -- reset --------------------------------------------------------------------------------------
    def at_reset(self, task_id: int, init_state: int) -> None:
        self.rng = np.random.default_rng(self.p.rng_key(task_id, init_state))
        sim = self.env.sim
        self._restore(sim.model)
        family, level = self.p.family, self.p.level - 1
        if family == "camera":
            shift, turn = CAMERA[level]
            cam = sim.model.camera_name2id("agentview")
            sim.model.cam_pos[cam] = sim.model.cam_pos[cam] + shift * _unit(self.rng)
            axis, a = _unit(self.rng), np.radians(turn) / 2
            sim.model.cam_quat[cam] = _quat_mul(sim.model.cam_quat[cam], np.array([np.cos(a), *(np.sin(a) * axis)]))
        elif family == "light":
            spread, turn, tint = LIGHT[level]
            for i in range(sim.model.nlight):
                scale = 1 + self.rng.uniform(-spread, spread)
                colour = 1 + tint * self.rng.uniform(-1, 1, 3)
                sim.model.light_diffuse[i] = np.clip(sim.model.light_diffuse[i] * scale * colour, 0, 1)
                sim.model.light_dir[i] = _rotation(_unit(self.rng), turn) @ sim.model.light_dir[i]
        elif family == "table":
            target = np.append(self.rng.uniform(0, 1, 3), 1.0)
            for m in self._appearance_materials(sim.model):
                sim.model.mat_rgba[m] = (1 - TABLE[level]) * sim.model.mat_rgba[m] + TABLE[level] * target
        elif family == "layout":
            for obj in self.env.env.objects_dict.values():
                for joint in getattr(obj, "joints", ())[:1]:
                    addr = sim.model.get_joint_qpos_addr(joint)
                    if not isinstance(addr, tuple) or addr[1] - addr[0] != 7:  # free joints only: loose objects
                        continue
                    start = addr[0]
                    r, a = LAYOUT[level] * np.sqrt(self.rng.uniform()), self.rng.uniform(0, 2 * np.pi)
                    sim.data.qpos[start:start + 2] += (r * np.cos(a), r * np.sin(a))
        elif family == "robot_init":
            idx = self.env.env.robots[0]._ref_joint_pos_indexes
            sim.data.qpos[idx] += self.rng.uniform(-ROBOT[level], ROBOT[level], len(idx))
        elif family == "language":
            self._instruction = None
        sim.forward()

    def _restore(self, model) -> None:
        fields = ("cam_pos", "cam_quat", "light_diffuse", "light_dir", "mat_rgba")
        if self._saved is not None and self._saved[0] == id(model):
            for name, value in self._saved[1].items():
                getattr(model, name)[:] = value
        else:  # a new model (hard reset rebuilds it): its values are the ones to keep
            self._saved = (id(model), {name: getattr(model, name).copy() for name in fields})

    @staticmethod
    def _appearance_materials(model) -> list[int]:
        import mujoco

        raw = getattr(model, "_model", model)  # robosuite wraps MuJoCo's MjModel
        names = [mujoco.mj_id2name(raw, mujoco.mjtObj.mjOBJ_MATERIAL, i) or "" for i in range(raw.nmat)]
        return [i for i, n in enumerate(names) if any(k in n.lower() for k in APPEARANCE)]

    # -- per step -----------------------------------------------------------------------------------
    def instruction(self, text: str) -> str:
        if self.p.family != "language":
            return text
        if self._instruction is None:
            self._instruction = paraphrase(text, self.p.level, self.others, self.rng)
        return self._instruction

    def frame(self, image: np.ndarray | None) -> np.ndarray | None:
        if self.p.family != "noise" or image is None:
            return image
        sigma, blur, quality = NOISE[self.p.level - 1]
        out = image.astype(np.float32) + self.rng.normal(0, sigma, image.shape).astype(np.float32)
        out = np.clip(out, 0, 255).astype(np.uint8)
        if blur or quality:
            import cv2

            if blur:
                out = cv2.blur(out, (3, 3))
            if quality:
                ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
                out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()
        return out
