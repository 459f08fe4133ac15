"""Anchors: every codec that can run here round-trips real images; missing tools are skipped
with a message, never a crash."""
import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icmlib.evaluation.anchors import (AV1, AVIF, HEVC, JPEG, VVC, VVC_TOOLS, AnchorUnavailable, JPEG2000,
                            LearnedCodec, WebP, available_anchors, compressai_zoo,
                            compressai_zoo_codec, make_anchor, pack_strings, rd_points,
                            rgb_to_yuv, to_pil, unpack_strings, yuv_to_rgb)
from icmlib.evaluation.overheads import vvc_nal_types
from icmlib.metrics import bpp

REPOSITORY = Path(__file__).resolve().parents[1]


def synthetic_image(width=96, height=72, seed=0) -> np.ndarray:
    """Smooth colour gradients, a few flat shapes with sharp edges, and mild texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.stack([255 * xx / width, 255 * yy / height, 128 + 60 * np.sin(xx / 7 + yy / 11)], -1)
    img[height // 4: height // 2, width // 5: width // 2] = (220, 40, 40)
    disk = (xx - 0.7 * width) ** 2 + (yy - 0.6 * height) ** 2 < (0.18 * min(width, height)) ** 2
    img[disk] = (30, 60, 200)
    img += rng.normal(0, 6, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


def check_curve(codec, image, qualities):
    """Round-trip at each setting: size kept, bpp strictly and PSNR (nearly) increasing."""
    h, w, _ = image.shape
    rates, psnrs = [], []
    for q in qualities:
        data, dec = codec.roundtrip(image, q)
        assert isinstance(data, bytes) and len(data) > 0
        assert dec.mode == "RGB" and dec.size == (w, h), f"{codec.name} q={q}: size {dec.size}"
        rates.append(bpp(data, h, w))
        psnrs.append(psnr(image, dec))
    msg = f"{codec.name}: bpp {np.round(rates, 3)}, PSNR {np.round(psnrs, 2)}"
    assert all(b > a for a, b in zip(rates, rates[1:])), msg
    assert all(b > a - 0.1 for a, b in zip(psnrs, psnrs[1:])), msg
    assert psnrs[-1] > psnrs[0] + 3, msg
    assert 12 < psnrs[0] and psnrs[-1] > 26, msg
    return rates, psnrs


def skip_unless_available(codec):
    ok, why = codec.available()
    if not ok:
        pytest.skip(f"{codec.name} unavailable: {why}")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def test_rd_points_rate_is_the_real_bytes_over_the_pixels():
    [point] = rd_points(JPEG(), synthetic_image(40, 24), [50])
    assert point["bpp"] == 8 * point["bytes"] / (40 * 24) and point["psnr"] > 20


def test_to_pil_accepts_arrays_and_tensors():
    arr = synthetic_image(20, 10)
    assert np.array_equal(np.asarray(to_pil(arr)), arr)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    assert np.array_equal(np.asarray(to_pil(t)), arr)
    assert np.array_equal(np.asarray(to_pil(t[None])), arr)
    assert to_pil(Image.fromarray(arr).convert("L")).mode == "RGB"
    with pytest.raises(ValueError, match="H×W×3 uint8"):
        to_pil(arr.astype(np.float32))
    with pytest.raises(ValueError, match="batch"):
        to_pil(torch.zeros(2, 3, 4, 4))


def test_yuv_conversion():
    img = synthetic_image(64, 48)
    # 4:4:4 is lossless up to rounding
    back = yuv_to_rgb(rgb_to_yuv(img, "444"), 64, 48, "444")
    assert np.abs(back.astype(int) - img).max() <= 2
    # 4:2:0 loses chroma detail only: the luma survives, a smooth image barely changes
    yuv = rgb_to_yuv(img, "420")
    assert len(yuv) == 64 * 48 * 3 // 2
    back = yuv_to_rgb(yuv, 64, 48, "420")
    luma = lambda rgb: rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luma(back) - luma(img)).mean() < 1.5
    assert psnr(img, back) > 25
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([4 * xx, 5 * yy, 2 * (xx + yy)], -1).astype(np.uint8)
    assert psnr(smooth, yuv_to_rgb(rgb_to_yuv(smooth, "420"), 64, 48, "420")) > 40
    with pytest.raises(ValueError, match="even"):
        rgb_to_yuv(img[:47], "420")


def test_unknown_anchor():
    with pytest.raises(ValueError, match="unknown anchor"):
        make_anchor("h264")


# --------------------------------------------------------------------------------------
# Pillow codecs
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [JPEG, WebP, AVIF, JPEG2000])
def test_pillow_codec_roundtrip(cls):
    codec = cls()
    skip_unless_available(codec)
    q = codec.qualities
    check_curve(codec, synthetic_image(), [q[0], q[len(q) // 2], q[-1]])


def test_jpeg2000_hits_its_target_rate():
    codec = JPEG2000()
    skip_unless_available(codec)
    img = synthetic_image(128, 128)
    for target in (0.5, 1.0):
        assert bpp(codec.encode(img, target), 128, 128) == pytest.approx(target, rel=0.1)


def test_default_settings_span_low_rates():
    """On a 128×128 image the default settings reach below 0.5 bpp and above 1.3 bpp."""
    img = synthetic_image(128, 128)
    for codec in (JPEG(), WebP(), JPEG2000()):
        skip_unless_available(codec)
        lo = bpp(codec.encode(img, codec.qualities[0]), 128, 128)
        hi = bpp(codec.encode(img, codec.qualities[-1]), 128, 128)
        assert lo < 0.5 and hi > 1.3, (codec.name, lo, hi)


# --------------------------------------------------------------------------------------
# ffmpeg codecs
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [HEVC, AV1])
def test_ffmpeg_codec_roundtrip_odd_size(cls):
    codec = cls()
    skip_unless_available(codec)
    q = codec.qualities
    img = synthetic_image(71, 45)  # odd width and height: padded for 4:2:0, cropped back
    check_curve(codec, img, [q[0], q[len(q) // 2], q[-1]])


def test_hevc_444():
    codec = HEVC(chroma="444")
    skip_unless_available(codec)
    img = synthetic_image(40, 33)
    data, dec = codec.roundtrip(img, 22)
    assert dec.size == (40, 33) and psnr(img, dec) > 32


def test_hevc_stream_is_raw_annexb_without_info_sei():
    codec = HEVC()
    skip_unless_available(codec)
    data = codec.encode(synthetic_image(64, 64), 40)
    stream = data[4:]
    assert stream.startswith(b"\x00\x00\x00\x01")  # Annex-B start code: no container
    assert b"x265" not in stream  # the encoder's info SEI (its command line) is off


def test_missing_ffmpeg_is_skipped_with_message(monkeypatch, capsys):
    codec = HEVC(ffmpeg="/nonexistent/bin/ffmpeg")
    ok, why = codec.available()
    assert not ok and "apt-get install ffmpeg" in why
    with pytest.raises(AnchorUnavailable, match="ffmpeg not found"):
        codec.encode(synthetic_image(16, 16), 30)

    monkeypatch.setenv("ICM_FFMPEG", "/nonexistent/bin/ffmpeg")
    found = available_anchors(["jpeg", "hevc", "av1"])
    err = capsys.readouterr().err
    assert "skipping anchor hevc" in err and "skipping anchor av1" in err
    assert "apt-get install ffmpeg" in err
    assert [c.name for c in found] == (["jpeg"] if JPEG().available()[0] else [])
    assert available_anchors(["hevc"], verbose=False) == []
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------
# VVC
# --------------------------------------------------------------------------------------

@pytest.fixture
def no_vvc(monkeypatch, tmp_path):
    """No VVC anywhere: no variables, an empty tools folder (whatever `make vvc` built)."""
    for var in ("ICM_VVC_ENCODER", "ICM_VVC_DECODER", "ICM_VVC_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "no-vvc-tools"
    empty.mkdir()
    monkeypatch.setenv("ICM_VVC_TOOLS", str(empty))
    return empty


def test_vvc_without_binary_is_unavailable(no_vvc):
    ok, why = VVC().available()
    assert not ok and "ICM_VVC_ENCODER" in why and "vvenc" in why and "make vvc" in why
    ok, why = VVC(encoder="/no/such/vvencapp", decoder="/no/such/vvdecapp").available()
    assert not ok and "not found" in why
    with pytest.raises(AnchorUnavailable):
        VVC().encode(synthetic_image(16, 16), 37)
    assert available_anchors(["vvc"], verbose=False) == []


def test_vtm_needs_its_config(tmp_path):
    enc = _script(tmp_path / "EncoderApp", "import sys; sys.exit(0)")
    dec = _script(tmp_path / "DecoderApp", "import sys; sys.exit(0)")
    ok, why = VVC(encoder=str(enc), decoder=str(dec)).available()
    assert not ok and "encoder_intra_vtm.cfg" in why


def _script(path, body):
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# Stand-ins for vvencapp / vvdecapp (not real VVC). The encoder checks the command line the
# anchor gives it and writes a valid-looking Annex-B stream: VPS, SPS, PPS, picture header and
# an IDR_N_LP slice NAL unit whose payload is the YUV input itself; the decoder finds that
# payload and writes it back as 10-bit samples, as vvdecapp does for a 10-bit stream.
FAKE_VVENC = """
    import sys
    a = sys.argv[1:]
    get = lambda k: a[a.index(k) + 1]
    assert get("-c") == "yuv420" and get("-f") == "1" and get("--preset") == "medium", a
    assert get("--qpa") == "0" and get("--internal-bitdepth") == "10", a
    w, h = map(int, get("-s").split("x"))
    data = open(get("-i"), "rb").read()
    assert len(data) == w * h * 3 // 2, (len(data), w, h)
    nal = lambda t, payload: b"\\x00\\x00\\x00\\x01" + bytes([0, (t << 3) | 1]) + payload
    stream = (nal(14, b"\\x01\\x02") + nal(15, b"\\x03" * 9) + nal(16, b"\\x04" * 3)
              + nal(19, b"\\x05") + nal(8, bytes([int(get("-q"))]) + data))
    open(get("-o"), "wb").write(stream)
