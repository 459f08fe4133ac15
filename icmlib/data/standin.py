"""The synthetic world laid out as COCO 2017: a stand-in for the ``gpu`` preset's data.

The ``gpu`` preset reads COCO 2017 from disk (``train2017/``, ``val2017/``,
``annotations/instances_{train,val}2017.json``: :mod:`icmlib.data.coco2017`), 19 GB that
no test can download. :func:`export_coco_layout` writes the synthetic world in exactly that
layout -- COCO's folder and file names, its 12-digit image file names, its JSON fields --
so the ``gpu`` path (:func:`icmlib.data.dataset_for`, the evaluation on val2017) runs on it
unchanged, with ``$ICM_COCO_ROOT`` pointing at the folder. The world's train split becomes
``train2017``; its test split, the images results are reported on, becomes ``val2017``,
which the ``gpu`` preset reports on. Categories stay the world's own (ids 1..K), so a
COCO-pretrained detector runs on it but finds nothing it was trained for: the stand-in
checks that the path works, not what it scores.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from icmlib.data.world import synthetic_world
from icmlib.presets import Preset

PathLike = Union[str, os.PathLike]

#: COCO 2017's split of each synthetic split: train2017 trains, val2017 is reported on
STANDIN_SPLITS = {"train2017": "train", "val2017": "test"}


def _export_split(root: Path, coco_split: str, world_split: str, preset,
                  num_images: Optional[int]) -> Tuple[Path, Path]:
    """One split: the images copied under COCO-style names, the JSON rewritten to match."""
    image_dir, ann_file = synthetic_world(preset, world_split, progress=False)
    doc = json.loads(Path(ann_file).read_text())
    images = sorted(doc["images"], key=lambda im: im["id"])[:num_images]
    keep = {im["id"] for im in images}
    out_dir = root / coco_split
    out_dir.mkdir(parents=True, exist_ok=True)
    for im in images:
        name = f"{im['id']:012d}{Path(im['file_name']).suffix}"
        shutil.copyfile(Path(image_dir) / im["file_name"], out_dir / name)
        im["file_name"] = name
    doc["images"] = images
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]
    doc["info"] = {**doc.get("info", {}), "description": f"icmlib synthetic world "
                   f"({world_split} split) as a COCO 2017 {coco_split} stand-in"}
    doc.setdefault("licenses", [])
    ann_out = root / "annotations" / f"instances_{coco_split}.json"
    ann_out.parent.mkdir(parents=True, exist_ok=True)
    ann_out.write_text(json.dumps(doc))
    return out_dir, ann_out


def export_coco_layout(root: PathLike, preset: Union[Preset, str, None] = "ci", *,
                       num_images: Optional[int] = None) -> Dict[str, Tuple[Path, Path]]:
    """Write ``preset``'s synthetic world into ``root`` as COCO 2017 lays it out:
    ``train2017/``, ``val2017/`` and ``annotations/instances_{train,val}2017.json``.

    ``num_images`` keeps the first images (by id) of each split. Returns
    ``{coco split: (image_dir, ann_file)}``. Point ``$ICM_COCO_ROOT`` at ``root`` and
    ``dataset_for("gpu", ...)`` reads it as it reads COCO.
    """
    root = Path(root)
    return {coco: _export_split(root, coco, world, preset, num_images)
            for coco, world in STANDIN_SPLITS.items()}
