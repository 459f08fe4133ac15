"""Machine tasks: the frozen networks the ICM codec is trained for.

The paper's codec serves two torchvision networks, kept **frozen** while the codec
trains: Faster R-CNN (object detection) and Mask R-CNN (instance segmentation). We add a
third, semantic segmentation with a small U-Net, so the segmentation chapters and the
codec meet.

Three ideas live here:

1. **The networks** (:func:`build_task_network`). On the ``gpu`` preset these are the
   COCO-pretrained ResNet-50-FPN models of torchvision, loaded through its weights API
   -- exactly the paper's task networks. On ``ci``/``cpu`` they are *small versions of
   the same classes* (``FasterRCNN``, ``MaskRCNN``): every part is there -- backbone,
   feature pyramid (FPN), region proposal network (RPN), RoI heads, mask head -- only
   narrower, with anchors sized for the synthetic world's objects, so they train on
   two CPU cores in minutes (:func:`train_task`, cached by :func:`task_network`).

2. **The frozen-task wrapper** (:class:`FrozenTask`). The codec's task loss is the task
   network's *own training loss* on the decoded image: for Faster R-CNN the RPN's
   objectness and box-regression losses plus the RoI head's classification and
   box-regression losses (Mask R-CNN adds its mask loss; the U-Net uses cross-entropy).
   Torchvision detectors only compute losses in ``train()`` mode, so the wrapper puts
   the network in train mode for the loss while keeping every normalisation layer in
   eval mode (frozen statistics) and every parameter's ``requires_grad`` off. The
   weights therefore never change, yet the loss is differentiable with respect to the
   input image, and that gradient is what teaches the codec.

3. **Evaluation** (:func:`evaluate_task`): COCO mAP (boxes, and masks for Mask R-CNN)
   with the official pycocotools code, mIoU for semantic segmentation -- on the dataset's
   own images or on decoded ones.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union
from urllib.parse import urlparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.cache import checkpoint_path, train_or_load
from icmlib.presets import Preset, get_preset

__all__ = [
    "TASKS", "PRIMARY_METRIC", "TASKS_VERSION", "PretrainedWeightsUnavailable",
    "SmallBackboneFPN", "build_task_network", "anchor_sizes", "freeze_batchnorm",
    "task_config", "train_task", "task_network", "FrozenTask", "evaluate_task",
    "task_loss_names", "network_parts", "input_gradient", "confident",
]

#: The machine tasks a codec can be trained for.
TASKS = ("detection", "instance", "semantic")
#: The headline accuracy of each task (a key of :func:`evaluate_task`'s result).
PRIMARY_METRIC = {"detection": "bbox_map", "instance": "segm_map", "semantic": "miou"}
#: Bump when the networks or their training change, so cached task networks retrain.
TASKS_VERSION = "2"


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
    from icmlib.segmentation.layers import UNet

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
      ``semantic``: :class:`icmlib.segmentation.layers.UNet`.
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


# ---------------------------------------------------------------------------------------
# The frozen-task wrapper
# ---------------------------------------------------------------------------------------
_NORM_AND_DROPOUT = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                     nn.modules.dropout._DropoutNd, nn.Dropout, nn.AlphaDropout)


def task_loss_names(task: str) -> List[str]:
    """The names of the losses :meth:`FrozenTask.losses` returns for ``task``."""
    task = _check_task(task)
    if task == "semantic":
        return ["loss_ce"]
    names = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]
    return names + (["loss_mask"] if task == "instance" else [])


class FrozenTask(nn.Module):
    """A task network that never changes, through which gradients reach the image.

    * every parameter has ``requires_grad = False`` (an optimiser never sees them, and
      no gradient is accumulated into them);
    * normalisation layers stay in eval mode (running statistics neither used from the
      batch nor updated) and dropout is off, whatever mode the wrapper is put in;
    * :meth:`losses` returns the network's own training losses for decoded images
      ``[B, 3, H, W]`` in [0, 1] and their targets -- differentiable w.r.t. the images;
    * :meth:`predict` runs inference (eval mode, no gradient).

    ``wrapper.train()`` / ``.eval()`` only set the wrapper's flag: the inner network's
    modes are managed per call, so a training loop that calls ``model.train()`` on a
    container holding the codec and the task cannot unfreeze anything.
    """

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.task = _check_task(task)
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "FrozenTask":
        self.training = mode  # the inner network's mode is set per call, never here
        return self

    @contextlib.contextmanager
    def _loss_mode(self):
        """Train mode (so torchvision computes losses) with frozen norms and no dropout."""
        self.model.train()
        for m in self.model.modules():
            if isinstance(m, _NORM_AND_DROPOUT):
                m.eval()
        try:
            yield
        finally:
            self.model.eval()

    @staticmethod
    def _as_batch(images) -> List[torch.Tensor]:
        if torch.is_tensor(images):
            if images.dim() == 3:
                images = images[None]
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"expected images [B, 3, H, W] in [0, 1], got "
                                 f"{tuple(images.shape)}")
            return list(images.unbind(0))
        images = list(images)
        for im in images:
            if not torch.is_tensor(im) or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError("expected a list of [3, H, W] image tensors in [0, 1]")
        return images

    def _device(self) -> torch.device:
        for t in list(self.model.parameters()) + list(self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def losses(self, images, targets: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
        """The task network's training losses (a dict of scalar tensors) on ``images``.

        ``targets`` are the dataset's target dicts (``boxes``, ``labels``, ``masks`` for
        instance segmentation, ``semantic`` for semantic segmentation), one per image.
        """
        imgs = self._as_batch(images)
        if len(imgs) != len(targets):
            raise ValueError(f"{len(imgs)} images but {len(targets)} targets")
        device = imgs[0].device
        if self.task == "semantic":
            x = torch.stack(imgs)
            sem = torch.stack([torch.as_tensor(t["semantic"]) for t in targets]).to(device).long()
            if sem.shape[-2:] != x.shape[-2:]:
                raise ValueError(f"semantic targets are {tuple(sem.shape[-2:])} but the "
                                 f"images are {tuple(x.shape[-2:])}")
            with self._loss_mode():
                logits = self.model(x)
            return {"loss_ce": F.cross_entropy(logits, sem)}
        keys = ("boxes", "labels", "masks") if self.task == "instance" else ("boxes", "labels")
        tv_targets = []
        for t in targets:
            missing = [k for k in keys if k not in t]
            if missing:
                raise ValueError(f"the {self.task} loss needs targets with {list(keys)}; "
                                 f"missing {missing}")
            tv_targets.append({k: torch.as_tensor(t[k]).to(device) for k in keys})
        with self._loss_mode():
            return dict(self.model(imgs, tv_targets))

    def loss(self, images, targets) -> torch.Tensor:
        """The sum of :meth:`losses`: the task term ``L_task`` of the ICM training loss."""
        return sum(self.losses(images, targets).values())

    @torch.no_grad()
    def predict(self, images) -> List[Dict[str, torch.Tensor]]:
        """Predictions for ``images``: torchvision's dicts (``boxes``, ``labels``,
        ``scores``, and ``masks`` [N, 1, H, W] for Mask R-CNN), or ``{"semantic": [H, W]
        class ids, "probs": [C, H, W]}`` for semantic segmentation."""
        imgs = self._as_batch(images)
        self.model.eval()
        if self.task == "semantic":
            outs = []
            sizes = {tuple(im.shape) for im in imgs}
            groups = [torch.stack(imgs)] if len(sizes) == 1 else [im[None] for im in imgs]
            for x in groups:
                probs = self.model(x).softmax(1)
                outs += [{"semantic": p.argmax(0), "probs": p} for p in probs]
            return outs
        return list(self.model(imgs))

    def forward(self, images, targets=None):
        """``losses`` when targets are given, else ``predict``."""
        return self.losses(images, targets) if targets is not None else self.predict(images)


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def _keeps_training_flags(model: nn.Module):
    """Wrapping a network in ``FrozenTask`` switches ``requires_grad`` off and eval mode on:
    give the caller's network its own flags back, however the block ends."""
    if isinstance(model, FrozenTask):
        yield
        return
    flags = [p.requires_grad for p in model.parameters()]
    was_training = model.training
    try:
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
        model.train(was_training)