"""
FAKE_VVDEC = """
    import sys, numpy as np
    a = sys.argv[1:]
    get = lambda k: a[a.index(k) + 1]
    data = open(get("-b"), "rb").read()
    idr = data.index(bytes([0, 0, 0, 1, 0, (8 << 3) | 1]))
    yuv = np.frombuffer(data[idr + 7:], np.uint8).astype("<u2") * 4
    open(get("-o"), "wb").write(yuv.tobytes())
"""


def test_vvc_with_fake_binaries(tmp_path):
    """The anchor's files, command lines and stream checks, with the stand-ins above."""
    enc = _script(tmp_path / "vvencapp", FAKE_VVENC)
    dec = _script(tmp_path / "vvdecapp", FAKE_VVDEC)
    codec = VVC(encoder=str(enc), decoder=str(dec))
    ok, why = codec.available()
    assert ok and codec.flavour == "vvenc" and codec.decoder_flavour == "vvdec", why
    assert "--preset medium" in why and "420" in why
    img = synthetic_image(71, 45)
    data, dec_img = codec.roundtrip(img, 37)
    assert dec_img.size == (71, 45)
    # only the 4:2:0 conversion is lossy here
    assert psnr(img, dec_img) == pytest.approx(
        psnr(img[:44, :70], yuv_to_rgb(rgb_to_yuv(img[:44, :70], "420"), 70, 44, "420")), abs=1.5)
    head = 5 * (4 + 2) + 2 + 9 + 3 + 1 + 1  # start codes + NAL headers, VPS..PH payloads, QP
    assert len(data) == 4 + head + 72 * 46 * 3 // 2  # size header + the whole stream
    assert vvc_nal_types(data[4:])[:5] == [14, 15, 16, 19, 8]
    assert data[4 + head - 1] == 37  # the QP reached the encoder
    # VVenC cannot read 4:4:4: unavailable with a message, not a crash
    ok, why = VVC(encoder=str(enc), decoder=str(dec), chroma="444").available()
    assert not ok and "4:2:0" in why and "VTM" in why


