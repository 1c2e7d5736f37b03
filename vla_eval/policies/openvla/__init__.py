"""OpenVLA in one folder: the policy over either backend (``policy``), the published image chain
and prompt (``preprocess``), action tokens and unnormalisation (``tokens``), finding checkpoints
(``hub``), the native batched model (``native/``) and its check against OpenVLA's remote code
(``check_backend``). Importing the folder only declares its two policies: torch and
transformers load with the backend, when a policy is built."""
from __future__ import annotations

from vla_eval.policies.registry import PolicySpec, register_policy


def _build(spec: PolicySpec, suite: str, toggles, opts) -> list:
    from vla_eval.policies.openvla.policy import make_openvla_policies

    return make_openvla_policies(suite, toggles, spec.options(suite, opts), spec.name)


register_policy(PolicySpec("openvla", "OpenVLA (default openvla/openvla-7b-finetuned-<suite>, or --checkpoint)",
                           reads_images=True, build=_build, model=True))
register_policy(PolicySpec("tiny", "the shipped tiny OpenVLA (the same loop on CPU)", reads_images=True,
                           build=_build, model=True, device="cpu", dtype="float32", shipped="tiny"))
