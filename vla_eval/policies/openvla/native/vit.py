"""The two ViT featurizers of OpenVLA (DINOv2-L/14-reg4, SigLIP-So400m/14) in plain torch.

Parameter names are timm's (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``blocks.N.ls1.gamma``,
``cls_token``, ``reg_token``, ``pos_embed``), so a timm-layout state dict loads by name. timm
itself is not imported: its 0.9 line (the one OpenVLA was trained with) needs torchvision, and
the forward needed here is ~60 lines.

OpenVLA reads ``get_intermediate_layers(n={depth - 2})``: the output of the second-to-last
block, no final norm, prefix tokens (class, registers) dropped. So only ``feature_block + 1``
blocks are built; the last block, the final norm and SigLIP's attention-pool head are never
run and never allocated.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    embed_dim: int
    depth: int  # blocks in the pretrained model (the checkpoint holds all of them)
    num_heads: int
    mlp_hidden: int
    patch_size: int = 14
    img_size: int = 224
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False  # True: pos_embed covers patches only (timm's DINOv2-reg layout)
    layer_scale: bool = False  # LayerScale (ls1/ls2) after attention and MLP
    eps: float = 1e-6
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the pixel normalisation it was trained with
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def feature_block(self) -> int:
        return self.depth - 2  # OpenVLA: get_intermediate_layers(n={len(blocks) - 2})

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# timm ids as they appear in OpenVLA's config.json (``timm_model_ids``), at OpenVLA's 224 px.
VISION_ARCHS: dict[str, ViTConfig] = {
    "vit_large_patch14_reg4_dinov2.lvd142m": ViTConfig(
        embed_dim=1024, depth=24, num_heads=16, mlp_hidden=4096, reg_tokens=4, no_embed_class=True,
        layer_scale=True, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "vit_so400m_patch14_siglip_224": ViTConfig(
        embed_dim=1152, depth=27, num_heads=16, mlp_hidden=4304, class_token=False),
}
# Same structure (registers, LayerScale, patch-only positions; no class token for SigLIP) at
# tiny widths and a 4x4 patch grid: the random checkpoints of tests and CPU benchmarks.
VISION_ARCHS["vla-eval/tiny-dinov2-reg4"] = replace(
    VISION_ARCHS["vit_large_patch14_reg4_dinov2.lvd142m"], embed_dim=32, depth=3, num_heads=2, mlp_hidden=64, img_size=56)
VISION_ARCHS["vla-eval/tiny-siglip"] = replace(
    VISION_ARCHS["vit_so400m_patch14_siglip_224"], embed_dim=48, depth=4, num_heads=2, mlp_hidden=80, img_size=56)
# The trained tiny OpenVLA (vla_eval.tinyvla): 14 px patches on a 112 px input (the processor
# resizes OpenVLA's 224 px image, as it does for any featurizer size): an 8x8 grid and two run
# blocks of width 64 keep training and decoding within a 2-core CPU budget.
VISION_ARCHS["vla-eval/tiny-dinov2-reg4-112"] = replace(
    VISION_ARCHS["vit_large_patch14_reg4_dinov2.lvd142m"], embed_dim=64, depth=3, num_heads=4, mlp_hidden=128,
    img_size=112)
VISION_ARCHS["vla-eval/tiny-siglip-112"] = replace(
    VISION_ARCHS["vit_so400m_patch14_siglip_224"], embed_dim=64, depth=3, num_heads=4, mlp_hidden=128, img_size=112)
# The same with 8 px patches (a 14x14 grid, ~3x the tokens): an object of ~7 px then fills a
# patch instead of half of one.
TINY_112_IDS = ("vla-eval/tiny-dinov2-reg4-112", "vla-eval/tiny-siglip-112")


def tiny_112_ids(patch: int = 14) -> list[str]:
    """The trained tiny model's two featurizer ids for a patch size (14: the shipped ones)."""
    return [name if patch == 14 else f"{name}-p{patch}" for name in TINY_112_IDS]


for _name, _name8 in zip(TINY_112_IDS, tiny_112_ids(8)):
    VISION_ARCHS[_name8] = replace(VISION_ARCHS[_name], patch_size=8)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, 3, H, W) -> (B, N, D)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d_head), bidirectional
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps)
        self.attn = Attention(d, cfg.num_heads)
        self.ls1 = LayerScale(d) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps)
        self.mlp = Mlp(d, cfg.mlp_hidden)
        self.ls2 = LayerScale(d) if cfg.layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViTFeaturizer(nn.Module):
    """(B, 3, img, img) normalised pixels -> (B, num_patches, embed_dim) patch features."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d)) if cfg.reg_tokens else None
        pos_len = cfg.num_patches + (0 if cfg.no_embed_class else cfg.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_len, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.feature_block + 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)  # (B, N, D)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        if self.cfg.no_embed_class:  # positions for patches only; class/registers prepended after
            x = torch.cat(prefix + [x + self.pos_embed], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x[:, self.cfg.num_prefix_tokens:]
