"""The task networks: the machines the ICM codec is trained for, and how they are built.

The paper's codec serves two torchvision networks, kept **frozen** while the codec
trains: Faster R-CNN (object detection) and Mask R-CNN (instance segmentation). We add a
third, semantic segmentation with a small U-Net, so the segmentation chapters and the
codec meet.

On the ``gpu`` preset these are the COCO-pretrained ResNet-50-FPN models of torchvision,
loaded through its weights API -- exactly the paper's task networks. On ``ci``/``cpu`` they
are *small versions of the same classes* (``FasterRCNN``, ``MaskRCNN``): every part is
there -- backbone, feature pyramid (FPN), region proposal network (RPN), RoI heads, mask
head -- only narrower, with anchors sized for the synthetic world's objects, so they train
on two CPU cores in minutes (:mod:`icmlib.tasks.train`). :func:`build_task_network` builds
either; :func:`freeze_batchnorm` makes a trained network's batch norms fixed maps.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.presets import Preset, get_preset

#: The machine tasks a codec can be trained for.
TASKS = ("detection", "instance", "semantic")
#: The headline accuracy of each task (a key of :func:`~icmlib.tasks.evaluate.evaluate_task`'s result).
PRIMARY_METRIC = {"detection": "bbox_map", "instance": "segm_map", "semantic": "miou"}


class PretrainedWeightsUnavailable(RuntimeError):
    """The COCO-pretrained weights are neither in the torch hub cache nor downloadable."""


def _check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    return task


# ---------------------------------------------------------------------------------------
# The small networks (ci / cpu presets)
# ---------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    """A ResNet basic block: two 3x3 convolutions and a shortcut (1x1 when shapes change)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


