"""Pre-flight checks before a sweep or drill: catch a broken loop before the first episode.

Each check probes the policy object the run will use, never its configuration alone:

* image      the image the model receives for a probe frame equals the published chain's
             (rotate 180, JPEG, Lanczos-3, 0.9 centre crop); a difference is named by the
             variant it matches (not rotated, mirrored, no crop, no JPEG, bicubic, blank);
* blind      a black and a white frame give different actions (stacks that drop the image,
             e.g. OpenVLA's remote code on transformers >= 4.50, act the same on both);
* prompt     the prompt is the published template for the instruction;
* decoding   the token -> bin vocabulary is the checkpoint's (vocab_size - padding), the
             prompt ids end with 29871, the unnorm mask of the checkpoint is applied;
* gripper    on probe outputs 0 / 1 / 0.7 the post-processing gives +1 close, -1 open, -1;
* dtype      the model does not run in float16 (OpenVLA is trained in bfloat16; a warning);
* unnorm key the suite's own key; a warning for versions known to misbehave.

A run's baseline stops on any error; a fault the user injected on purpose is reported
(``pre-flight on no_crop: ...``) and runs, so the drill shows what each layer sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

import numpy as np

from vla_eval.sims.protocol import Observation

INSTRUCTION = "pick up the alphabet soup and place it in the basket"


@dataclass(frozen=True)
class Finding:
    check: str
    message: str
    fatal: bool = True  # False: a warning that never stops a run


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


def _obs(frame: np.ndarray) -> Observation:
    return Observation(INSTRUCTION, np.zeros(3), np.array([0, 0, 0, 1.0]), np.zeros(2), agentview=frame, wrist=frame)


def image_sensitivity(policy, instruction: str = INSTRUCTION) -> float:
    """Max |difference| between the actions for an all-black and an all-white frame. Zero means
    the policy does not see the image at all."""
    frames = [np.zeros((256, 256, 3), np.uint8), np.full((256, 256, 3), 255, np.uint8)]
    acts = policy.act([_obs(f) for f in frames], [0, 1]).actions
    return float(np.abs(acts[0] - acts[1]).max())


def probe_frame() -> np.ndarray:
    """(256, 256, 3) uint8 with structure at every scale and no symmetry: every chain variant differs."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    smooth = np.stack([128 + 100 * np.sin(2 * np.pi * (k + 1) * (xx + 2 * yy) + k) for k in range(3)], -1)
    frame = smooth + 60 * (xx > 0.7)[..., None] * (yy < 0.3)[..., None] + rng.normal(0, 15, smooth.shape)
    return np.clip(frame, 0, 255).astype(np.uint8)


IMAGE_KEYWORDS = ("flip", "center_crop", "jpeg", "resize")  # Toggles fields that are preprocess_libero_image keywords


def image_variants() -> dict[str, dict]:
    """Fault name -> its preprocess keywords, for every fault the fault table says the image check
    catches by its image chain alone (the blank frame is told apart by its constant pixels)."""
    from vla_eval.faults import FAULTS

    return {name: f.toggles.changed() for name, f in FAULTS.items()
            if "preflight:image" in f.caught_by and f.toggles.changed()
            and set(f.toggles.changed()) <= set(IMAGE_KEYWORDS)}


def _image_finding(name: str) -> str:
    from vla_eval.faults import FAULTS

    fault = FAULTS[name]
    return f"as the {name} fault makes it: {fault.help}" + (f"; fix: {fault.fix}" if fault.fix else "")


def check_image_chain(policy) -> list[Finding]:
    from vla_eval.policies.openvla.preprocess import preprocess_libero_image

    frame = probe_frame()
    got, prompt = policy.model_inputs(_obs(frame))
    found = []
    if not np.array_equal(got, preprocess_libero_image(frame)):
        if np.ptp(got) == 0:
            why = "a blank frame, whatever the camera shows"
        else:
            why = next((_image_finding(name) for name, kw in image_variants().items()
                        if got.shape == (224, 224, 3) and np.array_equal(got, preprocess_libero_image(frame, **kw))),
                       "different from the published chain (flip, JPEG, Lanczos-3, 0.9 centre crop)")
        found.append(Finding("image", f"the image the model receives is {why}"))
    from vla_eval.policies.openvla.preprocess import build_prompt

    if prompt != build_prompt(INSTRUCTION):
        found.append(Finding("prompt", f"the prompt {prompt!r} is not OpenVLA's template {build_prompt(INSTRUCTION)!r}"))
    return found


def check_decoding(policy) -> list[Finding]:
    """The native backend's decoding against the checkpoint it decodes for."""
    model = getattr(getattr(policy, "backend", None), "model", None)
    decoding = getattr(policy, "decoding", None)
    if not hasattr(getattr(model, "cfg", None), "action_vocab_size") or decoding is None:
        return []  # not the native model (the remote code decodes as released)
    found = []
    want = model.cfg.action_vocab_size
    vocab = decoding.get("vocab_size", want)
    if vocab != want:
        found.append(Finding("decoding", f"tokens are mapped to bins with vocabulary {vocab}; this checkpoint's is "
                                         f"{want} (text vocab_size {model.cfg.text_config.get('vocab_size')} minus "
                                         f"padding {model.cfg.pad_to_multiple_of}): every bin shifts by {vocab - want}"))
    if not decoding.get("empty_token", True):
        found.append(Finding("decoding", "the prompt ids do not end with 29871 ('▁'), which predict_action appends "
                                         "before the first action token"))
    mask = model.cfg.norm_stats.get(policy.unnorm_key, {}).get("action", {}).get("mask")
    if not decoding.get("unnorm_mask", True) and mask is not None and not all(mask):
        dims = [i for i, m in enumerate(mask) if not m]
        found.append(Finding("decoding", f"the unnorm mask is ignored: dims {dims} (the gripper) are unnormalised too"))
    return found


