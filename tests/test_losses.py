"""The loss terms of eq. 3: units, both streams, the task term, the weighted sum."""
import math

import pytest
import torch

from icmlib.codec import losses
from icmlib.codec import ICMCodec


pytestmark = pytest.mark.usefixtures("one_thread")


def test_rate_counts_both_streams_in_bits_per_pixel():
    like = {"y": torch.full((2, 4, 2, 2), 0.5), "z": torch.full((2, 4, 1, 1), 0.25)}
    # y: 32 symbols x 1 bit, z: 8 symbols x 2 bits = 48 bits over 2 x 8 x 8 pixels
    assert float(losses.rate_bpp(like, 2 * 8 * 8)) == pytest.approx(48 / 128)
    only_y = float(losses.rate_bpp({"y": like["y"]}, 128))
    assert only_y == pytest.approx(32 / 128)
    with pytest.raises(ValueError, match="num_pixels"):
        losses.rate_bpp(like, 0)


def test_rate_matches_codec_likelihoods_and_real_bits():
    torch.manual_seed(0)
    net = ICMCodec(16, 24).eval()
    net.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        out = net(x)
    bpp = float(losses.rate_bpp(out["likelihoods"], 64 * 64))
    manual = sum(float((-torch.log2(l)).sum()) for l in out["likelihoods"].values()) / 4096
    assert bpp == pytest.approx(manual)
    assert bpp > float(losses.rate_bpp({"y": out["likelihoods"]["y"]}, 4096))  # z is counted


def test_mse_is_on_the_255_scale():
    x = torch.zeros(1, 3, 4, 4)
    x_hat = torch.full_like(x, 1 / 255)  # one grey level everywhere
    assert float(losses.mse_loss(x_hat, x)) == pytest.approx(1.0)
    assert losses.psnr_from_mse(1.0) == pytest.approx(10 * math.log10(255 ** 2))
    with pytest.raises(ValueError, match="shape"):
        losses.mse_loss(x_hat[..., :2], x)


class _FakeTask:
    """Stands in for FrozenTask: a differentiable loss of the image."""

    def losses(self, images, targets):
        assert images.min() >= 0 and images.max() <= 1  # the task sees a clamped image
        return {"loss_a": images.mean(), "loss_b": 2 * images.mean()}


def test_loss_terms_and_total():
    torch.manual_seed(0)
    net = ICMCodec(16, 24).train()
    x = torch.rand(2, 3, 64, 64)
    out = net(x)
    terms = losses.loss_terms(out, x, _FakeTask(), [{}, {}])
    assert set(terms) >= {"rate", "mse", "task", "task/loss_a", "task/loss_b"}
    parts = float(terms["task/loss_a"].detach() + terms["task/loss_b"].detach())
    assert float(terms["task"].detach()) == pytest.approx(parts)
    w = {"rate": 1.0, "mse": 0.01, "task": 3.0}
    total = losses.total_loss(terms, w)
    expect = sum(w[k] * float(terms[k].detach()) for k in losses.TERMS)
    assert float(total.detach()) == pytest.approx(expect, rel=1e-5)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.g_s.parameters())


def test_no_task_gives_zero_task_term_and_zero_weights_are_skipped():
    net = ICMCodec(16, 24).train()
    x = torch.rand(1, 3, 64, 64)
    terms = losses.loss_terms(net(x), x)
    assert float(terms["task"]) == 0.0
    terms["task"] = torch.tensor(float("nan"))  # unused terms cannot poison the sum
    total = losses.total_loss(terms, {"rate": 1.0, "mse": 0.01, "task": 0.0})
    assert math.isfinite(float(total.detach()))
    with pytest.raises(ValueError, match="every loss weight is 0"):
        losses.total_loss(terms, {"rate": 0.0, "mse": 0.0, "task": 0.0})
    with pytest.raises(ValueError, match="weights lack"):
        losses.total_loss(terms, {"rate": 1.0})
    with pytest.raises(ValueError, match="targets"):
        losses.loss_terms(net(x), x, _FakeTask(), None)


@pytest.fixture(scope="module")
def detector():
    from icmlib.presets import get_preset
    from icmlib.tasks import FrozenTask, build_task_network

    torch.manual_seed(0)
    return FrozenTask(build_task_network("detection", get_preset("ci")), "detection")


def test_feature_distortion_is_relative_and_zero_only_for_the_same_image(detector):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 64, 64)
    assert float(losses.feature_distortion(detector, x, x)) == 0.0
    other = torch.rand_like(x)
    near = losses.feature_distortion(detector, (x + 0.01 * torch.randn_like(x)).clamp(0, 1), x)
    far = losses.feature_distortion(detector, other, x)
    assert 0 < float(near) < float(far)
    # relative: the same for a network whose features are all scaled by 10
    scaled = losses.feature_distortion(_Scaled(detector, 10.0), other, x)
    assert float(scaled) == pytest.approx(float(far), rel=1e-4)


class _Scaled:
    def __init__(self, task, factor):
        self.task, self.factor = task, factor

    def features(self, images):
        return [self.factor * m for m in self.task.features(images)]


def test_feature_weight_adds_the_feature_distortion_to_the_task_term(detector):
    torch.manual_seed(0)
    net = ICMCodec(16, 24).train()
    x = torch.rand(2, 3, 64, 64)
    out = net(x)
    plain = losses.loss_terms(out, x, _FakeTask(), [{}, {}])
    assert "task/feature" not in plain
    with_features = losses.loss_terms(out, x, _FeatureTask(detector), [{}, {}], feature_weight=2.5)
    feature = float(with_features["task/feature"].detach())
    assert feature > 0
    assert float(with_features["task"].detach()) == pytest.approx(
        float(plain["task"].detach()) + 2.5 * feature, rel=1e-5)
    with_features["task"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.g_s.parameters())
    with pytest.raises(ValueError, match="feature_weight must be >= 0"):
        losses.loss_terms(out, x, _FakeTask(), [{}, {}], feature_weight=-1)


class _FeatureTask:
    """_FakeTask's losses, a real detector's feature pyramid."""

    def __init__(self, detector):
        self.detector = detector

    def losses(self, images, targets):
        return _FakeTask().losses(images, targets)

    def features(self, images):
        return self.detector.features(images)
