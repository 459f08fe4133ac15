"""The three loss terms of the ICM codec and their weighted sum (eq. 3 of Le et al. 2021).

    L_total = w_rate · L_rate + w_mse · L_mse + w_task · L_task

* ``L_rate`` — the estimated length of *both* bitstreams, in bits per pixel:
  ``-Σ log2 p(ŷ) - Σ log2 p(ẑ)`` divided by the number of pixels. During training the
  quantizer is additive uniform noise, so this is a differentiable upper-bound-like
  estimate of what the rANS coder will write; after ``update()`` the real bytes agree with
  it to about 1 %.
* ``L_mse`` — the mean squared error between the decoded and the original image.
  **Scaling convention:** images are in [0, 1], and ``mse_loss`` returns the MSE on the
  0–255 scale, ``255² · mean((x̂ - x)²)``. This is CompressAI's convention
  (``RateDistortionLoss``: ``L = bpp + λ · 255² · MSE``), so with ``w_rate = 1`` and
  ``w_mse = λ`` the MSE-only codec is trained exactly like CompressAI's models, and the
  λ values of the literature (0.0018 … 0.0483) keep their meaning.
  ``psnr_from_mse`` converts it back (PSNR = 10 log10(255² / L_mse)).
* ``L_task`` — the frozen task network's *own training loss* on the decoded images,
  e.g. for Faster R-CNN the sum of the RPN objectness/box losses and the ROI head's
  classification/box losses. The task network's weights are frozen; the gradient flows
  through it into x̂ and on into the codec (``icmlib.tasks.FrozenTask.losses``).

Every function returns tensors that keep their graph, so the trainer can weight and
backpropagate them, and ``loss_terms`` returns every term separately so the log can show
each one.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import torch

#: 8-bit peak value; ``mse_loss`` is measured on this scale (see the module docstring).
PIXEL_SCALE = 255.0

#: Names of the terms, in the order of eq. 3.
TERMS = ("rate", "mse", "task")


def rate_bpp(likelihoods: Mapping[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Estimated bits per pixel of all streams (ŷ *and* the side stream ẑ).

    ``likelihoods`` is the ``"likelihoods"`` dict of a CompressAI forward pass
    (``{"y": p(ŷ), "z": p(ẑ)}``); ``num_pixels`` is batch × height × width of the
    *original* images (padding costs bits too, but is charged to the real pixels, the way
    a real file would be).
    """
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    if not likelihoods:
        raise ValueError("likelihoods is empty: expected the codec's {'y': ..., 'z': ...}")
    bits = sum((-torch.log2(l.float())).sum() for l in likelihoods.values())
    return bits / num_pixels


def mse_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE on the 0–255 scale: ``255² · mean((x̂ - x)²)`` for images in [0, 1].

    Not clamped: clamping x̂ would stop the gradient for pixels outside [0, 1], and the
    MSE term is what pulls them back.
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} differ in shape")
    return PIXEL_SCALE ** 2 * torch.mean((x_hat.float() - x.float()) ** 2)


def psnr_from_mse(mse_255: float) -> float:
    """PSNR in dB from ``mse_loss``'s value (MSE on the 0–255 scale)."""
    if mse_255 <= 0:
        return float("inf")
    return 10.0 * math.log10(PIXEL_SCALE ** 2 / mse_255)


def task_loss(frozen_task, x_hat: torch.Tensor, targets: Sequence[dict]) -> Dict[str, torch.Tensor]:
    """The frozen task network's training losses on the decoded images.

    Returns ``{"task": sum, "task/<name>": each part}`` (e.g. ``task/loss_classifier``),
    so the log can show which part of the task network's loss the codec moves.
    x̂ is clamped to [0, 1] first: the task network sees what a real decoder outputs.
    """
    parts = frozen_task.losses(x_hat.clamp(0, 1), targets)
    if not parts:
        raise ValueError("the task network returned no losses; is it a FrozenTask?")
    out: Dict[str, torch.Tensor] = {f"task/{k}": v for k, v in parts.items()}
    out["task"] = sum(parts.values())
    return out


def feature_distortion(frozen_task, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """How far the task network's feature pyramid on x̂ is from that on x: the squared error
    of each level relative to the level's energy on x, averaged over the levels.

    Relative, so that no level's scale outweighs the others' and the weight ``φ``
    (``preset.icm_feature_weight``) means the same for any network. Unlike the task loss,
    which only speaks where an anchor or a proposal meets an object, it gives every
    position a gradient: the network's own measure of what in the image it reads.
    x̂ is clamped to [0, 1] first, as in :func:`task_loss`.
    """
    with torch.no_grad():
        reference = frozen_task.features(x)
    decoded = frozen_task.features(x_hat.clamp(0, 1))
    levels = [((d.float() - r.float()) ** 2).mean() / (r.float() ** 2).mean().clamp_min(1e-12)
              for d, r in zip(decoded, reference)]
    return torch.stack(levels).mean()


def loss_terms(output: Mapping, x: torch.Tensor, frozen_task=None,
               targets: Optional[Sequence[dict]] = None,
               feature_weight: float = 0.0) -> Dict[str, torch.Tensor]:
    """Every term of eq. 3 for one batch: ``{"rate", "mse", "task", "task/...": ...}``.

    ``output`` is the codec's forward output (``x_hat`` already cropped to ``x``).
    Without a task network (the MSE codec) ``task`` is a zero tensor, so every run logs
    the same columns. ``feature_weight`` φ > 0 adds ``φ · feature_distortion`` to the task
    term (logged unweighted as ``task/feature``), so every weighting strategy weighs it as
    part of what the machine needs.
    """
    n, _, h, w = x.shape
    terms = {"rate": rate_bpp(output["likelihoods"], n * h * w),
             "mse": mse_loss(output["x_hat"], x)}
    if frozen_task is not None:
        if targets is None:
            raise ValueError("a task loss needs the targets of the batch")
        terms.update(task_loss(frozen_task, output["x_hat"], targets))
        if feature_weight < 0:
            raise ValueError(f"feature_weight must be >= 0, got {feature_weight}")
        if feature_weight > 0:
            terms["task/feature"] = feature_distortion(frozen_task, output["x_hat"], x)
            terms["task"] = terms["task"] + feature_weight * terms["task/feature"]
    else:
        terms["task"] = torch.zeros((), device=x.device)
    return terms


def total_loss(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """``w_rate·L_rate + w_mse·L_mse + w_task·L_task``.

    A term whose weight is 0 is left out entirely (not multiplied by 0), so a NaN in an
    unused term cannot poison the sum and no gradient is computed through it.
    """
    missing = [k for k in TERMS if k not in weights]
    if missing:
        raise ValueError(f"weights lack {missing}; expected keys {TERMS}")
    total = None
    for k in TERMS:
        w = float(weights[k])
        if w == 0.0:
            continue
        part = w * terms[k]
        total = part if total is None else total + part
    if total is None:
        raise ValueError("every loss weight is 0: nothing to train")
    return total
