"""What a policy is to the toolkit, before anything is built: its ``PolicySpec``.

Each policy module declares its own spec with ``register_policy`` (light imports only; the
builder imports the model when it runs); ``factory`` finds them. A spec says whether the policy
reads images (cameras on by default, ``--cameras off`` refused), whether it is an OpenVLA model
(which model flags apply, and their defaults) and how to build one policy per run tag.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from vla_eval.errors import UsageError, bad_choice
from vla_eval.faults import Toggles

BACKENDS = ("native", "remote-code")
DTYPES = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class OpenVLAOptions:
    checkpoint: str | None = None  # None: openvla/openvla-7b-finetuned-<suite>
    revision: str | None = None
    attn_implementation: str = "sdpa"
    device: str = "cuda"
    native: bool = True  # the trust_remote_code-free model with batched decoding; False: OpenVLA's remote code
    dtype: str = "bfloat16"  # native model only; the remote-code path is bf16 as published
    batch: int = 1  # observations per model call (= parallel envs); checked against GPU memory
    features: bool = False  # also return the hidden-state summary per step (--record-features; native only)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise bad_choice("--dtype", self.dtype, DTYPES)
        if not self.native and self.dtype != "bfloat16":
            raise UsageError(f"--dtype {self.dtype}: the remote-code model runs in bfloat16 as published; "
                             "--dtype applies to the native backend")


@dataclass(frozen=True)
class PolicySpec:
    name: str
    help: str
    reads_images: bool  # render cameras by default; --cameras off is refused
    build: Callable[["PolicySpec", str, Sequence[Toggles], "OpenVLAOptions | None"], list]
    model: bool = False  # an OpenVLA model: the model flags (--checkpoint, --device, ...) apply
    device: str = "cuda"  # model defaults
    dtype: str = "bfloat16"
    shipped: str | None = None  # the checkpoint family in configs/checkpoints.json it always runs (no --checkpoint)

    def check(self, opts: OpenVLAOptions, shipped_path: str | None = None) -> None:
        """A policy that runs a shipped checkpoint refuses another one, and the remote code."""
        if self.shipped is None:
            return
        if opts.checkpoint not in (None, shipped_path) or opts.revision is not None:
            raise UsageError(f"--policy {self.name} runs the shipped {self.shipped} checkpoint; for another "
                             f"checkpoint use --policy openvla --checkpoint PATH")
        if not opts.native:
            raise UsageError(f"--backend remote-code: the {self.shipped} checkpoint's featurizers are not timm models "
                             f"the remote code can build; --policy {self.name} runs on the native backend")

    def options(self, suite: str, opts: OpenVLAOptions) -> OpenVLAOptions:
        """Model options with this policy's fixed parts filled in (the shipped checkpoint)."""
        if self.shipped is None:
            return opts
        from vla_eval.configs import shipped_checkpoint

        path = str(shipped_checkpoint(self.shipped, suite))
        self.check(opts, path)
        return replace(opts, checkpoint=path)


REGISTERED: dict[str, PolicySpec] = {}


def register_policy(spec: PolicySpec) -> PolicySpec:
    """Declare a policy by name (a policy module calls this when it is imported)."""
    if spec.name in REGISTERED and REGISTERED[spec.name] != spec:
        raise ValueError(f"two policies are named {spec.name!r}")
    REGISTERED[spec.name] = spec
    return spec


def state_builder(make: Callable[[], object]):
    """A builder for a policy that reads privileged state: no toggle (fault) can apply to it."""
    def build(spec: PolicySpec, suite: str, toggles: Sequence[Toggles], opts) -> list:
        for t in toggles:
            if t != Toggles():
                raise UsageError(f"policy {spec.name!r} reads privileged state, not images or prompts: the toggle "
                                 f"{t.tag!r} cannot apply to it. Use --policy openvla for the drills.")
        return [make() for _ in toggles]
    return build
