"""How well a task network does: COCO mAP for boxes and masks, mIoU for semantic segmentation.

:func:`evaluate_task` scores a network with the official pycocotools code (boxes, and masks
for Mask R-CNN) or a confusion matrix (semantic segmentation) -- on the dataset's own images
or on decoded ones in their place, against the same ground truth.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import torch.nn as nn

from icmlib.tasks.frozen import FrozenTask
from icmlib.tasks.networks import PRIMARY_METRIC, _check_task

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
            from icmlib.segmentation import confusion_matrix

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
