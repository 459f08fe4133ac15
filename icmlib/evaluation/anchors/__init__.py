"""Anchors: the codecs the ICM codec is compared against, behind one interface.

One module per codec family: :mod:`.base` (the interface), :mod:`.pillow` (JPEG, WebP,
AVIF, JPEG 2000), :mod:`.yuv` (what the video codecs share), :mod:`.ffmpeg` (HEVC, AV1),
:mod:`.vvc` (VVenC/VVdeC or VTM), :mod:`.learned` and :mod:`.zoo` (learned codecs),
:mod:`.container` (the learned codecs' raw container), :mod:`.registry` (by name).

Every codec — a traditional one run through Pillow, ffmpeg or an external VVC binary, or a
learned one — is a ``Codec``::

    codec.name                       # "jpeg", "hevc", ...
    codec.qualities                  # its settings, ordered from the lowest to the highest rate
    codec.available() -> (ok, why)   # never raises; `why` says how to install what is missing
    codec.encode(image, quality) -> bytes
    codec.decode(data) -> PIL.Image (RGB, same size as the input)

``image`` may be a PIL image, an H×W×3 uint8 array, or a 3×H×W / 1×3×H×W float tensor in
[0, 1]. Rates are measured from the real bytes: ``icmlib.metrics.bpp(data, height, width)``.
``available_anchors()`` returns the codecs that can run here and says why the others cannot.

What the bytes contain (``codec.rate_parts(data)`` splits them, :mod:`icmlib.evaluation.overheads`; the
evaluation's ``bpp`` counts the coded part, ``bpp_file`` the whole file):

* **Pillow codecs** — the complete file as Pillow writes it: a JFIF JPEG (optimized Huffman
  tables), a RIFF WebP, an AVIF (HEIF boxes around an AV1 payload, a few hundred bytes of
  container), a raw JPEG 2000 codestream (``.j2k``, no JP2 boxes).
* **HEVC / AV1 (ffmpeg) and VVC (external binary)** — a 4-byte size header (width, height as
  big-endian uint16, so the decoder can crop the even-size padding of 4:2:0) followed by the
  raw elementary stream: HEVC Annex-B NAL units (``-f hevc``: VPS/SPS/PPS + one IDR slice, the
  x265 info SEI switched off), AV1 low-overhead OBUs (``-f obu``: temporal delimiter, sequence
  header, frame; no IVF/MP4 container), VVC Annex-B NAL units.
* **Learned codecs** — the ``.icm`` file of ``icmlib.codec.bitstream`` (36 bytes of header and
  CRC around the two rANS streams), or a minimal 18-byte header (see ``LearnedCodec``); the
  coded part is the streams plus 8 bytes of side information (image size, stream lengths).

Colour: the video codecs code YCbCr 4:2:0 (``chroma="420"``, the default) like the JVET/MPEG
common test conditions and every deployed HEVC/AV1/VVC still-image profile; ``chroma="444"``
is available for HEVC, AV1 and VVC through VTM (VVenC reads 4:2:0 only). RGB→YCbCr is
BT.601 full range (the JPEG/JFIF matrix, so no code values are lost to studio range), chroma
is downsampled with a 2×2 box filter and upsampled bilinearly, all done here in NumPy so that
every external codec sees exactly the same YUV input and is judged on the same RGB output.

Quality settings (``qualities``) were chosen so that, on small images (64–512 px) like the
ones the learned codecs are trained and evaluated on here, each curve covers the learned
codecs' range, roughly 0.05–1.5 bpp, with a point or two above it (measured on a 128×128 crop
of matplotlib's ``grace_hopper.jpg`` and on a 128×128 synthetic-world image: HEVC QP 51→26
gives 0.24→2.1 bpp and 0.08→2.6 bpp; AV1 CRF 63→23 0.15→1.8 and 0.04→2.0; JPEG 2000 lands
on its targets). The fixed headers set a floor under the lowest rate of some codecs on tiny
images: JPEG ~0.2 bpp and AVIF ~0.2–0.3 bpp at 128×128, four times that at 64×64.
``rd_points(codec, image)`` measures a codec's curve on your own image; each constructor
takes ``qualities=`` to override the settings.
"""
from icmlib.evaluation.anchors.base import AnchorUnavailable, Codec, rd_points, to_pil
from icmlib.evaluation.anchors.container import pack_strings, unpack_strings
from icmlib.evaluation.anchors.ffmpeg import AV1, HEVC, FFmpegCodec, find_ffmpeg
from icmlib.evaluation.anchors.learned import LearnedCodec
from icmlib.evaluation.anchors.pillow import AVIF, JPEG, JPEG2000, PillowCodec, WebP
from icmlib.evaluation.anchors.registry import ANCHORS, available_anchors, make_anchor
from icmlib.evaluation.anchors.vvc import VVC, VVC_TOOLS, find_vvc_tool, vvc_tools_dir
from icmlib.evaluation.anchors.yuv import rgb_to_yuv, yuv_to_rgb
from icmlib.evaluation.anchors.zoo import compressai_zoo, compressai_zoo_codec

__all__ = [
    "AnchorUnavailable", "Codec", "PillowCodec", "JPEG", "WebP", "AVIF", "JPEG2000",
    "FFmpegCodec", "HEVC", "AV1", "VVC", "VVC_TOOLS", "LearnedCodec", "compressai_zoo",
    "compressai_zoo_codec", "ANCHORS", "make_anchor", "available_anchors", "to_pil",
    "rgb_to_yuv", "yuv_to_rgb", "rd_points", "find_ffmpeg", "find_vvc_tool", "vvc_tools_dir",
    "pack_strings", "unpack_strings",
]
