"""How good a segmentation is: region, boundary and overlap metrics, and the Dice loss.

:func:`confusion_matrix` counts pixels by (true, predicted) class; from it come
:func:`pixel_accuracy`, :func:`mean_pixel_accuracy`, :func:`per_class_iou`, :func:`miou`
and :func:`dice_score`. :func:`boundary_f1` scores the outlines alone, which region
metrics hardly notice. :func:`dice_loss` is the differentiable Dice used in training.
:func:`segmentation_metrics` gives them all as one dict (a row of the chapters' tables).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

def _labels(pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Accept predicted labels (same shape as ``target``) or logits (one extra class dim)."""
    if not torch.is_tensor(pred) or not torch.is_tensor(target):
        raise ValueError("segmentation metrics take torch tensors (pred, target)")
    if pred.dim() == target.dim() + 1 and pred.is_floating_point():
        pred = pred.argmax(dim=-3)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must "
                         f"have the same shape (or pass logits with one extra class dimension)")
    return pred.long(), target.long()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: Optional[int] = None) -> torch.Tensor:
    """Pixel counts ``cm[t, p]``: how many pixels of true class t were predicted as p."""
    pred, target = _labels(pred, target)
    pred, target = pred.flatten(), target.flatten()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bad.any():
        raise ValueError(f"labels must lie in [0, {num_classes}); found "
                         f"{sorted(set(torch.cat([pred[bad], target[bad]]).tolist()))[:5]}")
    return torch.bincount(target * num_classes + pred,
                          minlength=num_classes ** 2).reshape(num_classes, num_classes)


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of pixels labelled correctly (dominated by the background on sparse scenes)."""
    pred, target = _labels(pred, target)
    return (pred == target).float().mean().item()


def mean_pixel_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Per-class pixel accuracy (recall), averaged over the classes present in the target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    support = cm.sum(dim=1)
    present = support > 0
    return (cm.diag()[present] / support[present]).mean().item()


def per_class_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from both pred and target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean intersection-over-union over the classes that appear in pred or target.

    Computed from one confusion matrix accumulated over all pixels given (the usual
    dataset-level definition), background included.
    """
    iou = per_class_iou(pred, target, num_classes)
    return iou[~iou.isnan()].mean().item()


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion of [N, H, W] bool masks; the image border counts as 'same'."""
    m = F.pad(mask[:, None].float(), (1, 1, 1, 1), mode="replicate")
    return (-F.max_pool2d(-m, 3, stride=1))[:, 0] > 0.5


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0.5


def mask_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Boundary pixels of binary masks [..., H, W]: the mask minus its 3x3 erosion."""
    shape = mask.shape
    m = mask.reshape(-1, *shape[-2:]).bool()
    return (m & ~_erode(m)).reshape(shape)


def boundary_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                tolerance: int = 2) -> float:
    """Boundary F1 (the BF score of Csurka et al., 2013): how well the *outlines* agree.

    For every image and every class present in it, the boundary of the class mask is its
    pixels minus the mask's morphological erosion. A predicted boundary pixel counts as
    correct (precision) if a true boundary pixel lies within ``tolerance`` pixels
    (Chebyshev distance), and vice versa for recall. F1 per (image, class), averaged.
    Region metrics like mIoU hardly notice a one-pixel-wide error band around every
    object; this metric is made of nothing else.
    """
    pred, target = _labels(pred, target)
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    scores = []
    for p_img, t_img in zip(pred, target):
        classes = torch.unique(torch.cat([p_img.flatten(), t_img.flatten()]))
        pm = torch.stack([p_img == c for c in classes])
        tm = torch.stack([t_img == c for c in classes])
        pb, tb = mask_boundary(pm), mask_boundary(tm)
        pb_near, tb_near = _dilate(pb, tolerance), _dilate(tb, tolerance)
        for k in range(len(classes)):
            n_p, n_t = pb[k].sum().item(), tb[k].sum().item()
            if n_p == 0 and n_t == 0:
                continue                      # a class filling the whole image: no outline
            if n_p == 0 or n_t == 0:
                scores.append(0.0)
                continue
            precision = (pb[k] & tb_near[k]).sum().item() / n_p
            recall = (tb[k] & pb_near[k]).sum().item() / n_t
            scores.append(0.0 if precision + recall == 0 else
                          2 * precision * recall / (precision + recall))
    return float(sum(scores) / len(scores)) if scores else 1.0


def dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: Optional[int] = None,
              smooth: float = 1.0) -> torch.Tensor:
    """Soft multiclass Dice loss: ``1 - mean over classes of 2|P∩T| / (|P| + |T|)``.

    ``P`` are the softmax probabilities and ``T`` the one-hot target, summed over the
    batch and all pixels, so the loss is differentiable. Every class weighs the same
    however few pixels it has – the reason to use Dice (often added to cross-entropy) on
    scenes that are mostly background. ``smooth`` keeps classes absent from both finite.
    """
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(f"dice_loss expects logits [B, C, H, W] and target [B, H, W]; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    num_classes = num_classes or logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def dice_score(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Hard Dice (= F1 of pixels) per class, averaged over classes in pred or target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    present = denom > 0
    return (2 * tp[present] / denom[present]).mean().item()


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                         tolerance: int = 2) -> dict:
    """All region and boundary metrics of a batch of predictions, as one dict."""
    return {
        "pixel_acc": pixel_accuracy(pred, target),
        "mean_pixel_acc": mean_pixel_accuracy(pred, target, num_classes),
        "miou": miou(pred, target, num_classes),
        "boundary_f1": boundary_f1(pred, target, num_classes, tolerance),
        "dice": dice_score(pred, target, num_classes),
    }
