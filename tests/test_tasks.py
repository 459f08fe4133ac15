"""Tests of icmlib.tasks: the small task networks, the frozen-task wrapper, training and
evaluation (ci preset), and the clear error when pretrained weights cannot be fetched."""
import urllib.error

import pytest
import torch

from icmlib import tasks
from icmlib.data import NUM_CLASSES, collate, dataset_for, stack_images
from icmlib.presets import get_preset

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def preset():
    return get_preset("ci")


@pytest.fixture(scope="module")
def batch(preset):
    ds = dataset_for(preset, "train", train=True)
    images, targets = collate([ds[i] for i in range(2)])
    return stack_images(images), targets


@pytest.mark.parametrize("task", tasks.TASKS)
def test_small_networks_give_losses_and_predictions(task, preset, batch):
    torch.manual_seed(0)
    model = tasks.build_task_network(task, preset)
    if task == "detection":
        from torchvision.models.detection import FasterRCNN
        assert type(model) is FasterRCNN
    if task == "instance":
        from torchvision.models.detection import MaskRCNN
        assert type(model) is MaskRCNN
    frozen = tasks.FrozenTask(model, task)
    images, targets = batch
    torch.manual_seed(1)                 # the RPN / RoI heads sample anchors at random
    losses = frozen.losses(images, targets)
    assert sorted(losses) == sorted(tasks.task_loss_names(task))
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    torch.manual_seed(1)
    assert torch.allclose(frozen.loss(images, targets), sum(losses.values()))
    preds = frozen.predict(images)
    assert len(preds) == len(images)
    if task == "semantic":
        assert preds[0]["semantic"].shape == images.shape[-2:]
        assert int(preds[0]["semantic"].max()) < NUM_CLASSES
    else:
        assert {"boxes", "labels", "scores"} <= set(preds[0])
        assert ("masks" in preds[0]) == (task == "instance")


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("task", tasks.TASKS)
def test_frozen_task_never_changes_while_the_codec_learns(task, preset, batch):
    from icmlib.codec import ICMCodec, run_codec

    torch.manual_seed(0)
    # an untrained network with ordinary (not yet frozen) BatchNorm layers: the wrapper
    # alone must keep its running statistics from moving
    model = tasks.build_task_network(task, preset)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    frozen = tasks.FrozenTask(model, task)
    frozen.train()                       # a training loop may call this: must not matter
    codec = ICMCodec.from_preset(preset)
    codec.train()
    task_before = _state(model)
    codec_before = _state(codec)
    opt = torch.optim.Adam(codec.parameters(), lr=1e-2)
    images, targets = batch
    for _ in range(2):
        x_hat = run_codec(codec, images)["x_hat"]
        loss = frozen.loss(x_hat, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.parameters())
    after = _state(model)
    for k, v in task_before.items():
        assert torch.equal(v, after[k]), f"task network tensor {k} changed"
    moved = [k for k, v in codec_before.items() if not torch.equal(v, codec.state_dict()[k])]
    assert any(k.startswith("g_a") for k in moved) and any(k.startswith("g_s") for k in moved)


@pytest.mark.parametrize("task", ["detection", "semantic"])
def test_gradient_reaches_the_input_image(task, preset, batch):
    torch.manual_seed(0)
    frozen = tasks.FrozenTask(tasks.build_task_network(task, preset), task)
    images, targets = batch
    x = images.clone().requires_grad_(True)
    frozen.loss(x, targets).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_frozen_task_losses_are_the_shared_loss_code(preset, batch):
    """FrozenTask.losses is task_losses in the loss mode: the same numbers on the same network."""
    torch.manual_seed(0)
    model = tasks.build_task_network("semantic", preset).eval()
    images, targets = batch
    frozen = tasks.FrozenTask(model, "semantic")
    assert torch.equal(frozen.losses(images, targets)["loss_ce"],
                       tasks.task_losses(model, "semantic", list(images), targets)["loss_ce"])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        tasks.task_losses(model, "semantic", list(images), targets[:1])


def test_frozen_task_clear_errors(preset, batch):
    frozen = tasks.FrozenTask(tasks.build_task_network("instance", preset), "instance")
    images, targets = batch
    with pytest.raises(ValueError, match="missing"):
        frozen.losses(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        frozen.losses(images[:, :1], targets)
    with pytest.raises(ValueError, match="unknown task"):
        tasks.build_task_network("keypoints", preset)


def test_pretrained_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    import socket
    import urllib.request

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))   # an empty hub cache
    default_timeouts = []

    def offline(*args, **kwargs):
        default_timeouts.append(socket.getdefaulttimeout())
        raise urllib.error.URLError("simulated: no network")

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    gpu = get_preset("gpu")
    for task, name in (("detection", "fasterrcnn_resnet50_fpn_coco"),
                       ("instance", "maskrcnn_resnet50_fpn_coco")):
        with pytest.raises(tasks.PretrainedWeightsUnavailable) as info:
            tasks.build_task_network(task, gpu)
        msg = str(info.value)
        assert "https://download.pytorch.org/models/" + name in msg
        assert str(tmp_path / "hub" / "checkpoints") in msg
    # the download has a timeout of its own: the process-wide socket default, which every
    # other connection of the process uses, is never changed
    assert default_timeouts == [None, None]