def test_vvc_rejects_output_that_is_not_a_vvc_stream(tmp_path):
    enc = _script(tmp_path / "vvencapp", """
        import sys
        a = sys.argv[1:]
        open(a[a.index("-o") + 1], "wb").write(b"RIFF....not an Annex-B stream")
    """)
    dec = _script(tmp_path / "vvdecapp", FAKE_VVDEC)
    with pytest.raises(RuntimeError, match="not an Annex-B VVC"):
        VVC(encoder=str(enc), decoder=str(dec)).encode(synthetic_image(16, 16), 37)


def test_vvc_found_in_the_tools_folder(no_vvc, monkeypatch):
    """`make vvc` installs into tools/vvc/bin: found there with no variable set; the
    variables and the arguments still take precedence."""
    assert VVC_TOOLS.endswith(os.path.join("tools", "vvc"))
    assert Path(VVC_TOOLS).parents[1] == REPOSITORY
    bin_dir = no_vvc / "bin"
    bin_dir.mkdir()
    enc = _script(bin_dir / "vvencapp", FAKE_VVENC)
    dec = _script(bin_dir / "vvdecapp", FAKE_VVDEC)
    codec = VVC()
    assert (codec.encoder_path, codec.decoder_path) == (str(enc), str(dec))
    ok, why = codec.available()
    assert ok and str(enc) in why, why
    assert codec.roundtrip(synthetic_image(32, 32), 30)[1].size == (32, 32)
    assert [c.name for c in available_anchors(["vvc"], verbose=False)] == ["vvc"]
    # $ICM_VVC_ENCODER / $ICM_VVC_DECODER win over the folder, arguments over both
    other = _script(no_vvc / "my-vvencapp", FAKE_VVENC)
    monkeypatch.setenv("ICM_VVC_ENCODER", str(other))
    assert VVC().encoder_path == str(other) and VVC().decoder_path == str(dec)
    assert VVC(encoder=str(enc)).encoder_path == str(enc)


