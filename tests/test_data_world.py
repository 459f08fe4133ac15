"""Tests of icmlib.data's synthetic world: reproducible bytes, COCO-valid annotations, a fair
world (objects visible and sized), a detailed background, the cache, and dataset_for."""
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from icmlib.data import (CATEGORIES, NUM_CLASSES, CocoDataset, dataset_for, generate_world,
                         synthetic_world)
from icmlib.presets import get_preset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(image_dir, ann_file) of a small world: 12 images of 64 px, up to 4 objects."""
    return generate_world(tmp_path_factory.mktemp("world"), "train", 12, 64, 4, seed=3)



def _tree_bytes(image_dir, ann_file):
    return ({p.name: p.read_bytes() for p in sorted(image_dir.glob("*.png"))},
            ann_file.read_bytes())


# ---- the synthetic world ---------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = _tree_bytes(*generate_world(tmp_path / "a", "train", 4, 48, 3, seed=7))
    b = _tree_bytes(*generate_world(tmp_path / "b", "train", 4, 48, 3, seed=7))
    c = _tree_bytes(*generate_world(tmp_path / "c", "train", 4, 48, 3, seed=8))
    v = _tree_bytes(*generate_world(tmp_path / "a", "val", 4, 48, 3, seed=7))
    assert a == b
    assert a[0] != c[0]
    assert a[0] != v[0], "train and val must be different images"
    # a bigger world starts with the same images
    d = _tree_bytes(*generate_world(tmp_path / "d", "train", 6, 48, 3, seed=7))
    assert all(d[0][k] == a[0][k] for k in a[0])


def test_world_json_is_coco_and_masks_match(world):
    image_dir, ann_file = world
    doc = json.loads(ann_file.read_text())
    assert doc["categories"] == CATEGORIES and NUM_CLASSES == len(CATEGORIES) + 1
    assert doc["info"]["config"]["seed"] == 3
    coco = COCO(str(ann_file))
    assert len(coco.imgs) == 12 and len(coco.anns) >= 12
    ds = CocoDataset(image_dir, ann_file)
    assert ds.num_classes == NUM_CLASSES and len(ds) == 12
    for i in range(len(ds)):
        image, target = ds[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1
        anns = coco.loadAnns(coco.getAnnIds(imgIds=target["image_id"]))
        assert len(anns) == len(target["labels"]) >= 1
        for k, ann in enumerate(anns):
            m = coco.annToMask(ann)
            assert np.array_equal(m, target["masks"][k].numpy())
            assert ann["area"] == m.sum() == float(mask_utils.area(ann["segmentation"]))
            assert ann["iscrowd"] == 0 and ann["category_id"] == int(target["labels"][k])
            # the box is tight around the mask
            ys, xs = np.nonzero(m)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                   ys.max() - ys.min() + 1]
            x0, y0, x1, y1 = target["boxes"][k].tolist()
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # visible masks do not overlap, and the semantic map agrees with them
        assert target["masks"].sum(0).max() <= 1
        sem = torch.zeros(64, 64, dtype=torch.int64)
        for m, lab in zip(target["masks"], target["labels"]):
            sem[m.bool()] = lab
        assert torch.equal(sem, target["semantic"])


def test_world_objects_are_visible_and_sized(world):
    """Fairness: every object is at least ~12 % of the side and contrasts with its
    surroundings (mean colour inside vs. a ring just outside differs clearly)."""
    from scipy import ndimage

    ds = CocoDataset(*world)
    for i in range(len(ds)):
        image, target = ds[i]
        for m, box in zip(target["masks"].numpy().astype(bool), target["boxes"]):
            assert max(box[2] - box[0], box[3] - box[1]) >= 0.12 * 64 * 0.6
            ring = ndimage.binary_dilation(m, iterations=2) & ~m
            ring &= target["semantic"].numpy() == 0  # background next to the object
            if ring.sum() < 10:
                continue
            inside = image[:, torch.from_numpy(m)].mean(1)
            outside = image[:, torch.from_numpy(ring)].mean(1)
            assert torch.linalg.norm(inside - outside) > 0.12


def test_background_has_high_frequency_detail(world):
    """The world's point: much of the image energy is detail the task does not need."""
    image, target = CocoDataset(*world)[0]
    bg = target["semantic"] == 0
    gray = image.mean(0)
    lap = (4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1]
           - gray[1:-1, :-2] - gray[1:-1, 2:]).abs()
    assert lap[bg[1:-1, 1:-1]].mean() > 0.05


def test_synthetic_world_is_cached_and_regenerated_on_change(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    preset = get_preset("ci", train_images=3, val_images=2, image_size=32)
    image_dir, ann_file = synthetic_world(preset, "train")
    assert len(list(image_dir.glob("*.png"))) == 3
    stamp = ann_file.stat().st_mtime_ns
    assert synthetic_world(preset, "train") == (image_dir, ann_file)
    assert ann_file.stat().st_mtime_ns == stamp, "an unchanged world is not regenerated"
    image_dir2, ann_file2 = synthetic_world(preset.replace(world_seed=1), "train")
    assert ann_file2 != ann_file
    assert json.loads(ann_file2.read_text())["info"]["config"]["seed"] == 1
    val_dir, _ = synthetic_world(preset, "val")
    assert len(list(val_dir.glob("*.png"))) == 2
    # a damaged world (missing image) is regenerated
    next(image_dir.glob("*.png")).unlink()
    assert synthetic_world(preset, "train") == (image_dir, ann_file)
    assert len(list(image_dir.glob("*.png"))) == 3


def test_dataset_for_synthetic_and_missing_coco(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    preset = get_preset("ci", train_images=3, val_images=2, test_images=4)
    train = dataset_for(preset, "train")
    assert train.train and train.crop_size == preset.crop_size and len(train) == 3
    val = dataset_for(preset, "val")
    assert not val.train and val.crop_size is None and len(val) == 2
    # the test split has images of its own (its own random stream), never val's or train's
    test = dataset_for(preset, "test")
    assert not test.train and len(test) == 4
    pixels = {split: [ds[i][0] for i in range(len(ds))] for split, ds in
              (("train", dataset_for(preset, "train", train=False)), ("val", val), ("test", test))}
    for t in pixels["test"]:
        assert not any(torch.equal(t, o) for o in pixels["train"] + pixels["val"])
    with pytest.raises(ValueError, match="split"):
        dataset_for(preset, "holdout")
    monkeypatch.setenv("ICM_COCO_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="download_coco"):
        dataset_for(get_preset("gpu"), "val")
