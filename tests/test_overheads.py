"""Rate accounting: every codec's bytes split into the coded stream a decoder needs and the
overheads around it (icmlib.evaluation.overheads), on real files each encoder writes.

The central check (``test_counted_bytes_are_what_the_decoder_reads``): for one image per
codec, the bytes the rule counts are exactly the stream a decoder of the bare format
reads (plus, for a learned codec, the documented side information), and that stream
alone decodes to the codec's image."""
import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from icmlib.evaluation import overheads as oh
from icmlib.evaluation.anchors import (AV1, AVIF, HEVC, JPEG, VVC, JPEG2000, LearnedCodec, WebP,
                                      find_ffmpeg, yuv_to_rgb)
from icmlib.evaluation.anchors.base import run_tool
from icmlib.evaluation.anchors.yuv import with_size

SIZE = 128


@pytest.fixture(scope="module")
def image():
    """A 128×128 image of the synthetic world (the cpu preset's size)."""
    from icmlib.data.world import _render_image

    pixels, _ = _render_image(np.random.default_rng(0), SIZE, 3)
    return pixels


def need(codec):
    ok, why = codec.available()
    if not ok:
        pytest.skip(f"{codec.name} unavailable: {why}")
    return codec


def psnr(a, b) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def labels(spans):
    return [label for label, _, _ in spans]


def tiles(spans, total):
    pos = 0
    for _, a, b in spans:
        assert a == pos and b >= a
        pos = b
    return pos == total


# ---- the rule, codec by codec ------------------------------------------------------------------
def bare_ffmpeg_decode(fmt: str, stream: bytes, w: int, h: int) -> np.ndarray:
    """Decode a bare elementary stream with ffmpeg, no size prefix (even sizes only)."""
    yuv = run_tool([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-f", fmt, "-i",
                "pipe:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "yuv420p", "pipe:1"],
               "bare decoder", input=stream)
    return yuv_to_rgb(yuv, w, h)


def webp_wrap(vp8: bytes) -> bytes:
    """The RIFF container around a VP8 payload: fixed, 20 bytes (+1 of padding)."""
    pad = b"\x00" * (len(vp8) & 1)
    body = b"WEBPVP8 " + struct.pack("<I", len(vp8)) + vp8 + pad
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("cls, setting", [(JPEG, 5), (WebP, 5), (AVIF, 10), (JPEG2000, 0.1),
                                          (HEVC, 47), (AV1, 58), (VVC, 47)])
def test_counted_bytes_are_what_the_decoder_reads(image, cls, setting):
    codec = need(cls())
    data = codec.encode(image, setting)
    parts = codec.rate_parts(data)
    oh.check_parts(parts, len(data), codec.name)
    stream = oh.coded_stream(codec.rate_format, data)
    assert parts["coded"] == len(stream)  # anchors: no side information
    assert 0 < parts["headers"] < parts["coded"]
    decoded = np.asarray(codec.decode(data))
    if codec.name in ("jpeg", "jpeg2000"):  # the bare codestream decodes to the same pixels
        bare = np.asarray(Image.open(io.BytesIO(stream)).convert("RGB"))
        assert np.array_equal(bare, decoded)
    elif codec.name == "webp":  # what is left out is a fixed wrapper, nothing else
        assert webp_wrap(stream) == data and parts["container"] == 20
    elif codec.name == "avif":  # the AV1 image item is a still AV1 stream on its own
        need(AV1())
        bare = bare_ffmpeg_decode("obu", stream, SIZE, SIZE)
        assert psnr(bare, decoded) > 40  # same picture; colour conversions differ slightly
        assert parts["container"] > 200  # the HEIF boxes
    elif codec.name in ("hevc", "av1"):
        fmt = {"hevc": "hevc", "av1": "obu"}[codec.name]
        assert np.array_equal(bare_ffmpeg_decode(fmt, stream, SIZE, SIZE), decoded)
        assert parts["size_prefix"] == 4 and stream == data[4:]
    else:  # vvc: its decoder binary reads the stream from a file
        assert np.array_equal(np.asarray(codec._decode(with_size(SIZE, SIZE, stream))), decoded)
        assert parts["size_prefix"] == 4


@pytest.fixture(scope="module")
def toy_net():
    from icmlib.codec import ICMCodec

    torch.manual_seed(0)
    net = ICMCodec(N=8, M=8).eval()
    net.update(force=True)
    return net


@pytest.mark.parametrize("container, header", [("icm", 36), ("raw", 18)])
def test_learned_codec_counts_streams_and_side_information(image, toy_net, container, header):
    """Coded = the ŷ and ẑ streams + 8 bytes (H, W, two 16-bit lengths); the decoder needs
    nothing else: the streams and the image size alone give the codec's image."""
    from icmlib.codec import bitstream
    from icmlib.evaluation.anchors import to_pil, unpack_strings
    from icmlib.codec import STRIDE, decode_image, padding_for

    codec = LearnedCodec([toy_net], "toy", container=container)
    data = codec.encode(image, 0)
    streams = (bitstream.unpack(data).streams if container == "icm"
               else unpack_strings(data)[3])
    parts = codec.rate_parts(data)
    assert oh.learned_side_bytes(2) == 8
    assert parts["coded"] == sum(map(len, streams)) + 8 and parts["headers"] == 8
    assert parts["container"] == header - 8 and len(data) == sum(map(len, streams)) + header
    h, w = image.shape[:2]
    pad = padding_for(h, w, STRIDE)
    shape = ((h + pad[0]) // STRIDE, (w + pad[1]) // STRIDE)
    bare = to_pil(decode_image(toy_net, streams, shape, (h, w)))
    assert np.array_equal(np.asarray(bare), np.asarray(codec.decode(data)))


def test_unknown_codec_counts_everything():
    assert oh.split(None, b"abc") == {"coded": 3, "container": 0, "metadata": 0,
                                      "size_prefix": 0}


# ---- the parsers on real files -----------------------------------------------------------------
def test_jpeg_container_and_comment_are_not_counted(image):
    need(JPEG())
    files = {}
    for extra in ({}, {"comment": b"made by a test" * 4}, {"exif": b"Exif\x00\x00" + b"\x00" * 40}):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=20, optimize=True, **extra)
        files[tuple(extra)] = buf.getvalue()
    plain = oh.split("jpeg", files[()])
    assert plain["container"] == 18 and plain["metadata"] == 0  # the JFIF APP0 segment
    markers = [m for m, _, _ in oh.jpeg_segments(files[()])]
    assert markers[:2] == [0xD8, 0xE0] and markers[-1] == 0xD9 and None in markers
    assert {0xDB, 0xC4, 0xC0, 0xDA} <= set(markers)  # DQT, DHT, SOF0, SOS
    comment = oh.split("jpeg", files[("comment",)])
    assert comment["metadata"] == 4 + 56 and comment["coded"] == plain["coded"]
    exif = oh.split("jpeg", files[("exif",)])
    assert exif["container"] > plain["container"] and exif["coded"] == plain["coded"]
    # the counted bytes, whatever the file carries, are one and the same decodable stream
    streams = {oh.coded_stream("jpeg", f) for f in files.values()}
    assert len(streams) == 1


def test_jp2_boxes_around_the_same_codestream(image):
    need(JPEG2000())
    out = {}
    for jp2 in (False, True):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG2000", quality_mode="rates", quality_layers=[80],
                                    irreversible=True, mct=1, no_jp2=not jp2)
        out[jp2] = buf.getvalue()
    raw, boxed = oh.split("jpeg2000", out[False]), oh.split("jpeg2000", out[True])
    jp2c = [b for b in oh.isobmff_boxes(out[True]) if b[0] == b"jp2c"][0]
    assert raw["container"] == 0  # a bare codestream
    assert boxed["container"] == len(out[True]) - (jp2c[3] - jp2c[2]) > 40  # jP ftyp jp2h
    assert raw["metadata"] == boxed["metadata"] > 0  # OpenJPEG's COM segment
    assert labels(oh.spans("jpeg2000", out[False]))[:2] == ["headers", "metadata"]
    # inside the boxes: a codestream that decodes on its own to the file's pixels
    bare = Image.open(io.BytesIO(oh.coded_stream("jpeg2000", out[True])))
    assert np.array_equal(np.asarray(bare), np.asarray(Image.open(io.BytesIO(out[True]))))


