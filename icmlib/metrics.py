"""Quality and accuracy measures: PSNR, MS-SSIM, bits per pixel and COCO mAP.

Two kinds of "quality" meet in image coding for machines:

* **for humans** -- how close the decoded image is to the original: :func:`psnr`
  (pixel error on a log scale) and :func:`ms_ssim` (structural similarity at several
  scales, closer to what people notice);
* **for machines** -- how well a task network does on the decoded image: COCO mean
  average precision (:func:`coco_map`, computed by the official ``pycocotools`` code,
  for boxes and for instance masks). Semantic segmentation uses mIoU from
  :mod:`icmlib.segmentation.metrics`.

and the cost: :func:`bpp`, bits per pixel from the *real* length of a bitstream.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["psnr", "ms_ssim", "MS_SSIM_WEIGHTS", "ms_ssim_levels", "bpp",
           "predictions_to_coco", "coco_map", "COCO_STAT_NAMES"]


# ---- pixels ----------------------------------------------------------------------------
def _check_pair(a: torch.Tensor, b: torch.Tensor, who: str):
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        raise ValueError(f"{who} takes two torch tensors, got {type(a).__name__} and "
                         f"{type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"{who}: the images must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)} (crop the decoded image to the original's "
                         f"size first)")
    return a.detach().double(), b.detach().double()


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> Union[float, torch.Tensor]:
    """Peak signal-to-noise ratio in dB: ``10 log10(range^2 / MSE)``.

    ``a`` and ``b`` are images in ``[0, data_range]``, [C, H, W] or [B, C, H, W].
    ``reduction="mean"`` averages the *per-image* PSNR over the batch (the convention of
    learned-compression papers; averaging MSE first would weight bad images less);
    ``"none"`` returns one value per image. Identical images give ``inf``.
    """
    a, b = _check_pair(a, b, "psnr")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4:
        raise ValueError(f"psnr expects [C, H, W] or [B, C, H, W] images, got {tuple(a.shape)}")
    mse = (a - b).pow(2).flatten(1).mean(1)
    values = 10 * torch.log10(data_range ** 2 / mse)  # mse == 0 -> inf
    if reduction == "none":
        return values.float()
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return float(values.mean())


#: The five scale weights of Wang, Simoncelli & Bovik (2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_levels(size: int, win_size: int = 11) -> int:
    """How many MS-SSIM scales an image whose smaller side is ``size`` supports.

    Every scale halves the image and the Gaussian window (``win_size`` px) must still fit,
    so scale ``L`` needs ``size > (win_size - 1) * 2**(L - 1)``: five scales need more
    than 160 px, three need more than 40 px.
    """
    levels = 0
    while levels < len(MS_SSIM_WEIGHTS) and size > (win_size - 1) * 2 ** levels:
        levels += 1
    return levels


def ms_ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0,
            reduction: str = "mean", win_size: int = 11) -> Union[float, torch.Tensor]:
    """Multi-scale structural similarity (1 = identical), via ``pytorch_msssim``.

    The standard MS-SSIM uses five scales and so needs images larger than 160 px. The
    toy world's images are 64-128 px, so for small images we use **as many scales as fit**
    (see :func:`ms_ssim_levels`: 3 scales at 64 px, 4 at 128 px) with the first weights of
    :data:`MS_SSIM_WEIGHTS` renormalised to sum to one. The value is then an MS-SSIM over
    fewer, finer scales: comparable between codecs on the same images, not with
    published numbers on large images. Images of 160 px or more get the standard
    five-scale MS-SSIM exactly.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim
    from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim

    a, b = _check_pair(a, b, "ms_ssim")
    if a.dim() == 3:
        a, b = a[None], b[None]
    if a.dim() != 4:
        raise ValueError(f"ms_ssim expects [C, H, W] or [B, C, H, W] images, got {tuple(a.shape)}")
    a, b = a.float(), b.float()
    side = min(a.shape[-2:])
    levels = ms_ssim_levels(side, win_size)
    if levels == 0:
        raise ValueError(f"ms_ssim needs images larger than {win_size - 1} px on the smaller "
                         f"side (the {win_size}-px window must fit); got {tuple(a.shape[-2:])}")
    if levels == len(MS_SSIM_WEIGHTS):
        values = _ms_ssim(a, b, data_range=data_range, size_average=False, win_size=win_size)
    else:
        weights = torch.tensor(MS_SSIM_WEIGHTS[:levels])
        weights = weights / weights.sum()
        win = _fspecial_gauss_1d(win_size, 1.5).repeat([a.shape[1], 1, 1, 1])
        x, y = a, b
        factors = []
        for level in range(levels):
            ssim_per_channel, cs = _ssim(x, y, win=win, data_range=data_range,
                                         size_average=False, K=(0.01, 0.03))
            if level < levels - 1:
                factors.append(torch.relu(cs))
                padding = [s % 2 for s in x.shape[2:]]
                x = torch.nn.functional.avg_pool2d(x, kernel_size=2, padding=padding)
                y = torch.nn.functional.avg_pool2d(y, kernel_size=2, padding=padding)
        factors.append(torch.relu(ssim_per_channel))
        stacked = torch.stack(factors, 0)                       # [levels, B, C]
        values = torch.prod(stacked ** weights.view(-1, 1, 1), 0).mean(1)
    if reduction == "none":
        return values
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return float(values.mean())


