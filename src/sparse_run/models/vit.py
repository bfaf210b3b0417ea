"""A tiny Vision Transformer (``model.arch=vit``) for the Lazy Neuron study (Li et al. 2023, ``../shared/papers.md``
§12): non-overlapping ``patch``×``patch`` patches linearly embedded to ``dim``, a learned position embedding,
``depth`` pre-norm blocks of multi-head self-attention and an MLP ``dim → hidden → dim`` with the model's
``activation`` (ReLU by default, as the paper's sparsity is measured after ReLU), mean-pooled tokens, a linear head.

Every projection is an ``nn.Linear`` (attention's q, k, v as one ``qkv`` layer, no ``nn.MultiheadAttention``), so
the layer policy prunes them like any MLP's, and the activation-sparsity probe finds the activation modules.
``model.width`` multiplies the MLP hidden size and the token width (rounded to whole heads).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparse_run.config import ConfigError, number
from sparse_run.data.spec import DataSpec

from .activations import activation
from .common import need_image, scaled


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, act: nn.Module):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), act, nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = nn.functional.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, shape: tuple[int, ...], patch: int, dim: int, depth: int, heads: int, hidden: int,
                 num_classes: int, act: str, k: int | None):
        super().__init__()
        c, h, w = shape
        self.patch = patch
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Linear(c * patch * patch, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, hidden, activation(act, k, hidden)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p)                      # [B, C, H/p, W/p, p, p]
        x = x.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)   # [B, tokens, C·p·p]
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))


def vit(cfg: Any, spec: DataSpec) -> nn.Module:
    _, h, w = need_image(spec, "vit")
    for field in ("patch", "dim", "depth", "heads", "hidden"):
        number(cfg[field], f"model.{field}", lo=1, integer=True)
    if h % int(cfg.patch) or w % int(cfg.patch):
        raise ConfigError("model.patch", f"got {cfg.patch}; must divide the image's {h}×{w}")
    if int(cfg.dim) % int(cfg.heads):
        raise ConfigError("model.heads", f"got {cfg.heads}; must divide model.dim = {cfg.dim}")
    heads = int(cfg.heads)
    dim = heads * scaled(int(cfg.dim) // heads, cfg)  # width keeps whole heads
    return ViT(tuple(spec.input_shape), int(cfg.patch), dim, int(cfg.depth), heads, scaled(int(cfg.hidden), cfg),
               spec.num_classes, str(cfg.activation), cfg.activation_k)