def _settings_for(preset_name):
    from icmlib.presets import get_preset
    from icmlib.evaluation.reproduction import spread
    return spread(VVC.qualities, get_preset(preset_name).repro_anchor_points)


def test_vvc_rate_points_of_the_reproduction():
    """`icm reproduce` codes VVC at spread(VVC.qualities, repro_anchor_points) settings."""
    for name in ("ci", "cpu"):
        settings = _settings_for(name)
        assert len(settings) >= 4 and settings == sorted(settings, reverse=True), (name, settings)
    assert _settings_for("cpu")[0] == VVC.qualities[0] and _settings_for("cpu")[-1] == VVC.qualities[-1]


@pytest.mark.slow
def test_vvc_real_binaries():
    """VVenC/VVdeC (or VTM) for real, when `make vvc` built them or the variables point to
    them: a QP sweep on a 128×128 image gives real VVC streams, rates and PSNRs that rise
    together, over the learned codecs' range (the cpu reproduction's settings)."""
    codec = VVC()
    skip_unless_available(codec)
    img = synthetic_image(128, 128)
    settings = _settings_for("cpu")
    rates, psnrs = check_curve(codec, img, settings)
    assert rates[0] < 0.2 and rates[-1] > 1.0, (settings, rates)
    # this image's noise and sharp colour edges cap any 4:2:0 codec at the conversion's PSNR
    # (29.7 dB); near-lossless VVC reaches it, so decoding and 10→8-bit output are exact
    ceiling = psnr(img, yuv_to_rgb(rgb_to_yuv(img, "420"), 128, 128, "420"))
    assert psnrs[-1] > ceiling - 1.5, (settings, psnrs, ceiling)
    assert psnr(img, codec.roundtrip(img, 10)[1]) == pytest.approx(ceiling, abs=0.2)
    data = codec.encode(img, settings[-1])
    types = vvc_nal_types(data[4:])
    assert 15 in types and 16 in types and {7, 8} & set(types), types
    # odd sizes: padded for 4:2:0, cropped back
    odd = synthetic_image(71, 45, seed=1)
    assert codec.roundtrip(odd, 32)[1].size == (71, 45)


# --------------------------------------------------------------------------------------
# Learned codecs
# --------------------------------------------------------------------------------------

def test_pack_strings_roundtrip():
    data = pack_strings(2, (45, 71), (1, 2), [b"abc", b"", b"de"])
    assert len(data) == 10 + 3 * 4 + 5
    assert unpack_strings(data) == (2, (45, 71), (1, 2), [b"abc", b"", b"de"])
    with pytest.raises(ValueError, match="truncated"):
        unpack_strings(data[:-1])


def test_unpack_strings_every_truncation_is_a_clear_error():
    """Cut anywhere, even inside the stream lengths: ValueError, never struct.error."""
    data = pack_strings(2, (45, 71), (1, 2), [b"abc", b"", b"de"])
    for length in range(len(data)):
        with pytest.raises(ValueError, match="truncated|not a learned-codec bitstream"):
            unpack_strings(data[:length])


