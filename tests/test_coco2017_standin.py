"""The ``gpu`` preset's data and evaluation path on a COCO-2017-layout stand-in, on the CPU.

The synthetic world is exported as COCO 2017 lays it out (``train2017/``, ``val2017/``,
``annotations/instances_*.json``) and ``$ICM_COCO_ROOT`` points at it. The task network is
torchvision's Faster R-CNN R50-FPN with random weights, saved where torch's hub cache keeps
the COCO-pretrained download, so it loads through the same code as the real weights; the
codec is a zoo-shaped ``mbt2018-mean`` (random weights in the hub cache too).
"""
import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from icmlib.data import dataset_for, export_coco_layout, synthetic_world
from icmlib.presets import get_preset

N = 3  # images per split: enough to check the layout, few for Faster R-CNN on a CPU


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    export_coco_layout(root, "ci", num_images=N)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ICM_COCO_ROOT", str(root))
        yield root


def test_the_export_has_coco_2017_layout(coco_root):
    for split in ("train2017", "val2017"):
        doc = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        assert len(doc["images"]) == N and doc["annotations"] and doc["categories"]
        names = sorted(p.name for p in (coco_root / split).iterdir())
        assert names == sorted(im["file_name"] for im in doc["images"])
        assert all(len(Path(n).stem) == 12 and Path(n).stem.isdigit() for n in names)
        ids = {im["id"] for im in doc["images"]}
        assert {a["image_id"] for a in doc["annotations"]} <= ids


def test_the_gpu_preset_reads_the_stand_in_as_coco(coco_root):
    val = dataset_for("gpu", split="test")  # the gpu preset reports on val2017
    assert Path(val.ann_file) == coco_root / "annotations" / "instances_val2017.json"
    assert len(val) == N
    # the same pixels and boxes as the synthetic world's test split it came from
    world_dir, world_ann = synthetic_world("ci", "test", progress=False)
    from icmlib.data import CocoDataset
    world = CocoDataset(world_dir, world_ann, train=False)
    for i in range(N):
        (a, ta), (b, tb) = val[i], world[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    train = dataset_for("gpu", split="train")
    image, target = train[0]
    assert len(train) == N and image.shape[0] == 3 and "boxes" in target


def save_random_detector(hub: Path):
    """torchvision's Faster R-CNN R50-FPN (91 COCO outputs), random weights, saved where the
    COCO-pretrained weights are downloaded to."""
    from torchvision.models import detection as tvd

    torch.manual_seed(0)
    net = tvd.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    url = tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url
    path = hub / "checkpoints" / os.path.basename(urlparse(url).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)


@pytest.mark.slow
def test_the_gpu_preset_evaluates_a_zoo_codec_on_the_stand_in_on_the_cpu(coco_root, tmp_path,
                                                                         monkeypatch):
    from compressai.zoo import image_models

    from icmlib.codec import zoo_weights
    from icmlib.evaluation import compressai_zoo_codec, evaluate_codec, reference_accuracy

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv("ICM_OFFLINE", "1")  # nothing may be downloaded
    save_random_detector(tmp_path / "hub")
    torch.manual_seed(1)
    zoo = image_models["mbt2018-mean"](quality=1, pretrained=False).eval()
    zoo.update(force=True)
    torch.save(zoo.state_dict(), zoo_weights("mbt2018-mean", 1)[1])

    gpu = get_preset("gpu")
    reference = reference_accuracy(("detection",), preset=gpu, num_images=2)
    assert set(reference) >= {"bbox_map", "bbox_map50"}
    entry = evaluate_codec(compressai_zoo_codec("mbt2018-mean", qualities=(1,)), preset=gpu,
                           tasks=("detection",), num_images=2, progress=False)
    (point,) = entry["points"]
    assert point["bpp"] > 0 and "bbox_map" in point and "psnr" in point
