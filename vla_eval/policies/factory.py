"""The policy factory: a run names its policy, the registry says what that name is.

The built-in policies declare their specs in their own modules (``POLICY_MODULES``); another
installed package adds one through the ``vla_eval.policies`` entry-point group (each entry
point names a module that calls ``register_policy`` when imported). The CLI's ``--policy``
choices, the cameras default, the manifest check on resume and the factory all read
``policies()``. Heavy imports happen inside the builders, only for the policy that runs.
"""
from __future__ import annotations

import importlib
from typing import Sequence

from vla_eval.errors import UsageError, bad_choice
from vla_eval.policies.registry import BACKENDS, REGISTERED, OpenVLAOptions, PolicySpec, Toggles

POLICY_MODULES = ("vla_eval.policies.openvla", "vla_eval.policies.zero", "vla_eval.policies.scripted")
ENTRY_POINT_GROUP = "vla_eval.policies"
_loaded = False


def policies() -> dict[str, PolicySpec]:
    """Every registered policy by name: the built-ins, then those other packages declare."""
    global _loaded
    if not _loaded:
        for module in POLICY_MODULES:
            importlib.import_module(module)
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as e:  # a broken plugin must not take the built-in policies down with it
                import warnings

                warnings.warn(f"the policy plugin {ep.name!r} ({ep.value}) did not load: {e}")
        _loaded = True
    return REGISTERED


def policy_spec(name: str) -> PolicySpec:
    known = policies()
    if name not in known:
        raise bad_choice("policy", name, known)
    return known[name]


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
        models = model_policy_names()
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
    if spec.model and openvla is None:
        openvla = model_options(name)
    return spec.build(spec, suite, list(toggles_per_tag), openvla)


def resolve_options(name: str, suite: str, opts: OpenVLAOptions) -> OpenVLAOptions:
    """The options a run records: the policy's fixed parts filled in (``tiny``: the shipped checkpoint)."""
    return policy_spec(name).options(suite, opts)


def make_policy(name: str, suite: str, toggles: Toggles = Toggles(), openvla: OpenVLAOptions | None = None):
    return make_policies(name, suite, [toggles], openvla)[0]


def model_policy_names() -> str:
    """'openvla or tiny': the policies the model flags apply to, for messages."""
    return " or ".join(n for n, s in policies().items() if s.model)
