"""Resampling layers of segmentation networks, on small tensors you can check by hand.

A segmenter must give back an answer per pixel, so whatever its encoder throws away by
downsampling its decoder must bring back by upsampling. The ways to do it, each a few lines:
:func:`nearest_unpool`, :func:`bed_of_nails_unpool`, :func:`max_pool_with_indices` /
:func:`max_unpool` (SegNet), and transposed convolution (:func:`transposed_conv1d_by_hand`,
checked against PyTorch; :func:`transposed_conv2d`, the learned layer the networks use).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

def _check_spatial(x: torch.Tensor, who: str) -> None:
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"{who} expects a tensor whose last two dimensions are (H, W); "
                         f"got {getattr(x, 'shape', type(x).__name__)}")


def nearest_unpool(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour unpooling: copy every value into a ``factor`` x ``factor`` block.

    ``[[1, 2], [3, 4]]`` becomes ``[[1,1,2,2],[1,1,2,2],[3,3,4,4],[3,3,4,4]]``. No
    parameters; edges come out blocky.
    """
    _check_spatial(x, "nearest_unpool")
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def bed_of_nails_unpool(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """"Bed of nails" unpooling: each value goes to the top-left of its block, zeros elsewhere.

    ``[[1, 2], [3, 4]]`` becomes ``[[1,0,2,0],[0,0,0,0],[3,0,4,0],[0,0,0,0]]``. It is
    what a stride-``factor`` transposed convolution does *before* its kernel spreads the
    values out (see :func:`transposed_conv1d_by_hand`).
    """
    _check_spatial(x, "bed_of_nails_unpool")
    h, w = x.shape[-2:]
    out = x.new_zeros(*x.shape[:-2], h * factor, w * factor)
    out[..., ::factor, ::factor] = x
    return out


def max_pool_with_indices(x: torch.Tensor, kernel_size: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D max pooling that also returns *where* each maximum was (flat index per channel).

    A thin wrapper on ``F.max_pool2d(..., return_indices=True)``. The encoder keeps the
    indices so the decoder can later put each value back where it came from
    (:func:`max_unpool`) – the SegNet idea: the positions of the strongest responses are
    exactly the spatial detail pooling would otherwise forget.
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"max_pool_with_indices expects [C, H, W] or [B, C, H, W]; got {tuple(x.shape)}")
    return F.max_pool2d(x, kernel_size, return_indices=True)


def max_unpool(x: torch.Tensor, indices: torch.Tensor, kernel_size: int = 2,
               output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Max-unpooling: put each value back at the position its maximum came from, zeros elsewhere.

    Wraps ``F.max_unpool2d``. Pass ``output_size`` when the pooled input had an odd size
    (pooling floors it, so the original size cannot be inferred).
    """
    if x.shape != indices.shape:
        raise ValueError(f"max_unpool: values {tuple(x.shape)} and indices {tuple(indices.shape)} "
                         f"must have the same shape (use the indices from max_pool_with_indices)")
    return F.max_unpool2d(x, indices, kernel_size, output_size=output_size)


def transposed_conv1d_by_hand(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """1-D transposed convolution written out: each input scales the kernel, copies add up.

    For input ``x`` (length L) and kernel ``w`` (length K) the output has length
    ``(L - 1) * stride + K`` and ``out[i*stride : i*stride + K] += x[i] * w`` for every i.
    With stride 1 the copies overlap everywhere; with stride 2 they are placed every second
    position, so the layer *upsamples* – it is bed-of-nails unpooling followed by an
    ordinary convolution with the flipped kernel. Matches
    ``F.conv_transpose1d(x[None, None], w[None, None], stride=stride)``.
    """
    if x.dim() != 1 or w.dim() != 1:
        raise ValueError(f"transposed_conv1d_by_hand works on 1-D tensors (a signal and a kernel); "
                         f"got shapes {tuple(x.shape)} and {tuple(w.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    L, K = x.numel(), w.numel()
    out = torch.zeros((L - 1) * stride + K, dtype=torch.result_type(x, w))
    for i in range(L):
        out[i * stride: i * stride + K] += x[i] * w
    return out


def transposed_conv2d(in_channels: int, out_channels: int, factor: int = 2) -> torch.nn.ConvTranspose2d:
    """A learned ``factor``x upsampling layer (kernel = stride = ``factor``, no overlap).

    With kernel size equal to the stride the copies of the kernel tile the output without
    overlapping, which avoids the checkerboard artefacts of overlapping strided kernels.
    """
    return torch.nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)
