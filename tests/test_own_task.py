"""An ICM codec for a task network and a COCO-format folder of one's own (issue 15):
``icmlib.training.train_icm_codec``, the entry point of the book's "own project" page."""
import pytest
import torch
import torch.nn as nn

import json

from icmlib.codec import compress_image, decompress_file, load_codec, read_icm, write_icm
from icmlib.data import CocoDataset, NUM_CLASSES, generate_world
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask
from icmlib.training import train_icm_codec

pytestmark = pytest.mark.usefixtures("one_thread")


def ci(**overrides):
    return get_preset("ci", **overrides)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A COCO-format folder of one's own: a few images of the synthetic world, another seed."""
    root = tmp_path_factory.mktemp("my_dataset")
    for split, n in (("train", 8), ("val", 2)):
        generate_world(root, split, n, 64, 3, seed=11)
    return root


def dataset(folder, split="train"):
    return CocoDataset(folder / split, folder / "annotations" / f"instances_{split}.json")


def own_detector(num_classes=NUM_CLASSES, mask=False):
    """A torchvision detector built from torchvision's classes alone (its documented recipe
    for a custom backbone), random weights: no icmlib network in it."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1),
                             nn.ReLU())
    backbone.out_channels = 16
    kwargs = dict(num_classes=num_classes, min_size=64, max_size=64,
                  rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                  box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2))
    if mask:
        return MaskRCNN(backbone, mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2), **kwargs)
    return FasterRCNN(backbone, **kwargs)


@pytest.mark.slow
def test_a_codec_learns_for_ones_own_network_on_ones_own_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "cache"))
    detector = own_detector()
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    train = dataset(folder)
    steps = 8
    run = train_icm_codec(detector, train, val_dataset=dataset(folder, "val"),
                          preset=ci(icm_val_every=steps), rate=1, steps=steps, progress=False)

    losses = [row["loss"] for row in run["logs"]["train"]]
    assert len(losses) == steps
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses   # the codec learns
    assert all(row["task"] > 0 for row in run["logs"]["train"])      # through the task term
    assert [row["step"] for row in run["logs"]["val"]] == [steps]    # validated at the end
    assert "task_bbox_map" in run["logs"]["val"][0]
    # the network stayed as it was, the dataset passed in too
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())
    assert train.crop_size is None and not train.train
    # the run is named by the network and the folder, beside (not among) the book's codecs
    assert "/runs/own/" in run["run_dir"].replace("\\", "/")
    assert run["meta"]["task"] == "detection" and run["meta"]["strategy"] == "fixed"
    assert run["meta"]["dataset"].endswith("instances_train.json")
    codec = load_codec(run)
    assert not codec.rates and codec.config == {"N": 32, "M": 48, "blocks": 0}

    # an image of one's own to a .icm file and back, by the codec reloaded from its run folder
    image = dataset(folder, "val")[0][0]
    size = write_icm(tmp_path / "image.icm", compress_image(codec, image))
    assert size == (tmp_path / "image.icm").stat().st_size > 0
    reloaded = load_codec(f"{run['run_dir']}/codec.pt")
    decoded = decompress_file(reloaded, read_icm(tmp_path / "image.icm"))
    assert decoded.shape == image.shape
    assert torch.equal(decoded, decompress_file(codec, compress_image(codec, image)))
    assert 0 <= float(decoded.min()) and float(decoded.max()) <= 1


def test_a_variable_rate_codec_by_default(folder, tmp_path):
    run = train_icm_codec(FrozenTask(own_detector(), "detection"), dataset(folder), preset=ci(),
                          steps=4, progress=False, out_dir=tmp_path / "run")
    assert load_codec(run).rates == len(ci().rd_lambdas)
    assert [row["rate_index"] for row in run["logs"]["train"]] == [0, 1, 2, 3]
    assert run["logs"]["val"] == []  # no val_dataset: no validation
    assert (tmp_path / "run" / "codec.pt").is_file()


def test_torchvision_detectors_are_wrapped_by_kind():
    from icmlib.training.own import as_frozen_task

    assert as_frozen_task(own_detector()).task == "detection"
    assert as_frozen_task(own_detector(mask=True)).task == "instance"
    frozen = FrozenTask(own_detector(), "detection")
    assert as_frozen_task(frozen) is frozen


@pytest.mark.parametrize("case, error, words", [
    ("task_name", TypeError, "FrozenTask"),
    ("plain_module", TypeError, "torchvision FasterRCNN"),
    ("dataset_list", TypeError, "CocoDataset"),
    ("val_tensor", TypeError, "val_dataset must be"),
    ("mse", ValueError, "does not train an ICM codec"),
    ("too_few_classes", ValueError, "category ids go up to 4"),
    ("rate", ValueError, "rate index 9 is out of range"),
    ("steps", ValueError, "steps must be >= 1"),
])
def test_bad_input_is_named_before_any_training(folder, tmp_path, case, error, words):
    train = dataset(folder)
    args = dict(task=own_detector(), dataset=train, preset=ci(), progress=False,
                out_dir=tmp_path / "run")
    args.update({
        "task_name": dict(task="detection"),
        "plain_module": dict(task=nn.Conv2d(3, 3, 1)),
        "dataset_list": dict(dataset=[train[0]]),
        "val_tensor": dict(val_dataset=torch.zeros(1, 3, 64, 64)),
        "mse": dict(strategy="mse"),
        "too_few_classes": dict(task=own_detector(num_classes=3)),
        "rate": dict(rate=9),
        "steps": dict(steps=0),
    }[case])
    task, data = args.pop("task"), args.pop("dataset")
    with pytest.raises(error, match=words):
        train_icm_codec(task, data, **args)
    assert not (tmp_path / "run" / "codec.pt").exists()


class Predictions(nn.Module):
    """A network that returns the wrong thing: predictions (a tensor) instead of losses."""

    def forward(self, images, targets=None):
        return torch.stack(images).mean((1, 2, 3))


class NonScalarLosses(nn.Module):
    def forward(self, images, targets=None):
        return {"loss_per_pixel": torch.stack(images).mean(1)}


class DetachedInput(nn.Module):
    """Losses of the right form, but computed from a copy of the image cut off the graph."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, images, targets=None):
        return {"loss_classifier": self.w * torch.stack(images).detach().mean()}


