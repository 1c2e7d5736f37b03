"""OpenVLA through Hugging Face (``trust_remote_code``): the published LIBERO loop.

Per step and env slot: agentview frame -> (flip) -> JPEG -> Lanczos 224 -> centre crop ->
processor(prompt, image) -> ``predict_action(**inputs, unnorm_key=..., do_sample=False)``
-> gripper post-processing. The remote code decodes one sample per call, so a batch of
slots is a loop here (the native batched model is the fast path).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from sims.protocol import Observation
from vla_eval.errors import UsageError
from vla_eval.policies.action_tokens import resolve_unnorm_key, shipped_norm_stats
from vla_eval.policies.base import ActionBatch
from vla_eval.policies.preprocess import build_prompt, postprocess_gripper, preprocess_libero_image

ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")


class OpenVLAPolicy:
    """Wraps any object with OpenVLA's ``predict_action`` and a matching processor."""

    name = "openvla"
    uses_images = True

    def __init__(self, model, processor, toggles, unnorm_key: str, device="cpu", dtype=None):
        self.model, self.processor, self.toggles = model, processor, toggles
        self.unnorm_key, self.device, self.dtype = unnorm_key, device, dtype
        build_prompt("", toggles.prompt_template)  # unknown template: fail now, not mid-episode

    def reset(self, slot: int = 0) -> None:
        pass  # stateless: every step is one forward pass

    def model_inputs(self, o: Observation) -> tuple[np.ndarray, str]:
        """What the model receives for one observation: (224x224x3 image, prompt)."""
        if o.agentview is None:
            raise UsageError("OpenVLA needs camera images; run with cameras on")
        return preprocess_libero_image(o.agentview, self.toggles.flip_image), build_prompt(
            o.instruction, self.toggles.prompt_template)

    def act(self, obs: Sequence[Observation], slots=None) -> ActionBatch:
        from PIL import Image

        images, actions = [], []
        for o in obs:
            image, prompt = self.model_inputs(o)
            inputs = self.processor(prompt, Image.fromarray(image).convert("RGB"))
            inputs = inputs.to(self.device, dtype=self.dtype) if self.dtype is not None else inputs.to(self.device)
            actions.append(np.asarray(self.model.predict_action(**inputs, unnorm_key=self.unnorm_key, do_sample=False)))
            images.append(image)
        return ActionBatch(postprocess_gripper(np.stack(actions)), np.array([im.mean() for im in images]))


def default_checkpoint(suite: str) -> str:
    from configs import load

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


def load_openvla_policy(suite: str, toggles, opts) -> OpenVLAPolicy:
    try:
        import torch
        import transformers
    except ImportError as e:
        raise UsageError(f"OpenVLA needs torch and transformers ({e}). Fix: pip install 'vla-eval[openvla]'") from e
    if opts.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise UsageError(f"unknown attention implementation {opts.attn_implementation!r}; valid: "
                         f"{', '.join(ATTN_IMPLEMENTATIONS)}")
    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("no CUDA device: OpenVLA-7B in bf16 needs a GPU with ~16 GB. On a CPU-only machine use "
                         "--policy scripted (or zero) for real LIBERO runs without a model.")
    checkpoint = opts.checkpoint or default_checkpoint(suite)
    if opts.native:
        raise UsageError("--native: the trust_remote_code-free batched OpenVLA model is not available in this "
                         "version yet; run without --native (HF remote code, transformers 4.40.1)")
    kw = dict(trust_remote_code=True, revision=opts.revision)
    try:
        processor = transformers.AutoProcessor.from_pretrained(checkpoint, **kw)
        # transformers 5 renamed the auto class; OpenVLA's remote code is pinned to 4.40.1.
        auto = getattr(transformers, "AutoModelForVision2Seq", None) or transformers.AutoModelForImageTextToText
        model = auto.from_pretrained(
            checkpoint, attn_implementation=opts.attn_implementation, torch_dtype=torch.bfloat16,
            low_cpu_mem_usage=True, **kw).to(opts.device)
    except (OSError, ValueError, ImportError) as e:
        raise UsageError(
            f"could not load {checkpoint!r}{' @ ' + opts.revision if opts.revision else ''}: {e}. If the weights are "
            f"not in the Hugging Face cache and there is no network: download them where there is "
            f"(huggingface-cli download {checkpoint}) and pass --checkpoint /local/path.") from e
    key = prepare_unnorm_key(model.norm_stats, suite, toggles.unnorm_key)
    return OpenVLAPolicy(model, processor, toggles, key, opts.device, torch.bfloat16)
