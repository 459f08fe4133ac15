"""One dataset for any COCO-format folder: images, instance annotations, crops and batches.

Why COCO format
---------------
The synthetic world is written exactly like COCO (``<root>/<split>/*.png`` and
``<root>/annotations/instances_<split>.json`` with ``images``, ``annotations`` -- box
``[x, y, w, h]``, ``area``, RLE ``segmentation``, ``iscrowd`` -- and ``categories``),
so ``pycocotools`` reads it, COCO mAP is computed by the official code, and the *same*
:class:`CocoDataset` serves the toy world, real COCO 2017 (``preset.dataset ==
"coco"``), or any dataset converted to COCO format (Cityscapes, your own).

A training view is a square crop and a horizontal flip. The helpers below do one step of
it each on numpy arrays (crop with border padding, boxes from masks, flip, the semantic
map, which objects a crop cut away), so :meth:`CocoDataset.view` reads as the recipe.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from icmlib.data.images import _open_image, _to_rgb

PathLike = Union[str, os.PathLike]


def _read_annotations(ann_file: Path):
    """``pycocotools.coco.COCO`` of ``ann_file`` (quietly), or a clear ``ValueError``."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        try:
            coco = COCO(str(ann_file))
        except (ValueError, KeyError, TypeError, AssertionError) as e:
            raise ValueError(f"{ann_file} is not a COCO instances file: {e}") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in coco.dataset]
    if missing:
        raise ValueError(f"{ann_file} is not a COCO instances file: it has no "
                         f"{', '.join(repr(k) for k in missing)} (expected the layout of "
                         f"COCO's annotations/instances_<split>.json)")
    return coco


# ---- one view of an image, step by step (numpy arrays; masks are [K, H, W]) -------------
def _crop(pixels: np.ndarray, masks: np.ndarray, corner: Tuple[int, int], size: int):
    """The ``size`` x ``size`` window at ``corner = (x0, y0)`` of ``pixels`` and ``masks``.
    Where it reaches outside the image, pixels replicate the border and masks are zero."""
    h, w = pixels.shape[:2]
    x0, y0 = int(corner[0]), int(corner[1])
    pad = (max(0, -y0), max(0, y0 + size - h)), (max(0, -x0), max(0, x0 + size - w))
    if any(pad[0]) or any(pad[1]):
        pixels = np.pad(pixels, pad + ((0, 0),), mode="edge")
        masks = np.pad(masks, ((0, 0),) + pad)
    ys, xs = y0 + pad[0][0], x0 + pad[1][0]
    return pixels[ys:ys + size, xs:xs + size], masks[:, ys:ys + size, xs:xs + size]


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _boxes_in_view(masks: np.ndarray, ann_boxes: np.ndarray, offset: Tuple[int, int],
                   width: int, height: int) -> np.ndarray:
    """``x0, y0, x1, y1`` boxes in the view's pixels: tight around each non-empty mask;
    for an annotation without a usable mask, its own box shifted by ``offset`` (the view's
    top-left corner in the image) and clipped to the view."""
    x_off, y_off = offset
    boxes = ann_boxes - np.array([x_off, y_off, x_off, y_off], dtype=np.float32)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    for k in np.nonzero(masks.any(axis=(1, 2)))[0]:
        ys = np.nonzero(masks[k].any(1))[0]
        xs = np.nonzero(masks[k].any(0))[0]
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes


def _hflip(pixels: np.ndarray, masks: np.ndarray, boxes: np.ndarray, width: int):
    """``pixels``, ``masks`` and ``boxes`` mirrored left to right."""
    boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return pixels[:, ::-1], masks[:, :, ::-1], boxes


def _semantic_map(masks: np.ndarray, labels: np.ndarray, crowd: np.ndarray,
                  area: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """int64 [H, W]: 0 for background, else the category id of the instance there. Every
    non-crowd instance is painted, larger ones first, so a small object on top of a large
    one keeps its pixels."""
    semantic = np.zeros(shape, dtype=np.int64)
    for k in np.argsort(-area, kind="stable"):
        if not crowd[k]:
            semantic[masks[k] > 0] = labels[k]
    return semantic


def _as_tensors(image_id: int, pixels: np.ndarray, boxes, labels, masks, area, crowd,
                semantic, keep: np.ndarray):
    """``(image, target)`` as the dataset returns them, with the instances ``keep`` selects."""
    target = {
        "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep], dtype=np.float32)
                                  ).reshape(-1, 4),
        "labels": torch.from_numpy(labels[keep]),
        "masks": torch.from_numpy(np.ascontiguousarray(masks[keep])),
        "image_id": int(image_id),
        "area": torch.from_numpy(area[keep].astype(np.float32)),
        "iscrowd": torch.from_numpy(crowd[keep]),
        "semantic": torch.from_numpy(np.ascontiguousarray(semantic)),
    }
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
    return image, target


