"""Pre-flight checks before a sweep or drill: catch a broken stack before the first episode.

* the unnorm key exists (resolved when the OpenVLA policy loads; an error lists the keys);
* a black and a white image give different actions: stacks that silently drop the image
  (e.g. OpenVLA's remote code on transformers >= 4.50) act the same on both;
* warnings for versions known to misbehave.
"""
from __future__ import annotations

from importlib import metadata

import numpy as np

from vla_eval.sims.protocol import Observation


def _version(pkg: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in metadata.version(pkg).split("+")[0].split(".")[:3] if p.isdigit())
    except metadata.PackageNotFoundError:
        return None


def version_warnings(policy_name: str, native: bool = False) -> list[str]:
    out = []
    mj = _version("mujoco")
    if mj and mj > (3, 3, 2):
        out.append(f"mujoco {'.'.join(map(str, mj))} > 3.3.2: LIBERO floors render darker (and >= 3.10 breaks robosuite 1.4)")
    tv = _version("torch")
    if tv and tv >= (2, 6) and _version("libero") != (0, 1, 1):
        out.append(f"torch {'.'.join(map(str, tv))} >= 2.6 defaults torch.load to weights_only=True; LIBERO's "
                   f"init-state files need weights_only=False (libero 0.1.1 passes it; older LIBERO copies do not)")
    if policy_name == "openvla" and not native:
        tf = _version("transformers")
        if tf and tf != (4, 40, 1):
            out.append(f"transformers {'.'.join(map(str, tf))}: OpenVLA's remote code is pinned to 4.40.1; from 4.50 on "
                       f"it silently ignores the image. Use the pins in environment.yml, or --native")
        timm = _version("timm")
        if timm and not ((0, 9, 10) <= timm <= (0, 9, 16)):
            out.append(f"timm {'.'.join(map(str, timm))} is outside 0.9.10-0.9.16, which OpenVLA's remote code expects")
    return out


def image_sensitivity(policy, instruction: str = "pick up the alphabet soup and place it in the basket") -> float:
    """Max |difference| between the actions for an all-black and an all-white frame. Zero means
    the policy does not see the image at all."""
    frames = [np.zeros((256, 256, 3), np.uint8), np.full((256, 256, 3), 255, np.uint8)]
    obs = [Observation(instruction, np.zeros(3), np.array([0, 0, 0, 1.0]), np.zeros(2), agentview=f, wrist=f)
           for f in frames]
    acts = policy.act(obs, [0, 1]).actions
    return float(np.abs(acts[0] - acts[1]).max())


def preflight(policy, native: bool = False) -> list[str]:
    """Warnings to print; raises UsageError when the policy is blind to its image."""
    from vla_eval.errors import UsageError

    warnings = version_warnings(policy.name, native)
    if policy.uses_images and image_sensitivity(policy) == 0.0:
        raise UsageError("pre-flight: a black and a white image give identical actions, so the model never sees "
                         "the image (OpenVLA remote code on transformers >= 4.50 does this). Fix the versions "
                         "(environment.yml) or use --native.")
    return warnings
