"""The dataset a preset names: the synthetic world (``ci``, ``cpu``) or COCO 2017 (``gpu``).

Training, evaluation and the book ask for data by preset and split only, so the same code
runs on the toy world on a laptop and on COCO on a GPU.
"""
from __future__ import annotations

from typing import Optional, Union

from icmlib.data.coco import CocoDataset
from icmlib.data.coco2017 import (COCO_ROOT_ENV, DatasetNotFoundError, _coco_paths,
                                  _coco_split_name, coco_root)
from icmlib.data.world import SYNTHETIC_SPLITS, synthetic_world
from icmlib.presets import Preset, get_preset


def dataset_for(preset: Union[Preset, str, None] = None, split: str = "train",
                train: Optional[bool] = None, *, seed: int = 0) -> CocoDataset:
    """The dataset the preset trains or evaluates on.

    ``preset.dataset == "synthetic"`` (ci, cpu): the synthetic world (generated on first
    use). ``"coco"`` (gpu): COCO 2017 under ``$ICM_COCO_ROOT`` or ``$ICM_CACHE/coco``.
    ``train`` defaults to ``split == "train"``: random ``preset.crop_size`` crops and
    flips; otherwise full images.
    """
    preset = get_preset(preset)
    if train is None:
        train = split in ("train", "train2017")
    crop = preset.crop_size if train else None
    if preset.dataset == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SYNTHETIC_SPLITS}")
        image_dir, ann_file = synthetic_world(preset, split)
        return CocoDataset(image_dir, ann_file, crop_size=crop, train=train, seed=seed)
    if preset.dataset == "coco":
        name = _coco_split_name(split)
        root = coco_root()
        image_dir, ann_file = _coco_paths(root, name)
        if not (ann_file.is_file() and image_dir.is_dir()):
            raise DatasetNotFoundError(
                f"preset {preset.name!r} uses COCO 2017, but {ann_file} or {image_dir}/ "
                f"is missing.\nDownload it once with:\n"
                f"  from icmlib.data import download_coco; download_coco(split={name!r})\n"
                f"(or put an existing copy in {root}, or point ${COCO_ROOT_ENV} at it).")
        return CocoDataset(image_dir, ann_file, crop_size=crop, train=train, seed=seed)
    raise ValueError(f"preset {preset.name!r} has unknown dataset {preset.dataset!r}; "
                     f"use 'synthetic' or 'coco'")