def test_avif_primary_item_is_the_mdat_payload(image):
    data = need(AVIF()).encode(image, 30)
    boxes = [b[0] for b in oh.isobmff_boxes(data)]
    assert boxes[0] == b"ftyp" and b"meta" in boxes and b"mdat" in boxes
    (start, length), = oh.heif_primary_extents(data)
    mdat = [b for b in oh.isobmff_boxes(data) if b[0] == b"mdat"][0]
    assert (start, start + length) == (mdat[2], mdat[3])
    types = [t for t, _, _ in oh.av1_obus(data[start:start + length])]
    # libavif keeps the encoder's temporal delimiter: the same OBUs as the AV1 anchor's
    assert types == [oh.AV1_TEMPORAL_DELIMITER, oh.AV1_SEQUENCE_HEADER, 6]  # 6: OBU_FRAME


def test_av1_obus_and_padding_is_metadata(image):
    codec = need(AV1())
    stream = codec.encode(image, 48)[4:]
    obus = oh.av1_obus(stream)
    assert [t for t, _, _ in obus][:2] == [oh.AV1_TEMPORAL_DELIMITER, oh.AV1_SEQUENCE_HEADER]
    padding = bytes([(15 << 3) | 0x02, 5, 0x80, 0, 0, 0, 0])  # a padding OBU, 7 bytes
    padded = stream + padding
    p = oh.split("av1", padded)
    assert p["metadata"] == 7 and p["coded"] == len(stream)
    assert np.array_equal(bare_ffmpeg_decode("obu", padded, SIZE, SIZE),
                          bare_ffmpeg_decode("obu", stream, SIZE, SIZE))


