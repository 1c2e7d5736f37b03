"""The policy registry: a run names its policy, this table says what that name is.

Each ``PolicySpec`` says whether the policy reads images (cameras on by default, ``--cameras off``
refused), whether it is an OpenVLA model (which model flags apply, and their defaults) and how to
build one policy per run tag. The CLI's ``--policy`` choices, the cameras default, the manifest
check on resume and the factory all read it: a new policy is one ``register_policy`` call.
Heavy imports happen inside the builders, only for the policy that runs.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from vla_eval.errors import UsageError, bad_choice
from vla_eval.faults import Toggles  # noqa: F401  (re-exported: policies are built per Toggles)

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


POLICIES: dict[str, PolicySpec] = {}


def register_policy(spec: PolicySpec) -> PolicySpec:
    POLICIES[spec.name] = spec
    return spec


def policy_spec(name: str) -> PolicySpec:
    if name not in POLICIES:
        raise bad_choice("policy", name, POLICIES)
    return POLICIES[name]


def _build_openvla(spec: PolicySpec, suite: str, toggles: Sequence[Toggles], opts: OpenVLAOptions | None) -> list:
    from vla_eval.policies.openvla.policy import make_openvla_policies

    return make_openvla_policies(suite, toggles, spec.options(suite, opts or model_options(spec.name)), spec.name)


def _state_builder(make: Callable[[], object]):
    def build(spec: PolicySpec, suite: str, toggles: Sequence[Toggles], opts) -> list:
        for t in toggles:
            if t != Toggles():
                raise UsageError(f"policy {spec.name!r} reads privileged state, not images or prompts: the toggle "
                                 f"{t.tag!r} cannot apply to it. Use --policy openvla for the drills.")
        return [make() for _ in toggles]
    return build


def _scripted():
    from vla_eval.policies.scripted import ScriptedExpert

    return ScriptedExpert()


def _zero():
    from vla_eval.policies.zero import ZeroPolicy

    return ZeroPolicy()


register_policy(PolicySpec("openvla", "OpenVLA (default openvla/openvla-7b-finetuned-<suite>, or --checkpoint)",
                           reads_images=True, build=_build_openvla, model=True))
register_policy(PolicySpec("tiny", "the shipped tiny OpenVLA (the same loop on CPU)", reads_images=True,
                           build=_build_openvla, model=True, device="cpu", dtype="float32", shipped="tiny"))
register_policy(PolicySpec("scripted", "the scripted expert (privileged sim state)", reads_images=False,
                           build=_state_builder(_scripted)))
register_policy(PolicySpec("zero", "zero actions, gripper open (smoke tests)", reads_images=False,
                           build=_state_builder(_zero)))


def model_options(policy: str, checkpoint: str | None = None, revision: str | None = None, attn: str | None = None,
                  device: str | None = None, backend: str | None = None, dtype: str | None = None) -> OpenVLAOptions:
    """Model flags as given (None = not given), checked against the policy: a flag that cannot
    apply is refused, never recorded; defaults are the policy's (tiny: CPU, float32).
    ``backend``: "native" (the default) or "remote-code" (OpenVLA's trust_remote_code model)."""
    spec = policy_spec(policy)
    if backend is not None and backend not in BACKENDS:
        raise bad_choice("backend", backend, BACKENDS)
    given = [f"--{k}" for k, v in (("checkpoint", checkpoint), ("revision", revision), ("attn", attn),
                                   ("device", device), ("dtype", dtype), ("backend", backend)) if v is not None]
    if not spec.model and given:
        models = " or ".join(n for n, s in POLICIES.items() if s.model)
        raise UsageError(f"{', '.join(given)} configure an OpenVLA model; policy {policy!r} has none "
                         f"(valid with --policy {models})")
    opts = OpenVLAOptions(checkpoint=checkpoint, revision=revision, attn_implementation=attn or "sdpa",
                          device=device or spec.device, native=backend != "remote-code",
                          dtype=dtype or ("bfloat16" if backend == "remote-code" else spec.dtype))
    spec.check(opts)
    return opts


def make_policies(name: str, suite: str, toggles_per_tag: Sequence[Toggles],
                  openvla: OpenVLAOptions | None = None) -> list:
    """One policy per run tag; a model's weights are loaded once and shared."""
    spec = policy_spec(name)
    return spec.build(spec, suite, list(toggles_per_tag), openvla)


def resolve_options(name: str, suite: str, opts: OpenVLAOptions) -> OpenVLAOptions:
    """The options a run records: the policy's fixed parts filled in (``tiny``: the shipped checkpoint)."""
    return policy_spec(name).options(suite, opts)


def make_policy(name: str, suite: str, toggles: Toggles = Toggles(), openvla: OpenVLAOptions | None = None):
    return make_policies(name, suite, [toggles], openvla)[0]