def check_gripper(policy) -> list[Finding]:
    post = getattr(policy, "postprocess", None)
    if post is None:
        return []
    raw = np.zeros((3, 7))
    raw[:, 6] = [0.0, 1.0, 0.7]  # OpenVLA's training convention: 0 close, 1 open
    got = post(raw)[:, 6]
    if not np.array_equal(got, [1.0, -1.0, -1.0]):
        return [Finding("gripper", f"model gripper outputs 0 / 1 / 0.7 become {got.round(2).tolist()}; LIBERO needs "
                                   "+1 (close) / -1 (open) / -1: map to [-1, 1], binarise with sign, then invert")]
    return []


def check_dtype(policy) -> list[Finding]:
    model = getattr(getattr(policy, "backend", None), "model", None)
    if str(getattr(model, "dtype", "")) == "torch.float16":
        return [Finding("dtype", "the model runs in float16; OpenVLA is trained in bfloat16, whose exponent range "
                                 "float16 lacks: use --dtype bfloat16 (float32 on a CPU)", fatal=False)]
    return []


def check_unnorm_key(policy, suite: str | None) -> list[Finding]:
    key = getattr(policy, "unnorm_key", None)
    if key is None or suite is None or key in (suite, f"{suite}_no_noops"):
        return []
    return [Finding("unnorm key", f"unnorm_key {key!r} is not this suite's ({suite!r} or {suite + '_no_noops'!r}): "
                                  "actions are scaled with another dataset's statistics")]


def check_policy(policy, suite: str | None = None) -> list[Finding]:
    """Every rollout-free check that applies to this policy (duck-typed: checks a policy
    cannot answer, e.g. a Ray actor's, are skipped)."""
    if not getattr(policy, "uses_images", False):
        return []
    found = check_image_chain(policy) if hasattr(policy, "model_inputs") else []
    if image_sensitivity(policy) == 0.0:
        found.append(Finding("blind", "a black and a white image give identical actions, so the model never sees "
                                      "the image (OpenVLA remote code on transformers >= 4.50 does this). Fix the "
                                      "versions (environment.yml) or use --native."))
    return (found + check_decoding(policy) + check_gripper(policy) + check_dtype(policy)
            + check_unnorm_key(policy, suite))


def preflight(policy, native: bool = False, suite: str | None = None) -> list[str]:
    """Warnings to print (version notes, non-fatal findings); raises UsageError on a fatal
    finding (a broken baseline)."""
    found = check_policy(policy, suite)
    _stop_on_fatal(found)
    return version_warnings(policy.name, native) + [f"{f.check}: {f.message}" for f in found]


def _stop_on_fatal(found: list[Finding]) -> None:
    from vla_eval.errors import UsageError

    fatal = [f for f in found if f.fatal]
    if fatal:
        raise UsageError("pre-flight: " + "; ".join(f"{f.check}: {f.message}" for f in fatal))


def preflight_run(policies: dict, native: bool, suite: str, out=print) -> None:
    """A run's pre-flight: the baseline (or a sweep's only tag, when it is no fault) must pass;
    each injected fault's findings are reported and the fault runs as asked."""
    import sys

    first = next(iter(policies.values()))
    for warning in version_warnings(first.name, native):
        print(f"pre-flight warning: {warning}", file=sys.stderr)
    for tag, policy in policies.items():
        if tag == "baseline":
            found = check_policy(policy, suite)
            _stop_on_fatal(found)
            for f in found:
                print(f"pre-flight warning: {f.check}: {f.message}", file=sys.stderr)
            continue
        from vla_eval.perturbations import split_tag

        if not split_tag(tag)[0]:
            continue  # a perturbation alone: the baseline's policy in a changed world, checked as the baseline
        found = check_policy(policy, suite)
        said = "; ".join(f"{f.check}: {f.message}" for f in found) or "nothing found (no rollout-free signature)"
        out(f"pre-flight on {tag} (injected): {said}")


def preflight_world(suite: str, task: int, out=print) -> int:
    """``sweep --check-world``: the run's first task against the suite's reference world (camera,
    lights, settling; ``sims.world_check``), in an env of its own before the first episode. A
    difference is a warning with what differs, never a stop: the user may mean it. -> differences."""
    import sys

    from vla_eval.safe_json import read_json
    from vla_eval.sims.world_check import check_world, reference_path

    path = reference_path(suite)
    if not path.is_file():
        out(f"pre-flight world: no reference world for {suite} ships with vla-eval; not checked")
        return 0
    lines: list[str] = []
    differing = check_world(suite, [task], read_json(path, "reference world"), out=lines.append)
    for line in lines:
        print(f"pre-flight {'warning: ' if differing else ''}world: {line.strip()}",
              file=sys.stderr if differing else sys.stdout)
    return differing
