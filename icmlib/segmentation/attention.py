"""An attention segmenter: a small SegFormer (Xie et al., NeurIPS 2021) for the synthetic world.

A convolution mixes a pixel with its 3x3 neighbours; self-attention mixes every token
with every other, with weights computed from the tokens themselves
(``softmax(Q Kᵀ / √d) V``). SegFormer makes that affordable for dense prediction with
three ideas, each a class below:

* :class:`OverlapPatchEmbed`: the image becomes tokens through a strided convolution
  whose windows overlap (7x7 stride 4, then 3x3 stride 2), so neighbouring tokens share
  pixels and no patch boundary is hard;
* :class:`EfficientSelfAttention`: keys and values come from a grid shrunk by a
  reduction ratio R (a strided convolution), so attention costs ``N · N/R²`` instead of
  ``N²`` for N tokens;
* :class:`MixFFN`: the feed-forward block carries a 3x3 depthwise convolution, which
  gives the tokens their position (SegFormer has no positional encoding, so any image
  size works).

:class:`SegFormerLite` stacks those into a hierarchical encoder (strides 4, 8, 16) and
adds SegFormer's light all-MLP decoder: every stage's tokens projected to one width,
upsampled to stride 4, concatenated, fused and classified, then upsampled to the image.
It is the segmenter ``"attention"`` of :func:`~icmlib.segmentation.segmenter_for`, trained
with the U-Net's recipe (same data, loss, optimizer, steps, validation).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class OverlapPatchEmbed(nn.Module):
    """Image (or feature map) → tokens: a strided convolution with overlapping windows, then
    LayerNorm. Returns the tokens ``[B, H'·W', dim]`` and the grid size (H', W')."""

    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a grid reduced R times.

    Queries: one per token (N of them). Keys and values: the token grid shrunk by a
    ``reduction`` x ``reduction`` strided convolution (N/R² of them). The attention matrix
    is ``[heads, N, N/R²]``. With ``keep_attention`` the last one is kept (detached) in
    ``self.attention`` so a figure can show where a token looked.
    """

    def __init__(self, dim: int, heads: int, reduction: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.reduction = heads, reduction
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        if reduction > 1:
            self.reduce = nn.Conv2d(dim, dim, reduction, stride=reduction)
            self.reduce_norm = nn.LayerNorm(dim)
        self.keep_attention = False
        self.attention: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        d = c // self.heads
        q = self.q(x).reshape(b, n, self.heads, d).transpose(1, 2)            # [B, heads, N, d]
        if self.reduction > 1:                                               # N → N / R²
            grid = x.transpose(1, 2).reshape(b, c, h, w)
            x = self.reduce_norm(self.reduce(grid).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, d).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * d ** -0.5).softmax(dim=-1)    # [B, heads, N, N/R²]
        if self.keep_attention:
            self.attention = attention.detach()
        out = (attention @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)


class MixFFN(nn.Module):
    """Linear → 3x3 depthwise convolution on the token grid → GELU → Linear.

    The depthwise convolution leaks a little of each token's neighbourhood into it, which
    is all the position information SegFormer needs."""

    def __init__(self, dim: int, expansion: int = 4):
        super().__init__()
        hidden = dim * expansion
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.fc1(x)
        x = self.dwconv(x.transpose(1, 2).reshape(b, -1, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: ``x + attention(LN(x))``, then ``x + MixFFN(LN(x))``."""

    def __init__(self, dim: int, heads: int, reduction: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, reduction)
        self.ffn = MixFFN(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.ffn(self.norm2(x), h, w)


class SegFormerLite(nn.Module):
    """A hierarchical transformer encoder (stages at strides 4, 8, 16) and an all-MLP decoder.

    ``dims``: token width per stage; ``heads`` and ``reductions`` (the spatial-reduction
    ratio R of each stage's attention) likewise; ``blocks`` transformer blocks per stage;
    ``decoder_dim``: the width every stage is projected to in the decoder.
    ``forward(images) -> logits [B, num_classes, H, W]``, like the U-Net's.
    """

    def __init__(self, in_channels: int, num_classes: int, dims: Sequence[int] = (32, 64, 128),
                 heads: Sequence[int] = (1, 2, 4), reductions: Sequence[int] = (4, 2, 1),
                 blocks: int = 1, decoder_dim: int = 64):
        super().__init__()
        if not len(dims) == len(heads) == len(reductions):
            raise ValueError("dims, heads and reductions need one entry per stage")
        self.num_classes = num_classes
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        prev = in_channels
        for i, (dim, head, red) in enumerate(zip(dims, heads, reductions)):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            self.embeds.append(OverlapPatchEmbed(prev, dim, kernel, stride))
            self.stages.append(nn.ModuleList(TransformerBlock(dim, head, red) for _ in range(blocks)))
            self.norms.append(nn.LayerNorm(dim))
            prev = dim
        self.project = nn.ModuleList(nn.Linear(dim, decoder_dim) for dim in dims)
        self.fuse = nn.Sequential(nn.Conv2d(decoder_dim * len(dims), decoder_dim, 1, bias=False),
                                  nn.BatchNorm2d(decoder_dim), nn.ReLU(inplace=True))
        self.classify = nn.Conv2d(decoder_dim, num_classes, 1)

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Every stage's output as a feature map ``[B, dim, H/stride, W/stride]``."""
        features = []
        for embed, blocks, norm in zip(self.embeds, self.stages, self.norms):
            tokens, h, w = embed(x)
            for block in blocks:
                tokens = block(tokens, h, w)
            x = norm(tokens).transpose(1, 2).reshape(len(tokens), -1, h, w)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.encode(x)
        target = features[0].shape[-2:]                       # stride 4
        maps = []
        for f, project in zip(features, self.project):
            f = project(f.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(len(f), -1, *f.shape[-2:])
            maps.append(F.interpolate(f, size=target, mode="bilinear", align_corners=False))
        logits = self.classify(self.fuse(torch.cat(maps, dim=1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def attention_layers(self) -> List[EfficientSelfAttention]:
        """Every attention layer, first stage first (set ``keep_attention`` on them to look)."""
        return [m for m in self.modules() if isinstance(m, EfficientSelfAttention)]


def segformer_for_width(in_channels: int, num_classes: int, width: int) -> SegFormerLite:
    """A SegFormerLite sized from the U-Net's first-stage width ``w`` (the preset's
    ``seg_width``): stages of 2w, 4w, 8w channels, 1, 2, 4 heads, reductions 4, 2, 1, one
    block each, a 4w-wide decoder."""
    return SegFormerLite(in_channels, num_classes, dims=(2 * width, 4 * width, 8 * width),
                         heads=(1, 2, 4), reductions=(4, 2, 1), blocks=1, decoder_dim=4 * width)

