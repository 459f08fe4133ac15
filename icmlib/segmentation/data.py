"""The segmentation chapters' data: images and masks as tensors, resized, normalised, augmented.

* :func:`segmentation_data` turns the preset's COCO-format dataset into tensors (images
  resized bilinearly, masks with nearest neighbour: :func:`resize_pair`), once per process:
  ``train`` to learn from, ``val`` to choose with (early stopping, the best checkpoint),
  ``test`` to report, and nothing else (:data:`SEGMENTATION_SPLITS`);
* :func:`normalize` / :func:`denormalize` for ImageNet-pretrained backbones;
* :class:`JointAugment`: crop, flip and rotation on image *and* mask; colour jitter and
  blur on the image only.

:class:`SegmentationError` is the user error every segmentation helper raises.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from icmlib.presets import Preset, get_preset

Tensors = Tuple[torch.Tensor, torch.Tensor]


class SegmentationError(ValueError):
    """A user error in the segmentation helpers (bad option, wrong shapes...)."""


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(image - mean) / std per channel: what ImageNet-pretrained backbones were trained on."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    if image.shape[-3] != m.shape[0]:
        raise ValueError(f"normalize: image has {image.shape[-3]} channels but mean/std have {m.shape[0]}")
    return (image - m) / s


def denormalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """The inverse of :func:`normalize`: back to pixel values in [0, 1], for drawing."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return image * s + m


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size) -> Tuple[torch.Tensor, torch.Tensor]:
    """Resize an image bilinearly and its mask with nearest neighbour to ``size`` (int or (h, w)).

    Bilinear interpolation of a mask would average class ids: halfway between class 1
    and class 3 it would invent class 2. Nearest neighbour only ever copies real labels.
    Works on [3, H, W] + [H, W] or batched [B, 3, H, W] + [B, H, W].
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    batched = image.dim() == 4
    img = image if batched else image[None]
    msk = mask if batched else mask[None]
    if img.shape[-2:] != msk.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
    msk = F.interpolate(msk[:, None].float(), size=size, mode="nearest")[:, 0].to(mask.dtype)
    return (img, msk) if batched else (img[0], msk[0])


class JointAugment:
    """Random augmentation applied consistently to an image and its mask.

    Geometric changes – random crop, horizontal flip, rotation – move image and mask
    together (the mask is rotated with nearest-neighbour interpolation and filled with
    background); photometric changes – colour jitter and Gaussian blur – touch the image
    only, since they do not move any object. Call with a ``torch.Generator`` for
    reproducible draws: ``image, mask = aug(image, mask, generator)``.
    """

    def __init__(self, crop_size: Optional[int] = None, flip: bool = True,
                 max_rotation: float = 15.0, color_jitter: float = 0.2, blur_prob: float = 0.3,
                 blur_sigma: Tuple[float, float] = (0.3, 1.2)):
        self.crop_size, self.flip, self.max_rotation = crop_size, flip, max_rotation
        self.color_jitter, self.blur_prob, self.blur_sigma = color_jitter, blur_prob, blur_sigma

    def __repr__(self):
        return (f"JointAugment(crop_size={self.crop_size}, flip={self.flip}, "
                f"max_rotation={self.max_rotation}, color_jitter={self.color_jitter}, "
                f"blur_prob={self.blur_prob})")

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if image.dim() != 3 or mask.dim() != 2 or image.shape[-2:] != mask.shape:
            raise ValueError(f"JointAugment expects image [C, H, W] and mask [H, W] of the same "
                             f"size; got {tuple(image.shape)} and {tuple(mask.shape)}")
        g = generator

        def u() -> float:
            return torch.rand((), generator=g).item()

        h, w = mask.shape
        if self.crop_size is not None:
            c = self.crop_size
            if c > min(h, w):
                raise ValueError(f"crop_size {c} is larger than the image {h}x{w}")
            top, left = int(u() * (h - c + 1)), int(u() * (w - c + 1))
            image, mask = image[:, top:top + c, left:left + c], mask[top:top + c, left:left + c]
        if self.flip and u() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.max_rotation > 0:
            angle = (2 * u() - 1) * self.max_rotation
            image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
            mask = TF.rotate(mask[None], angle, interpolation=InterpolationMode.NEAREST, fill=0)[0]
        if self.color_jitter > 0:
            j = self.color_jitter
            brightness = 1 + (2 * u() - 1) * j
            contrast = 1 + (2 * u() - 1) * j
            saturation = 1 + (2 * u() - 1) * j
            image = TF.adjust_brightness(image, brightness)
            image = TF.adjust_contrast(image, contrast)
            image = TF.adjust_saturation(image, saturation)
        if self.blur_prob > 0 and u() < self.blur_prob:
            lo, hi = self.blur_sigma
            sigma = lo + u() * (hi - lo)
            k = 2 * math.ceil(2 * sigma) + 1
            image = TF.gaussian_blur(image, [k, k], [sigma, sigma])
        return image.clamp(0, 1), mask


def dataset_to_tensors(dataset, size: int, max_images: Optional[int] = None,
                       start: int = 0) -> Tensors:
    """Stack ``(image, target)`` items into (images [N,3,S,S] in [0,1], masks Int64 [N,S,S]).

    Items ``start, start + 1, ...`` (at most ``max_images`` of them) are taken. Every image
    is resized to ``size`` x ``size`` (bilinear) and its ``target["semantic"]`` mask with
    nearest neighbour, so images of any size (real COCO) batch together.
    """
    stop = len(dataset) if max_images is None else min(len(dataset), start + max_images)
    if stop <= start:
        raise SegmentationError(f"the dataset has no items from index {start} on "
                                f"({len(dataset)} items)")
    images, masks = [], []
    for i in range(start, stop):
        image, target = dataset[i]
        if "semantic" not in target:
            raise SegmentationError("dataset targets need a 'semantic' mask (Int64 [H, W]); "
                                    "use icmlib.data.CocoDataset")
        image, mask = resize_pair(image, target["semantic"].long(), size)
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


SEGMENTATION_SPLITS = ("train", "val", "test")


def _split_range(preset: Preset, split: str) -> Tuple[int, int]:
    """(first item, number of items) of ``split`` in the dataset ``dataset_for`` gives for it.

    The synthetic world draws each split from its own random stream, so all three start at
    0. COCO's test2017 has no public masks and ``dataset_for`` reads val2017 for ``test``:
    the segmentation test images are then the ``seg_eval_images`` val2017 images *after*
    the ones validation uses, so no image both chooses a model and scores it.
    """
    if split == "train":
        return 0, preset.train_images
    if split == "test" and preset.dataset == "coco":
        return preset.seg_eval_images, preset.seg_eval_images
    return 0, preset.seg_eval_images


@functools.lru_cache(maxsize=8)
def _cached_data(preset: Preset, split: str) -> Tuple[Tensors, int]:
    from icmlib.data import dataset_for

    if split not in SEGMENTATION_SPLITS:
        raise SegmentationError(f"unknown split {split!r}; choose one of {SEGMENTATION_SPLITS}")
    ds = dataset_for(preset, split, train=False)
    start, limit = _split_range(preset, split)
    data = dataset_to_tensors(ds, preset.seg_image_size, limit, start)
    return data, int(getattr(ds, "num_classes"))


def segmentation_data(preset: Union[Preset, str, None] = None, split: str = "train") -> Tensors:
    """The preset's images and semantic masks as tensors (loaded once per process).

    ``train`` gives up to ``preset.train_images`` images; ``val`` and ``test`` up to
    ``preset.seg_eval_images`` each, all at ``preset.seg_image_size``. Validation chooses
    (early stopping keeps the best validation checkpoint), so its scores flatter the model
    a little; the numbers a chapter reports come from ``test``, which nothing is chosen on.
    """
    images, masks = _cached_data(get_preset(preset), split)[0]
    return images.clone(), masks.clone()


def segmentation_num_classes(preset: Union[Preset, str, None] = None) -> int:
    """Number of classes (background included) of the preset's dataset."""
    return _cached_data(get_preset(preset), "val")[1]
