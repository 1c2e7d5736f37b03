"""Regenerate tests/data/libero_frames.npz: raw agentview renders (upside down, as MuJoCo
gives them) from four LIBERO suites, the inputs of the preprocessing parity tests.

    python tests/data/make_libero_frames.py tests/data/libero_frames.npz

Each frame: a task's stored init state 0, after the 10 wait steps and then ``k`` steps of a
fixed pseudo-random arm motion (so the arm and objects sit in varied places).
"""
import sys

import numpy as np

from vla_eval.sims.libero_env import LiberoEnv

SHOTS = {  # suite -> [(task, steps of motion)]
    "libero_spatial": [(0, 0), (3, 25)],
    "libero_object": [(2, 0), (5, 30)],
    "libero_goal": [(1, 0), (6, 20)],
    "libero_10": [(0, 15), (4, 35)],
}


def main(dst: str) -> None:
    rng = np.random.default_rng(0)
    frames, names = [], []
    for suite, shots in SHOTS.items():
        for task, steps in shots:
            with LiberoEnv(suite, task, cameras=True, hard_reset=False, camera_names=("agentview",)) as env:
                obs = env.reset(0)
                for _ in range(steps):
                    action = np.concatenate([rng.uniform(-0.6, 0.6, 3), np.zeros(3), [rng.choice([-1.0, 1.0])]])
                    obs = env.step(action).obs
                frames.append(obs.agentview)
                names.append(f"{suite}/task{task}/step{steps}")
    np.savez_compressed(dst, frames=np.stack(frames), names=np.array(names))
    print(dst, np.stack(frames).shape)


if __name__ == "__main__":
    main(sys.argv[1])
