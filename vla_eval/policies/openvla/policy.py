"""The OpenVLA policy: the published LIBERO loop over a pluggable model backend.

Per step and env slot: agentview frame -> (flip) -> JPEG -> Lanczos 224 -> centre crop ->
(image, prompt) -> backend -> normalised-space action -> gripper post-processing.

Backends (``predict(images, prompts, unnorm_key) -> (B, 7)``, ``norm_stats``):
* ``RemoteCodeBackend``: OpenVLA's own ``predict_action`` via HF ``trust_remote_code``; the
  remote code decodes one sample per call, so a batch of slots is a loop;
* ``native.backend.NativeBackend``: the batched model of ``policies/openvla/native`` (the default).
One policy object per run tag shares one loaded backend (a drill loads the 7B model once).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from vla_eval.sims.protocol import Observation
from vla_eval.errors import UsageError, require
from vla_eval.policies.openvla.tokens import resolve_unnorm_key, shipped_norm_stats
from vla_eval.policies.base import ActionBatch, Backend
from vla_eval.policies.openvla.hub import not_loadable
from vla_eval.policies.openvla.preprocess import build_prompt, postprocess_gripper, preprocess_libero_image

ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")


class OpenVLAPolicy:
    uses_images = True
    cameras = ("agentview",)  # the published loop reads the third-person view only

    def __init__(self, backend: Backend, toggles, unnorm_key: str, name: str = "openvla", features: bool = False):
        self.backend, self.toggles, self.unnorm_key, self.name = backend, toggles, unnorm_key, name
        build_prompt("", toggles.prompt_template)  # unknown template: fail now, not mid-episode
        decoding = decoding_options(toggles)
        changed = ([f"decoding ({', '.join(decoding)})"] if decoding else []) + (["dtype"] if toggles.dtype else [])
        if changed and not backend.confidence:
            raise UsageError(f"fault {toggles.tag!r} changes the model's {' and '.join(changed)}, which only the native "
                             "backend exposes; drop --backend remote-code")
        if features and not backend.confidence:
            raise UsageError("--record-features reads the model's hidden state, which only the native backend "
                             "exposes; drop --backend remote-code")
        self.decoding = {**decoding, "features": True} if features else decoding

    def reset(self, slot: int = 0) -> None:
        pass  # stateless: every step is one forward pass

    @property
    def feature_width(self) -> int | None:
        """Width of the flattened hidden-state summary (2 layers x hidden size); None without one."""
        model = getattr(self.backend, "model", None)
        config = getattr(model, "llama_config", None)
        return 2 * config.hidden_size if self.backend.confidence and config is not None else None

    def model_inputs(self, o: Observation) -> tuple[np.ndarray, str]:
        """What the model receives for one observation: (224x224x3 image, prompt)."""
        if o.agentview is None:
            raise UsageError("OpenVLA needs camera images; run with cameras on")
        t = self.toggles
        image = (np.full((224, 224, 3), 128, np.uint8) if t.blind else
                 preprocess_libero_image(o.agentview, t.flip, t.center_crop, t.jpeg, t.resize))
        return image, build_prompt(o.instruction, t.prompt_template)

    def act(self, obs: Sequence[Observation], slots=None) -> ActionBatch:
        # JPEG/resize release the GIL: threads spread a batch's 14 ms/frame over the cores.
        inputs = _threads().map(self.model_inputs, obs) if len(obs) > 1 else map(self.model_inputs, obs)
        images, prompts = zip(*inputs)
        stats = None
        if self.backend.confidence:  # native: the confidence comes with the actions
            raw, stats = self.backend.predict_with_confidence(list(images), list(prompts), self.unnorm_key,
                                                              **self.decoding)
        else:
            raw = self.backend.predict(list(images), list(prompts), self.unnorm_key)
        img_mean = np.array([im.mean() for im in images])
        if stats is None:
            return ActionBatch(self.postprocess(raw), img_mean)
        return ActionBatch(self.postprocess(raw), img_mean, stats.probs.mean(axis=1), stats.probs, stats.entropy,
                           stats.features)

    def postprocess(self, raw) -> np.ndarray:
        """(B, 7) model actions (gripper in [0, 1]) -> env actions (gripper -1 open / +1 close)."""
        return postprocess_gripper(np.asarray(raw), self.toggles.gripper)


def decoding_options(toggles) -> dict:
    """The decoding knobs a fault changes, as keyword arguments of the native ``predict_action``."""
    out = {}
    if not toggles.empty_token:
        out["empty_token"] = False
    if toggles.decode_vocab is not None:
        out["vocab_size"] = toggles.decode_vocab
    if not toggles.unnorm_mask:
        out["unnorm_mask"] = False
    return out


@functools.lru_cache(maxsize=1)
def _threads() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="preprocess")


class RemoteCodeBackend:
    """Any object with OpenVLA's ``predict_action`` and a matching processor (the ``Backend``
    protocol without confidence: the remote code returns actions only)."""

    confidence = False

    def __init__(self, model, processor, device="cpu", dtype=None):
        self.model, self.processor, self.device, self.dtype = model, processor, device, dtype

    @property
    def norm_stats(self) -> dict:
        return self.model.norm_stats

    def predict(self, images: list[np.ndarray], prompts: list[str], unnorm_key: str) -> np.ndarray:
        from PIL import Image

        out = []
        for image, prompt in zip(images, prompts):
            inputs = self.processor(prompt, Image.fromarray(image).convert("RGB"))
            inputs = inputs.to(self.device, dtype=self.dtype) if self.dtype is not None else inputs.to(self.device)
            out.append(np.asarray(self.model.predict_action(**inputs, unnorm_key=unnorm_key, do_sample=False)))
        return np.stack(out)


def default_checkpoint(suite: str) -> str:
    from vla_eval.configs import load

    table = load("checkpoints")["openvla"]
    if suite not in table:
        raise UsageError(f"no fine-tuned OpenVLA checkpoint for {suite}; pass --checkpoint, or use one of: "
                         f"{', '.join(table)}")
    return table[suite]


def prepare_unnorm_key(norm_stats: dict, suite: str, requested: str | None) -> str:
    """Resolve the key; statistics shipped in configs/ (bridge_orig) are added when the
    fine-tuned checkpoint lacks them, so the bad-unnorm drill runs on any checkpoint."""
    if requested and requested not in norm_stats:
        shipped = shipped_norm_stats(requested)
        if shipped is not None:
            norm_stats[requested] = {"action": shipped["action"]}
    return resolve_unnorm_key(norm_stats, suite, requested)


def load_backend(suite: str, opts):
    """The model behind every run tag of one sweep; all set-up errors surface here."""
    torch = require("torch", "openvla", "OpenVLA")
    require("transformers", "openvla", "OpenVLA")
    if opts.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise UsageError(f"unknown attention implementation {opts.attn_implementation!r}; valid: "
                         f"{', '.join(ATTN_IMPLEMENTATIONS)}")
    from vla_eval.policies.openvla.native.checkpoint import check_device

    check_device(opts.device)
    if opts.device == "cpu":  # the policy acts while the envs wait (no --overlap): the usable cores are its own
        from vla_eval.threads import set_torch_threads

        set_torch_threads(torch)
    checkpoint = opts.checkpoint or default_checkpoint(suite)
    if opts.native:
        from vla_eval.policies.openvla.native.backend import load_native_backend

        return load_native_backend(checkpoint, opts)
    return load_remote_code(checkpoint, opts)


def load_remote_code(checkpoint: str, opts, dtype=None) -> RemoteCodeBackend:
    """OpenVLA's own model class and processor (trust_remote_code), bf16 unless ``dtype``."""
    import torch
    import transformers

    dtype = dtype or torch.bfloat16
    kw = dict(trust_remote_code=True, revision=opts.revision)
    try:
        processor = transformers.AutoProcessor.from_pretrained(checkpoint, **kw)
        # transformers 5 renamed the auto class; OpenVLA's remote code is pinned to 4.40.1.
        auto = getattr(transformers, "AutoModelForVision2Seq", None) or transformers.AutoModelForImageTextToText
        model = auto.from_pretrained(
            checkpoint, attn_implementation=opts.attn_implementation, torch_dtype=dtype,
            low_cpu_mem_usage=True, **kw).to(opts.device)
    except (OSError, ValueError, ImportError, KeyError, AttributeError) as e:
        raise UsageError(not_loadable(checkpoint, opts.revision, e)) from e
    return RemoteCodeBackend(model, processor, opts.device, dtype)


def make_openvla_policies(suite: str, toggles_per_tag, opts, name: str = "openvla") -> list[OpenVLAPolicy]:
    """One policy per run tag over one loaded model per dtype (a dtype fault loads its own copy)."""
    from dataclasses import replace

    backends: dict[str, object] = {}
    policies = []
    for t in toggles_per_tag:
        dtype = (t.dtype or opts.dtype) if opts.native else opts.dtype  # the remote code refuses a dtype fault
        if dtype not in backends:
            backends[dtype] = load_backend(suite, replace(opts, dtype=dtype))
        backend = backends[dtype]
        policies.append(OpenVLAPolicy(backend, t, prepare_unnorm_key(backend.norm_stats, suite, t.unnorm_key), name,
                                      opts.features))
    return policies
