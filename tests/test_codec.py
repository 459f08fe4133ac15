"""The codec: CompressAI's model API, any image size, real bits vs the estimate, determinism."""

import pytest
import torch
from compressai.models import MeanScaleHyperprior

from icmlib.codec import (STRIDE, ICMCodec, crop, decode_image, encode_image, fingerprint,
                          likelihood_bits, load_codec, pad, padding_for, run_codec, save_codec)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = ICMCodec(N=16, M=24)
    n.update(force=True)
    return n.eval()


def test_is_a_compressai_model_with_its_api(net):
    """CompressAI's model API as its training and coding scripts use it: forward's dict,
    compress / decompress, and an aux_loss whose gradient reaches only the quantiles (the
    aux optimizer's share; the main one must not see it)."""
    x = torch.rand(1, 3, 64, 64)
    out = net(x)
    assert set(out) == {"x_hat", "likelihoods"} and set(out["likelihoods"]) == {"y", "z"}
    assert out["x_hat"].shape == x.shape
    enc = net.compress(x)
    assert set(enc) == {"strings", "shape"} and len(enc["strings"]) == 2
    assert net.decompress(enc["strings"], enc["shape"])["x_hat"].shape == x.shape
    net.zero_grad()
    net.aux_loss().backward()
    reached = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.any()}
    net.zero_grad()
    assert reached and all(n.endswith(".quantiles") for n in reached), reached