def evaluate_task(model: nn.Module, task: str, dataset, images=None, *,
                  batch_size: int = 8, max_images: Optional[int] = None,
                  progress: bool = False) -> Dict[str, float]:
    """Accuracy of ``model`` on ``dataset`` (a :class:`icmlib.data.CocoDataset`).

    ``images`` (optional) replaces the dataset's images -- a list of [3, H, W] tensors or
    a [N, 3, H, W] tensor aligned with the dataset's order -- so the same ground truth
    scores decoded images. Returns, for detection, ``bbox_map``, ``bbox_map50``, ...
    (the twelve COCO numbers, prefixed); for instance segmentation the same plus
    ``segm_*``; for semantic segmentation ``miou``, ``pixel_accuracy`` and
    ``mean_pixel_accuracy``. ``"score"`` repeats the task's headline number
    (:data:`PRIMARY_METRIC`).
    """
    task = _check_task(task)
    with _keeps_training_flags(model):
        return _evaluate_task(model, task, dataset, images, batch_size, max_images, progress)


def _evaluate_task(model, task, dataset, images, batch_size, max_images, progress):
    from icmlib.metrics import coco_map, predictions_to_coco

    frozen = model if isinstance(model, FrozenTask) else FrozenTask(model, task)
    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if images is not None and len(images) < n:
        raise ValueError(f"got {len(images)} images for {n} dataset entries; pass one "
                         f"image per dataset entry, in the dataset's order")
    device = frozen._device()
    image_ids, outputs, confusion = [], [], None

    indices = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        indices = tqdm(indices, desc=f"evaluate {task}", unit="batch")
    num_classes = getattr(dataset, "num_classes", None)
    for start in indices:
        batch = [dataset[i] for i in range(start, min(start + batch_size, n))]
        imgs = [im for im, _ in batch] if images is None else \
            [images[i] for i in range(start, min(start + batch_size, n))]
        imgs = [im.detach().to(device).float() for im in imgs]
        for im, (orig, _) in zip(imgs, batch):
            if im.shape != orig.shape:
                raise ValueError(f"a replacement image is {tuple(im.shape)} but the dataset's "
                                 f"is {tuple(orig.shape)}: crop decoded images to the "
                                 f"original size")
        preds = frozen.predict(imgs)
        if task == "semantic":
            from icmlib.segmentation.layers import confusion_matrix

            k = int(getattr(frozen.model, "num_classes", num_classes or 0))
            for p, (_, t) in zip(preds, batch):
                cm = confusion_matrix(p["semantic"].cpu(), t["semantic"], k)
                confusion = cm if confusion is None else confusion + cm
        else:
            outputs += [{k: v.cpu() for k, v in p.items()} for p in preds]
            image_ids += [t["image_id"] for _, t in batch]
    if task == "semantic":
        cm = confusion.double()
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = tp[union > 0] / union[union > 0]
        support = cm.sum(1)
        result = {"miou": float(iou.mean()), "pixel_accuracy": float(tp.sum() / cm.sum()),
                  "mean_pixel_accuracy": float((tp[support > 0] / support[support > 0]).mean())}
    else:
        result = {}
        results = predictions_to_coco(outputs, image_ids)
        for iou_type in (("bbox", "segm") if task == "instance" else ("bbox",)):
            stats = coco_map(dataset.coco, results, iou_type=iou_type, image_ids=image_ids)
            result.update({f"{iou_type}_{k}": v for k, v in stats.items()})
    result["score"] = result[PRIMARY_METRIC[task]]
    return result


