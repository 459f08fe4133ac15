"""How much could a codec save by not coding the background? An oracle that knows the objects.

An ICM codec saves bits against the MSE baseline by spending less where the task network
does not look. On a given world the most obvious such place is the background, and how
much it costs the baseline bounds what dropping it can save. This module builds the
oracle's input: the image with everything outside its objects (the ground-truth masks,
widened by ``margin`` pixels so that edges stay whole) replaced by something cheap to code:

* ``"flat"`` — the background's mean colour: nothing of it is left to code;
* ``"blur"`` — the image blurred (Gaussian, ``sigma`` pixels): the coarse context stays,
  its detail goes.

Coding these with the MSE baseline and scoring the frozen task network on the result
(against the same ground truth) gives the rate–accuracy curve of a codec that drops the
background perfectly and keeps the objects as the baseline codes them
(``benchmarks/background_oracle_study.py``). An ICM codec can do better than that only by
also spending less inside the objects.

:func:`flat_shapes` goes one step further: every object painted its own mean colour on
the flat background, the shapes and colours left and every other detail (shading, noise,
texture) gone. A codec that knew the task needs only the shapes would code this.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from icmlib.evaluation.bitmaps import object_mask

#: the ways the oracle can replace the background
FILLS = ("flat", "blur")

__all__ = ["FILLS", "flat_shapes", "kept_region", "oracle_savings", "plot_oracle_curves",
           "study_rows", "without_background"]

#: in a study's rows: the real images' input, the baseline every saving is measured against
ORIGINAL, BASELINE = "none", "MSE baseline"


def kept_region(target: Mapping[str, Any], height: int, width: int, margin: int = 2) -> torch.Tensor:
    """The objects' union widened by ``margin`` pixels, [H, W] bool."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    mask = object_mask(target, height, width)
    if margin:
        mask = F.max_pool2d(mask[None, None], 2 * margin + 1, stride=1, padding=margin)[0, 0]
    return mask > 0


def without_background(image: torch.Tensor, target: Mapping[str, Any], fill: str = "flat", *,
                       margin: int = 2, sigma: float = 4.0) -> torch.Tensor:
    """``image`` ([3, H, W] in [0, 1]) with its background replaced by ``fill`` (see the
    module docstring); the pixels within ``margin`` of an object are kept as they are.
    An image with no objects becomes all background."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}; choose one of {FILLS}")
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one [3, H, W] image, got shape {tuple(image.shape)}")
    keep = kept_region(target, *image.shape[-2:], margin=margin)
    if fill == "flat":
        background = ~keep
        colour = (image[:, background].mean(1) if background.any()
                  else image.flatten(1).mean(1))
        filled = colour[:, None, None].expand_as(image)
    else:
        size = 2 * int(round(3 * sigma)) + 1
        filled = gaussian_blur(image[None], [size, size], [sigma, sigma])[0]
    return torch.where(keep, image, filled)


def flat_shapes(image: torch.Tensor, target: Mapping[str, Any]) -> torch.Tensor:
    """``image`` with its background flat (its mean colour) and every object's visible mask
    painted the object's mean colour: nothing is left but the shapes and their colours."""
    out = without_background(image, target, "flat", margin=0)
    masks = target.get("masks")
    for mask in ([] if masks is None else torch.as_tensor(masks) > 0):
        if mask.any():
            out[:, mask] = image[:, mask].mean(1, keepdim=True)
    return out


def study_rows(rows):
    """The rows of an oracle study: ``rows`` itself, or read from the study's JSON file
    (``data/results/cpu/background_oracle_<task>.json``): one dict per measured point,
    ``codec``, ``input`` (``"none"`` or an oracle), ``bpp`` and ``map``; the codec
    ``"uncompressed"`` has the uncoded inputs' accuracies."""
    if isinstance(rows, (str, Path)):
        import json
        rows = json.loads(Path(rows).read_text())["rows"]
    return list(rows)


def _curve(rows, codec, fill):
    return [(r["bpp"], r["map"]) for r in rows if (r["codec"], r["input"]) == (codec, fill)]


