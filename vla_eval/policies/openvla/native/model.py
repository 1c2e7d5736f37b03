"""OpenVLA without ``trust_remote_code``: fused ViTs -> MLP projector -> Llama, batched decoding.

Architecture (OpenVLA-7B numbers; everything is read from the checkpoint's config):

    pixels (B, 6, 224, 224)  = DINOv2-normalised RGB ++ SigLIP-normalised RGB
      featurizer        (B, 256, 1024)   DINOv2-L/14-reg4, output of block 22 of 24
      fused_featurizer  (B, 256, 1152)   SigLIP-So400m/14, output of block 25 of 27
      concat            (B, 256, 2176)
      projector         (B, 256, 4096)   fc1 2176->8704, GELU, fc2 8704->4096, GELU, fc3 4096->4096
    sequence            [BOS] [256 patch embeddings] [prompt tokens] [29871]
    language_model      transformers' LlamaForCausalLM (vocab 32064 = 32000 padded to 64)
    7 greedy tokens     -> bins -> unnormalised action, exactly as OpenVLA's ``predict_action``

Prompts of different lengths are left-padded; position ids count real tokens only, so a
padded row sees the same positions as it would alone (``tests`` check batched == per-sample).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from vla_eval.errors import UsageError, bad_choice
from vla_eval.policies.base import TokenStats
from vla_eval.policies.openvla.tokens import N_BINS, tokens_to_normalized, unnormalize
from vla_eval.policies.openvla.native.vit import VISION_ARCHS, ViTConfig, ViTFeaturizer

EMPTY_TOKEN = 29871  # Llama's "▁": predict_action appends it so the first action token follows it


@dataclass(frozen=True)
class NativeConfig:
    vision: tuple[ViTConfig, ViTConfig]  # (featurizer, fused_featurizer)
    text_config: dict  # kwargs of transformers.LlamaConfig, as stored in the checkpoint
    norm_stats: dict = field(default_factory=dict, hash=False)
    n_action_bins: int = N_BINS
    pad_to_multiple_of: int = 64

    @property
    def action_vocab_size(self) -> int:
        """Size of the unpadded Llama vocabulary whose last ``n_action_bins`` ids are the bins."""
        return int(self.text_config.get("vocab_size", 32064)) - self.pad_to_multiple_of

    @classmethod
    def from_hf(cls, config: dict) -> "NativeConfig":
        """From OpenVLA's ``config.json`` (the remote code's ``OpenVLAConfig`` fields)."""
        if not config.get("use_fused_vision_backbone", True) or len(config.get("timm_model_ids", [])) != 2:
            raise UsageError("the native model supports OpenVLA's fused (DINOv2 + SigLIP) vision backbone only; "
                             f"this checkpoint has timm_model_ids={config.get('timm_model_ids')}")
        visions = []
        for timm_id, size in zip(config["timm_model_ids"], config.get("image_sizes", [224, 224])):
            if timm_id not in VISION_ARCHS:
                raise UsageError(f"unknown vision backbone {timm_id!r} in the checkpoint's config; "
                                 f"known: {', '.join(VISION_ARCHS)}")
            arch = VISION_ARCHS[timm_id]
            visions.append(arch if arch.img_size == size else replace(arch, img_size=size))
        if "text_config" not in config:
            raise UsageError("the checkpoint's config.json has no text_config (is this an OpenVLA checkpoint?)")
        return cls(vision=tuple(visions), text_config=dict(config["text_config"]),
                   norm_stats=config.get("norm_stats", {}), n_action_bins=config.get("n_action_bins", N_BINS),
                   pad_to_multiple_of=config.get("pad_to_multiple_of", 64))


def _cache_kwargs(llm, out) -> dict:
    """Feed the KV cache back under the name this transformers uses: ``cache`` (5.2x on, where
    ``past_key_values`` is deprecated) or ``past_key_values`` (4.40.1, environment.yml's pin)."""
    import inspect

    if "cache" in inspect.signature(llm.forward).parameters:
        return {"cache": out.cache}
    return {"past_key_values": out.past_key_values}


class FusedMLPProjector(nn.Module):
    """OpenVLA's ``no-align+fused-gelu-mlp`` projector."""

    def __init__(self, vision_dim: int, llm_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)
        self.act_fn1, self.act_fn2 = nn.GELU(), nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(x)))))


class FusedVisionBackbone(nn.Module):
    def __init__(self, dino: ViTConfig, siglip: ViTConfig):
        super().__init__()
        if dino.num_patches != siglip.num_patches:
            raise UsageError(f"the two featurizers disagree on the patch grid ({dino.num_patches} vs {siglip.num_patches})")
        self.featurizer, self.fused_featurizer = ViTFeaturizer(dino), ViTFeaturizer(siglip)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 6, H, W) -> (B, num_patches, D_dino + D_siglip)."""
        a, b = torch.split(pixels, [3, 3], dim=1)
        return torch.cat([self.featurizer(a), self.fused_featurizer(b)], dim=2)


class NativeOpenVLA(nn.Module):
    """Module names match OpenVLA's checkpoint (``vision_backbone.featurizer...``,
    ``projector.fc1``, ``language_model.model.layers...``); see ``checkpoint.py`` for the rest."""

    def __init__(self, cfg: NativeConfig, attn_implementation: str = "sdpa"):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.cfg = cfg
        self.llama_config = LlamaConfig(**cfg.text_config)
        self.llama_config._attn_implementation = attn_implementation
        self.vision_backbone = FusedVisionBackbone(*cfg.vision)
        self.projector = FusedMLPProjector(sum(v.embed_dim for v in cfg.vision), self.llama_config.hidden_size)
        self.language_model = LlamaForCausalLM(self.llama_config)
        self.num_patches = cfg.vision[0].num_patches

    @property
    def device(self) -> torch.device:
        return self.projector.fc1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.fc1.weight.dtype

    def action_dim(self, unnorm_key: str) -> int:
        return len(self.cfg.norm_stats[unnorm_key]["action"]["q01"])

    # -- prefill inputs -------------------------------------------------------------------
    def build_prefill(self, pixels: torch.Tensor, prompt_ids: list[list[int]], empty_token: bool = True):
        """Embeddings, attention mask and position ids of ``[BOS][patches][prompt][29871]`` rows,
        left-padded to one length. ``prompt_ids[i]`` starts with BOS (the tokenizer adds it).
        ``empty_token=False`` leaves 29871 off (a fault of hand-written loops)."""
        ids = [list(p) if p[-1] == EMPTY_TOKEN or not empty_token else list(p) + [EMPTY_TOKEN] for p in prompt_ids]
        patches = self.projector(self.vision_backbone(pixels.to(self.device, self.dtype)))  # (B, P, d)
        embed = self.language_model.get_input_embeddings()
        b, p, d = patches.shape
        lengths = [len(x) + p for x in ids]
        total = max(lengths)
        embeds = patches.new_zeros(b, total, d)
        mask = torch.zeros(b, total, dtype=torch.long, device=self.device)
        # One embedding call for all rows (per-row calls cost a dense vocab-sized gradient each in training).
        flat = embed(torch.tensor([t for row in ids for t in row], device=self.device))  # (sum len, d)
        for i, tok in enumerate(torch.split(flat, [len(row) for row in ids])):
            start = total - lengths[i]
            embeds[i, start:] = torch.cat([tok[:1], patches[i], tok[1:]])
            mask[i, start:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, positions

    # -- training ------------------------------------------------------------------------
    def action_token_logits(self, pixels: torch.Tensor, prompt_ids: list[list[int]],
                            action_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for OpenVLA's objective: ``[BOS][patches][prompt][29871][a1..a6]``,
        the logits at 29871, a1..a6 predict a1..a7. (B, 7) ids -> (B, 7, vocab) float logits."""
        embeds, mask, positions = self.build_prefill(pixels, prompt_ids)
        n = action_tokens.shape[1]
        given = self.language_model.get_input_embeddings()(action_tokens[:, :-1])  # (B, n-1, d)
        embeds = torch.cat([embeds, given], dim=1)
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], n - 1)], dim=1)
        positions = torch.cat([positions, positions[:, -1:] + torch.arange(1, n, device=positions.device)], dim=1)
        hidden = self.language_model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return self.language_model.lm_head(hidden.last_hidden_state[:, -n:]).float()

    # -- decoding ------------------------------------------------------------------------
    def _last_logits(self, out) -> torch.Tensor:
        return self.language_model.lm_head(out.last_hidden_state[:, -1]).float()  # (B, vocab)

    @property
    def feature_layers(self) -> tuple[int, int]:
        """The decoder layers whose outputs ``features`` summarises: the middle one and the last."""
        n = self.llama_config.num_hidden_layers
        return max(n // 2, 1), n

    @torch.inference_mode()
    def generate_action_tokens(self, pixels: torch.Tensor, prompt_ids: list[list[int]], n_tokens: int = 7,
                               return_logits: bool = False, empty_token: bool = True, return_features: bool = False):
        """Greedy decode of exactly ``n_tokens`` per row with a KV cache -> (B, n_tokens) ids
        (and the (B, n_tokens, vocab) float logits if asked). No early stop: a bin per dim.

        ``return_features``: also the hidden-state summary (B, 2, d): the outputs of the middle and
        the last decoder layer (``feature_layers``; the last after the final norm, what the logits
        read) at the ``n_tokens`` positions that produced the action tokens, averaged over them."""
        embeds, mask, positions = self.build_prefill(pixels, prompt_ids, empty_token)
        llm = self.language_model.model
        middle: list[torch.Tensor] = []
        hook = None
        if return_features:  # the middle layer's output at the newest position of every forward pass
            layer = llm.layers[self.feature_layers[0] - 1]
            hook = layer.register_forward_hook(
                lambda _m, _i, out: middle.append((out[0] if isinstance(out, tuple) else out)[:, -1].float()))
        try:
            out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
            last = [out.last_hidden_state[:, -1].float()] if return_features else []
            logits = [self._last_logits(out)]
            tokens = [logits[-1].argmax(-1)]
            for _ in range(n_tokens - 1):
                mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = llm(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=positions,
                          use_cache=True, **_cache_kwargs(llm, out))
                if return_features:
                    last.append(out.last_hidden_state[:, -1].float())
                logits.append(self._last_logits(out))
                tokens.append(logits[-1].argmax(-1))
        finally:
            if hook is not None:
                hook.remove()
        tokens = torch.stack(tokens, dim=1)
        result = (tokens, torch.stack(logits, dim=1)) if return_logits else (tokens,)
        if return_features:
            summary = torch.stack([torch.stack(middle).mean(0), torch.stack(last).mean(0)], dim=1)  # (B, 2, d)
            result += (summary.to(torch.float16).cpu().numpy(),)
        return result if len(result) > 1 else result[0]

    @torch.inference_mode()
    def generate_with_hf(self, pixels: torch.Tensor, prompt_ids: list[list[int]], n_tokens: int = 7):
        """The HF-style path, one sample per call: transformers' ``generate`` over the same
        prefill embeddings, as OpenVLA's remote ``predict_action`` does. The baseline of
        ``bench-policy`` and an independent check of ``generate_action_tokens``."""
        rows = []
        for i in range(len(prompt_ids)):
            embeds, mask, _ = self.build_prefill(pixels[i:i + 1], prompt_ids[i:i + 1])
            out = self.language_model.generate(
                inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
                do_sample=False, pad_token_id=self.llama_config.pad_token_id)
            rows.append(out[0, -n_tokens:])
        return torch.stack(rows)

    def tokens_to_actions(self, tokens: np.ndarray, unnorm_key: str, vocab_size: int | None = None,
                          unnorm_mask: bool = True) -> np.ndarray:
        """(B, 7) token ids -> (B, 7) unnormalised actions (gripper still in [0, 1])."""
        normalized = tokens_to_normalized(tokens, vocab_size or self.cfg.action_vocab_size, self.cfg.n_action_bins)
        stats = self.cfg.norm_stats[unnorm_key]["action"]
        if not unnorm_mask:
            stats = {k: v for k, v in stats.items() if k != "mask"}
        return unnormalize(normalized, stats)

    def predict_action(self, pixels: torch.Tensor, prompt_ids: list[list[int]], unnorm_key: str,
                       return_token_prob: bool = False, empty_token: bool = True, vocab_size: int | None = None,
                       unnorm_mask: bool = True, features: bool = False):
        """Batched ``predict_action``: (B, 6, H, W) pixels + B token lists -> (B, 7) actions, and
        with ``return_token_prob`` a ``TokenStats``: per action token the probability of the chosen
        token (greedy, so the max probability) and the entropy of its distribution: the model's
        confidence, free since the logits exist anyway.
        ``empty_token``, ``vocab_size``, ``unnorm_mask``: the released defaults; other values
        reproduce decoding faults (``vla_eval.faults``). ``features``: the ``TokenStats`` also carry
        the hidden-state summary of ``generate_action_tokens`` (``--record-features``)."""
        if unnorm_key not in self.cfg.norm_stats:
            raise bad_choice("unnorm_key", unnorm_key, sorted(self.cfg.norm_stats))
        tokens, logits, *summary = self.generate_action_tokens(
            pixels, prompt_ids, self.action_dim(unnorm_key), return_logits=True, empty_token=empty_token,
            return_features=features)
        actions = self.tokens_to_actions(tokens.cpu().numpy(), unnorm_key, vocab_size, unnorm_mask)
        if not return_token_prob:
            return actions
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, n, V)
        prob = logp.gather(-1, tokens[..., None])[..., 0].exp()  # (B, n): each chosen token's probability
        entropy = -(logp.exp() * logp).sum(-1)  # (B, n) nats
        return actions, TokenStats(prob.cpu().numpy(), entropy.cpu().numpy(), summary[0] if summary else None)
