"""``vla-eval check-backend``: the native model and OpenVLA's remote code on the same inputs.

Both backends get the same preprocessed LIBERO frames and the same prompts (each frame with
one instruction, both prompt templates) and every unnorm key the checkpoint holds; the report
is per-token agreement (tokens recovered from the actions: the unnormalisation is monotone,
so equal bins give equal actions) and the largest action difference. With real weights on a
GPU this is a minute's check that the fast path reproduces the published one.

Semantics where the two differ by construction (documented, not approximated):
* the remote code's ``generate`` may stop at EOS before 7 tokens and then reads its last 7
  ids, some from the prompt; the native model always decodes exactly 7 (argmax over the full
  vocabulary; a non-action id decodes to the edge bin, as the remote code's clip does);
* the remote code appends token 29871 ("▁") after the prompt without extending the attention
  mask (fine for SDPA/flash, which ignore an all-ones mask; eager attention then masks it);
  the native model appends it to ids and mask alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_eval.errors import UsageError, require
from vla_eval.policies.openvla.preprocess import PROMPT_TEMPLATES

TEMPLATES = tuple(PROMPT_TEMPLATES)


@dataclass
class Agreement:
    unnorm_key: str
    observations: int
    tokens_equal: int
    tokens_total: int
    max_action_diff: float

    @property
    def rate(self) -> float:
        return self.tokens_equal / self.tokens_total if self.tokens_total else float("nan")


def action_bins(actions: np.ndarray, stats: dict) -> np.ndarray:
    """(N, 7) unnormalised actions -> (N, 7) bin indices 0..254 (the inverse of decoding)."""
    from vla_eval.policies.openvla.tokens import bin_centres, normalize

    return np.abs(normalize(actions, stats)[..., None] - bin_centres()).argmin(-1)


def compare(native, remote, images: list[np.ndarray], prompts: list[str], keys: list[str]) -> list[Agreement]:
    """Both backends' raw actions (before gripper post-processing) on every (image, prompt), per key."""
    out = []
    for key in keys:
        a = np.asarray(native.predict(images, prompts, key), float)
        b = np.asarray(remote.predict(images, prompts, key), float)
        stats = native.norm_stats[key]["action"]
        equal = action_bins(a, stats) == action_bins(b, stats)
        out.append(Agreement(key, len(images), int(equal.sum()), int(equal.size), float(np.abs(a - b).max())))
    return out


def inputs(frames: np.ndarray, instructions: list[str]) -> tuple[list[np.ndarray], list[str]]:
    """Each raw frame through the LIBERO chain, once per prompt template."""
    from vla_eval.policies.openvla.preprocess import build_prompt, preprocess_libero_image

    images, prompts = [], []
    for i, frame in enumerate(frames):
        image = preprocess_libero_image(frame)
        for template in TEMPLATES:
            images.append(image)
            prompts.append(build_prompt(instructions[i % len(instructions)], template))
    return images, prompts


def render_frames(suite: str, n: int) -> tuple[np.ndarray, list[str]]:
    """n agentview frames of tasks 0..n-1 at stored init state 0, and their instructions."""
    from vla_eval.sims.libero_env import LiberoEnv
    from vla_eval.sims.protocol import suite_spec

    frames, instructions = [], []
    for task in range(min(n, suite_spec(suite).n_tasks)):
        with LiberoEnv(suite, task, camera_names=("agentview",), hard_reset=False) as env:
            obs = env.reset(0)
            frames.append(obs.agentview)
            instructions.append(obs.instruction)
    return np.stack(frames), instructions


def register(sub) -> None:
    from vla_eval.verbs import VERBS

    p = sub.add_parser("check-backend", help=VERBS["check-backend"].help)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder or HF id (needs its remote code files)")
    p.add_argument("--frames", type=Path, help="an .npz with raw 'frames' (N, 256, 256, 3) and optional "
                                               "'instructions' (default: render from LIBERO)")
    p.add_argument("--suite", default="libero_object", help="suite to render frames from (default libero_object)")
    p.add_argument("--n", type=int, default=4, help="frames to render (default 4)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                   help="both backends' dtype (float32 on CPU for an exact comparison)")
    p.add_argument("--revision")
    p.set_defaults(fn=_cmd)


def _cmd(args) -> int:
    require("torch", "openvla", "check-backend")
    require("transformers", "openvla", "check-backend")
    import torch

    from vla_eval.policies.factory import OpenVLAOptions
    from vla_eval.policies.openvla.native.backend import load_native_backend
    from vla_eval.policies.openvla.native.checkpoint import DTYPES, check_device
    from vla_eval.policies.openvla.policy import load_remote_code

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    if args.frames is not None and not args.frames.is_file():
        raise UsageError(f"--frames {args.frames}: no such file")
    check_device(args.device)
    opts = OpenVLAOptions(checkpoint=args.checkpoint, revision=args.revision, device=args.device, dtype=args.dtype)
    native = load_native_backend(args.checkpoint, opts)
    try:
        remote = load_remote_code(args.checkpoint, opts, DTYPES[args.dtype])
    except UsageError as e:
        raise UsageError(f"the remote code could not load, so there is nothing to compare against: {e}") from e
    if args.frames is not None:
        data = np.load(args.frames)
        frames = data["frames"]
        instructions = [str(s) for s in data["instructions"]] if "instructions" in data.files else [
            "pick up the alphabet soup and place it in the basket"]
    else:
        frames, instructions = render_frames(args.suite, args.n)
    images, prompts = inputs(frames, instructions)
    with torch.inference_mode():
        rows = compare(native, remote, images, prompts, sorted(native.norm_stats))
    print(f"check-backend {args.checkpoint}: {len(frames)} frames x {len(TEMPLATES)} prompt templates "
          f"({args.device}, {args.dtype})")
    for r in rows:
        print(f"  {r.unnorm_key:28} tokens equal {r.tokens_equal}/{r.tokens_total} ({100 * r.rate:.1f}%)  "
              f"max |action diff| {r.max_action_diff:.2e}")
    return 0 if all(r.tokens_equal == r.tokens_total for r in rows) else 1