def test_train_task_and_train_or_load(preset, tmp_path, monkeypatch):
    import icmlib.tasks.train

    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    calls = []

    def spy(model, task, images, targets):   # training uses the frozen task's loss code
        calls.append(model.training)
        return tasks.task_losses(model, task, images, targets)

    monkeypatch.setattr(icmlib.tasks.train, "task_losses", spy)
    result = tasks.train_task("detection", preset, progress=False, steps=6, eval_every=3)
    assert calls == [True] * 6
    assert set(result) == {"state_dict", "config", "metrics", "history"}
    m = result["metrics"]
    assert 0.0 <= m["bbox_map"] <= 1.0 and m["score"] == m["bbox_map"]
    assert any("val_bbox_map" in h for h in result["history"])
    assert any("loss" in h for h in result["history"])
    # train-or-load: the first call trains and caches, the second loads the same weights
    net = tasks.task_network("semantic", preset, steps=4, progress=False)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net.task_info["checkpoint"].endswith(".pt")
    again = tasks.task_network("semantic", preset, steps=4, progress=False)
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert 0.0 <= again.task_info["metrics"]["miou"] <= 1.0


def test_evaluate_task_scores_replacement_images(preset):
    torch.manual_seed(0)
    model = tasks.build_task_network("semantic", preset)
    val = dataset_for(preset, "val")
    same = tasks.evaluate_task(model, "semantic", val, max_images=4)
    images = [val[i][0] for i in range(4)]
    again = tasks.evaluate_task(model, "semantic", val, images=images, max_images=4)
    assert same == again
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored
    with pytest.raises(ValueError, match="crop decoded images"):
        tasks.evaluate_task(model, "semantic", val, images=[im[:, :32] for im in images],
                            max_images=4)
    assert model.training and all(p.requires_grad for p in model.parameters())  # after an error too


def test_config_changes_with_the_preset(preset):
    a = tasks.task_config("detection", preset)
    b = tasks.task_config("detection", preset.replace(task_lr=1e-2))
    assert a != b and a["anchor_sizes"] == tasks.anchor_sizes(preset.task_image_size)
    # Mask R-CNN fine-tuned from the detector: the detector's config is part of its key
    inst = tasks.task_config("instance", preset)
    assert inst["init"] == a and inst["steps"] == preset.task_instance_steps
    scratch = tasks.task_config("instance", preset.replace(task_instance_init=""))
    assert "init" not in scratch and scratch["steps"] == preset.task_steps


def test_config_covers_loader_workers(preset):
    """Loader workers draw other flips than the main process, so other weights: part of the
    key, but only when not 0 (networks trained with 0 workers keep their keys)."""
    a = tasks.task_config("detection", preset)
    assert preset.num_workers == 0 and "num_workers" not in a
    assert tasks.task_config("detection", preset.replace(num_workers=2)) != a


def test_small_backbone_strides(preset):
    for stride in (4, 8):
        net = tasks.SmallBackboneFPN(8, 16, finest_stride=stride)
        feats = net(torch.zeros(1, 3, 64, 64))
        assert [f.shape[-1] for f in feats.values()] == [64 // stride, 32 // stride, 16 // stride]
        assert all(f.shape[1] == 16 for f in feats.values())


@pytest.mark.parametrize("task", ["detection", "instance"])
def test_features_are_the_feature_pyramid_and_reach_the_image(task, preset, batch):
    """FrozenTask.features: one map per pyramid level, equal for equal images, with a
    gradient into the image and none into the frozen weights."""
    torch.manual_seed(0)
    frozen = tasks.FrozenTask(tasks.build_task_network(task, preset), task)
    images = batch[0].clone().requires_grad_(True)
    maps = frozen.features(images)
    assert len(maps) == len(frozen.model.backbone(frozen.model.transform(
        list(batch[0]))[0].tensors))
    assert all(m.shape[0] == len(images) for m in maps)
    again = frozen.features(batch[0])
    assert all(torch.equal(a.detach(), b) for a, b in zip(maps, again))
    sum(m.square().mean() for m in maps).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in frozen.model.parameters())


def test_features_refuse_a_network_without_a_feature_pyramid(preset, batch):
    frozen = tasks.FrozenTask(tasks.build_task_network("semantic", preset), "semantic")
    with pytest.raises(ValueError, match="has none"):
        frozen.features(batch[0])
    other = tasks.FrozenTask(torch.nn.Conv2d(3, 4, 3), "detection")  # not an R-CNN
    with pytest.raises(ValueError, match="Conv2d has no such pair"):
        other.features(batch[0])
