"""The fault table: every silent failure of an OpenVLA loop the toolkit can reproduce.

A fault is data: its name (the run tag and JSONL file name), the loop knobs it changes
(``Toggles``), a one-line help, where users meet it, and the layer expected to catch it.
The CLI (``--fault NAME`` and the chapter's three flags), the policy factory, the drill,
the monitors' scoring and the report all read this table; adding a fault is one entry here
plus, where the loop has no knob for it yet, that knob in ``policies/openvla/policy.py``.

Pure Python on purpose: the monitors (numpy only) import it inside a robot loop.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

from vla_eval.errors import UsageError

FLIPS = ("rotate", "none", "mirror")
RESIZES = ("lanczos3", "bicubic")
GRIPPER_MODES = ("binarize_invert", "no_binarize", "no_invert")


@dataclass(frozen=True)
class Toggles:
    """The knobs of one OpenVLA LIBERO loop; the defaults are the published eval."""

    flip: str = "rotate"              # rotate: img[::-1, ::-1]; none; mirror: img[::-1] only
    jpeg: bool = True                 # JPEG round trip (the RLDS training frames were JPEG)
    resize: str = "lanczos3"          # TF's antialiased Lanczos-3 to 224; bicubic: PIL's
    center_crop: bool = True          # the 0.9-area centre crop, resized back to 224
    blind: bool = False               # the model is fed a blank grey frame instead of the image
    prompt_template: str = "default"  # policies/preprocess.PROMPT_TEMPLATES
    empty_token: bool = True          # 29871 ("▁") appended after the prompt, as predict_action does
    decode_vocab: int | None = None   # token -> bin vocabulary; None: the checkpoint's (32000)
    unnorm_key: str | None = None     # None: the suite's own key (with the _no_noops fallback)
    unnorm_mask: bool = True          # False: the gripper is unnormalised too
    gripper: str = "binarize_invert"  # GRIPPER_MODES: LIBERO's -1 open / +1 close from [0, 1]
    dtype: str | None = None          # the model's weights and activations; None: the run's --dtype

    def __post_init__(self):
        for name, value, valid in (("flip", self.flip, FLIPS), ("resize", self.resize, RESIZES),
                                   ("gripper", self.gripper, GRIPPER_MODES)):
            if value not in valid:
                raise ValueError(f"{name} {value!r}; valid: {', '.join(valid)}")

    @property
    def flip_image(self) -> bool:
        return self.flip == "rotate"

    def changed(self) -> dict:
        """The knobs that differ from the published loop."""
        default = Toggles()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    @property
    def tag(self) -> str:
        """The fault name(s) these toggles reproduce, ``baseline`` for none; other knob values
        are spelled out (``flip=none+jpeg=False``) so two different loops never share a tag."""
        changed = self.changed()
        names = []
        for fault in FAULTS.values():
            want = fault.toggles.changed()
            if want and all(changed.get(k, object()) == v for k, v in want.items()):
                names.append(fault.name)
                for k in want:
                    changed.pop(k, None)
        names += [f"{k}={v}" for k, v in changed.items()]
        return "+".join(names) or "baseline"


@dataclass(frozen=True)
class Fault:
    name: str
    toggles: Toggles
    help: str
    seen_in: str        # where users meet it
    caught_by: tuple[str, ...]  # the layers meant to catch it: preflight:<check>, monitor:<predicate>, diagnose
    flag: str | None = None  # the chapter's three keep their own CLI flags (--no-flip, ...)
    native_only: bool = False  # injectable in the native backend's decoding only
    fix: str = ""  # what the pre-flight tells a user whose loop has this fault


_T = Toggles
FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("no_flip", _T(flip="none"), "image not rotated 180 degrees (raw MuJoCo frames are upside down)",
          "the chapter's first silent failure", ("preflight:image", "monitor:no_flip"), flag="--no-flip",
          fix="img[::-1, ::-1]"),
    Fault("bad_prompt", _T(prompt_template="rephrased"), "prompt template rephrased",
          "the chapter's second silent failure", ("preflight:prompt", "monitor:bad_prompt"), flag="--bad-prompt"),
    Fault("bad_unnorm", _T(unnorm_key="bridge_orig"), "unnorm_key=bridge_orig (another dataset's statistics)",
          "the chapter's third silent failure", ("preflight:unnorm key", "monitor:bad_unnorm"), flag="--bad-unnorm"),
    Fault("mirror_flip", _T(flip="mirror"), "img[::-1] only: upright but left-right mirrored",
          "a flip bug fixed in a peer harness for another policy", ("preflight:image", "diagnose"),
          fix="img[::-1, ::-1]"),
    Fault("no_crop", _T(center_crop=False), "the 0.9-area centre crop skipped",
          "listed among the causes of a 71.0 -> 76.2 reproduction gap", ("preflight:image", "diagnose")),
    Fault("no_jpeg", _T(jpeg=False), "no JPEG round trip before the resize",
          "the RLDS frames were JPEG; a loop on raw frames skips it", ("preflight:image", "diagnose")),
    Fault("bicubic_resize", _T(resize="bicubic"), "PIL bicubic resize instead of TF's Lanczos-3",
          "a loop written without TensorFlow", ("preflight:image", "diagnose")),
    Fault("blind", _T(blind=True), "the model sees a blank image (OpenVLA's remote code on transformers >= 4.50)",
          "openvla#346", ("preflight:image", "preflight:blind", "diagnose")),
    Fault("no_empty_token", _T(empty_token=False), "token 29871 not appended after the prompt",
          "a hand-written generate loop", ("preflight:decoding", "diagnose"), native_only=True),
    Fault("vocab_32064", _T(decode_vocab=32064), "tokens mapped to bins with the padded vocabulary 32064 "
          "(every bin shifts by 64)", "a decoder reading vocab_size from config.json", ("preflight:decoding", "diagnose"),
          native_only=True),
    Fault("unnorm_gripper", _T(unnorm_mask=False), "the unnorm mask ignored: the gripper unnormalised too",
          "a re-implemented unnormalise", ("preflight:decoding", "diagnose"), native_only=True),
    Fault("gripper_no_binarize", _T(gripper="no_binarize"), "the gripper not binarised (sign) after [0,1] -> [-1,1]",
          "a loop that skips OpenVLA's gripper post-processing", ("preflight:gripper", "diagnose")),
    Fault("gripper_no_invert", _T(gripper="no_invert"), "the gripper not inverted (open and close swapped)",
          "a loop that skips OpenVLA's gripper post-processing", ("preflight:gripper", "diagnose")),
    Fault("float16", _T(dtype="float16"), "the model run in float16 instead of bfloat16 (its training dtype)",
          "torch_dtype=torch.float16 in a hand-written loader", ("preflight:dtype", "diagnose"), native_only=True),
)}
BASELINE = "baseline"
RUN_TAGS = (BASELINE,) + tuple(FAULTS)
CHAPTER_FAULTS = tuple(name for name, f in FAULTS.items() if f.flag)


class UnknownRunTag(UsageError, KeyError):
    """A run tag that is neither the baseline nor fault names joined by ``+``."""

    def __str__(self) -> str:  # KeyError would quote the message
        return UsageError.__str__(self)


def toggles_for(tag: str) -> Toggles:
    """A run tag's toggles: ``baseline``, a fault name, or fault names joined by ``+``, each part
    optionally a perturbation ``family:level`` (``vla_eval.perturbations``: the env's business, no
    toggle); anything else is ``UnknownRunTag`` naming the valid ones (the one implementation every
    caller uses)."""
    if tag == BASELINE:
        return Toggles()
    from vla_eval.perturbations import FAMILIES, split_tag

    try:
        faults, perturbation = split_tag(tag)
    except UsageError as e:
        raise UnknownRunTag(f"run tag {tag!r}: {e}") from None
    out = Toggles()
    for name in faults:
        if name not in FAULTS:
            raise UnknownRunTag(f"unknown run tag {tag!r} (fault {name!r}); valid: {', '.join(RUN_TAGS)}, or fault "
                                f"names joined by +, or a perturbation family:level ({', '.join(FAMILIES)}; levels 1-3)")
        out = replace(out, **FAULTS[name].toggles.changed())
    return out


def is_run_tag(tag: str) -> bool:
    try:
        toggles_for(tag)
        return True
    except UnknownRunTag:
        return False


def parse_faults(text: str) -> tuple[str, ...]:
    """``--fault`` value: ``all``, or names separated by commas (``no_crop,no_jpeg``); each name
    may join several faults with ``+`` into one run. Raises ValueError naming the bad one."""
    if text.strip() == "all":
        return tuple(FAULTS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise ValueError("an empty fault list")
    for tag in names:
        for name in tag.split("+"):
            if name not in FAULTS:
                raise ValueError(f"unknown fault {name!r}; valid: all, {', '.join(FAULTS)}")
    return names
