"""Where the bits go: per-pixel bit maps, and the share of bits spent inside objects.

The book's thesis is that a codec trained for a machine spends its bits on what the
machine needs. This module measures it. For one image, the codec's **bit map** is the
estimated cost of the main stream ŷ at each latent position, ``-log2 p(ŷ)`` summed over
channels (the rounded latents, as coded; each position covers a 16×16 block of pixels).
With the objects' masks, the **object bit share** is the fraction of those bits that fall
inside objects (each block weighted by how much of it the objects cover), next to the
**object area share**, the fraction of the image they cover. A codec indifferent to
content spends roughly in proportion to detail everywhere; an ICM codec should spend a
larger share inside the objects than the MSE codec at the same rate.

The bits are the likelihood estimate, which the real rANS bytes match to about 1 %
(:mod:`icmlib.codec.probability`); a per-position split of the real bytes does not exist, since
rANS interleaves every symbol into one state.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from icmlib.codec import STRIDE, pad, padding_for

#: pixels per latent position of the main stream (y is 1/16 of the image)
LATENT_STRIDE = 16
#: the key in a results file's ``extra`` of :func:`object_share_if_bits_followed_objects`
FOLLOWED_OBJECTS = "object_share_if_bits_followed_objects"


@torch.no_grad()
def bit_map(net, image: torch.Tensor) -> torch.Tensor:
    """Estimated main-stream bits per latent position of one [3, H, W] image:
    a ``ceil(H/16) × ceil(W/16)`` tensor (the positions covering the padding cut off)."""
    was_training = net.training
    net.eval()
    try:
        out = net(pad(image[None]))
    finally:
        net.train(was_training)
    bits = -torch.log2(out["likelihoods"]["y"][0].clamp_min(1e-9)).sum(0)
    h, w = image.shape[-2:]
    return bits[: -(-h // LATENT_STRIDE), : -(-w // LATENT_STRIDE)]


def object_mask(target: Mapping[str, Any], height: int, width: int) -> torch.Tensor:
    """The union of an image's instance masks, [H, W] float (zeros when it has none)."""
    masks = target.get("masks")
    if masks is None or len(masks) == 0:
        return torch.zeros(height, width)
    return (torch.as_tensor(masks).float().amax(0) > 0).float()


def block_coverage(mask: torch.Tensor) -> torch.Tensor:
    """The fraction of each 16×16 block of ``mask`` (padded like the image) that is object."""
    h, w = mask.shape
    ph, pw = padding_for(h, w, STRIDE)
    padded = F.pad(mask[None, None], (0, pw, 0, ph))
    cover = F.avg_pool2d(padded, LATENT_STRIDE)[0, 0]
    return cover[: -(-h // LATENT_STRIDE), : -(-w // LATENT_STRIDE)]


def object_bit_share(net, dataset, num_images: Optional[int] = None) -> Dict[str, float]:
    """Over the first ``num_images`` images of a COCO-format dataset (default: all):
    ``object_bit_share`` (bits inside objects / all main-stream bits) and
    ``object_area_share`` (the objects' share of the latent blocks)."""
    n = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    if n < 1:
        raise ValueError("object_bit_share needs at least one image")
    inside = total = covered = cells = 0.0
    for i in range(n):
        image, target = dataset[i]
        bits = bit_map(net, image)
        cover = block_coverage(object_mask(target, *image.shape[-2:]))
        inside += float((bits * cover).sum())
        total += float(bits.sum())
        covered += float(cover.sum())
        cells += cover.numel()
    return {"object_bit_share": inside / total if total > 0 else float("nan"),
            "object_area_share": covered / cells}


def object_share_if_bits_followed_objects(dataset, num_images: Optional[int] = None) -> float:
    """The object bit share of an imagined codec whose bits in each block are proportional
    to how much of the block is object (Σ coverage² / Σ coverage over the blocks).

    A yardstick for :func:`object_bit_share` on a given world: with 16×16 blocks, objects
    that are small or thin share most of their blocks with background, so no share near
    100 % is possible, and this is how far a codec could go by spending *only* on objects."""
    n = len(dataset) if num_images is None else min(int(num_images), len(dataset))
    if n < 1:
        raise ValueError("object_share_if_bits_followed_objects needs at least one image")
    squares = sums = 0.0
    for i in range(n):
        image, target = dataset[i]
        cover = block_coverage(object_mask(target, *image.shape[-2:]))
        squares += float((cover * cover).sum())
        sums += float(cover.sum())
    return squares / sums if sums > 0 else float("nan")


def plot_bit_maps(nets: Mapping[str, Any], dataset, indices: Sequence[int] = (0, 1, 2),
                  axes=None):
    """One row per image: the image with its objects outlined, then each codec's bit map
    (same colour scale per row), titled with its bits and object share."""
    import matplotlib.pyplot as plt

    names = list(nets)
    if axes is None:
        _, axes = plt.subplots(len(indices), 1 + len(names),
                               figsize=(3 * (1 + len(names)), 3 * len(indices)), squeeze=False)
    for row, index in zip(axes, indices):
        image, target = dataset[index]
        mask = object_mask(target, *image.shape[-2:]).numpy()
        row[0].imshow(image.permute(1, 2, 0).numpy())
        row[0].contour(mask, levels=[0.5], colors="yellow", linewidths=1)
        row[0].set_title(f"image {index}: objects outlined", fontsize=9)
        maps = {n: bit_map(nets[n], image).numpy() for n in names}
        vmax = max(float(m.max()) for m in maps.values()) or 1.0
        cover = block_coverage(torch.as_tensor(mask)).numpy()
        for ax, name in zip(row[1:], names):
            m = maps[name]
            share = float((m * cover).sum() / max(m.sum(), 1e-9))
            h, w = image.shape[-2:]
            ax.imshow(m, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest",
                      extent=(0, m.shape[1] * LATENT_STRIDE, m.shape[0] * LATENT_STRIDE, 0))
            ax.contour(mask, levels=[0.5], colors="cyan", linewidths=1)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(f"{name}\n{m.sum():.0f} bits, {share:.0%} inside objects", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    return axes


def share_ratio(icm_share: float, mse_share: float) -> float:
    """How many times the MSE codec's object bit share the ICM codec spends (nan if none)."""
    return float(icm_share / mse_share) if mse_share and np.isfinite(mse_share) else float("nan")
