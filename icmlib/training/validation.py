"""Validating a codec during training: real bytes, the likelihood estimate, PSNR, the task.

Validation codes the images for real (``net.update()`` first builds the rANS tables),
so the bpp it reports is the one a reader would get from ``icm encode``; the likelihood
estimate is logged beside it, and the two must agree. For an ICM codec the decoded images
also go through the task network: its score is what the weighting strategies trade bits for.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from icmlib.codec import losses
from icmlib.codec import ICMCodec, decode_image, encode_image, quantized_image, run_codec

__all__ = ["validate_codec"]


@torch.no_grad()
def validate_codec(net: ICMCodec, dataset, num_images: int, frozen_task=None,
                   task: Optional[str] = None, device="cpu", images=None) -> Dict[str, float]:
    """Code ``num_images`` val images for real and measure them.

    Returns ``bpp`` (from the real rANS bytes of both streams), ``bpp_estimate`` (the
    likelihood estimate of the rounded latents, for comparison), ``psnr`` (of the
    decoded image rounded to 8 bits) and, with a task, ``task_<metric>`` from
    ``icmlib.tasks.evaluate_task`` on the decoded images (``task_score`` is the task's
    headline number: bbox mAP, segm mAP or mIoU). The caller must have run
    ``net.update()``.

    ``images`` (optional, one [3, H, W] tensor per dataset entry, in its order) are coded
    instead of the dataset's own: the task is still scored against the dataset's ground
    truth, and PSNR is measured against them (e.g. :mod:`icmlib.evaluation.oracle`).
    """
    from icmlib.metrics import psnr

    was_training = net.training
    net.eval()
    n = min(int(num_images), len(dataset))
    if images is not None and len(images) < n:
        raise ValueError(f"got {len(images)} images for {n} dataset entries")
    bits = est_bits = pixels = 0.0
    psnrs, decoded = [], []
    for i in range(n):
        x = (dataset[i][0] if images is None else images[i]).to(device)[None]
        h, w = x.shape[-2:]
        enc = encode_image(net, x)
        bits += 8 * sum(len(s) for s in enc["strings"])
        x_hat = quantized_image(decode_image(net, enc["strings"], enc["shape"], enc["size"]))
        est_bits += float(losses.rate_bpp(run_codec(net, x)["likelihoods"], h * w)) * h * w
        pixels += h * w
        psnrs.append(psnr(x_hat, x))
        decoded.append(x_hat[0].cpu())
    out = {"bpp": bits / pixels, "bpp_estimate": est_bits / pixels,
           "psnr": float(np.mean(psnrs))}
    if frozen_task is not None:
        from icmlib.tasks import evaluate_task

        metrics = evaluate_task(frozen_task, task, dataset, images=decoded, max_images=n)
        out.update({f"task_{k}": float(v) for k, v in metrics.items()})
    net.train(was_training)
    return out
