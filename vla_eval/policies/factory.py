"""Build a policy by name, with the run's toggles. Heavy imports happen only for 'openvla'."""
from __future__ import annotations

from dataclasses import dataclass

from vla_eval.errors import UsageError, bad_choice

POLICIES = ("openvla", "scripted", "zero")
PIXEL_POLICIES = ("openvla",)  # the others run with cameras off unless asked


@dataclass(frozen=True)
class Toggles:
    """The three knobs whose silent misuse the drills reproduce."""

    flip_image: bool = True
    prompt_template: str = "default"
    unnorm_key: str | None = None  # None: the suite's own key (with the _no_noops fallback)

    @property
    def tag(self) -> str:
        parts = []
        if not self.flip_image:
            parts.append("no_flip")
        if self.prompt_template != "default":
            parts.append("bad_prompt" if self.prompt_template == "rephrased" else f"prompt_{self.prompt_template}")
        if self.unnorm_key is not None:
            parts.append("bad_unnorm" if self.unnorm_key == "bridge_orig" else f"unnorm_{self.unnorm_key}")
        return "+".join(parts) or "baseline"


DRILLS: dict[str, Toggles] = {
    "baseline": Toggles(),
    "no_flip": Toggles(flip_image=False),
    "bad_prompt": Toggles(prompt_template="rephrased"),
    "bad_unnorm": Toggles(unnorm_key="bridge_orig"),
}


@dataclass(frozen=True)
class OpenVLAOptions:
    checkpoint: str | None = None  # None: openvla/openvla-7b-finetuned-<suite>
    revision: str | None = None
    attn_implementation: str = "sdpa"
    device: str = "cuda"
    native: bool = False  # the trust_remote_code-free model with batched decoding


def make_policy(name: str, suite: str, toggles: Toggles = Toggles(), openvla: OpenVLAOptions = OpenVLAOptions()):
    if name not in POLICIES:
        raise bad_choice("policy", name, POLICIES)
    if name in ("scripted", "zero"):
        if toggles != Toggles():
            raise UsageError(
                f"policy {name!r} reads privileged state, not images or prompts: the toggle "
                f"{toggles.tag!r} cannot apply to it. Use --policy openvla for the drills."
            )
        from vla_eval.policies.simple import ScriptedExpert, ZeroPolicy

        return ScriptedExpert() if name == "scripted" else ZeroPolicy()
    from vla_eval.policies.openvla import load_openvla_policy

    return load_openvla_policy(suite, toggles, openvla)
