"""Tests of icmlib.data's CocoDataset: crops and flips keep pixels, masks, boxes and the
semantic map consistent; DataLoader workers; a hand-made COCO folder (grayscale JPEG, odd
ids, polygons, RLE, crowd, box-only annotations); batching."""
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from icmlib.data import CATEGORIES, CocoDataset, collate, dataset_for, generate_world, stack_images
from icmlib.presets import get_preset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(image_dir, ann_file) of a small world: 12 images of 64 px, up to 4 objects."""
    return generate_world(tmp_path_factory.mktemp("world"), "train", 12, 64, 4, seed=3)



# ---- crops and flips -------------------------------------------------------------------
def test_random_crop_keeps_boxes_and_masks_consistent(world):
    image_dir, ann_file = world
    full = CocoDataset(image_dir, ann_file)
    crop = CocoDataset(image_dir, ann_file, crop_size=40, train=True, seed=1)
    dropped = 0
    for rep in range(3):
        for i in range(len(full)):
            image, target = crop[i]
            assert image.shape == (3, 40, 40)
            assert target["masks"].shape == (len(target["labels"]), 40, 40)
            assert target["boxes"].shape == (len(target["labels"]), 4)
            full_image, full_target = full[i]
            # find where the crop came from (and whether it was flipped)
            found = None
            for flip in (False, True):
                src = full_image.flip(-1) if flip else full_image
                for y in range(64 - 40 + 1):
                    for x in range(64 - 40 + 1):
                        if torch.equal(src[:, y:y + 40, x:x + 40], image):
                            found = (flip, y, x)
                            break
                    if found:
                        break
                if found:
                    break
            assert found is not None, "the crop is a (flipped) window of the image"
            flip, y, x = found
            full_masks = full_target["masks"].flip(-1) if flip else full_target["masks"]
            window = full_masks[:, y:y + 40, x:x + 40]
            kept = [k for k in range(len(full_target["labels"]))
                    if window[k].sum() >= 0.3 * full_masks[k].sum() and window[k].sum() >= 8]
            dropped += len(full_target["labels"]) - len(kept)
            assert torch.equal(target["masks"], window[kept])
            assert torch.equal(target["labels"], full_target["labels"][kept])
            for m, box in zip(target["masks"], target["boxes"]):
                ys, xs = torch.nonzero(m, as_tuple=True)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert 0 <= box[0] < box[2] <= 40 and 0 <= box[1] < box[3] <= 40
            assert torch.equal(target["area"], target["masks"].flatten(1).sum(1).float())
    assert dropped > 0, "some objects fall out of 40 px crops of 64 px images"


def test_centre_crop_is_deterministic_and_pads_small_images(world):
    image_dir, ann_file = world
    ds = CocoDataset(image_dir, ann_file, crop_size=32)
    (a, ta), (b, tb) = ds[0], ds[0]
    assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    full_image, _ = CocoDataset(image_dir, ann_file)[0]
    assert torch.equal(a, full_image[:, 16:48, 16:48])
    big = CocoDataset(image_dir, ann_file, crop_size=80, train=True)
    for i in range(4):
        image, target = big[i]
        assert image.shape == (3, 80, 80) and target["semantic"].shape == (80, 80)
        assert target["masks"].shape[1:] == (80, 80)
        # padding never creates or loses an object: all of them are kept whole
        assert len(target["labels"]) == len(CocoDataset(image_dir, ann_file)[i][1]["labels"])


def test_view_with_explicit_corner(world):
    image_dir, ann_file = world
    full_image, full = CocoDataset(image_dir, ann_file)[2]
    ds = CocoDataset(image_dir, ann_file, crop_size=40)
    image, target = ds.view(2, (10, 20), flip=True)
    assert torch.equal(image, full_image[:, 20:60, 10:50].flip(-1))
    assert torch.equal(target["semantic"], full["semantic"][20:60, 10:50].flip(-1))
    # a window reaching outside the image: border pixels replicated, masks empty there
    image, target = ds.view(2, (-8, 30))
    assert torch.equal(image[:, :34, 8:], full_image[:, 30:, :32])
    rows = list(range(30, 64)) + [63] * 6  # the bottom row, replicated
    assert torch.equal(image[:, :, 0], full_image[:, rows, 0])
    assert (target["masks"][:, :, :8] == 0).all() and (target["semantic"][34:] == 0).all()
    with pytest.raises(ValueError, match="crop_size"):
        CocoDataset(image_dir, ann_file).view(0, (0, 0))
    # ds[i] is ds.view(i, *params) with params drawn from the same stream
    a = CocoDataset(image_dir, ann_file, crop_size=40, train=True, seed=5)
    b = CocoDataset(image_dir, ann_file, crop_size=40, train=True, seed=5)
    for i in range(3):
        corner, flip = b.view_params(i)
        assert 0 <= corner[0] <= 24 and 0 <= corner[1] <= 24
        assert torch.equal(a[i][0], b.view(i, corner, flip)[0])


def test_dataloader_workers_draw_different_crops_each_epoch(world):
    ds = CocoDataset(*world, crop_size=24, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=12, collate_fn=collate, num_workers=2)
    torch.manual_seed(0)
    epoch1 = stack_images(next(iter(loader))[0])
    epoch2 = stack_images(next(iter(loader))[0])
    assert not torch.equal(epoch1, epoch2), "a new epoch gives new crops"
    torch.manual_seed(0)
    assert torch.equal(stack_images(next(iter(loader))[0]), epoch1), "reproducible"

def test_flip_keeps_boxes_and_masks_consistent(world):
    image_dir, ann_file = world
    full = CocoDataset(image_dir, ann_file)
    ds = CocoDataset(image_dir, ann_file, crop_size=None, train=True, seed=0)
    flips = 0
    for rep in range(4):
        for i in range(4):
            image, target = ds[i]
            ref_image, ref = full[i]
            flipped = not torch.equal(image, ref_image)
            if flipped:
                flips += 1
                assert torch.equal(image, ref_image.flip(-1))
                assert torch.equal(target["masks"], ref["masks"].flip(-1))
                assert torch.equal(target["semantic"], ref["semantic"].flip(-1))
                x0, y0, x1, y1 = ref["boxes"].unbind(1)
                assert torch.equal(target["boxes"], torch.stack([64 - x1, y0, 64 - x0, y1], 1))
            else:
                assert torch.equal(target["boxes"], ref["boxes"])
    assert 0 < flips < 16


def test_empty_targets_have_the_right_shapes(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 10), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    doc = {"images": [{"id": 5, "file_name": "a.png", "width": 20, "height": 10}],
           "annotations": [], "categories": CATEGORIES}
    (tmp_path / "ann.json").write_text(json.dumps(doc))
    image, target = CocoDataset(tmp_path / "img", tmp_path / "ann.json", crop_size=16,
                                train=True)[0]
    assert image.shape == (3, 16, 16)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64
    assert target["masks"].shape == (0, 16, 16) and target["image_id"] == 5
    images, targets = collate([(image, target), (image, target)])
    assert stack_images(images).shape == (2, 3, 16, 16) and len(targets) == 2


# ---- a hand-made COCO folder: grayscale JPEG, odd ids, polygons, RLE, crowd -------------
@pytest.fixture
def tiny_coco(tmp_path):
    img_dir = tmp_path / "val2017"
    img_dir.mkdir()
    gray = np.full((30, 40), 90, np.uint8)
    gray[5:15, 10:30] = 200
    Image.fromarray(gray, "L").save(img_dir / "000000000042.jpg", quality=95)
    Image.new("RGB", (16, 12), (0, 128, 255)).save(img_dir / "000000000043.jpg")
    rle = mask_utils.encode(np.asfortranarray(np.pad(np.ones((4, 6), np.uint8),
                                                     ((20, 6), (25, 9)))))
    rle["counts"] = rle["counts"].decode()
    doc = {
        "images": [{"id": 42, "file_name": "000000000042.jpg", "width": 40, "height": 30},
                   {"id": 43, "file_name": "000000000043.jpg", "width": 16, "height": 12}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0,
             "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]], "area": 200.0,
             "bbox": [10, 5, 20, 10]},
            {"id": 2, "image_id": 42, "category_id": 90, "iscrowd": 0,
             "segmentation": rle, "area": 24.0, "bbox": [25, 20, 6, 4]},
            {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 1,
             "segmentation": {"size": [30, 40], "counts": [0, 30, 1170]},
             "area": 30.0, "bbox": [0, 0, 1, 30]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"},
                       {"id": 90, "name": "toothbrush"}],
    }
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text(json.dumps(doc))
    return img_dir, ann


def test_real_coco_style_folder(tiny_coco):
    ds = CocoDataset(*tiny_coco)
    assert len(ds) == 2 and ds.num_classes == 91
    assert ds.category_names == {1: "person", 18: "dog", 90: "toothbrush"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dataset converts grayscale quietly
        image, target = ds[0]
    assert image.shape == (3, 30, 40)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert target["image_id"] == 42
    assert target["labels"].tolist() == [18, 90], "the crowd annotation is skipped"
    assert target["iscrowd"].tolist() == [0, 0]
    assert target["masks"][0].sum() > 150 and target["masks"][1].sum() == 24
    assert target["boxes"][1].tolist() == [25, 20, 31, 24]
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert abs(x0 - 10) <= 1 and abs(y0 - 5) <= 1 and abs(x1 - 30) <= 1 and abs(y1 - 15) <= 1
    assert set(target["semantic"].unique().tolist()) == {0, 18, 90}
    # with crowd kept, the crowd region is there and flagged
    _, target = CocoDataset(*tiny_coco, skip_crowd=False)[0]
    assert target["iscrowd"].tolist() == [0, 0, 1] and target["masks"][2].sum() == 30
    # an annotation without a segmentation keeps its (cropped) box; dropped when cut away
    doc = json.loads(tiny_coco[1].read_text())
    doc["annotations"].append({"id": 4, "image_id": 42, "category_id": 18, "iscrowd": 0,
                               "segmentation": [], "area": 40.0, "bbox": [30, 0, 10, 4]})
    tiny_coco[1].write_text(json.dumps(doc))
    cropped = CocoDataset(*tiny_coco, crop_size=20)
    _, target = cropped.view(0, (28, 0))  # the polygon object loses 19 of 21 columns: dropped
    assert target["labels"].tolist() == [18] and target["boxes"][0].tolist() == [2, 0, 12, 4]
    assert target["masks"][0].sum() == 0 and target["area"][0] == 40
    _, target = cropped.view(0, (10, 0))  # now the box-only object lies outside the window
    assert target["labels"].tolist() == [18] and target["masks"][0].sum() > 150
    # an image without annotations
    image, target = ds[1]
    assert image.shape == (3, 12, 16) and target["boxes"].shape == (0, 4)
    # crops of an image smaller than the crop are padded
    image, target = CocoDataset(*tiny_coco, crop_size=48, train=True)[0]
    assert image.shape == (3, 48, 48) and target["labels"].tolist() == [18, 90, 18]
    assert target["area"].tolist()[1:] == [24, 40], "padding keeps every object whole"


def test_dataset_for_finds_coco_via_env(tiny_coco, monkeypatch):
    image_dir, ann_file = tiny_coco
    monkeypatch.setenv("ICM_COCO_ROOT", str(image_dir.parent))
    ds = dataset_for(get_preset("gpu"), "val")
    assert ds.image_dir == image_dir and ds.ann_file == ann_file
    assert not ds.train and ds.crop_size is None and len(ds) == 2


def test_bad_annotation_file_gives_clear_error(tmp_path):
    (tmp_path / "ann.json").write_text("{}")
    with pytest.raises(ValueError, match="COCO"):
        CocoDataset(tmp_path, tmp_path / "ann.json")
    with pytest.raises(FileNotFoundError, match="annotation"):
        CocoDataset(tmp_path, tmp_path / "missing.json")

def test_stack_images_needs_one_size():
    assert stack_images([torch.zeros(3, 4, 5)] * 2).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="one size"):
        stack_images([torch.zeros(3, 4, 5), torch.zeros(3, 5, 5)])


def test_dataloader_with_collate(world):
    ds = CocoDataset(*world, crop_size=32, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    images, targets = next(iter(loader))
    assert stack_images(images).shape == (4, 3, 32, 32) and len(targets) == 4