@pytest.mark.parametrize("blocks", [0, 1])
def test_forward_shapes_any_size(blocks):
    n = ICMCodec(N=8, M=12, blocks=blocks).train()
    x = torch.rand(2, 3, 70, 45)
    out = run_codec(n, x)
    assert out["x_hat"].shape == x.shape
    ph, pw = padding_for(70, 45)
    assert out["likelihoods"]["y"].shape == (2, 12, (70 + ph) // 16, (45 + pw) // 16)
    assert out["likelihoods"]["z"].shape == (2, 8, (70 + ph) // 64, (45 + pw) // 64)


def test_pad_and_crop_roundtrip():
    x = torch.rand(1, 3, 65, 130)
    p = pad(x)
    assert p.shape[-2] % STRIDE == 0 and p.shape[-1] % STRIDE == 0
    assert torch.equal(crop(p, 65, 130), x)
    assert pad(torch.rand(1, 3, 64, 128)).shape == (1, 3, 64, 128)


def test_noise_in_training_rounding_in_eval(net):
    x = torch.rand(1, 3, 64, 64)
    y = net.g_a(x)
    scales, means = net.h_s(net.entropy_bottleneck(net.h_a(y))[0]).chunk(2, 1)
    net.gaussian_conditional.train()
    noisy, _ = net.gaussian_conditional(y, scales, means=means)
    assert (noisy - y).abs().max() <= 0.5 + 1e-6 and not torch.equal(noisy, torch.round(noisy))
    net.gaussian_conditional.eval()
    rounded, _ = net.gaussian_conditional(y, scales, means=means)
    # ŷ = round(y − μ) + μ: quantisation happens around the predicted mean
    assert torch.allclose(rounded - means, torch.round(rounded - means), atol=1e-5)
    net.eval()


def test_compress_decompress_matches_forward_and_real_bits_match_estimate(net):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 100, 150)
    with torch.no_grad():
        out = run_codec(net, x)
    enc = encode_image(net, x)
    assert enc["size"] == (100, 150)
    dec = decode_image(net, enc["strings"], enc["shape"], enc["size"])
    assert dec.shape == x.shape
    # the decoder sees exactly the ŷ that the eval-mode forward pass produced
    assert torch.allclose(dec, out["x_hat"].clamp(0, 1), atol=1e-4)
    real_bits = 8 * sum(len(s) for s in enc["strings"])
    est_bits = likelihood_bits(out["likelihoods"]).item()
    # each rANS stream flushes a few bytes of state; beyond that the two agree to ~1 %
    assert abs(real_bits - est_bits) <= 0.01 * est_bits + 2 * 8 * 8, (real_bits, est_bits)


def test_encoding_is_deterministic_and_thread_count_independent(net):
    x = torch.rand(1, 3, 80, 96)
    a, b = encode_image(net, x), encode_image(net, x)
    assert a["strings"] == b["strings"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = decode_image(net, a["strings"], a["shape"], a["size"])
        torch.set_num_threads(2)
        two = decode_image(net, a["strings"], a["shape"], a["size"])
    finally:
        torch.set_num_threads(before)
    assert torch.equal((one * 255).round(), (two * 255).round())


def test_encode_rejects_bad_shapes(net):
    with pytest.raises(ValueError, match="1×3×H×W"):
        encode_image(net, torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="1×3×H×W"):
        encode_image(net, torch.rand(1, 1, 64, 64))


def test_checkpoint_roundtrip_keeps_bytes_and_fingerprint(net, tmp_path):
    path = save_codec(net, tmp_path / "c.pt", note="test")
    loaded = load_codec(path)
    assert loaded.meta == {"note": "test"} and loaded.config == net.config
    assert fingerprint(loaded) == fingerprint(net)
    x = torch.rand(1, 3, 64, 64)
    assert encode_image(loaded, x)["strings"] == encode_image(net, x)["strings"]
    other = ICMCodec(N=16, M=24)
    other.update(force=True)
    assert fingerprint(other) != fingerprint(net)


def test_load_codec_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_codec(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable codec checkpoint"):
        load_codec(bad)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an icmlib codec checkpoint"):
        load_codec(tmp_path / "other.pt")


# ---- variable-rate codecs (gain vectors, Cui et al. 2021) ----------------------------------
def test_one_rate_codec_codes_exactly_as_compressai_does(net):
    """ICMCodec re-implements MeanScaleHyperprior's methods to add gains: with one rate
    they must give CompressAI's own bytes and pixels (up to the last bits of a float32
    convolution: our synthesis runs channels-last on one thread, CompressAI's as the caller
    set it)."""
    x = torch.rand(1, 3, 64, 64)
    ours = net.compress(x)
    theirs = MeanScaleHyperprior.compress(net, x)
    assert ours["strings"] == theirs["strings"]
    a = net.decompress(ours["strings"], ours["shape"])["x_hat"]
    b = MeanScaleHyperprior.decompress(net, theirs["strings"], theirs["shape"])["x_hat"]
    assert torch.allclose(a, b, rtol=0, atol=1e-5)
    assert "rates" not in net.config  # one-rate checkpoints keep their config and fingerprint


def test_variable_rate_codec_gains_choose_the_rate():
    from icmlib.codec import AtRate, at_rate

    torch.manual_seed(0)
    vr = ICMCodec(N=16, M=24, rates=3)
    with torch.no_grad():
        vr.gain.copy_(torch.tensor([1.0, 30.0, 300.0])[:, None].expand(3, 24))
        vr.inv_gain.copy_(1 / vr.gain)
    vr.update(force=True)
    vr.eval()
    x = torch.rand(1, 3, 64, 64)
    sizes, views = [], [at_rate(vr, r) for r in range(3)]
    for view in views:
        enc = encode_image(view, x)
        sizes.append(sum(len(s) for s in enc["strings"]))
        dec = decode_image(view, enc["strings"], enc["shape"], enc["size"])
        assert dec.shape == x.shape
    assert sizes[0] < sizes[1] < sizes[2]  # a larger gain quantizes finer: more bytes
    # the view is a one-rate model with its own fingerprint, so files never cross rates
    assert isinstance(views[0], AtRate) and len({fingerprint(v) for v in views}) == 3
    # a batch may mix rates: one index per image
    out = vr(torch.rand(2, 3, 64, 64), rate=torch.tensor([0, 2]))
    assert out["x_hat"].shape == (2, 3, 64, 64)


def test_variable_rate_codec_clear_errors():
    from icmlib.codec import at_rate

    vr = ICMCodec(N=8, M=8, rates=2)
    with pytest.raises(ValueError, match="needs rate="):
        vr(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="out of range"):
        vr(torch.rand(1, 3, 64, 64), rate=2)
    with pytest.raises(ValueError, match="out of range"):
        at_rate(vr, 5)
    with pytest.raises(ValueError, match="single rate"):
        ICMCodec(N=8, M=8)(torch.rand(1, 3, 64, 64), rate=1)


def test_variable_rate_checkpoint_roundtrip(tmp_path):
    vr = ICMCodec(N=8, M=8, rates=2)
    with torch.no_grad():
        vr.gain.mul_(2.0)
    save_codec(vr, tmp_path / "vr.pt")
    back = load_codec(tmp_path / "vr.pt")
    assert back.rates == 2 and back.config == {"N": 8, "M": 8, "blocks": 0, "rates": 2}
    assert torch.equal(back.gain, vr.gain)


def _as_tf32(t):
    """float32 rounded to TF32 (10-bit mantissa), as a GPU's tensor cores round
    convolution inputs (PyTorch's default for cuDNN convolutions)."""
    bits = t.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)


def test_a_file_coded_with_another_devices_convolutions_decodes_the_same(monkeypatch):
    """Encoding where float32 convolutions round otherwise (a GPU's TF32, emulated here)
    must give the same bytes, so the file decodes right on the CPU: which CDF codes each
    symbol of ŷ must not depend on the device's float32 arithmetic."""
    torch.manual_seed(0)
    net = ICMCodec(N=16, M=24)
    with torch.no_grad():  # an untrained ẑ is all 0: spread z and the scales, as training does
        net.h_a[-1].weight.mul_(40)
        net.h_s[-1].weight.mul_(20)
        net.h_s[-1].bias.add_(2.0)
    net.update(force=True)
    net.eval()
    x = torch.rand(1, 3, 128, 192)
    cpu = encode_image(net, x)
    conv_t = torch.nn.functional.conv_transpose2d

    def tf32_conv_transpose2d(inp, weight, *args, **kwargs):
        if inp.dtype == torch.float32:
            inp, weight = _as_tf32(inp), _as_tf32(weight)
        return conv_t(inp, weight, *args, **kwargs)

    with monkeypatch.context() as m:  # h_s is the only transposed convolution
        m.setattr(torch.nn.functional, "conv_transpose2d", tf32_conv_transpose2d)
        gpu = encode_image(net, x)
    assert gpu["strings"] == cpu["strings"]
    assert torch.equal(decode_image(net, gpu["strings"], gpu["shape"], gpu["size"]),
                       decode_image(net, cpu["strings"], cpu["shape"], cpu["size"]))



def test_entropy_models_run_in_float32_under_autocast(net):
    """Mixed precision speeds up the transforms, but the entropy models' likelihoods (down
    to 1e-9) must be float32 computations: the codec itself sees to it, with no patched
    ``forward`` (training used to monkeypatch one onto its entropy models)."""
    captured = {}
    hook = net.h_a.register_forward_hook(lambda module, inp, out: captured.update(z=out))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(torch.rand(2, 3, 64, 64))
    finally:
        hook.remove()
    assert captured["z"].dtype == torch.bfloat16  # the transforms did run in low precision
    with torch.no_grad():
        _, float32_likelihoods = net.entropy_bottleneck(captured["z"].float())
    assert torch.equal(out["likelihoods"]["z"], float32_likelihoods)
    assert "forward" not in vars(net.entropy_bottleneck)


def test_rate_view_has_the_parts_of_a_one_rate_codec():
    """Chapters and icmlib.codec.probability take a codec apart (g_a, h_a, h_s, g_s...): on a view,
    g_a and g_s carry the rate's gains, so the parts compose to the view's forward."""
    from icmlib.codec import at_rate, rate_report

    torch.manual_seed(0)
    vr = ICMCodec(N=8, M=8, rates=2)
    with torch.no_grad():
        vr.gain[1].fill_(3.0)
        vr.inv_gain[1].fill_(1 / 3.0)
    vr.update(force=True)
    view = at_rate(vr.eval(), 1)
    x = torch.rand(1, 3, 64, 64)
    assert torch.allclose(view.g_a(x), vr.g_a(x) * 3.0)
    y_hat = torch.round(view.g_a(x))
    assert torch.allclose(view.g_s(y_hat), vr.g_s(y_hat / 3.0))
    assert view.g_s(y_hat).shape == x.shape and "gain" in repr(view.g_a)
    assert sum(p.numel() for p in view.g_a.parameters()) > 0
    report = rate_report(view, x)
    assert report["real_bpp"] > 0 and report["estimated_bpp"] > 0


# ---- decoding: exact where it decides the CDFs, fast elsewhere (issue 11, item 4) ----------
def _at_threads(n, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def test_scale_table_search_gives_compressai_indexes(net):
    """The binary search names the same CDF as CompressAI's entry-by-entry comparison, for
    scales on, between, below and above the table's entries (and NaN, inf, float64)."""
    from compressai.entropy_models import GaussianConditional

    gc = net.gaussian_conditional
    table = gc.scale_table
    torch.manual_seed(0)
    scales = torch.cat([table, table * (1 + 1e-7), table * (1 - 1e-7), torch.rand(5000) * 80,
                        torch.tensor([0.0, -1.0, 1e-9, float("inf"), float("nan"), 1e9])])
    for s in (scales.view(1, 1, -1), scales.double().view(2, -1)):
        ours = gc.build_indexes(s)
        theirs = GaussianConditional.build_indexes(gc, s)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_scale_table_search_costs_the_same_for_any_table_size():
    """Finding each symbol's CDF must not take one pass over ŷ per table entry (CompressAI's
    loop: 511 passes with the codec's 512 scales, more time than h_s itself)."""
    from torch.overrides import TorchFunctionMode

    class Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Count.calls += 1
            return func(*args, **(kwargs or {}))

    calls = []
    scales = torch.rand(1, 8, 16, 16) * 50
    for levels in (64, 512):
        codec = ICMCodec(N=8, M=8)
        codec.update(scale_table=torch.exp(torch.linspace(-2.2, 4.2, levels)), force=True)
        Count.calls = 0
        with Count():
            codec.gaussian_conditional.build_indexes(scales)
        calls.append(Count.calls)
    assert calls[0] == calls[1] < 20, calls


def test_decoding_runs_the_plain_synthesis_on_one_thread(net):
    """Only h_s and the table search must be exact: the synthesis runs PyTorch's fast
    kernels (oneDNN, channels-last; not the slower reference ones), on one thread whatever
    the caller's count, and leaves that count as it was."""
    x = torch.rand(1, 3, 128, 192)
    enc = net.compress(x)
    with torch.no_grad():
        z_hat = net.entropy_bottleneck.decompress(enc["strings"][1], enc["shape"])
        scales, means = net.h_s(z_hat).chunk(2, 1)
        indexes = net.gaussian_conditional.build_indexes(scales)
        y_hat = net.gaussian_conditional.decompress(enc["strings"][0], indexes, means=means)
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout
        plain = _at_threads(1, net.g_s, y_hat).clamp(0, 1)

    def decode():
        out = net.decompress(enc["strings"], enc["shape"])["x_hat"]
        return out, torch.get_num_threads()

    decoded, threads_after = _at_threads(2, decode)
    assert threads_after == 2 and torch.equal(decoded, plain)


@pytest.mark.parametrize("size", [(128, 192), (200, 136)])
def test_decoded_pixels_do_not_depend_on_the_thread_count(size):
    """Every float of the decoded image, not only its 8-bit rounding, is the same with 1,
    2, 3 and 4 threads (oneDNN's multi-threaded kernels differ in the last bit: GDN's 1×1
    convolution at any size), with the shipped default codec."""
    from icmlib.codec import default_codec

    codec = default_codec()
    torch.manual_seed(2)
    enc = encode_image(codec, torch.rand(1, 3, *size))
    images = [_at_threads(n, decode_image, codec, enc["strings"], enc["shape"], enc["size"])
              for n in (1, 2, 3, 4)]
    assert all(torch.equal(images[0], image) for image in images[1:])


def test_one_thread_restores_the_callers_count_after_an_error():
    from icmlib.codec.determinism import on_one_thread

    def fail():
        assert torch.get_num_threads() == 1
        raise RuntimeError("inside")

    def run():
        with pytest.raises(RuntimeError, match="inside"):
            on_one_thread(fail)
        return torch.get_num_threads()

    assert _at_threads(3, run) == 3


def test_a_codec_with_built_tables_loads_a_checkpoint_whose_tables_differ_in_size():
    """Resuming a run started from another codec failed: CompressAI resizes CDF tables
    only while they are empty, and the run's tables (built from its parent) had another
    length than the checkpoint's. The checkpoint's sizes must win."""
    torch.manual_seed(0)
    here, there = ICMCodec(N=16, M=24), ICMCodec(N=16, M=24)
    here.update(force=True)
    with torch.no_grad():  # wider quantiles: longer CDFs for the factorized prior
        there.entropy_bottleneck.quantiles.mul_(3.0)
    there.update(force=True)
    state = there.state_dict()
    key = "entropy_bottleneck._quantized_cdf"
    assert here.state_dict()[key].shape != state[key].shape  # the case of the bug
    with pytest.raises(RuntimeError, match="size mismatch"):
        MeanScaleHyperprior.load_state_dict(here, state)  # CompressAI alone
    here.load_state_dict(state)
    for name, value in state.items():
        assert torch.equal(here.state_dict()[name], value), name
    x = torch.rand(1, 3, 64, 64)
    assert here.eval().compress(x)["strings"] == there.eval().compress(x)["strings"]
