"""Build policies by name, with each run tag's toggles. Heavy imports happen only for 'openvla'."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from vla_eval.errors import UsageError, bad_choice
from vla_eval.faults import Toggles  # noqa: F401  (re-exported: policies are built per Toggles)

POLICIES = ("openvla", "tiny", "scripted", "zero")
PIXEL_POLICIES = ("openvla", "tiny")  # the others run with cameras off unless asked


@dataclass(frozen=True)
class OpenVLAOptions:
    checkpoint: str | None = None  # None: openvla/openvla-7b-finetuned-<suite>
    revision: str | None = None
    attn_implementation: str = "sdpa"
    device: str = "cuda"
    native: bool = True  # the trust_remote_code-free model with batched decoding; False: OpenVLA's remote code
    dtype: str = "bfloat16"  # native model only; the remote-code path is bf16 as published
    batch: int = 1  # observations per model call (= parallel envs); checked against GPU memory


BACKENDS = ("native", "remote-code")


def model_options(policy: str, checkpoint: str | None = None, revision: str | None = None, attn: str | None = None,
                  device: str | None = None, backend: str | None = None, dtype: str | None = None) -> OpenVLAOptions:
    """Model flags as given (None = not given), checked against the policy: a flag that cannot
    apply is refused, never recorded; defaults depend on the policy (tiny: CPU, float32).
    ``backend``: "native" (the default) or "remote-code" (OpenVLA's trust_remote_code model)."""
    if policy not in POLICIES:
        raise bad_choice("policy", policy, POLICIES)
    if backend is not None and backend not in BACKENDS:
        raise bad_choice("backend", backend, BACKENDS)
    given = [f"--{k}" for k, v in (("checkpoint", checkpoint), ("revision", revision), ("attn", attn),
                                   ("device", device), ("dtype", dtype), ("backend", backend)) if v is not None]
    if policy not in PIXEL_POLICIES and given:
        raise UsageError(f"{', '.join(given)} configure an OpenVLA model; policy {policy!r} has none "
                         f"(valid with --policy {' or '.join(PIXEL_POLICIES)})")
    if policy == "tiny" and (checkpoint or revision):
        raise UsageError("--policy tiny runs the shipped tiny checkpoint; for another checkpoint use "
                         "--policy openvla --checkpoint PATH")
    if backend == "remote-code" and policy == "tiny":
        raise UsageError("--backend remote-code: the tiny checkpoint's featurizers are not timm models the remote "
                         "code can build; --policy tiny runs on the native backend")
    if backend == "remote-code" and dtype is not None:
        raise UsageError(f"--dtype {dtype}: the remote-code model runs in bfloat16 as published; "
                         "--dtype applies to the native backend")
    default_device, default_dtype = ("cpu", "float32") if policy == "tiny" else ("cuda", "bfloat16")
    return OpenVLAOptions(checkpoint=checkpoint, revision=revision, attn_implementation=attn or "sdpa",
                          device=device or default_device, native=backend != "remote-code",
                          dtype=dtype or default_dtype)


def make_policies(name: str, suite: str, toggles_per_tag: Sequence[Toggles],
                  openvla: OpenVLAOptions = OpenVLAOptions()) -> list:
    """One policy per run tag; OpenVLA's weights are loaded once and shared."""
    if name not in POLICIES:
        raise bad_choice("policy", name, POLICIES)
    if name in ("scripted", "zero"):
        for toggles in toggles_per_tag:
            if toggles != Toggles():
                raise UsageError(
                    f"policy {name!r} reads privileged state, not images or prompts: the toggle "
                    f"{toggles.tag!r} cannot apply to it. Use --policy openvla for the drills.")
        from vla_eval.policies.simple import ScriptedExpert, ZeroPolicy

        return [ScriptedExpert() if name == "scripted" else ZeroPolicy() for _ in toggles_per_tag]
    from vla_eval.policies.openvla import make_openvla_policies

    return make_openvla_policies(suite, toggles_per_tag, resolve_options(name, suite, openvla))


def resolve_options(name: str, suite: str, opts: OpenVLAOptions) -> OpenVLAOptions:
    """``tiny`` is OpenVLA's loop on the shipped tiny checkpoint through the native loader (see
    ``model_options`` for its CPU defaults). Nothing else differs: same preprocessing and decoding."""
    if name != "tiny":
        return opts
    from dataclasses import replace

    from vla_eval.configs import shipped_checkpoint

    shipped = str(shipped_checkpoint("tiny", suite))
    if opts.checkpoint == shipped and opts.native:
        return opts  # already resolved
    if opts.checkpoint is not None:
        raise UsageError("--policy tiny runs the shipped tiny checkpoint; for another checkpoint use "
                         "--policy openvla --checkpoint PATH")
    return replace(opts, checkpoint=shipped, native=True)


def make_policy(name: str, suite: str, toggles: Toggles = Toggles(), openvla: OpenVLAOptions = OpenVLAOptions()):
    return make_policies(name, suite, [toggles], openvla)[0]
