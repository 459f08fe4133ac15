"""Unit tests of icmlib.segmentation: layers, metrics, data prep, models, training, cost, transfer."""

import pytest
import torch
import torch.nn.functional as F

import icmlib.segmentation as seg
from icmlib.presets import get_preset
from icmlib.segmentation import (FCN, JointAugment, PatchClassifier, PatchDiscriminator, UNet,
                                 VAESegmenter, bed_of_nails_unpool, boundary_f1, confusion_matrix,
                                 dice_loss, dice_score, mask_boundary, max_pool_with_indices,
                                 max_unpool, mean_pixel_accuracy, miou, nearest_unpool, normalize,
                                 denormalize, per_class_iou, pixel_accuracy, resize_pair,
                                 transposed_conv1d_by_hand)

torch.set_num_threads(1)


def toy_batch(n=8, size=32, num_classes=3, seed=0):
    """Images with axis-aligned rectangles; class = colour channel that is bright."""
    g = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.rand(n, 3, size, size, generator=g)
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(2):
            c = int(torch.randint(1, num_classes, (1,), generator=g))
            t, l = torch.randint(0, size - 12, (2,), generator=g).tolist()
            h, w = torch.randint(6, 12, (2,), generator=g).tolist()
            masks[i, t:t + h, l:l + w] = c
            images[i, c - 1, t:t + h, l:l + w] = 0.9
    return images, masks


# --- resampling layers ------------------------------------------------------------------

def test_nearest_and_bed_of_nails_unpool_exact():
    x = torch.tensor([[1., 2.], [3., 4.]])
    assert torch.equal(nearest_unpool(x), torch.tensor(
        [[1., 1., 2., 2.], [1., 1., 2., 2.], [3., 3., 4., 4.], [3., 3., 4., 4.]]))
    assert torch.equal(bed_of_nails_unpool(x), torch.tensor(
        [[1., 0., 2., 0.], [0., 0., 0., 0.], [3., 0., 4., 0.], [0., 0., 0., 0.]]))
    # batched, factor 3, and consistent with PyTorch's nearest interpolation
    xb = torch.rand(2, 3, 4, 5)
    assert torch.equal(nearest_unpool(xb, 3), F.interpolate(xb, scale_factor=3, mode="nearest"))
    assert bed_of_nails_unpool(xb, 3).sum().item() == pytest.approx(xb.sum().item(), rel=1e-6)


def test_max_unpool_puts_values_back_where_they_were():
    x = torch.tensor([[[[1., 5., 0., 2.],
                        [3., 0., 7., 1.],
                        [0., 0., 1., 0.],
                        [4., 2., 0., 9.]]]])
    pooled, idx = max_pool_with_indices(x)
    assert torch.equal(pooled, torch.tensor([[[[5., 7.], [4., 9.]]]]))
    assert torch.equal(idx, torch.tensor([[[[1, 6], [12, 15]]]]))
    expected = torch.tensor([[[[0., 5., 0., 0.],
                               [0., 0., 7., 0.],
                               [0., 0., 0., 0.],
                               [4., 0., 0., 9.]]]])
    assert torch.equal(max_unpool(pooled, idx), expected)
    with pytest.raises(ValueError, match="same shape"):
        max_unpool(pooled, idx[..., :1])


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_transposed_conv_by_hand_matches_pytorch(stride):
    x = torch.tensor([1., 2., 3.])
    w = torch.tensor([1., -1., 2.])
    ours = transposed_conv1d_by_hand(x, w, stride)
    ref = F.conv_transpose1d(x[None, None], w[None, None], stride=stride)[0, 0]
    assert torch.allclose(ours, ref)
    g = torch.Generator().manual_seed(stride)
    x, w = torch.randn(7, generator=g), torch.randn(4, generator=g)
    assert torch.allclose(transposed_conv1d_by_hand(x, w, stride),
                          F.conv_transpose1d(x[None, None], w[None, None], stride=stride)[0, 0],
                          atol=1e-6)


def test_transposed_conv_by_hand_known_values():
    x, w = torch.tensor([1., 2., 3.]), torch.tensor([1., -1., 2.])
    assert transposed_conv1d_by_hand(x, w, 1).tolist() == [1., 1., 3., 1., 6.]
    assert transposed_conv1d_by_hand(x, w, 2).tolist() == [1., -1., 4., -2., 7., -3., 6.]
    with pytest.raises(ValueError):
        transposed_conv1d_by_hand(x[None], w, 1)