# ---------------------------------------------------------------------------------------
# Training the small networks, and train-or-load
# ---------------------------------------------------------------------------------------
_TASK_FIELDS = ("task_backbone_width", "task_fpn_channels", "task_finest_stride",
                "task_image_size",
                "task_representation_size", "task_rpn_batch_size", "task_roi_batch_size",
                "task_detections_per_image", "task_batch_size", "task_lr",
                "task_weight_decay", "task_warmup_steps", "task_train_images")


def _steps_for(task: str, preset: Preset) -> int:
    if task == "semantic":
        return preset.task_semantic_steps
    if task == "instance" and preset.task_instance_init:
        return preset.task_instance_steps
    return preset.task_steps


def _instance_init(preset: Preset) -> str:
    init = preset.task_instance_init
    if init not in ("", "detection"):
        raise ValueError(f"task_instance_init must be 'detection' or '' (from scratch), "
                         f"got {init!r}")
    return init


def task_config(task: str, preset: Union[Preset, str, None] = None,
                steps: Optional[int] = None, seed: int = 0) -> Dict[str, Any]:
    """Everything that determines a trained task network: its train-or-load key."""
    from icmlib.data import world_config

    task = _check_task(task)
    preset = get_preset(preset)
    cfg: Dict[str, Any] = {"task": task, "version": TASKS_VERSION, "seed": int(seed),
                           "steps": int(_steps_for(task, preset) if steps is None else steps),
                           "dataset": preset.dataset,
                           "num_classes": _num_classes(preset)}
    cfg.update({f: getattr(preset, f) for f in _TASK_FIELDS})
    if preset.num_workers:
        # DataLoader workers draw other flips than the main process: other weights. Only
        # in the key when not 0, so the networks trained before this line keep their keys.
        cfg["num_workers"] = int(preset.num_workers)
    if task == "semantic":
        cfg.update(unet_width=preset.task_unet_width, unet_depth=preset.task_unet_depth)
    else:
        cfg["anchor_sizes"] = anchor_sizes(preset.task_image_size)
    if task == "instance" and _instance_init(preset):
        # the starting point is part of what determines the result
        cfg["init"] = task_config("detection", preset, seed=seed)
    if preset.dataset == "synthetic":
        cfg["world_train"] = world_config(_train_world_preset(preset), "train")
        cfg["world_val"] = world_config(preset, "val")
    return cfg