@pytest.mark.parametrize("model, error, words", [
    (Predictions(), TypeError, "did not return its training losses"),
    (NonScalarLosses(), TypeError, "loss_per_pixel"),
    (DetachedInput(), ValueError, "no gradient reaches the image"),
])
def test_a_network_that_does_not_return_its_losses_is_named(folder, tmp_path, model, error,
                                                            words):
    with pytest.raises(error, match=words):
        train_icm_codec(FrozenTask(model, "detection"), dataset(folder), preset=ci(),
                        progress=False, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_folder_that_is_not_coco_format_is_named(folder, tmp_path):
    images = folder / "train"
    with pytest.raises(FileNotFoundError, match="no COCO annotation file"):
        CocoDataset(images, tmp_path / "annotations" / "instances_train.json")
    (tmp_path / "labels.json").write_text(json.dumps([{"file": "000000.png", "label": 1}]))
    with pytest.raises(ValueError, match="not a COCO instances file"):
        CocoDataset(images, tmp_path / "labels.json")
    with pytest.raises(FileNotFoundError, match="no image folder"):
        CocoDataset(tmp_path / "missing", folder / "annotations" / "instances_train.json")


def test_the_training_view_keeps_a_subset(folder):
    from icmlib.training.own import training_view

    train = dataset(folder)
    train.ids = train.ids[:3]
    view = training_view(train, 48, seed=5)
    assert view.ids == train.ids and view.train and view.crop_size == 48
    image, _ = view[0]
    assert image.shape == (3, 48, 48)