def oracle_savings(rows, levels: int = 201, *, baseline: str = BASELINE,
                   leave_out: Sequence[str] = ()):
    """Per codec and input of an oracle study: its BD-rate (percent) against the MSE baseline
    on the real images over the lower half, the upper half and the whole of one accuracy
    range, the one every curve of the study covers, so that the rows compare
    (:func:`~icmlib.evaluation.bdrate.bd_rate_halves`). A list of dicts, each with that
    ``range``; ``lower``/``upper``/``whole`` are ``None`` (and ``note`` says why) where
    the curves have no range in common. ``baseline`` names the codec to compare against
    (a study may measure two); the codecs in ``leave_out`` take no part, in the range
    either."""
    import numpy as np

    from icmlib.evaluation.bdrate import bd_rate_halves, frontier, rate_difference_at

    rows = study_rows(rows)
    pairs = [p for p in dict.fromkeys((r["codec"], r["input"]) for r in rows)
             if p[0] != "uncompressed" and p[0] not in leave_out]
    fronts = {p: frontier(_curve(rows, *p)) for p in pairs}
    lo = max(f[0][1] for f in fronts.values())   # a frontier rises: first point lowest
    hi = min(f[-1][1] for f in fronts.values())
    anchor = fronts[(baseline, ORIGINAL)]
    out = []
    for pair in pairs:
        if pair == (baseline, ORIGINAL):
            continue
        row = {"codec": pair[0], "input": pair[1], "range": (lo, hi), "lower": None,
               "upper": None, "whole": None, "note": ""}
        if hi > lo:
            row["lower"], row["upper"], row["whole"] = bd_rate_halves(rate_difference_at(
                anchor, fronts[pair], np.linspace(lo, hi, levels), quality_name="mAP"))
        else:
            row["note"] = "the curves have no accuracy range in common"
        out.append(row)
    return out


def plot_oracle_curves(rows, ax=None, metric_label: str = "box mAP@[.5:.95]"):
    """Rate–accuracy curves of an oracle study (:func:`study_rows`): one line per codec and
    input through its frontier (the points no other point of it beats in both bits and
    accuracy), every point marked, the uncompressed images' accuracy, and shaded, the
    accuracy range :func:`oracle_savings` measures over."""
    import matplotlib.pyplot as plt

    from icmlib.evaluation.bdrate import frontier

    rows = study_rows(rows)
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.8))
    reference = {r["input"]: r["map"] for r in rows if r["codec"] == "uncompressed"}
    pairs = dict.fromkeys((r["codec"], r["input"]) for r in rows if r["codec"] != "uncompressed")
    for codec, fill in pairs:
        points = _curve(rows, codec, fill)
        line = frontier(points)
        oracle = fill != ORIGINAL
        label = f"{codec}, {fill} input" if oracle else codec
        drawn = ax.plot(*zip(*line), marker="o" if codec.startswith("MSE") else "s",
                        linestyle="--" if oracle else "-", markersize=4, label=label)[0]
        ax.plot(*zip(*points), linestyle="none", marker=".", color=drawn.get_color())
    if ORIGINAL in reference:
        ax.axhline(reference[ORIGINAL], color="black", linestyle=":", linewidth=1.2,
                   label=f"uncompressed ({reference[ORIGINAL]:.3f})")
    savings = oracle_savings(rows, levels=3)
    if savings and savings[0]["whole"] is not None:
        ax.axhspan(*savings[0]["range"], color="grey", alpha=0.1,
                   label="the range the savings cover")
    ax.set_xscale("log")
    rates = [r["bpp"] for r in rows if r["bpp"]]
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
             if min(rates) / 1.5 <= t <= max(rates) * 1.5]  # plain numbers, not 4×10⁻²
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.set_xlabel("bits per pixel (real bytes, log scale)")
    ax.set_ylabel(metric_label)
    ax.set_title("What dropping the background saves: oracle inputs against the ICM codecs",
                 fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax
