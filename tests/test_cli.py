"""The icm command: encode / decode / info, real bpp vs the estimate, determinism, errors."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from icmlib.codec import pretrained
from icmlib.codec import compress_to_bytes, header_size, read_icm
from icmlib.cli import main
from icmlib.codec import (ICMCodec, fingerprint, likelihood_bits, load_codec, quantized_image,
                          run_codec, save_codec)
from icmlib.data import load_image


def synthetic_photo(h, w, seed=0):
    """Smooth colour waves, flat rectangles and a little noise: compressible like a photo."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([0.5 + 0.3 * torch.sin(2 * math.pi * (f * xx + p * yy))
                       for f, p in torch.rand(3, 2, generator=g) * 3])
    for _ in range(12):
        colour = torch.rand(3, 1, 1, generator=g)
        y0, x0 = (torch.rand(2, generator=g) * torch.tensor([h, w])).long().tolist()
        img[:, y0:y0 + h // 5, x0:x0 + w // 5] = colour
    return (img + 0.02 * torch.randn(3, h, w, generator=g)).clamp(0, 1)


def train_small_codec(steps=200, seed=0):
    """A few hundred R + λ·MSE steps on random crops: a codec whose rates mean something."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        image = synthetic_photo(192, 256, seed)
        net = ICMCodec(N=16, M=24).train()
        main_params = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        aux_params = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
        opt = torch.optim.Adam(main_params, lr=3e-3)
        aux_opt = torch.optim.Adam(aux_params, lr=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            ys = torch.randint(0, 192 - 64, (4,), generator=g).tolist()
            xs = torch.randint(0, 256 - 64, (4,), generator=g).tolist()
            x = torch.stack([image[:, a:a + 64, b:b + 64] for a, b in zip(ys, xs)])
            out = net(x)
            bpp = likelihood_bits(out["likelihoods"]) / (4 * 64 * 64)
            loss = bpp + 0.05 * 255 ** 2 * torch.mean((out["x_hat"] - x) ** 2)
            opt.zero_grad()
            aux_opt.zero_grad()
            loss.backward()
            net.aux_loss().backward()
            opt.step()
            aux_opt.step()
        return net.eval()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("icm")
    save_codec(train_small_codec(), d / "codec.pt", note="test codec")
    torch.manual_seed(5)
    save_codec(ICMCodec(N=16, M=24), d / "other.pt")
    photo = (synthetic_photo(131, 197, seed=3) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(photo).save(d / "photo.png")
    Image.fromarray(photo).save(d / "photo.jpg", quality=90)
    Image.fromarray(photo[..., 0]).save(d / "gray.png")
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 200, np.uint8)], axis=2)
    Image.fromarray(rgba).save(d / "rgba.png")
    (d / "notes.png").write_text("this is not an image")
    return d


def icm(*args):
    return main([str(a) for a in args])


@pytest.mark.parametrize("name", ["photo.png", "photo.jpg"])
def test_round_trip_png_and_jpeg_of_odd_size(files, capsys, name):
    out_icm, out_png = files / f"{name}.icm", files / f"{name}.dec.png"
    assert icm("encode", files / name, out_icm, "--model", files / "codec.pt") == 0
    text = capsys.readouterr().out
    assert "bpp (file)" in text and "bpp (likelihood)" in text
    assert icm("decode", out_icm, out_png, "--model", files / "codec.pt") == 0
    decoded = load_image(out_png)
    original = load_image(files / name)
    assert decoded.shape == original.shape == (3, 131, 197)
    def psnr(a):
        return 10 * math.log10(1 / torch.mean((a - original) ** 2).item())

    # the PNG holds exactly the codec's reconstruction, rounded to 8 bits
    net = pretrained.resolve_codec(files / "codec.pt")
    with torch.no_grad():
        x_hat = run_codec(net, original[None])["x_hat"][0]
    assert (decoded - quantized_image(x_hat)).abs().max() <= 1 / 255 + 1e-6
    # a briefly trained codec is rough, but it is the picture: better than a flat image
    flat = original.mean(dim=(1, 2), keepdim=True).expand_as(original)
    assert psnr(decoded) > psnr(flat) + 0.5, (psnr(decoded), psnr(flat))


FIXED_BITS = 8 * (header_size(2) + 2 * (8 + 4))
"""The fixed costs: the header, and per rANS stream its 8-byte flushed state and at most
one partly used 4-byte word."""


def test_reported_bpp_is_real_bytes_and_agrees_with_the_estimate(files, capsys):
    out_icm = files / "bpp.icm"
    icm("encode", files / "photo.png", out_icm, "--model", files / "codec.pt")
    text = capsys.readouterr().out
    pixels = 131 * 197
    file_bpp = out_icm.stat().st_size * 8 / pixels
    reported = {line.split()[1][1:-1]: float(line.split()[2])
                for line in text.splitlines() if line.strip().startswith("bpp")}
    assert reported["file"] == pytest.approx(file_bpp, abs=1e-4)
    # the estimate, computed independently here
    net = pretrained.resolve_codec(files / "codec.pt")
    with torch.no_grad():
        est_bits = likelihood_bits(run_codec(net, load_image(files / "photo.png")[None])
                                   ["likelihoods"]).item()
    assert reported["likelihood"] == pytest.approx(est_bits / pixels, abs=1e-4)
    file_bits = 8 * out_icm.stat().st_size
    assert est_bits > 2000, "too few bits for the comparison to mean anything"
    assert abs(file_bits - est_bits) <= 0.01 * est_bits + FIXED_BITS, (file_bits, est_bits)


def test_with_a_finer_scale_table_real_bits_are_within_one_percent(files, tmp_path):
    """The diagnosis of the mark above: the same codec with 512 scale levels meets 1 %."""
    net = pretrained.resolve_codec(files / "codec.pt")
    net.update(scale_table=torch.exp(torch.linspace(math.log(0.11), math.log(256), 512)),
               force=True)
    image = load_image(files / "photo.png")
    with torch.no_grad():
        est_bits = likelihood_bits(run_codec(net, image[None])["likelihoods"]).item()
    file_bits = 8 * len(compress_to_bytes(net, image))
    assert est_bits > 2000
    assert abs(file_bits - est_bits) <= 0.01 * est_bits + FIXED_BITS, (file_bits, est_bits)


def test_same_image_twice_gives_identical_bytes(files):
    a, b = files / "a.icm", files / "b.icm"
    icm("encode", files / "photo.png", a, "--model", files / "codec.pt")
    icm("encode", files / "photo.png", b, "--model", files / "codec.pt")
    assert a.read_bytes() == b.read_bytes()


def _decode_with_threads(files, mkldnn=True):
    path = files / "threads.icm"
    icm("encode", files / "photo.png", path, "--model", files / "codec.pt")
    before = torch.get_num_threads()
    pngs = []
    try:
        with torch.backends.mkldnn.flags(enabled=mkldnn):
            for n in (1, 2):
                torch.set_num_threads(n)
                out = files / f"threads-{n}.png"
                assert icm("decode", path, out, "--model", files / "codec.pt") == 0
                pngs.append(out.read_bytes())
    finally:
        torch.set_num_threads(before)
    return pngs


def test_decoding_is_identical_with_one_or_two_threads(files):
    """The same .icm file gives the same PNG, byte for byte, with 1 or 2 torch threads."""
    pngs = _decode_with_threads(files)
    assert pngs[0] == pngs[1]


def test_decoding_without_mkldnn_is_identical_with_one_or_two_threads(files):
    """The diagnosis of the mark above: PyTorch's own convolutions do not depend on the
    number of threads."""
    pngs = _decode_with_threads(files, mkldnn=False)
    assert pngs[0] == pngs[1]


@pytest.mark.parametrize("name, note", [("gray.png", "grayscale"), ("rgba.png", "RGBA")])
def test_gray_and_rgba_are_converted_and_the_user_is_told(files, capsys, name, note):
    assert icm("encode", files / name, files / f"{name}.icm", "--model", files / "codec.pt") == 0
    assert note in capsys.readouterr().err
    assert read_icm(files / f"{name}.icm").height == 131


def test_info_shows_size_streams_bpp_and_fingerprint(files, capsys):
    path = files / "info.icm"
    icm("encode", files / "photo.png", path, "--model", files / "codec.pt")
    capsys.readouterr()
    assert icm("info", path, "--model", files / "other.pt") == 0
    text = capsys.readouterr().out
    f = read_icm(path)
    assert f"{path.stat().st_size} bytes" in text and "197×131" in text
    assert f"{len(f.streams[0])} bytes" in text and f"{len(f.streams[1])} bytes" in text
    assert f"{8 * path.stat().st_size / (131 * 197):.4f}" in text
    assert f.fingerprint.hex() in text and "cannot decode" in text


def test_version_1_file_info_and_decode_say_to_encode_again(files, capsys):
    """A file of format version 1 (hyperprior in float32 on the encoder's device) is
    still described; decoding it is refused with what to do instead."""
    from icmlib.codec import pack, write_icm

    path, old = files / "v2.icm", files / "v1.icm"
    icm("encode", files / "photo.png", path, "--model", files / "codec.pt")
    f = read_icm(path)
    f.version = 1
    write_icm(old, pack(f))
    capsys.readouterr()
    assert icm("info", old, "--model", files / "codec.pt") == 0
    out = capsys.readouterr().out
    assert "format version     1" in out and "encode the image again" in out
    assert icm("decode", old, files / "v1.png", "--model", files / "codec.pt") == 2
    assert "Encode the image again" in capsys.readouterr().err


def test_user_errors_exit_2_with_a_clear_message(files, capsys):
    good = files / "good.icm"
    icm("encode", files / "photo.png", good, "--model", files / "codec.pt")
    capsys.readouterr()
    damaged = files / "damaged.icm"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 4
    damaged.write_bytes(bytes(data))
    (files / "empty.icm").write_bytes(b"")
    cases = [
        (["encode", files / "notes.png", files / "x.icm", "--model", files / "codec.pt"],
         "not an image"),
        (["encode", files / "missing.png", files / "x.icm", "--model", files / "codec.pt"],
         "no such image"),
        (["decode", good, files / "x.png", "--model", files / "other.pt"], "--model"),
        (["decode", damaged, files / "x.png", "--model", files / "codec.pt"], "checksum"),
        (["decode", good.with_name("nope.icm"), files / "x.png", "--model", files / "codec.pt"],
         "no such .icm file"),
        (["info", files / "empty.icm"], "empty"),
        (["info", files / "photo.png"], "not an .icm file"),
        (["decode", good, files / "x.jpg", "--model", files / "codec.pt"], "PNG"),
        (["encode", files / "photo.png", files / "x.icm", "--model", files / "notes.png"],
         "not a usable icmlib codec checkpoint"),
    ]
    for args, message in cases:
        assert icm(*args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)


def test_without_model_uses_the_shipped_default_or_says_it_is_missing(files, capsys,
                                                                      monkeypatch):
    """The default codec is a file of the shipped set, at DEFAULT_QUALITY unless asked; a
    file it wrote decodes without being told the quality."""
    assert icm("encode", files / "photo.png", files / "d.icm") == 0
    out = capsys.readouterr().out
    assert f"quality {pretrained.DEFAULT_QUALITY} of 4" in out, out
    assert icm("encode", files / "photo.png", files / "d1.icm", "--quality", 1) == 0
    assert (files / "d1.icm").stat().st_size < (files / "d.icm").stat().st_size
    for name in ("d", "d1"):
        assert icm("decode", files / f"{name}.icm", files / f"{name}.png") == 0
    decoded = load_image(files / "d1.png")
    at_one = pretrained.default_codec(quality=1)
    with torch.no_grad():
        x_hat = run_codec(at_one, load_image(files / "photo.png")[None])["x_hat"][0]
    assert (decoded - quantized_image(x_hat)).abs().max() <= 1 / 255 + 1e-6
    capsys.readouterr()
    monkeypatch.setattr(pretrained, "DEFAULT_ENTRY", "codec/absent")
    assert icm("encode", files / "photo.png", files / "x.icm") == 2
    err = capsys.readouterr().err
    assert "--model" in err and "reinstall" in err and "Traceback" not in err


def test_the_default_codec_is_the_reproductions_mse_baseline():
    """DEFAULT_ENTRY names the shipped file that the cpu reproduction loads as its MSE
    baseline at rd_lambdas: a retrain that changes that codec's key must move the default
    with it, not leave the icm command on a stale file."""
    from icmlib.cache import config_key
    from icmlib.presets import get_preset
    from icmlib.shipped import entry_name, read_manifest
    from icmlib.training.recipe import baseline_config, recipe_rate

    cpu = get_preset("cpu")
    key = config_key(baseline_config(cpu, recipe_rate(cpu, "all")))
    assert pretrained.DEFAULT_ENTRY == entry_name("codec", key)
    entry = read_manifest()["entries"][pretrained.DEFAULT_ENTRY]
    assert entry["config"]["lambda"] == list(cpu.rd_lambdas)
    assert 1 <= pretrained.DEFAULT_QUALITY <= len(cpu.rd_lambdas)


def variable_rate_checkpoint(path, rates=3):
    """A small variable-rate codec whose gains space its rate points apart (untrained
    transforms; the gains alone decide the bits)."""
    torch.manual_seed(1)
    net = ICMCodec(N=16, M=24, rates=rates)
    with torch.no_grad():
        for r in range(rates):
            net.gain[r].fill_(4.0 ** (r + 1))
            net.inv_gain[r].fill_(4.0 ** -(r + 1))
    save_codec(net, path)
    return path


def test_a_variable_rate_checkpoint_codes_at_each_quality(files, capsys):
    model = variable_rate_checkpoint(files / "vr.pt")
    sizes = []
    for q in (1, 2, 3):
        out = files / f"vr{q}.icm"
        assert icm("encode", files / "photo.png", out, "--model", model, "--quality", q) == 0
        assert f"quality {q} of 3" in capsys.readouterr().out
        sizes.append(out.stat().st_size)
        assert icm("decode", out, files / f"vr{q}.png", "--model", model) == 0
        assert icm("info", out, "--model", model) == 0
        assert f"can decode this file (quality {q})" in capsys.readouterr().out
    assert sizes[0] < sizes[1] < sizes[2], sizes
    assert icm("encode", files / "photo.png", files / "vr.icm", "--model", model) == 0
    assert (files / "vr.icm").read_bytes() == (files / "vr3.icm").read_bytes()  # the highest
    capsys.readouterr()
    # a file of another codec is still refused, whatever quality
    assert icm("decode", files / "vr1.icm", files / "x.png", "--model", files / "codec.pt") == 2
    assert "written by model" in capsys.readouterr().err


def test_quality_errors_are_clear(files, capsys):
    model = variable_rate_checkpoint(files / "vr.pt")
    cases = [(["--model", model, "--quality", 4], "qualities 1 (fewest bits) to 3"),
             (["--model", model, "--quality", 0], "qualities 1 (fewest bits) to 3"),
             (["--model", files / "codec.pt", "--quality", 2], "single rate point"),
             (["--quality", 9], "qualities 1 (fewest bits) to 4"),
             (["--model", "zoo:mbt2018-mean:3", "--quality", 2], "part of its name")]
    for args, message in cases:
        assert icm("encode", files / "photo.png", files / "q.icm", *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)


def test_a_shipped_form_checkpoint_is_a_model(files, capsys):
    """``--model`` takes a file of the shipped set as it is (float16, no CDF tables): the
    tables are rebuilt on load, as train-or-load does."""
    from icmlib.ship import compact
    from icmlib.shipped import expand

    ckpt = torch.load(files / "codec.pt", weights_only=False)
    torch.save(compact(ckpt), files / "compact.pt")
    out = files / "compact.icm"
    assert icm("encode", files / "photo.png", out, "--model", files / "compact.pt") == 0
    assert icm("decode", out, files / "compact.png", "--model", files / "compact.pt") == 0
    expanded = pretrained.resolve_codec(files / "compact.pt")
    assert read_icm(out).fingerprint == fingerprint(load_codec(expand(compact(ckpt))))
    assert fingerprint(expanded) == read_icm(out).fingerprint
    # the same codec as the float32 one, up to float16's rounding of its weights
    original = load_image(files / "photo.png")
    full = pretrained.resolve_codec(files / "codec.pt")
    with torch.no_grad():
        ours, theirs = (run_codec(n, original[None]) for n in (expanded, full))
    assert (ours["x_hat"] - theirs["x_hat"]).abs().max() < 0.02
    bits = [likelihood_bits(o["likelihoods"]).item() for o in (ours, theirs)]
    assert bits[0] == pytest.approx(bits[1], rel=0.01)
    decoded = load_image(files / "compact.png")
    assert (decoded - quantized_image(theirs["x_hat"][0])).abs().max() <= 0.03


def test_console_script_runs(files):
    """``python -m icmlib.cli``, as a user runs it: exit status and output."""
    icm("encode", files / "photo.png", files / "s.icm", "--model", files / "codec.pt")
    result = subprocess.run([sys.executable, "-m", "icmlib.cli", "info", str(files / "s.icm")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "model fingerprint" in result.stdout


def test_reproduce_says_in_one_line_what_is_missing_offline(monkeypatch, capsys, tmp_path):
    """A paper-scale run without its downloads: the message of what to download, no traceback."""
    from icmlib.evaluation import accuracy
    from icmlib.tasks.networks import PretrainedWeightsUnavailable

    def offline(*args, **kwargs):
        raise PretrainedWeightsUnavailable("download X and put it at Y")

    monkeypatch.setattr(accuracy, "task_networks", offline)
    assert main(["reproduce", "--preset", "ci", "--out", str(tmp_path), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "download X and put it at Y" in err and "Traceback" not in err