# ---- bits ------------------------------------------------------------------------------
def bpp(num_bytes: Union[int, float, bytes, Sequence], height: int, width: int) -> float:
    """Bits per pixel: ``8 * bytes / (H * W)``.

    ``num_bytes`` is a byte count, a ``bytes`` object, or a (nested) list of byte strings
    (CompressAI's ``strings``), so the rate always comes from real bytes.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"bpp needs a positive image size, got {height}x{width}")
    return 8.0 * _count_bytes(num_bytes) / (height * width)


def _count_bytes(obj) -> int:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return len(obj)
    if isinstance(obj, (int, float, np.integer, np.floating)):
        if obj < 0:
            raise ValueError(f"a byte count cannot be negative, got {obj}")
        return obj
    if isinstance(obj, (list, tuple)):
        return sum(_count_bytes(o) for o in obj)
    raise ValueError(f"bpp takes a byte count, bytes, or a list of byte strings; got "
                     f"{type(obj).__name__}")


# ---- COCO mAP --------------------------------------------------------------------------
#: Names of the 12 numbers ``COCOeval.summarize()`` prints, in its order.
COCO_STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large",
                   "mar1", "mar10", "mar100", "mar_small", "mar_medium", "mar_large")


def _mask_to_rle(mask: np.ndarray) -> Dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def predictions_to_coco(outputs: Sequence[Mapping[str, torch.Tensor]],
                        image_ids: Sequence[int], *, mask_threshold: float = 0.5,
                        label_to_category: Optional[Mapping[int, int]] = None
                        ) -> List[Dict[str, Any]]:
    """Detector outputs -> COCO results (the list ``COCO.loadRes`` reads).

    ``outputs[i]`` is a torchvision detection dict for image ``image_ids[i]``: ``boxes``
    [N, 4] xyxy pixels, ``scores`` [N], ``labels`` [N] and optionally ``masks``
    [N, 1, H, W] probabilities. Boxes become COCO's ``[x, y, w, h]``; masks are
    thresholded at ``mask_threshold`` and run-length encoded. Labels are COCO category
    ids unless ``label_to_category`` maps them.
    """
    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    results: List[Dict[str, Any]] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].detach().cpu().float()
        scores = out["scores"].detach().cpu().float()
        labels = out["labels"].detach().cpu()
        masks = out.get("masks")
        if masks is not None:
            masks = masks.detach().cpu()
            if masks.dim() == 4:
                masks = masks[:, 0]
            masks = (masks >= mask_threshold).numpy() if masks.is_floating_point() \
                else masks.bool().numpy()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).tolist()
        for k in range(len(scores)):
            label = int(labels[k])
            cat = int(label_to_category[label]) if label_to_category else label
            res = {"image_id": int(image_id), "category_id": cat,
                   "bbox": [round(float(v), 2) for v in xywh[k]], "score": float(scores[k])}
            if masks is not None:
                res["segmentation"] = _mask_to_rle(masks[k])
            results.append(res)
    return results


def coco_map(coco_gt, predictions: Sequence[Mapping[str, Any]], iou_type: str = "bbox",
             image_ids: Optional[Iterable[int]] = None) -> Dict[str, float]:
    """COCO average precision of ``predictions`` against the ground truth ``coco_gt``.

    ``coco_gt`` is a ``pycocotools.coco.COCO`` (``dataset.coco``); ``predictions`` the
    list from :func:`predictions_to_coco`; ``iou_type`` ``"bbox"`` or ``"segm"``;
    ``image_ids`` restricts the evaluation (default: the images that have predictions,
    or all images when there are none). Returns the twelve numbers of
    ``COCOeval.summarize()`` by name (:data:`COCO_STAT_NAMES`): ``map`` is
    AP@[.5:.95], the COCO headline number; ``map50`` AP at IoU 0.5. The evaluator's
    printing is silenced. No predictions at all gives 0.0 everywhere (not a crash).
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    predictions = list(predictions)
    if image_ids is None:
        ids = sorted({int(p["image_id"]) for p in predictions}) or sorted(coco_gt.getImgIds())
    else:
        ids = sorted(int(i) for i in image_ids)
    if not predictions:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    if iou_type == "segm" and any("segmentation" not in p for p in predictions):
        raise ValueError("iou_type='segm' needs predictions with masks ('segmentation'); "
                         "these come from an instance-segmentation network (Mask R-CNN)")
    unknown = {int(p["image_id"]) for p in predictions} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"predictions for image ids not in the ground truth: "
                         f"{sorted(unknown)[:5]}")
    # for masks, let loadRes derive each result's area and box from its mask (with a box
    # present it would use the box's area for the small/medium/large split)
    drop = ("bbox",) if iou_type == "segm" else ("segmentation",)
    results = [{k: v for k, v in p.items() if k not in drop} for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval reports -1 where a number is undefined (no ground truth of that size)
    return {name: float(max(v, 0.0)) if v != -1 else float("nan")
            for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
