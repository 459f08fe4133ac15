"""The codec's context model (icmlib.codec.context): CompressAI's joint autoregressive +
hyperprior against the hyperprior alone, trained and cached alike, coded to real bytes."""
import pytest
import torch

from icmlib.codec.context import (CONTEXT_MODELS, code_images, compare_context_models,
                                  context_codec, context_settings, decode_evaluations,
                                  images_fingerprint, train_context_codec)


def _images(n=6, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images (a codec learns something from them in a few steps)
    low = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear",
                                           align_corners=False)


def test_context_codec_builds_the_two_library_models_and_refuses_others():
    from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior

    assert isinstance(context_codec("hyperprior", 8, 8), MeanScaleHyperprior)
    assert isinstance(context_codec("context", 8, 8), JointAutoregressiveHierarchicalPriors)
    assert set(CONTEXT_MODELS) == {"hyperprior", "context"}
    with pytest.raises(ValueError, match="unknown model"):
        context_codec("pixelcnn", 8, 8)


def test_the_context_models_mask_sees_only_latents_already_decoded(one_thread):
    """Changing ŷ at a position (and everything after it in raster order) leaves the
    context model's output at that position unchanged: what makes serial decoding possible."""
    net = context_codec("context", 8, 8).eval()
    y = torch.randn(1, 8, 6, 6)
    i, j = 3, 2
    later = y.clone()
    later[:, :, i, j:] = torch.randn(8, 6 - j)
    later[:, :, i + 1:] = torch.randn(8, 6 - i - 1, 6)
    with torch.no_grad():
        a = net.context_prediction(y)[:, :, i, j]
        b = net.context_prediction(later)[:, :, i, j]
        earlier = y.clone()
        earlier[:, :, i, j - 1] += 1.0
        c = net.context_prediction(earlier)[:, :, i, j]
    assert torch.allclose(a, b)
    assert not torch.allclose(a, c)          # the latent to its left does count


def test_fingerprint_follows_the_pixels_not_the_tensor():
    x = _images(2)
    assert images_fingerprint(x) == images_fingerprint(x.clone())
    y = x.clone()
    y[0, 0, 0, 0] = 1.0 - y[0, 0, 0, 0]
    assert images_fingerprint(x) != images_fingerprint(y)


def test_images_must_fit_the_models_stride():
    with pytest.raises(ValueError, match="multiples of 64"):
        train_context_codec("hyperprior", torch.rand(2, 3, 48, 48), N=8, M=8, lmbda=0.01, steps=1)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        code_images(context_codec("hyperprior", 8, 8), torch.rand(3, 64, 64))


def test_train_or_load_trains_once_and_real_bytes_are_counted(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    x = _images()
    kwargs = dict(N=8, M=8, lmbda=0.01, steps=3, batch_size=2, crop=64, progress=False)
    net, record = train_context_codec("context", x, **kwargs)
    assert len(record["history"]) == 3 and record["config"]["data"] == images_fingerprint(x)
    assert len(list((tmp_path / "checkpoints" / "context-codec").glob("*.pt"))) == 1
    calls = []
    monkeypatch.setattr("icmlib.codec.context._RateDistortionSteps.step",
                        lambda self, step: calls.append(step))
    again, _ = train_context_codec("context", x, **kwargs)
    assert calls == []                       # loaded, not trained
    for a, b in zip(net.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    metrics = code_images(net, x[:2])
    strings = [net.compress(xi)["strings"] for xi in x[:2].split(1)]
    total = sum(len(s) for st in strings for stream in st for s in stream)
    assert metrics["bpp"] == pytest.approx(8 * total / (2 * 64 * 64))
    assert metrics["images"] == 2 and metrics["decode_ms"] > 0 and metrics["psnr"] > 0


def test_decoding_evaluations_are_serial_only_for_the_context_model():
    shape = (1, 3, 128, 64)
    assert decode_evaluations(context_codec("context", 8, 8), shape)["context_evaluations"] == 32
    assert decode_evaluations(context_codec("hyperprior", 8, 8), shape)["context_evaluations"] == 0


def test_settings_take_the_base_codecs_lambda():
    from icmlib.presets import get_preset

    ci = get_preset("ci")
    s = context_settings(ci)
    assert s["lmbda"] == ci.rd_lambdas[ci.codec_base_rate]
    assert {"N", "M", "steps", "batch_size", "crop", "lr", "eval_images"} <= set(s)


@pytest.mark.slow
def test_both_models_on_the_ci_world_decode_what_they_estimate(tmp_path, monkeypatch, one_thread):
    """Same data, steps and seed for both; each decodes its own bytes to (about) the image
    its forward pass gives, and real bits agree with the likelihoods to within a few bytes."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    x = _images(8, 64, seed=1)
    out = compare_context_models(x, x[:4], N=16, M=16, lmbda=0.01, steps=30, batch_size=4,
                                 progress=False)
    for kind, r in out.items():
        m = r["metrics"]
        # real bytes: the estimate plus at most 8 bytes of rANS overhead per stream (two)
        assert m["bpp"] >= 0.9 * m["bpp_estimate"]
        assert m["bpp"] <= m["bpp_estimate"] + 8 * 16 / (64 * 64)
        net = r["model"]
        with torch.no_grad():
            enc = net.compress(x[:1])
            dec = net.decompress(enc["strings"], enc["shape"])["x_hat"]
            fwd = net(x[:1])["x_hat"].clamp(0, 1)     # decompress clamps
        if kind == "hyperprior":
            assert torch.allclose(dec, fwd, atol=1e-3)
        else:   # the joint model's forward rounds y, its compress y - mean: close, not equal
            psnr = lambda a: -10 * torch.log10(((a - x[:1]) ** 2).mean())
            assert psnr(dec) > psnr(fwd) - 1.0
