"""The frozen-task wrapper: a task network that never changes, through which the codec learns.

The codec's task loss is the task network's *own training loss* on the decoded image
(:func:`task_losses`): for Faster R-CNN the RPN's objectness and box-regression losses
plus the RoI head's classification and box-regression losses (Mask R-CNN adds its mask
loss; the U-Net uses cross-entropy). Torchvision detectors only compute losses in
``train()`` mode, so :class:`FrozenTask` puts the network in train mode for the loss while
keeping every normalisation layer in eval mode (frozen statistics) and every parameter's
``requires_grad`` off. The weights therefore never change, yet the loss is differentiable
with respect to the input image, and that gradient is what teaches the codec.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.tasks.networks import _check_task

_NORM_AND_DROPOUT = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
                     nn.modules.dropout._DropoutNd, nn.Dropout, nn.AlphaDropout)


def task_loss_names(task: str) -> List[str]:
    """The names of the losses :meth:`FrozenTask.losses` returns for ``task``."""
    task = _check_task(task)
    if task == "semantic":
        return ["loss_ce"]
    names = ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]
    return names + (["loss_mask"] if task == "instance" else [])


def task_losses(model: nn.Module, task: str, images: List[torch.Tensor],
                targets: Sequence[Mapping[str, Any]]) -> Dict[str, torch.Tensor]:
    """A task network's own training losses (a dict of scalar tensors), in the mode it is in.

    ``images`` is a list of [3, H, W] tensors in [0, 1]; ``targets`` are the dataset's
    target dicts (``boxes``, ``labels``, ``masks`` for instance segmentation, ``semantic``
    for semantic segmentation), one per image, moved to the images' device. The one loss
    code for both uses: training a task network (weights free, batch norms learning) and
    :meth:`FrozenTask.losses` (weights and statistics frozen).
    """
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    device = images[0].device
    if task == "semantic":
        x = torch.stack(images)
        sem = torch.stack([torch.as_tensor(t["semantic"]) for t in targets]).to(device).long()
        if sem.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"semantic targets are {tuple(sem.shape[-2:])} but the "
                             f"images are {tuple(x.shape[-2:])}")
        return {"loss_ce": F.cross_entropy(model(x), sem)}
    keys = ("boxes", "labels", "masks") if task == "instance" else ("boxes", "labels")
    tv_targets = []
    for t in targets:
        missing = [k for k in keys if k not in t]
        if missing:
            raise ValueError(f"the {task} loss needs targets with {list(keys)}; "
                             f"missing {missing}")
        tv_targets.append({k: torch.as_tensor(t[k]).to(device) for k in keys})
    return dict(model(images, tv_targets))


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
        with self._loss_mode():
            return task_losses(self.model, self.task, imgs, targets)

    def features(self, images) -> List[torch.Tensor]:
        """The feature pyramid the R-CNN's heads read, one [B, C, h, w] map per level,
        differentiable w.r.t. ``images`` (the network in eval mode, as at inference).

        This is what every later stage of a detector sees of the image, so matching it is
        a dense stand-in for the task loss (:func:`icmlib.codec.losses.feature_distortion`).
        """
        if self.task == "semantic":
            raise ValueError("features() reads an R-CNN's feature pyramid; the semantic "
                             "task's U-Net has none (use the task loss alone)")
        if not (hasattr(self.model, "transform") and hasattr(self.model, "backbone")):
            raise ValueError(f"features() reads a torchvision R-CNN's transform and backbone; "
                             f"{type(self.model).__name__} has no such pair (set "
                             f"icm_feature_weight = 0 to train with its task loss alone)")
        imgs = self._as_batch(images)
        self.model.eval()
        batch, _ = self.model.transform(imgs)
        return list(self.model.backbone(batch.tensors).values())

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