def test_hevc_units_and_sei_is_metadata(image):
    codec = need(HEVC())
    stream = codec.encode(image, 38)[4:]
    units = oh.annexb_units(stream)
    types = [oh.hevc_nal_type(stream, off) for off, _, _ in units]
    assert types[:3] == [32, 33, 34] and all(t < 32 for t in types[3:])  # VPS SPS PPS, slices
    assert tiles([("x", a, b) for _, a, b in units], len(stream))
    # a user-data SEI (prefix SEI, type 39) before the slice: metadata, and ignored
    sei = (b"\x00\x00\x01" + bytes([39 << 1, 1]) + bytes([5, 20]) + bytes(range(16))
           + b"test" + b"\x80")
    cut = units[3][1]
    with_sei = stream[:cut] + sei + stream[cut:]
    p = oh.split("hevc", with_sei)
    assert p["metadata"] == len(sei) and p["coded"] == len(stream)
    assert np.array_equal(bare_ffmpeg_decode("hevc", with_sei, SIZE, SIZE),
                          bare_ffmpeg_decode("hevc", stream, SIZE, SIZE))


def vvc_unit(nal_type: int, payload: bytes, long_code: bool = False) -> bytes:
    code = b"\x00\x00\x00\x01" if long_code else b"\x00\x00\x01"
    return code + bytes([0, (nal_type << 3) | 1]) + payload


def test_vvc_units_of_a_constructed_stream():
    """VVC's NAL header is not HEVC's (type in the second byte): VPS/SPS/PPS/PH are
    headers, the IDR slice data, the suffix SEI metadata; 4-byte start codes and trailing
    zeros belong to their units."""
    parts = [vvc_unit(14, b"\x11" * 5, True), vvc_unit(15, b"\x22" * 9, True),
             vvc_unit(16, b"\x33" * 4), vvc_unit(19, b"\x44" * 3),
             vvc_unit(8, b"\x55" * 40), vvc_unit(24, b"\x66" * 6 + b"\x00\x00", True)]
    stream = b"".join(parts)
    spans = oh.vvc_spans(stream)
    assert labels(spans) == ["headers", "data", "metadata"]
    p = oh.split("sized-vvc", b"\x00\x80\x00\x80" + stream)
    assert p == {"coded": len(stream) - len(parts[-1]), "headers": sum(map(len, parts[:4])),
                 "container": 0, "metadata": len(parts[-1]), "size_prefix": 4}
    with pytest.raises(ValueError, match="no slice"):
        oh.vvc_spans(b"".join(parts[:4]))
    # the same parser gives the VVC anchor the unit types it checks its encoder's output for
    assert oh.vvc_nal_types(stream) == [14, 15, 16, 19, 8, 24]
    with pytest.raises(ValueError, match="Annex-B"):
        oh.vvc_nal_types(b"RIFF....not an Annex-B stream")


def test_webp_chunks(image):
    data = need(WebP()).encode(image, 50)
    (fourcc, a, b), = oh.riff_chunks(data)
    assert fourcc == b"VP8 " and b - a == len(data) - 20 - ((b - a) & 1)
    assert labels(oh.spans("webp", data)) == ["container", "headers", "data"] + (
        ["container"] if (b - a) & 1 else [])


@pytest.mark.parametrize("fmt, cls, setting", [("jpeg", JPEG, 20), ("webp", WebP, 20),
                                               ("avif", AVIF, 30), ("jpeg2000", JPEG2000, 0.5),
                                               ("sized-av1", AV1, 48)])
def test_truncated_or_foreign_files_are_a_clear_error(image, fmt, cls, setting):
    data = need(cls()).encode(image, setting)
    for cut in list(range(0, 40)) + list(range(40, len(data), 13)):
        with pytest.raises(ValueError):
            oh.spans(fmt, data[:cut])
    for other in ("jpeg", "webp", "avif", "jpeg2000", "hevc", "av1", "vvc"):
        if other not in fmt:
            with pytest.raises(ValueError):
                oh.spans(other, data)


def test_parts_must_tile_the_file():
    with pytest.raises(ValueError, match="tile"):
        oh.parts_of([("data", 0, 4), ("container", 5, 8)], 8)
    with pytest.raises(ValueError, match="cover"):
        oh.parts_of([("data", 0, 4)], 8)
    with pytest.raises(ValueError, match="add up"):
        oh.check_parts({"coded": 3, "container": 2}, 4)
    with pytest.raises(ValueError, match="unknown format"):
        oh.split("png", b"\x89PNG")


def test_measure_overheads_at_two_image_sizes(image):
    """The same fixed overhead weighs 18.75 times less per pixel at 640×480 than at 128×128."""
    from icmlib.data.world import _render_image

    big = _render_image(np.random.default_rng(1), 640, 3)[0][:480]
    codec = need(JPEG())
    small_m, big_m = oh.measure(codec, image, 20), oh.measure(codec, big, 20)
    assert small_m["container"] == big_m["container"] == 18
    assert small_m["bpp_not_counted"] == pytest.approx(18.75 * big_m["bpp_not_counted"])
    assert small_m["bpp_file"] - small_m["bpp"] == pytest.approx(small_m["bpp_not_counted"])
