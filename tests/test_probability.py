import torch

from icmlib.codec import (ICMCodec, compare_noise_and_rounding, empirical_entropy_bits,
                          factorized_prior_bits, noise_vs_rounding, rate_report)


def _net():
    torch.manual_seed(0)
    net = ICMCodec(N=16, M=24)
    net.update(force=True)
    return net.eval()


def test_rate_report_real_bits_close_to_estimate():
    r = rate_report(_net(), torch.rand(1, 3, 64, 64))
    for stream in ("y", "z"):
        est, real = r[f"estimated_bits_{stream}"], r[f"real_bits_{stream}"]
        assert abs(real - est) <= 0.01 * est + 64, (stream, est, real)
    assert r["real_bpp"] == (r["real_bits_y"] + r["real_bits_z"]) / (64 * 64)


def test_noise_is_a_good_proxy_for_rounding_when_the_density_is_wide():
    from compressai.entropy_models import GaussianConditional

    torch.manual_seed(0)
    gc = GaussianConditional(None)
    means = torch.randn(1, 8, 16, 16) * 3
    scales = torch.full_like(means, 2.0)
    y = means + scales * torch.randn_like(means)
    r = compare_noise_and_rounding(gc, y, scales, means, samples=8)
    assert abs(r["mse_noise"] - 1 / 12) < 0.01                           # Var U(-1/2, 1/2)
    assert abs(r["mse_rounding"] - 1 / 12) < 0.02                        # rounding error, same size
    assert abs(r["bits_noise"] - r["bits_rounding"]) < 0.03 * r["bits_rounding"]


def test_noise_vs_rounding_on_a_codec_reports_both_rates():
    net, x = _net(), torch.rand(1, 3, 64, 64)
    r = noise_vs_rounding(net, x, samples=2)
    assert set(r) == {"bpp_noise", "bpp_rounding", "mse_noise", "mse_rounding"}
    with torch.no_grad():  # the codec in eval mode rounds: the same rate for ŷ
        y_bits = float(-torch.log2(net(x)["likelihoods"]["y"]).sum())
    assert abs(r["bpp_rounding"] - y_bits / (64 * 64)) <= 1e-4 * r["bpp_rounding"]
    assert abs(r["mse_noise"] - 1 / 12) < 0.02          # Var U(-1/2, 1/2)
    assert 0 < r["mse_rounding"] <= 0.25                # |round(v) - v| <= 1/2


def test_factorized_prior_cannot_beat_the_empirical_entropy():
    torch.manual_seed(0)
    latents = torch.randn(4, 3, 8, 8) * torch.tensor([0.5, 2.0, 6.0]).view(1, 3, 1, 1)
    bits, symbols = factorized_prior_bits(latents, steps=200)
    entropy = empirical_entropy_bits(symbols)
    assert bits.sum() >= entropy - 1e-3                 # Gibbs: cross-entropy >= entropy
    assert bits.sum() <= 1.3 * entropy + 64             # and a fitted model gets close
    assert torch.equal(symbols, torch.round(symbols))


def test_empirical_entropy_known_values():
    constant = torch.zeros(1, 1, 4, 4)
    assert empirical_entropy_bits(constant) == 0
    two_values = torch.tensor([0.0, 1.0] * 8).view(1, 1, 4, 4)
    assert abs(empirical_entropy_bits(two_values) - 16.0) < 1e-9   # 1 bit each


def test_bits_per_element_sum_to_the_rate_and_channel_dropping_decodes():
    from icmlib.codec import bits_per_element, decode_keeping_channels

    net, x = _net(), torch.rand(1, 3, 64, 64)
    y_hat, bits = bits_per_element(net, x)
    assert bits.shape == y_hat.shape and (bits >= 0).all()
    r = rate_report(net, x)
    assert abs(float(bits.sum()) - r["estimated_bits_y"]) < 1e-3 * r["estimated_bits_y"] + 1e-3
    full = decode_keeping_channels(net, y_hat, range(y_hat.shape[1]))
    assert torch.allclose(full, net.g_s(y_hat).clamp(0, 1))
    none = decode_keeping_channels(net, y_hat, [])
    assert none.shape == full.shape