# ---- the dataset -----------------------------------------------------------------------
class CocoDataset(torch.utils.data.Dataset):
    """Images and instance annotations of any COCO-format folder.

    ``ds[i]`` returns ``(image, target)``: ``image`` a float tensor [3, H, W] in [0, 1]
    (grayscale and other modes converted to RGB) and ``target`` a dict:

    ============ ===================== ==============================================
    ``boxes``    float32 [K, 4]        ``x0, y0, x1, y1`` in pixels (x1, y1 exclusive)
    ``labels``   int64 [K]             COCO category ids (not made contiguous)
    ``masks``    uint8 [K, H, W]       instance masks (0/1)
    ``image_id`` int                   the COCO image id
    ``area``     float32 [K]           mask pixels after cropping
    ``iscrowd``  int64 [K]             0 (crowd annotations are skipped by default)
    ``semantic`` int64 [H, W]          0 background, else the category id
    ============ ===================== ==============================================

    Parameters
    ----------
    crop_size : int or None
        ``None``: the whole image. With ``train=True`` a random ``crop_size`` square
        crop and a random horizontal flip; with ``train=False`` the centre crop. An
        image smaller than the crop is first padded by replicating its border (not
        mirroring: a mirror would show unannotated copies of objects).
    train : bool
        Random crops and flips (training) or deterministic views (evaluation).
    seed : int
        Seeds the random crops and flips. In DataLoader workers the stream is
        ``(seed, worker seed)``: different per worker and per epoch, reproducible under
        ``torch.manual_seed``.
    skip_crowd : bool
        Leave out ``iscrowd=1`` annotations (COCO's "a crowd of people" regions), as
        torchvision's detection references do.
    min_visible : float, min_area : float
        After a crop an object is dropped if less than ``min_visible`` of its pixels
        remain, or fewer than ``min_area`` pixels -- a sliver at the crop's edge is not
        an object a detector should be asked to find. Objects untouched by the crop
        are always kept. Boxes are recomputed from the cropped masks.

    Notes
    -----
    The semantic map is painted from all (non-crowd) instance masks *before* dropping,
    larger objects first, so every visible pixel of an object keeps its class.
    """

    def __init__(self, image_dir: PathLike, ann_file: PathLike,
                 crop_size: Optional[int] = None, train: bool = False, seed: int = 0, *,
                 skip_crowd: bool = True, min_visible: float = 0.3, min_area: float = 8.0):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"no COCO annotation file at {self.ann_file}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"no image folder at {self.image_dir}")
        if crop_size is not None and int(crop_size) < 1:
            raise ValueError(f"crop_size must be a positive int or None, got {crop_size}")
        self.coco = _read_annotations(self.ann_file)
        self.crop_size = None if crop_size is None else int(crop_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.skip_crowd = skip_crowd
        self.min_visible = float(min_visible)
        self.min_area = float(min_area)
        self.ids: List[int] = sorted(self.coco.imgs.keys())
        self.categories: List[Dict[str, Any]] = [self.coco.cats[k] for k in sorted(self.coco.cats)]
        self.category_names: Dict[int, str] = {c["id"]: c["name"] for c in self.categories}
        #: labels are COCO category ids, so a network needs max id + 1 outputs
        self.num_classes: int = (max(self.coco.cats) + 1) if self.coco.cats else 1
        self._rng: Optional[np.random.Generator] = None
        self._rng_worker: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        crop = "full images" if self.crop_size is None else (
            f"{'random' if self.train else 'centre'} {self.crop_size}px crops")
        return (f"CocoDataset({len(self)} images, {len(self.categories)} categories, {crop}, "
                f"{self.ann_file})")

    # randomness: in the main process one stream from ``seed``; in a DataLoader worker a
    # stream from (seed, the worker's torch seed), which torch draws afresh for every
    # epoch -- so workers differ from each other and from one epoch to the next, and
    # ``torch.manual_seed`` makes it all reproducible
    def _random(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = (info.id, info.seed) if info is not None else None
        if self._rng is None or self._rng_worker != key:
            entropy = [self.seed] if info is None else [self.seed, info.seed % 2 ** 63]
            self._rng = np.random.default_rng(entropy)
            self._rng_worker = key
        return self._rng

    def image_path(self, index: int) -> Path:
        """The file of image ``index``."""
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def _load(self, index: int):
        """Image ``index`` as stored: ``(image_id, pixels uint8 [H, W, 3], masks uint8
        [K, H, W], boxes float32 [K, 4] (x0, y0, x1, y1), labels int64 [K], crowd int64
        [K])``; a mask is all zero where the annotation has no segmentation."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        pixels = _to_rgb(_open_image(path), str(path), warn=False)
        h, w = pixels.shape[:2]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        if self.skip_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        for k, ann in enumerate(anns):
            if ann.get("segmentation"):
                m = self.coco.annToMask({**ann, "image_id": image_id})
                if m.shape != (h, w):
                    raise ValueError(f"{path}: image is {w}x{h} but annotation {ann['id']} "
                                     f"is for {m.shape[1]}x{m.shape[0]}")
                masks[k] = m
            x, y, bw, bh = ann["bbox"]
            boxes[k] = (x, y, x + bw, y + bh)
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        crowd = np.array([int(a.get("iscrowd", 0)) for a in anns], dtype=np.int64)
        return image_id, pixels, masks, boxes, labels, crowd

    def view_params(self, index: int) -> Tuple[Optional[Tuple[int, int]], bool]:
        """The view ``ds[index]`` shows: ``(corner, flip)``, where ``corner`` is the
        crop's top-left ``(x0, y0)`` in image pixels (``None``: the whole image; negative,
        or reaching past the far edge, where the image is smaller than the crop) and
        ``flip`` a horizontal flip. Random when ``train``, else the centre and no flip."""
        if index < 0:
            index += len(self)
        info = self.coco.imgs[self.ids[index]]
        h, w = int(info["height"]), int(info["width"])
        rng = self._random() if self.train else None
        corner = None
        if self.crop_size is not None:
            c = self.crop_size
            if rng is not None:  # uniform over all windows inside the image (or holding it)
                x0 = int(rng.integers(min(0, w - c), max(0, w - c) + 1))
                y0 = int(rng.integers(min(0, h - c), max(0, h - c) + 1))
            else:
                x0, y0 = (w - c) // 2, (h - c) // 2
            corner = (x0, y0)
        flip = bool(rng.random() < 0.5) if rng is not None else False
        return corner, flip

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        corner, flip = self.view_params(index)
        return self.view(index, corner, flip)

    def view(self, index: int, corner: Optional[Tuple[int, int]] = None, flip: bool = False):
        """``(image, target)`` of image ``index`` seen through the ``crop_size`` window
        whose top-left corner is ``corner = (x0, y0)`` (``None``: the whole image), then
        flipped horizontally if ``flip``. Pixels outside the image replicate its border;
        masks are zero there. ``ds[i]`` is ``ds.view(i, *ds.view_params(i))``."""
        if corner is not None and self.crop_size is None:
            raise ValueError("view(corner=...) needs a dataset with a crop_size")
        image_id, pixels, masks, ann_boxes, labels, crowd = self._load(index)
        full_area = masks.sum(axis=(1, 2)).astype(np.float64)
        has_mask = full_area > 0
        offset = (0, 0)
        if corner is not None:
            pixels, masks = _crop(pixels, masks, corner, self.crop_size)
            offset = (int(corner[0]), int(corner[1]))
        h, w = pixels.shape[:2]
        boxes = _boxes_in_view(masks, ann_boxes, offset, w, h)
        area = np.where(has_mask, masks.sum(axis=(1, 2)).astype(np.float64), _box_area(boxes))
        if flip:
            pixels, masks, boxes = _hflip(pixels, masks, boxes, w)
        semantic = _semantic_map(masks, labels, crowd, area, (h, w))
        keep = self._kept(boxes, area, np.where(has_mask, full_area, _box_area(ann_boxes)),
                          has_mask)
        return _as_tensors(image_id, pixels, boxes, labels, masks, area, crowd, semantic, keep)

    def _kept(self, boxes: np.ndarray, area: np.ndarray, original: np.ndarray,
              has_mask: np.ndarray) -> np.ndarray:
        """Which instances a view shows: boxes at least a pixel wide and high, masks not
        empty, and -- for an object the crop cut (``area`` below its ``original``) -- at
        least ``min_visible`` of it and ``min_area`` pixels left. Objects untouched by the
        crop are always kept."""
        cut = area < original - 1e-6
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        keep &= ~(cut & ((area < self.min_visible * original) | (area < self.min_area)))
        keep &= ~(has_mask & (area <= 0))
        return keep


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]):
    """DataLoader ``collate_fn`` for detection: ``(list of images, list of targets)``
    (images may differ in size; torchvision's detectors take lists)."""
    images, targets = zip(*batch) if len(batch) else ((), ())
    return list(images), list(targets)


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack same-size [3, H, W] images into [B, 3, H, W] (a clear error otherwise)."""
    images = list(images)
    if not images:
        raise ValueError("stack_images got no images")
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise ValueError(f"stack_images needs images of one size, got {sorted(sizes)}; "
                         f"use a crop_size in the dataset, or pass the list to a model "
                         f"that takes lists")
    return torch.stack(images)