# --- metrics ----------------------------------------------------------------------------

def test_confusion_iou_pixel_accuracy_hand_made():
    target = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [2, 2, 2, 2],
                           [2, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1],
                         [0, 0, 1, 1],
                         [2, 2, 2, 0],
                         [2, 2, 2, 2]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 4, 0], [1, 0, 7]]
    assert pixel_accuracy(pred, target) == pytest.approx(14 / 16)
    assert mean_pixel_accuracy(pred, target, 3) == pytest.approx((3 / 4 + 1 + 7 / 8) / 3)
    iou = per_class_iou(pred, target, 3)
    assert iou.tolist() == pytest.approx([3 / 5, 4 / 5, 7 / 8])
    assert miou(pred, target, 3) == pytest.approx((3 / 5 + 4 / 5 + 7 / 8) / 3)
    assert dice_score(pred, target, 3) == pytest.approx((6 / 8 + 8 / 9 + 14 / 15) / 3)
    # a class absent from both prediction and target does not count
    assert miou(pred, target, 5) == pytest.approx(miou(pred, target, 3))
    # logits are accepted in place of labels
    logits = F.one_hot(pred, 3).permute(2, 0, 1).float()
    assert miou(logits, target, 3) == pytest.approx(miou(pred, target, 3))
    assert miou(target, target, 3) == 1.0
    with pytest.raises(ValueError, match="labels must lie"):
        miou(pred, target + 5, 3)
    with pytest.raises(ValueError, match="same shape"):
        miou(pred[:2], target, 3)


def test_mask_boundary_is_ring():
    m = torch.zeros(6, 6, dtype=torch.bool)
    m[1:5, 1:5] = True
    b = mask_boundary(m)
    assert b.sum().item() == 12                    # the 4x4 square's outer ring
    assert not b[2:4, 2:4].any()
    assert mask_boundary(torch.ones(5, 5, dtype=torch.bool)).sum().item() == 0  # border is not an edge


def test_boundary_f1_perfect_and_shifted():
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0, 8:20, 8:24] = 1
    target[1, 4:28, 10:20] = 2
    assert boundary_f1(target, target, 3) == 1.0
    shifted = torch.roll(target, shifts=4, dims=-1)
    f_far = boundary_f1(shifted, target, 3, tolerance=1)
    assert f_far < 0.8
    # a larger tolerance forgives the shift (partly or fully)
    assert boundary_f1(shifted, target, 3, tolerance=4) > f_far
    assert boundary_f1(shifted, target, 3, tolerance=4) == pytest.approx(1.0)
    # missing an object entirely gives 0 for that class
    empty = torch.zeros_like(target)
    assert boundary_f1(empty, target, 3) == 0.0


def test_dice_loss_perfect_bad_and_gradient():
    target = torch.tensor([[[0, 1], [2, 1]]])
    perfect = 50 * F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(perfect, target, smooth=0).item() == pytest.approx(0.0, abs=1e-6)
    wrong = 50 * F.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float()
    assert dice_loss(wrong, target, smooth=0).item() == pytest.approx(1.0, abs=1e-6)
    uniform = torch.zeros(1, 3, 2, 2, requires_grad=True)
    loss = dice_loss(uniform, target, smooth=0)
    # p = 1/3 everywhere: class 0 dice = 2*(1/3)/(4/3+1) ...
    expected = 1 - sum(2 * (n / 3) / (4 / 3 + n) for n in (1, 2, 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert uniform.grad.abs().sum() > 0


# --- data preparation --------------------------------------------------------------------

def test_normalize_roundtrip_and_resize_pair_keeps_labels():
    img = torch.rand(3, 8, 8)
    assert torch.allclose(denormalize(normalize(img)), img, atol=1e-6)
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[:, 4:] = 3
    mask[:4, :4] = 1
    big_img, big_mask = resize_pair(img, mask, 13)
    assert big_img.shape == (3, 13, 13) and big_mask.shape == (13, 13)
    assert set(big_mask.unique().tolist()) <= {0, 1, 3}    # nearest never invents class 2
    small_img, small_mask = resize_pair(img[None], mask[None], (4, 6))
    assert small_img.shape == (1, 3, 4, 6) and small_mask.dtype == torch.long


def test_joint_augment_keeps_image_and_mask_aligned():
    # the image encodes its own mask: channel 0 is 1 exactly where the mask is 1
    mask = torch.zeros(40, 40, dtype=torch.long)
    mask[10:30, 5:20] = 1
    image = torch.stack([mask.float(), mask.float(), mask.float()])
    aug = JointAugment(crop_size=32, flip=True, max_rotation=30, color_jitter=0.0, blur_prob=0.0)
    g = torch.Generator().manual_seed(0)
    flips = set()
    for _ in range(10):
        img_a, mask_a = aug(image, mask, g)
        assert img_a.shape == (3, 32, 32) and mask_a.shape == (32, 32)
        assert mask_a.dtype == torch.long and set(mask_a.unique().tolist()) <= {0, 1}
        inside = img_a[0][mask_a == 1]
        outside = img_a[0][mask_a == 0]
        # nearest-rotated mask and bilinear-rotated image agree except at edge pixels
        assert (inside > 0.5).float().mean() > 0.9
        assert (outside < 0.5).float().mean() > 0.97
        flips.add(mask_a.sum().item())
    assert len(flips) > 1                      # it is actually random
    # photometric changes leave the mask alone
    photo = JointAugment(flip=False, max_rotation=0, color_jitter=0.5, blur_prob=1.0)
    img_p, mask_p = photo(image, mask, torch.Generator().manual_seed(1))
    assert torch.equal(mask_p, mask) and not torch.equal(img_p, image)
    with pytest.raises(ValueError):
        JointAugment(crop_size=64)(image, mask)


# --- models ------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [UNet(3, 4, 8, 2), UNet(3, 4, 8, 3, skip=False), FCN(3, 4, 8, 2),
                                   VAESegmenter(3, 4, 8, 2, 3)])
