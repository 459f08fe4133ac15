"""Looking inside a task network, for the book: its parts, the gradient a codec receives, detections.

:func:`network_parts` lists what a Faster/Mask R-CNN (or U-Net) is made of,
:func:`input_gradient` shows where changing a pixel changes the task loss, and
:func:`confident` keeps the detections worth drawing.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import torch
import torch.nn as nn

from icmlib.tasks.frozen import FrozenTask

_PART_ROLES = [
    ("backbone.body", "backbone: convolutional features at strides 4-32"),
    ("backbone.stem", "backbone stem: two stride-2 convolutions"),
    ("backbone.layer1", "backbone stage, stride 8"),
    ("backbone.layer2", "backbone stage, stride 16"),
    ("backbone.layer3", "backbone stage, stride 32"),
    ("backbone.fpn", "feature pyramid: top-down path + lateral 1x1 convolutions"),
    ("rpn", "region proposal network: objectness + box offsets for every anchor"),
    ("roi_heads.box_head", "box head: RoI-aligned features -> two fully connected layers"),
    ("roi_heads.box_predictor", "box predictor: class scores + per-class box refinement"),
    ("roi_heads.mask_head", "mask head: four (ours: two) 3x3 convolutions on 14x14 RoIs"),
    ("roi_heads.mask_predictor", "mask predictor: upsample to 28x28, one mask per class"),
    ("encoder_stages", "U-Net encoder: conv blocks, each after a 2x2 max pool"),
    ("ups", "U-Net decoder: transposed convolutions (x2 upsampling)"),
    ("decoder_blocks", "U-Net decoder: conv blocks on [upsampled, skip] features"),
    ("head", "U-Net head: 1x1 convolution to class scores"),
]


def network_parts(model: nn.Module) -> List[Dict[str, Any]]:
    """The named parts of a task network with their role and parameter count -- what a
    Faster/Mask R-CNN (or U-Net) is made of. Each row: ``part``, ``type``, ``parameters``,
    ``role``."""
    if isinstance(model, FrozenTask):
        model = model.model
    modules = dict(model.named_modules())
    rows = []
    for name, role in _PART_ROLES:
        m = modules.get(name)
        if m is None:
            continue
        rows.append({"part": name, "type": type(m).__name__,
                     "parameters": sum(p.numel() for p in m.parameters()), "role": role})
    return rows


def input_gradient(frozen: FrozenTask, images: torch.Tensor,
                   targets: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """d L_task / d image for a batch ``[B, 3, H, W]``: the signal a codec trained for
    this task receives (through its decoder) -- where changing a pixel changes the task
    loss. The images are not modified."""
    x = images.detach().clone().requires_grad_(True)
    frozen.loss(x, targets).backward()
    return x.grad.detach()


def confident(prediction: Mapping[str, torch.Tensor], threshold: float = 0.5
              ) -> Dict[str, torch.Tensor]:
    """A detector's prediction keeping only detections with ``score >= threshold`` (what
    one draws; mAP itself uses every detection, ranked by score)."""
    keep = prediction["scores"] >= threshold
    return {k: (v[keep] if torch.is_tensor(v) and len(v) == len(keep) else v)
            for k, v in prediction.items()}
