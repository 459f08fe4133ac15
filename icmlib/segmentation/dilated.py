"""Dilated (atrous) convolutions: DeepLab's way to see far without losing resolution.

A U-Net pools ``depth`` times to see whole objects, then needs skip connections to bring
the lost detail back. DeepLab (Chen et al., 2017/2018) keeps the resolution instead: its
last encoder stages do not pool, and their 3x3 convolutions are *dilated* -- the kernel's
taps are spread ``d`` pixels apart, so one layer covers ``2d + 1`` pixels with the same
nine weights. An *atrous spatial pyramid pooling* block (:class:`ASPP`) then looks at the
features through several dilation rates at once, plus the whole image's average, and the
logits are upsampled bilinearly (DeepLabv3). No skip connections.

* :func:`dilated_block` -- two dilated 3x3 convolutions with batch norm and ReLU;
* :class:`ASPP` -- parallel branches at several rates, concatenated and mixed by a 1x1;
* :class:`DeepLab` -- the encoder of :class:`~icmlib.segmentation.models.UNet` with its
  last poolings replaced by dilation, the ASPP, a 1x1 classifier, bilinear upsampling.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.segmentation.models import _check_image_batch, _HasEncoder, _pad_to_multiple, conv_block


def dilated_block(in_channels: int, out_channels: int, dilation: int) -> nn.Sequential:
    """Two 3x3 convolutions dilated by ``dilation`` (padding keeps the size), BN and ReLU.

    With dilation ``d`` the nine taps sit ``d`` pixels apart: each layer widens the
    receptive field by ``2d`` pixels instead of 2, at the same cost and the same resolution.
    """
    def conv(c_in: int) -> List[nn.Module]:
        return [nn.Conv2d(c_in, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]

    return nn.Sequential(*conv(in_channels), *conv(out_channels))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (DeepLabv3): one input seen at several scales at once.

    Branches: a 1x1 convolution, one 3x3 convolution per dilation rate in ``rates``, and
    *image pooling* (the global average, through a 1x1, broadcast back over the map: the
    context of the whole image). Their outputs are concatenated and mixed by a 1x1
    convolution. DeepLabv3 uses rates 6, 12, 18 on a 1/16 feature map of 513-pixel images;
    our maps are a few dozen pixels wide, so the rates are smaller.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: Sequence[int] = (2, 4, 6)):
        super().__init__()

        def bn_relu(conv: nn.Module) -> nn.Sequential:
            return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))

        self.rates = tuple(rates)
        self.branches = nn.ModuleList(
            [bn_relu(nn.Conv2d(in_channels, out_channels, 1, bias=False))]
            + [bn_relu(nn.Conv2d(in_channels, out_channels, 3, padding=r, dilation=r, bias=False))
               for r in self.rates])
        # no batch norm after the global average: a batch of one image would have no spread
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1),
                                        nn.ReLU(inplace=True))
        self.project = bn_relu(nn.Conv2d((len(self.rates) + 2) * out_channels, out_channels, 1,
                                         bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(self.image_pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLab(_HasEncoder, nn.Module):
    """A small DeepLabv3: dilated encoder, ASPP, 1x1 classifier, bilinear upsampling.

    The encoder is the U-Net's (a stem block, then stages that double the channels), but
    only the first ``depth - dilated_stages`` stages pool; the last ``dilated_stages``
    stages use dilated blocks (dilation 2, 4, ...) at that resolution instead. The
    *output stride* -- input size over feature-map size -- is ``2 ** (depth -
    dilated_stages)``: 4 instead of the U-Net bottleneck's 8 for ``depth=3``. The decoder
    is one bilinear interpolation of the logits; the detail a U-Net brings back through
    skips, DeepLab never threw away (it keeps a finer map, and pays for it in memory).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16,
                 depth: int = 3, dilated_stages: int = 1, rates: Sequence[int] = (2, 4, 6)):
        super().__init__()
        if not 1 <= dilated_stages <= depth:
            raise ValueError(f"dilated_stages must be between 1 and depth={depth}; got {dilated_stages}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.width, self.depth, self.dilated_stages = width, depth, dilated_stages
        self.output_stride = 2 ** (depth - dilated_stages)
        stages: List[nn.Module] = [conv_block(in_channels, width)]
        c = width
        for i in range(depth):
            if i < depth - dilated_stages:
                stages.append(nn.Sequential(nn.MaxPool2d(2), conv_block(c, 2 * c)))
            else:
                stages.append(dilated_block(c, 2 * c, dilation=2 ** (i - (depth - dilated_stages) + 1)))
            c *= 2
        self.encoder_stages = nn.ModuleList(stages)
        self.aspp = ASPP(c, 4 * width, rates)
        self.head = nn.Conv2d(4 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.in_channels, "DeepLab")
        x, (h, w) = _pad_to_multiple(x, self.output_stride)
        size = x.shape[-2:]
        for stage in self.encoder_stages:
            x = stage(x)
        logits = self.head(self.aspp(x))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[..., :h, :w]