@pytest.fixture(scope="module")
def toy_nets():
    from icmlib.codec import ICMCodec
    import copy
    torch.manual_seed(0)
    net = ICMCodec(N=8, M=8).eval()
    net.update(force=True)
    other = copy.deepcopy(net)  # a second model: same entropy tables, different decoder
    with torch.no_grad():
        other.g_s[-1][0].weight.mul_(0.5)
    return [net, other]


@pytest.mark.parametrize("container", ["icm", "raw"])
def test_learned_codec_roundtrip(toy_nets, container):
    from icmlib.codec import bitstream
    from icmlib.codec import decode_image, encode_image, fingerprint
    codec = LearnedCodec(toy_nets, name="toy", container=container)
    assert codec.qualities == (0, 1) and codec.available()[0]
    img = synthetic_image(37, 21)
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None]
    for q in codec.qualities:
        data, dec = codec.roundtrip(img, q)
        assert dec.size == (37, 21)
        enc = encode_image(toy_nets[q], x)
        if container == "icm":
            f = bitstream.unpack(data)
            assert f.fingerprint == fingerprint(toy_nets[q]) and (f.height, f.width) == (21, 37)
            assert f.streams == enc["strings"]
            assert len(data) == bitstream.header_size(2) + sum(map(len, enc["strings"]))
        else:
            index, size, shape, strings = unpack_strings(data)
            assert index == q and size == (21, 37) and strings == enc["strings"]
        # the same image as calling the codec module directly
        direct = to_pil(decode_image(toy_nets[q], enc["strings"], enc["shape"], enc["size"]))
        assert np.array_equal(np.asarray(dec), np.asarray(direct))
    with pytest.raises(ValueError, match="unknown setting"):
        codec.encode(img, 5)


def test_learned_codec_refuses_a_foreign_icm_file(toy_nets):
    from icmlib.codec import bitstream
    data = LearnedCodec(toy_nets[1], name="b").encode(synthetic_image(16, 16), 0)
    with pytest.raises(bitstream.BitstreamError, match="none of this codec"):
        LearnedCodec(toy_nets[0], name="a").decode(data)


def test_learned_codec_lazy_loading(toy_nets):
    calls = []

    def load():
        calls.append(1)
        return toy_nets[0]

    codec = LearnedCodec({"low": load}, name="lazy")
    assert calls == []
    codec.encode(synthetic_image(32, 32), "low")
    codec.encode(synthetic_image(32, 32), "low")
    assert calls == [1]


def test_compressai_zoo_offline_names_the_download(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    with pytest.raises(AnchorUnavailable, match=r"https://.*bmshj2018-hyperprior-1-.*\.pth\.tar"):
        compressai_zoo("bmshj2018-hyperprior", 1, offline=True)

    # a failed download (no network) gives the same kind of message, not a urllib traceback
    import socket
    import urllib.request
    from urllib.error import URLError

    default_timeouts = []

    def no_network(url, *args, **kwargs):
        default_timeouts.append(socket.getdefaulttimeout())
        raise URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(AnchorUnavailable, match="could not download.*network is unreachable"):
        compressai_zoo("bmshj2018-hyperprior", 2, offline=False)
    assert default_timeouts == [None]  # its own timeout: the process-wide default untouched

    codec = compressai_zoo_codec("bmshj2018-hyperprior", qualities=(1, 2))
    ok, why = codec.available()
    assert not ok and "not cached" in why
    with pytest.raises(ValueError, match="no pretrained"):
        compressai_zoo("bmshj2018-hyperprior", 99)


# --------------------------------------------------------------------------------------
# Whole registry
# --------------------------------------------------------------------------------------

def test_rd_points_every_available_anchor():
    img = synthetic_image(64, 64)
    for codec in available_anchors(verbose=False):
        pts = rd_points(codec, img, [codec.qualities[-1]])
        assert pts[0]["bytes"] > 0 and pts[0]["bpp"] == pytest.approx(pts[0]["bytes"] / 512)
        assert pts[0]["psnr"] > 25, (codec.name, pts)


@pytest.mark.parametrize("cls, bad, label", [("HEVC", 52, "QP must be in 0..51"),
                                             ("AV1", -1, "CRF must be in 0..63")])
def test_video_anchor_settings_out_of_range_are_refused(cls, bad, label):
    from icmlib.evaluation.anchors import ffmpeg
    codec = getattr(ffmpeg, cls)()
    with pytest.raises(ValueError, match=label):
        codec._encoder_args(bad)
    assert codec._encoder_args(codec.setting_range[1])  # the edge of the range is accepted