class SmallBackboneFPN(nn.Module):
    """A narrow ResNet-like backbone with a feature pyramid: the small cousin of
    torchvision's ``resnet_fpn_backbone``.

    A stem of two stride-2 3x3 convolutions (like ResNet's 7x7 convolution + max pool,
    down to stride 4), then three stages of one basic block each, at strides 8, 16 and
    32 with ``2*width``, ``4*width`` and ``8*width`` channels (``finest_stride=4``: a
    one-convolution stem and stages at strides 4, 8, 16, for finer boxes at ~3x the cost). The FPN
    (``torchvision.ops.FeaturePyramidNetwork``) turns the three stages into maps ``"0"``,
    ``"1"``, ``"2"`` of ``fpn_channels`` channels each: a top-down path adds the coarse,
    semantically strong features to the finer ones, so small objects are found on the
    stride-8 map and large ones on the stride-32 map. ResNet-50-FPN does the same with
    four stages (strides 4-32, 3-6 bottleneck blocks each), 256 FPN channels and an extra
    max-pooled level. The synthetic world's smallest objects are ~10 px, so a stride-4
    level would cost more than it helps.
    """

    def __init__(self, width: int = 16, fpn_channels: int = 32, finest_stride: int = 8):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork

        if finest_stride not in (4, 8):
            raise ValueError(f"finest_stride must be 4 or 8, got {finest_stride}")
        w = width
        stem = [nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        if finest_stride == 8:
            stem += [nn.Conv2d(w, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        self.strides = (finest_stride, 2 * finest_stride, 4 * finest_stride)
        self.layer1 = _BasicBlock(w, 2 * w, 2)
        self.layer2 = _BasicBlock(2 * w, 4 * w, 2)
        self.layer3 = _BasicBlock(4 * w, 8 * w, 2)
        self.fpn = FeaturePyramidNetwork([2 * w, 4 * w, 8 * w], fpn_channels)
        self.out_channels = fpn_channels  # what torchvision's detectors read

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c1 = self.layer1(self.stem(x))
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return self.fpn(OrderedDict([("0", c1), ("1", c2), ("2", c3)]))


#: Anchor sides as fractions of the image side, two per pyramid level. The synthetic
#: world's objects span 12-45 % of the image side (boxes of ~8-58 px at 128 px), so the
#: anchors cover ~10-64 % at three aspect ratios.
_ANCHOR_FRACTIONS = ((0.1, 0.16), (0.22, 0.32), (0.45, 0.64))


def anchor_sizes(image_size: int):
    """Anchor sizes (pixels) per pyramid level for images of side ``image_size``."""
    return tuple(tuple(max(4, int(round(f * image_size))) for f in level)
                 for level in _ANCHOR_FRACTIONS)


def _small_detector(task: str, preset: Preset, num_classes: int) -> nn.Module:
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    size = preset.task_image_size
    backbone = SmallBackboneFPN(preset.task_backbone_width, preset.task_fpn_channels,
                                preset.task_finest_stride)
    c = backbone.out_channels
    sizes = anchor_sizes(size)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    names = ["0", "1", "2"]
    # RoIs are pooled from the level that suits their size (FPN paper, eq. 1): a box of
    # side canonical_scale goes to level canonical_level (stride 2**level). ResNet-50-FPN
    # uses 224 px -> stride 16 for 800-px images. Our images are tiny (the finest map is
    # 16x16 at 128 px), so every object smaller than the image pools from the finest map,
    # where boxes can be placed most precisely; the coarser levels still feed it through
    # the FPN's top-down path and serve the RPN's larger anchors.
    finest_level = int(math.log2(preset.task_finest_stride))
    pool_kw = dict(canonical_scale=max(size, 16), canonical_level=finest_level + 1)
    box_pool = MultiScaleRoIAlign(names, 7, 2, **pool_kw)
    rep = preset.task_representation_size
    common = dict(
        min_size=size, max_size=size,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=300, rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_train=150, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=preset.task_rpn_batch_size,
        box_roi_pool=box_pool, box_head=TwoMLPHead(c * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        box_batch_size_per_image=preset.task_roi_batch_size,
        box_detections_per_img=preset.task_detections_per_image,
    )
    if task == "detection":
        return FasterRCNN(backbone, **common)
    mask_pool = MultiScaleRoIAlign(names, 14, 2, **pool_kw)
    mask_head = MaskRCNNHeads(c, (c, c), 1)
    mask_predictor = MaskRCNNPredictor(c, c, num_classes)
    return MaskRCNN(backbone, mask_roi_pool=mask_pool, mask_head=mask_head,
                    mask_predictor=mask_predictor, **common)


def _semantic_network(preset: Preset, num_classes: int) -> nn.Module:
    from icmlib.segmentation import UNet

    return UNet(in_channels=3, num_classes=num_classes, width=preset.task_unet_width,
                depth=preset.task_unet_depth, skip=True)


# ---------------------------------------------------------------------------------------
# The pretrained networks (gpu preset)
# ---------------------------------------------------------------------------------------
def _pretrained_detector(task: str, preset: Preset) -> nn.Module:
    """torchvision's COCO-pretrained ResNet-50-FPN Faster / Mask R-CNN (the paper's)."""
    from torchvision.models import detection as tvd

    if task == "detection":
        builder, weights = tvd.fasterrcnn_resnet50_fpn, tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    else:
        builder, weights = tvd.maskrcnn_resnet50_fpn, tvd.MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    file = hub / os.path.basename(urlparse(weights.url).path)
    kwargs = dict(weights=weights, min_size=preset.task_image_size)
    if not file.exists():
        from icmlib.data import hub_checkpoint

        try:  # with a timeout of its own: socket's process-wide default is left alone
            hub_checkpoint(weights.url)
        except OSError as e:  # URLError, timeouts, DNS failures, a damaged download
            raise PretrainedWeightsUnavailable(
                f"the {task} task network of preset {preset.name!r} is torchvision's "
                f"COCO-pretrained {builder.__name__} ({weights}), and its weights could not "
                f"be downloaded ({type(e).__name__}: {e}).\n"
                f"Download {weights.url}\n"
                f"and put it at {file}\n"
                f"(torch's hub cache: $TORCH_HOME/hub/checkpoints, TORCH_HOME now "
                f"{os.environ.get('TORCH_HOME', '~/.cache/torch')}), or run on a machine "
                f"with internet access once. Offline, use the 'cpu' or 'ci' preset, whose "
                f"task networks are trained locally.") from None
    return builder(**kwargs)


def build_task_network(task: str, preset: Union[Preset, str, None] = None,
                       num_classes: Optional[int] = None) -> nn.Module:
    """A fresh task network for ``task`` on ``preset`` (see the module docstring).

    * ``detection``: torchvision ``FasterRCNN``; ``instance``: torchvision ``MaskRCNN``;
      ``semantic``: :class:`icmlib.segmentation.UNet`.
    * ``preset.task_pretrained`` (gpu): the COCO-pretrained ResNet-50-FPN detectors
      (downloaded into torch's hub cache; a clear :class:`PretrainedWeightsUnavailable`
      offline). Otherwise: untrained small networks, ``num_classes`` defaulting to the
      synthetic world's ``icmlib.data.NUM_CLASSES``.

    Labels are COCO category ids (background 0), so predictions go straight to COCO eval.
    """
    task = _check_task(task)
    preset = get_preset(preset)
    if num_classes is None:
        num_classes = _num_classes(preset)
    if task == "semantic":
        return _semantic_network(preset, num_classes)
    if preset.task_pretrained:
        return _pretrained_detector(task, preset)
    return _small_detector(task, preset, num_classes)


def _num_classes(preset: Preset) -> int:
    if preset.dataset == "coco":
        return 91  # COCO category ids go up to 90; torchvision's COCO models use 91 outputs
    from icmlib.data import NUM_CLASSES

    return NUM_CLASSES


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` in ``module`` by torchvision's ``FrozenBatchNorm2d``
    holding the same statistics and affine parameters (in place; returns ``module``).

    A frozen batch norm is a fixed per-channel affine map: it behaves the same in train
    and eval mode and has nothing to update. torchvision's pretrained detectors are built
    this way; we convert our small networks after training so they are frozen by
    construction.
    """
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            with torch.no_grad():
                if child.affine:
                    frozen.weight.copy_(child.weight)
                    frozen.bias.copy_(child.bias)
                if child.track_running_stats:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen.to(child.weight.device if child.affine else "cpu"))
        else:
            freeze_batchnorm(child)
    return module