def test_models_keep_input_size(model):
    out = model(torch.rand(2, 3, 30, 37))
    assert out.shape == (2, 4, 30, 37)


def test_unet_skip_changes_architecture_and_errors_are_clear():
    assert sum(p.numel() for p in UNet(3, 4, 8, 2).parameters()) > \
        sum(p.numel() for p in UNet(3, 4, 8, 2, skip=False).parameters())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        UNet(3, 4)(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="input channels"):
        UNet(3, 4)(torch.rand(1, 1, 16, 16))


def test_patch_classifier_dense_equals_sliding_window():
    torch.manual_seed(0)
    model = PatchClassifier(3, 4, width=6, patch_size=7).eval()
    images = torch.rand(2, 3, 12, 10)
    slide = seg.sliding_window_predict(model, images, windows_per_batch=37)
    with torch.no_grad():
        dense = model.dense(images)
    assert dense.shape == (2, 4, 12, 10)
    assert torch.allclose(slide, dense, atol=1e-5)


def test_discriminator_and_vae_outputs():
    d = PatchDiscriminator(3, 4, 8)
    assert d(torch.rand(2, 3, 32, 32), torch.rand(2, 4, 32, 32)).shape[:2] == (2, 1)
    vae = VAESegmenter(3, 4, 8, 2, 3)
    logits, kl = vae.training_outputs(torch.rand(2, 3, 16, 16), torch.randint(4, (2, 16, 16)))
    assert logits.shape == (2, 4, 16, 16) and kl.shape == (2,) and (kl >= -1e-5).all()


# --- training ----------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ["ce", "ce+dice"])
def test_a_few_unet_steps_lower_the_loss(loss):
    torch.manual_seed(0)
    data = toy_batch()
    model = UNet(3, 3, width=8, depth=2)
    model.eval()
    with torch.no_grad():
        before = F.cross_entropy(model(data[0]), data[1]).item()
    result = seg.train_segmenter(model, data, data, steps=25, batch_size=4, loss=loss,
                                 lr=1e-2, val_every=5, progress=False)
    with torch.no_grad():
        after = F.cross_entropy(model(data[0]), data[1]).item()
    assert after < before
    assert result["history"][-1]["loss"] < result["history"][0]["loss"]
    assert 0 <= result["val"]["miou"] <= 1 and result["best_step"] > 0


def test_training_options_and_errors():
    data = toy_batch(4, 16)
    model = UNet(3, 3, width=4, depth=1)
    r = seg.train_segmenter(model, data, data, steps=6, batch_size=2, optimizer="sgd",
                            schedule="step", clip_norm=0.5, val_every=1, patience=1,
                            progress=False, augment=JointAugment(max_rotation=5))
    assert r["steps_run"] <= 6 and all(h["grad_norm"] >= 0 for h in r["history"])
    with pytest.raises(ValueError, match="optimizer"):
        seg.train_segmenter(model, data, steps=1, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="loss"):
        seg.train_segmenter(model, data, steps=1, loss="focal", progress=False)


