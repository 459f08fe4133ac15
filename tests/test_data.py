"""Tests of icmlib.data.world: synthetic world, COCO-format loader, crops, images, COCO download."""
import json
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from icmlib.data import world as data
from icmlib.data.world import (CATEGORIES, NUM_CLASSES, CocoDataset, collate, dataset_for,
                         download_coco, generate_world, load_image, save_image,
                         stack_images, synthetic_world)
from icmlib.presets import get_preset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    image_dir, ann_file = generate_world(root, "train", 12, 64, 4, seed=3)
    return image_dir, ann_file


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


def test_blur_background_keeps_objects(world):
    image, target = CocoDataset(*world)[0]
    out = data.blur_background(image, target, sigma=2.0, margin=0)
    objects = target["semantic"] > 0
    assert torch.equal(out[:, objects], image[:, objects])
    assert (out[:, ~objects] - image[:, ~objects]).abs().mean() > 0.02


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


# ---- COCO download ---------------------------------------------------------------------
def test_download_coco_offline_gives_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(RuntimeError) as e:
        download_coco(tmp_path, "val2017")
    msg = str(e.value)
    assert data.COCO_URLS["val2017"] in msg and data.COCO_URLS["annotations"] in msg
    assert str(tmp_path) in msg
    assert not list(tmp_path.glob("*.part")), "no half-downloaded file is left behind"
    with pytest.raises(ValueError, match="split"):
        download_coco(tmp_path, "test2015")


def test_download_coco_unpacks_zips(tmp_path, monkeypatch):
    """The download path with a fake server: zips are streamed, unpacked and removed."""
    import io
    import zipfile

    def make_zip(files):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, content in files.items():
                z.writestr(name, content)
        return buf.getvalue()

    payloads = {
        data.COCO_URLS["val2017"]: make_zip({"val2017/000000000001.jpg": b"jpeg"}),
        data.COCO_URLS["annotations"]: make_zip({
            "annotations/instances_val2017.json": b"{}",
            "annotations/captions_val2017.json": b"{}"}),
    }

    class Response(io.BytesIO):
        def __init__(self, url):
            super().__init__(payloads[url])
            self.headers = {"Content-Length": str(len(payloads[url]))}

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Response(url))
    image_dir, ann_file = download_coco(tmp_path, "val")
    assert (image_dir / "000000000001.jpg").read_bytes() == b"jpeg"
    assert ann_file.read_text() == "{}"
    assert not (tmp_path / "annotations" / "captions_val2017.json").exists()
    assert not list(tmp_path.glob("*.zip"))


# ---- images ----------------------------------------------------------------------------
def test_load_image_converts_and_warns(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = load_image(tmp_path / "rgb.png")
    assert x.shape == (3, 7, 9) and torch.equal((x * 255).round().byte().permute(1, 2, 0),
                                                torch.from_numpy(rgb))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.warns(UserWarning, match="grayscale"):
        x = load_image(tmp_path / "gray.png")
    assert x.shape == (3, 7, 9) and torch.equal(x[0], x[2])
    rgba = np.concatenate([rgb, np.zeros((7, 9, 1), np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="RGBA"):
        x = load_image(tmp_path / "rgba.png")
    assert torch.equal(x, torch.ones(3, 7, 9)), "fully transparent pixels become white"
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    with pytest.warns(UserWarning, match="palette"):
        assert load_image(tmp_path / "pal.png").shape == (3, 7, 9)
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    with pytest.warns(UserWarning, match="8-bit"):
        x = load_image(tmp_path / "g16.png")
    assert torch.allclose(x[0] * 255, torch.from_numpy(rgb[..., 0]).float(), atol=0.51)


def test_load_image_errors(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "notes.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_save_image_round_trip(tmp_path):
    x = torch.rand(3, 10, 13)
    path = save_image(x, tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (13, 10)
    y = load_image(path)
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6
    save_image(x[None] * 2 - 0.5, tmp_path / "batch.png")  # [1,3,H,W], clamped
    assert load_image(tmp_path / "batch.png").shape == (3, 10, 13)
    with pytest.raises(ValueError, match="tensor"):
        save_image(torch.rand(2, 3, 4, 4), tmp_path / "bad.png")


def test_stack_images_needs_one_size():
    assert stack_images([torch.zeros(3, 4, 5)] * 2).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError, match="one size"):
        stack_images([torch.zeros(3, 4, 5), torch.zeros(3, 5, 5)])


def test_dataloader_with_collate(world):
    ds = CocoDataset(*world, crop_size=32, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    images, targets = next(iter(loader))
    assert stack_images(images).shape == (4, 3, 32, 32) and len(targets) == 4


def test_draw_annotations(world):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = CocoDataset(*world)
    fig, ax = plt.subplots()
    image, target = ds[0]
    data.draw_annotations(ax, image, target, ds.categories)
    assert len(ax.patches) == len(target["boxes"])
    assert {t.get_text() for t in ax.texts} <= {c["name"] for c in CATEGORIES}
    plt.close(fig)
    fig = data.annotation_grid(ds, range(3), cols=2)
    assert len(fig.axes) == 4
    plt.close(fig)


def test_hub_checkpoint_downloads_with_its_own_timeout_and_checks_the_hash(tmp_path, monkeypatch):
    """Pretrained weights land in torch's hub cache; the download times out on its own
    (socket's process-wide default untouched) and a file whose sha256 does not match the
    prefix in its name is refused and removed, as torch.hub does."""
    import hashlib
    import io
    import socket
    import urllib.request

    from icmlib.data.world import hub_checkpoint

    payload = b"weights"
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    calls = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    def fake_urlopen(url, *args, timeout=None, **kwargs):
        calls.append((timeout, socket.getdefaulttimeout()))
        return Response(payload)

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    good = hub_checkpoint(f"https://example.org/net-{prefix}.pth")
    assert good == tmp_path / "hub" / "checkpoints" / f"net-{prefix}.pth"
    assert good.read_bytes() == payload and calls == [(60, None)]
    assert hub_checkpoint(f"https://example.org/net-{prefix}.pth") == good  # cached: no call
    assert len(calls) == 1
    with pytest.raises(OSError, match="damaged download"):
        hub_checkpoint("https://example.org/other-deadbeef.pth")
    assert not (good.parent / "other-deadbeef.pth").exists()