def _train_world_preset(preset: Preset) -> Preset:
    """The preset whose synthetic training world the task networks learn from.

    Task networks may see more training images than the codec (``task_train_images``):
    image ``i`` of the world does not depend on the world's size, so this is the same
    world, extended.
    """
    if preset.task_train_images and preset.task_train_images != preset.train_images:
        return preset.replace(train_images=preset.task_train_images)
    return preset


def _train_dataset(preset: Preset):
    from icmlib.data import CocoDataset, dataset_for

    ds = dataset_for(_train_world_preset(preset), "train", train=True)
    # whole images with random flips: the detector sees the scale it will be tested at
    return CocoDataset(ds.image_dir, ds.ann_file, crop_size=None if preset.dataset ==
                       "synthetic" else preset.crop_size, train=True, seed=0)


_FINETUNE_LR_FACTOR = 1.0 / 3.0


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.enable_grad()  # may be called lazily from inside a caller's torch.no_grad()
def train_task(task: str, preset: Union[Preset, str, None] = None, progress: bool = True,
               *, steps: Optional[int] = None, seed: int = 0,
               eval_every: Optional[int] = None) -> Dict[str, Any]:
    """Train the small network for ``task`` on the preset's world; evaluate it on val.

    Mask R-CNN starts from the trained Faster R-CNN when ``preset.task_instance_init`` is
    ``"detection"`` (its only new parts are the mask head and predictor) and trains for
    ``task_instance_steps``; otherwise from scratch for ``task_steps``.

    AdamW with linear warm-up and cosine decay, gradient clipping; batches of
    ``preset.task_batch_size`` whole training images with random horizontal flips. The
    loss is the network's own training loss (the same :meth:`FrozenTask.losses` the codec
    later sees, but with the weights free). Returns ``{"state_dict", "config",
    "metrics", "history"}``: ``metrics`` from :func:`evaluate_task` on the val split,
    ``history`` a list of logged steps (losses, learning rate, seconds), with the
    validation score every ``eval_every`` steps (default ``preset.val_every``; 0: only
    at the end) -- the learning curve.
    """
    from icmlib.data import collate, dataset_for

    task = _check_task(task)
    preset = get_preset(preset)
    config = task_config(task, preset, steps, seed)
    total = config["steps"]
    if preset.task_pretrained and task != "semantic":
        raise ValueError(f"preset {preset.name!r} uses the COCO-pretrained {task} network; "
                         f"it is loaded, not trained (use task_network)")
    torch.manual_seed(seed)
    device = torch.device(preset.device if (preset.device != "cuda" or torch.cuda.is_available())
                          else "cpu")
    model = build_task_network(task, preset, num_classes=config["num_classes"])
    if "init" in config:
        # Mask R-CNN's backbone, FPN, RPN and box head are Faster R-CNN's: start from the
        # trained detector (train-or-load), so only the mask branch learns from scratch
        det = train_or_load("task-detection", config["init"],
                            lambda: train_task("detection", preset, progress=progress,
                                               seed=seed))
        missing, unexpected = model.load_state_dict(det["state_dict"], strict=False)
        if unexpected or any(not k.startswith("roi_heads.mask_") for k in missing):
            raise RuntimeError(f"the detection checkpoint does not fit Mask R-CNN: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model = model.to(device)
    train_ds = _train_dataset(preset)
    loader = torch.utils.data.DataLoader(
        train_ds, batch_size=preset.task_batch_size, shuffle=True, collate_fn=collate,
        num_workers=preset.num_workers, drop_last=len(train_ds) >= preset.task_batch_size,
        generator=torch.Generator().manual_seed(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    # fine-tuning a trained detector: a third of the learning rate, so the mask branch
    # learns without knocking the trained parts far from where they were
    base_lr = preset.task_lr * (_FINETUNE_LR_FACTOR if "init" in config else 1.0)
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=preset.task_weight_decay)
    warmup = min(preset.task_warmup_steps, max(total // 5, 1))
    history: List[Dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"train {task} network ({preset.name})", unit="step")
    val_ds = dataset_for(preset, "val", train=False)
    eval_every = preset.val_every if eval_every is None else eval_every
    step, t0, c0 = 0, time.time(), time.process_time()
    eval_seconds = eval_cpu_seconds = 0.0
    running: Dict[str, float] = {}
    model.train()
    while step < total:
        for images, targets in loader:
            if step >= total:
                break
            lr = _lr_at(step, total, base_lr, warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            images = [im.to(device) for im in images]
            if task == "semantic":
                x = torch.stack(images)
                sem = torch.stack([t["semantic"] for t in targets]).to(device)
                losses = {"loss_ce": F.cross_entropy(model(x), sem)}
            else:
                keys = ("boxes", "labels", "masks") if task == "instance" else ("boxes", "labels")
                tv_targets = [{k: t[k].to(device) for k in keys} for t in targets]
                losses = model(images, tv_targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the {task} network's loss became {loss.item()} at "
                                         f"step {step}; lower task_lr (now {base_lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            step += 1
            for k, v in losses.items():
                v = float(v.detach())
                running[k] = 0.9 * running.get(k, v) + 0.1 * v
            if step % preset.log_every == 0 or step == total:
                history.append({"step": step, "lr": lr, "seconds": time.time() - t0 - eval_seconds,
                                "loss": float(loss.detach()),
                                **{k: float(v.detach()) for k, v in losses.items()}})
            if eval_every and step % eval_every == 0 and step < total:
                te, tc = time.time(), time.process_time()
                model.eval()
                score = evaluate_task(model, task, val_ds, batch_size=preset.task_batch_size * 2)
                model.train()
                history.append({"step": step, "val_" + PRIMARY_METRIC[task]: score["score"]})
                if bar is not None:
                    bar.write(f"step {step}: val {PRIMARY_METRIC[task]} = {score['score']:.3f}")
                eval_seconds += time.time() - te
                eval_cpu_seconds += time.process_time() - tc
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in running.items()})
    if bar is not None:
        bar.close()
    train_seconds = time.time() - t0 - eval_seconds
    # CPU seconds of this process (all threads): on a shared machine a fairer measure
    train_cpu_seconds = time.process_time() - c0 - eval_cpu_seconds
    model.eval()
    metrics = evaluate_task(model, task, val_ds, batch_size=preset.task_batch_size * 2,
                            progress=progress)
    metrics["train_seconds"] = train_seconds
    metrics["train_cpu_seconds"] = train_cpu_seconds
    metrics["steps_per_second"] = total / max(train_seconds, 1e-9)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state_dict": state, "config": config, "metrics": metrics, "history": history}


def task_network(task: str, preset: Union[Preset, str, None] = None, *, force: bool = False,
                 steps: Optional[int] = None, progress: bool = True,
                 verbose: bool = True) -> nn.Module:
    """The task network for ``task`` on ``preset``, ready to be frozen: trained on the
    synthetic world (or loaded from the train-or-load cache), or -- on the gpu preset --
    torchvision's COCO-pretrained detector. Eval mode, ``requires_grad`` off, batch norms
    converted to ``FrozenBatchNorm2d``. ``model.task_info`` holds the validation metrics
    and the checkpoint path (``None`` for pretrained weights)."""
    task = _check_task(task)
    preset = get_preset(preset)
    if preset.task_pretrained and task != "semantic":
        model = build_task_network(task, preset)
        info = {"task": task, "checkpoint": None, "metrics": {}, "pretrained": True}
    else:
        config = task_config(task, preset, steps)
        ckpt = train_or_load(f"task-{task}", config,
                             lambda: train_task(task, preset, progress=progress, steps=steps),
                             force=force, verbose=verbose)
        model = build_task_network(task, preset, num_classes=config["num_classes"])
        model.load_state_dict(ckpt["state_dict"])
        info = {"task": task, "checkpoint": str(checkpoint_path(f"task-{task}", config)),
                "metrics": ckpt.get("metrics", {}), "history": ckpt.get("history", []),
                "pretrained": False}
    freeze_batchnorm(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.task_info = info
    return model


# ---------------------------------------------------------------------------------------
# Looking inside (used by the book)
# ---------------------------------------------------------------------------------------
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