def test_frozen_regime_keeps_encoder_and_its_statistics():
    data = toy_batch(4, 16)
    source = UNet(3, 2, 4, 2)
    model = seg.transfer_model("frozen", 3, get_preset("ci", seg_width=4, seg_depth=2),
                               source.state_dict())
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    assert all(torch.equal(enc_before[k], source.encoder.state_dict()[k]) for k in enc_before)
    seg.train_segmenter(model, data, steps=3, batch_size=2, progress=False)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc_before[k]), k             # weights *and* BN running stats
    last = seg.set_trainable(UNet(3, 3, 4, 2), "last")
    assert not any(p.requires_grad for p in last.encoder_stages[0].parameters())
    assert all(p.requires_grad for p in last.encoder_stages[-1].parameters())


def test_cgan_and_vae_losses_train():
    torch.manual_seed(0)
    data = toy_batch(4, 16)
    gen = UNet(3, 3, 4, 2)
    adv = seg.AdversarialSegLoss(PatchDiscriminator(3, 3, 4))
    r = seg.train_segmenter(gen, data, steps=3, batch_size=2, loss=adv, progress=False)
    assert {"ce", "adv", "d_loss"} <= set(r["history"][-1])
    vae = VAESegmenter(3, 3, 4, 2, 2)
    r = seg.train_segmenter(vae, data, data, steps=3, batch_size=2,
                            loss=seg.vae_loss(), progress=False, val_every=3)
    assert r["history"][-1]["kl"] >= 0


def test_cost_measurements():
    table = seg.compare_resolution_cost(3, image_size=32, batch_size=1, width=4, depth=2,
                                        full_res_layers=(3,))
    rf = table["receptive field (px)"]
    assert rf.iloc[0] == 7                          # 3 layers of 3x3 at full resolution
    assert rf.iloc[1] > rf.iloc[0]                  # downsampling sees further
    assert (table["activations (MiB, counted)"] > 0).all()
    model = PatchClassifier(3, 3, width=4, patch_size=5)
    cost, diff = seg.compare_inference_cost(model, torch.rand(1, 3, 16, 16))
    assert diff < 1e-5
    assert cost.loc["sliding window", "conv positions/image"] > cost.loc["fully convolutional",
                                                                        "conv positions/image"]


def test_imagenet_backbone_error_is_clear():
    with pytest.raises(ValueError, match="unknown torchvision model"):
        seg.imagenet_backbone("not_a_model")
    net = seg.imagenet_segmenter("resnet18", 3, pretrained=False, width=8)
    assert net(torch.rand(1, 3, 40, 40)).shape == (1, 3, 40, 40)


@pytest.mark.slow       # generates a small synthetic world first (a few seconds)
def test_segmenter_for_trains_once_then_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    preset = get_preset("ci", seg_steps=2, seg_val_every=1, seg_width=4, seg_depth=2)
    model, record = seg.segmenter_for("unet", preset, progress=False)
    assert record["steps_run"] == 2 and set(record["val"]) >= {"miou", "boundary_f1"}
    images, masks = seg.segmentation_data(preset, "val")
    assert images.shape[-2:] == masks.shape[-2:] == (preset.seg_image_size,) * 2
    again, record2 = seg.segmenter_for("unet", preset, progress=False)
    assert record2["train_seconds"] == record["train_seconds"]          # loaded, not retrained
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    with pytest.raises(ValueError, match="unknown segmenter"):
        seg.segmenter_for("not_a_segmenter", preset)


def test_segmenter_cache_key_follows_the_world_generator_version(monkeypatch):
    """A new world generator (WORLD_VERSION) draws other images: every cached segmenter
    must then be retrained, so the version is part of each segmenter's key."""
    import icmlib.data
    import icmlib.segmentation.train as seg_train   # where segmenter_for looks train_or_load up

    keys = []

    class Stop(Exception):
        pass

    def capture(kind, config, train, **kwargs):
        keys.append(config)
        raise Stop  # before any training

    monkeypatch.setattr(seg_train, "train_or_load", capture)
    for version in ("1", "2"):
        monkeypatch.setattr(icmlib.data, "WORLD_VERSION", version)
        with pytest.raises(Stop):
            seg_train.segmenter_for("fcn", "ci", progress=False)
    assert keys[0] != keys[1] and keys[1]["world_version"] == "2"
