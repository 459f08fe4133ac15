"""Anchors: the codecs the ICM codec is compared against, behind one interface.

Every codec — a traditional one run through Pillow, ffmpeg or an external VVC binary, or a
learned one — is a ``Codec``::

    codec.name                       # "jpeg", "hevc", ...
    codec.qualities                  # its settings, ordered from the lowest to the highest rate
    codec.available() -> (ok, why)   # never raises; `why` says how to install what is missing
    codec.encode(image, quality) -> bytes
    codec.decode(data) -> PIL.Image (RGB, same size as the input)

``image`` may be a PIL image, an H×W×3 uint8 array, or a 3×H×W / 1×3×H×W float tensor in
[0, 1]. Rates are measured from the real bytes: ``bpp(data, width, height)``.
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
from __future__ import annotations

import functools
from pathlib import Path
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, features

from icmlib.evaluation import overheads

__all__ = [
    "AnchorUnavailable", "Codec", "PillowCodec", "JPEG", "WebP", "AVIF", "JPEG2000",
    "FFmpegCodec", "HEVC", "AV1", "VVC", "LearnedCodec", "compressai_zoo",
    "compressai_zoo_codec", "ANCHORS", "make_anchor", "available_anchors", "bpp", "to_pil",
    "rgb_to_yuv", "yuv_to_rgb", "rd_points", "find_ffmpeg", "pack_strings", "unpack_strings",
]


class AnchorUnavailable(RuntimeError):
    """A codec cannot run here (tool missing, weights not downloadable); the message says why."""


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------

def bpp(data: Union[bytes, bytearray, int], width: int, height: int) -> float:
    """Bits per pixel of ``data`` (bytes, or a byte count) for a ``width``×``height`` image."""
    n = data if isinstance(data, (int, np.integer)) else len(data)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}×{height}")
    return 8.0 * int(n) / (width * height)


def to_pil(image) -> Image.Image:
    """A PIL RGB image from a PIL image, an H×W×3 uint8 array, or a float tensor in [0, 1]
    (3×H×W or 1×3×H×W)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if hasattr(image, "detach"):  # torch tensor
        t = image.detach().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"expected a 3×H×W tensor, got {tuple(image.shape)}")
        arr = (t.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 array, got shape {arr.shape} dtype {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


# --------------------------------------------------------------------------------------
# The interface
# --------------------------------------------------------------------------------------

class Codec:
    """Base class (and the protocol) of every anchor. Subclasses set ``name``, ``qualities``,
    and implement ``_encode`` / ``_decode`` and, if they need a tool, ``available``."""

    name: str = "codec"
    #: the settings, ordered from the lowest to the highest rate
    qualities: Tuple = ()
    #: what a setting means, for tables and plots ("quality", "QP", "target bpp", ...)
    quality_label: str = "quality"
    #: the format of the bytes ``encode`` returns, as ``icmlib.evaluation.overheads.FORMATS`` names it
    #: (``None``: unknown, all of them counted as coded)
    rate_format: Optional[str] = None

    def available(self) -> Tuple[bool, str]:
        return True, "available"

    def require(self) -> None:
        ok, why = self.available()
        if not ok:
            raise AnchorUnavailable(f"{self.name}: {why}")

    def encode(self, image, quality) -> bytes:
        self.require()
        return self._encode(to_pil(image), quality)

    def decode(self, data: bytes) -> Image.Image:
        self.require()
        return self._decode(bytes(data))

    def rate_parts(self, data: bytes) -> Dict[str, int]:
        """How ``data`` (this codec's output) splits into the coded stream a decoder needs
        and the overheads around it (:mod:`icmlib.evaluation.overheads`: ``coded``, ``headers``,
        ``container``, ``metadata``, ``size_prefix``), parsed as its ``rate_format``."""
        return overheads.split(self.rate_format, data)

    def roundtrip(self, image, quality) -> Tuple[bytes, Image.Image]:
        """Encode then decode: ``(bytes, decoded image)``."""
        data = self.encode(image, quality)
        return data, self.decode(data)

    def _encode(self, image: Image.Image, quality) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _decode(self, data: bytes) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, qualities={list(self.qualities)})"


def rd_points(codec: Codec, image, qualities: Optional[Iterable] = None) -> List[Dict]:
    """Encode one image at each setting: ``[{"quality", "bytes", "bpp", "psnr"}, ...]`` with
    PSNR on 8-bit RGB. A quick look at a codec's curve (the evaluation module does datasets)."""
    pil = to_pil(image)
    ref = np.asarray(pil)
    out = []
    for q in (codec.qualities if qualities is None else qualities):
        data, dec = codec.roundtrip(pil, q)
        out.append({"quality": q, "bytes": len(data), "bpp": bpp(data, *pil.size),
                    "psnr": _psnr_uint8(ref, np.asarray(dec))})
    return out


# --------------------------------------------------------------------------------------
# Pillow codecs
# --------------------------------------------------------------------------------------

_PILLOW_HINT = ("Pillow's PyPI wheels include it: `pip install --upgrade --force-reinstall pillow` "
                "(a Pillow built from source needs the library's headers, e.g. apt-get install {lib})")


class PillowCodec(Codec):
    """A codec Pillow can write, checked with ``PIL.features``."""

    feature: str = ""
    library: str = ""
    format: str = ""

    def __init__(self, qualities: Optional[Sequence] = None):
        if qualities is not None:
            self.qualities = tuple(qualities)

    def available(self) -> Tuple[bool, str]:
        try:
            ok = features.check(self.feature)
        except ValueError:  # feature unknown to this Pillow version
            ok = False
        if ok:
            return True, f"Pillow {features.version('pil')} with {self.feature}"
        return False, (f"this Pillow ({features.version('pil')}) has no {self.format} support. "
                       + _PILLOW_HINT.format(lib=self.library))

    def _save_kwargs(self, quality) -> Dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, image: Image.Image, quality) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=self.format, **self._save_kwargs(quality))
        return buf.getvalue()

    def _decode(self, data: bytes) -> Image.Image:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")


class JPEG(PillowCodec):
    """Baseline JPEG (libjpeg via Pillow), 4:2:0, optimized Huffman tables. Setting: the IJG
    quality factor 1–95. The JFIF headers alone are ~0.15–0.2 bpp on a 128×128 image, so JPEG
    cannot go lower there."""
    name, feature, library, format = "jpeg", "jpg", "libjpeg-dev", "JPEG"
    rate_format = "jpeg"   # JFIF APP0: container; tables, frame and scan headers: coded
    quality_label = "quality"
    qualities = (2, 5, 10, 20, 35, 50, 70, 85)

    def _save_kwargs(self, quality):
        return {"quality": int(quality), "optimize": True, "subsampling": "4:2:0"}


class WebP(PillowCodec):
    """Lossy WebP (libwebp, VP8 intra), method 6 (slowest, best). Setting: quality 0–100."""
    name, feature, library, format = "webp", "webp", "libwebp-dev", "WEBP"
    rate_format = "webp"   # the VP8 chunk's payload: coded; RIFF and chunk headers: container
    qualities = (0, 5, 10, 20, 35, 50, 70, 85)

    def _save_kwargs(self, quality):
        return {"quality": int(quality), "method": 6, "lossless": False}


class AVIF(PillowCodec):
    """AVIF (AV1 intra in a HEIF container) through Pillow ≥ 11.2's libavif plugin, 4:2:0,
    speed 6. Setting: quality 0–100. The container costs a few hundred bytes."""
    name, feature, library, format = "avif", "avif", "libavif-dev", "AVIF"
    rate_format = "avif"   # the AV1 image item: coded; the HEIF boxes: container
    qualities = (0, 10, 20, 30, 40, 50, 60, 70, 80)

    def _save_kwargs(self, quality):
        return {"quality": int(quality), "speed": 6, "subsampling": "4:2:0"}


class JPEG2000(PillowCodec):
    """JPEG 2000 (OpenJPEG via Pillow): irreversible 9/7 wavelet, the RGB→YCbCr component
    transform (``mct=1``; Pillow's default is off, which costs ~4 dB at 1.5 bpp), one quality
    layer, raw codestream (no JP2 boxes). Setting: the *target bpp*; it is passed to OpenJPEG as the
    compression ratio 24 / bpp (``quality_mode="rates"``) and the rate control lands close
    to it — so the settings are the rate points themselves."""
    name, feature, library, format = "jpeg2000", "jpg_2000", "libopenjp2-7-dev", "JPEG2000"
    rate_format = "jpeg2000"   # the codestream: coded, but OpenJPEG's comment (metadata)
    quality_label = "target bpp"
    qualities = (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0)

    def _save_kwargs(self, quality):
        q = float(quality)
        if not q > 0:
            raise ValueError(f"JPEG 2000 setting is a target bpp > 0, got {quality!r}")
        return {"quality_mode": "rates", "quality_layers": [24.0 / q], "irreversible": True,
                "mct": 1, "no_jp2": True}


# --------------------------------------------------------------------------------------
# YCbCr for the video codecs
# --------------------------------------------------------------------------------------

# BT.601 full range (JFIF): Y, Cb, Cr from R, G, B in [0, 255].
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168735892, -0.331264108, 0.5],
                     [0.5, -0.418687589, -0.081312411]])
_YCC2RGB = np.linalg.inv(_RGB2YCC)


def rgb_to_yuv(rgb: np.ndarray, chroma: str = "420") -> bytes:
    """Planar 8-bit Y, Cb, Cr (I420 for ``"420"``, I444 for ``"444"``) of an H×W×3 uint8 image.
    For 4:2:0 the height and width must be even (pad first)."""
    h, w, _ = rgb.shape
    ycc = rgb.astype(np.float64) @ _RGB2YCC.T
    ycc[..., 1:] += 128.0
    y = ycc[..., 0]
    cb, cr = ycc[..., 1], ycc[..., 2]
    if chroma == "420":
        if h % 2 or w % 2:
            raise ValueError(f"4:2:0 needs an even size, got {w}×{h}")
        cb = cb.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        cr = cr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    elif chroma != "444":
        raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
    planes = [np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, cb, cr)]
    return b"".join(p.tobytes() for p in planes)


def yuv_to_rgb(data: bytes, width: int, height: int, chroma: str = "420") -> np.ndarray:
    """Inverse of ``rgb_to_yuv``: H×W×3 uint8. 4:2:0 chroma is upsampled bilinearly (centre
    siting, matching the 2×2 box downsampling)."""
    n = width * height
    cw, ch = (width // 2, height // 2) if chroma == "420" else (width, height)
    need = n + 2 * cw * ch
    if len(data) < need:
        raise ValueError(f"decoded YUV has {len(data)} bytes, expected {need} for {width}×{height} "
                         f"{chroma}")
    buf = np.frombuffer(data, dtype=np.uint8, count=need)
    y = buf[:n].reshape(height, width).astype(np.float64)
    planes = [y]
    for k in range(2):
        c = buf[n + k * cw * ch: n + (k + 1) * cw * ch].reshape(ch, cw).astype(np.float32)
        if chroma == "420":
            c = np.asarray(Image.fromarray(c, mode="F").resize((width, height), Image.BILINEAR))
        planes.append(c.astype(np.float64) - 128.0)
    rgb = np.stack(planes, axis=-1) @ _YCC2RGB.T
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def _pad_even(rgb: np.ndarray) -> np.ndarray:
    h, w, _ = rgb.shape
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


_SIZE = struct.Struct(">HH")


def _with_size(width: int, height: int, stream: bytes) -> bytes:
    if width > 0xFFFF or height > 0xFFFF:
        raise ValueError(f"image too large for the anchor size header: {width}×{height}")
    return _SIZE.pack(width, height) + stream


def _split_size(data: bytes) -> Tuple[int, int, bytes]:
    if len(data) <= _SIZE.size:
        raise ValueError(f"not an anchor bitstream: only {len(data)} bytes")
    w, h = _SIZE.unpack_from(data)
    return w, h, data[_SIZE.size:]


def _run(cmd: List[str], what: str, input: Optional[bytes] = None, timeout: float = 600) -> bytes:
    try:
        proc = subprocess.run(cmd, input=input, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise AnchorUnavailable(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} took longer than {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        out = proc.stdout.decode(errors="replace").strip()[-1000:] if proc.stdout else ""
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{err}\n{out}")
    return proc.stdout


# --------------------------------------------------------------------------------------
# ffmpeg codecs: HEVC (x265) and AV1 (libaom)
# --------------------------------------------------------------------------------------

_FFMPEG_HINT = ("install ffmpeg with {lib} (Debian/Ubuntu: `apt-get install ffmpeg`; conda: "
                "`conda install -c conda-forge ffmpeg`; macOS: `brew install ffmpeg`), or set "
                "ICM_FFMPEG=/path/to/ffmpeg")


def find_ffmpeg() -> Optional[str]:
    """``$ICM_FFMPEG`` if set, else ``ffmpeg`` on the PATH."""
    env = os.environ.get("ICM_FFMPEG")
    if env:
        return env if (os.path.isfile(env) and os.access(env, os.X_OK)) else None
    return shutil.which("ffmpeg")


@functools.lru_cache(maxsize=None)
def _ffmpeg_codecs(ffmpeg: str, kind: str) -> str:
    try:
        return subprocess.run([ffmpeg, "-hide_banner", f"-{kind}"], capture_output=True,
                              timeout=60).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return ""


class FFmpegCodec(Codec):
    """One still frame through ffmpeg's command line, YUV in and out through pipes."""

    encoder: str = ""
    bitstream_format: str = ""   # ffmpeg muxer / demuxer of the raw elementary stream
    library: str = ""

    def __init__(self, qualities: Optional[Sequence] = None, chroma: str = "420",
                 ffmpeg: Optional[str] = None):
        if qualities is not None:
            self.qualities = tuple(qualities)
        if chroma not in ("420", "444"):
            raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
        self.chroma = chroma
        self._ffmpeg = ffmpeg

    @property
    def ffmpeg(self) -> Optional[str]:
        if self._ffmpeg is not None:
            return self._ffmpeg if shutil.which(self._ffmpeg) else None
        return find_ffmpeg()

    def available(self) -> Tuple[bool, str]:
        exe = self.ffmpeg
        if exe is None:
            where = self._ffmpeg or os.environ.get("ICM_FFMPEG") or "ffmpeg on the PATH"
            return False, f"ffmpeg not found ({where}): " + _FFMPEG_HINT.format(lib=self.library)
        if f" {self.encoder} " not in _ffmpeg_codecs(exe, "encoders"):
            return False, (f"{exe} has no {self.encoder} encoder: "
                           + _FFMPEG_HINT.format(lib=self.library))
        return True, f"{exe} with {self.encoder}"

    @property
    def pix_fmt(self) -> str:
        return "yuv420p" if self.chroma == "420" else "yuv444p"

    def _encoder_args(self, quality) -> List[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _encode(self, image: Image.Image, quality) -> bytes:
        rgb = np.asarray(image)
        h, w, _ = rgb.shape
        padded = _pad_even(rgb) if self.chroma == "420" else rgb
        ph, pw, _ = padded.shape
        cmd = [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
               "-pix_fmt", self.pix_fmt, "-s", f"{pw}x{ph}", "-r", "1", "-i", "pipe:0",
               "-frames:v", "1", "-an", *self._encoder_args(quality),
               "-f", self.bitstream_format, "pipe:1"]
        stream = _run(cmd, f"{self.name} encoder", input=rgb_to_yuv(padded, self.chroma))
        if not stream:
            raise RuntimeError(f"{self.name} encoder produced no bytes: {' '.join(cmd)}")
        return _with_size(w, h, stream)

    def _decode(self, data: bytes) -> Image.Image:
        w, h, stream = _split_size(data)
        pw, ph = (w + w % 2, h + h % 2) if self.chroma == "420" else (w, h)
        cmd = [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-f", self.bitstream_format,
               "-i", "pipe:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", self.pix_fmt,
               "pipe:1"]
        yuv = _run(cmd, f"{self.name} decoder", input=stream)
        rgb = yuv_to_rgb(yuv, pw, ph, self.chroma)
        return Image.fromarray(np.ascontiguousarray(rgb[:h, :w]), "RGB")


class HEVC(FFmpegCodec):
    """HEVC intra with x265 (ffmpeg's libx265): one IDR frame, fixed QP, ``--tune psnr``
    (no psycho-visual tuning, like the HM reference encoder), preset ``medium``. Setting: QP
    (0–51; higher = fewer bits). Output: raw Annex-B stream (``-f hevc``) with x265's info SEI
    (its whole command line, ~2 kB) switched off (``info=0``)."""
    name, encoder, bitstream_format, library = "hevc", "libx265", "hevc", "libx265"
    rate_format = "sized-hevc"   # the 4-byte size prefix, then the Annex-B stream
    quality_label = "QP"
    qualities = (51, 47, 44, 41, 38, 35, 32, 29, 26)

    def __init__(self, qualities=None, chroma="420", ffmpeg=None, preset: str = "medium"):
        super().__init__(qualities, chroma, ffmpeg)
        self.preset = preset

    def _encoder_args(self, quality) -> List[str]:
        qp = int(quality)
        if not 0 <= qp <= 51:
            raise ValueError(f"HEVC QP must be in 0..51, got {quality!r}")
        return ["-c:v", "libx265", "-preset", self.preset, "-tune", "psnr", "-x265-params",
                f"qp={qp}:keyint=1:info=0:log-level=error:aud=0:repeat-headers=0"]


class AV1(FFmpegCodec):
    """AV1 intra with libaom (ffmpeg's libaom-av1): ``usage=allintra``, ``still-picture``
    (reduced still-picture header), constant quality ``crf`` with ``b:v 0``, ``cpu-used 6``.
    Setting: CRF (0–63; higher = fewer bits). Output: AV1 low-overhead OBU stream
    (``-f obu``); decoded by ffmpeg's default AV1 decoder (libdav1d or libaom)."""
    name, encoder, bitstream_format, library = "av1", "libaom-av1", "obu", "libaom"
    rate_format = "sized-av1"    # the 4-byte size prefix, then the OBU stream
    quality_label = "CRF"
    qualities = (63, 58, 53, 48, 43, 38, 33, 28, 23)

    def __init__(self, qualities=None, chroma="420", ffmpeg=None, cpu_used: int = 6):
        super().__init__(qualities, chroma, ffmpeg)
        self.cpu_used = cpu_used

    def _encoder_args(self, quality) -> List[str]:
        crf = int(quality)
        if not 0 <= crf <= 63:
            raise ValueError(f"AV1 CRF must be in 0..63, got {quality!r}")
        return ["-c:v", "libaom-av1", "-usage", "allintra", "-still-picture", "1",
                "-crf", str(crf), "-b:v", "0", "-cpu-used", str(self.cpu_used),
                "-threads", "1"]


# --------------------------------------------------------------------------------------
# VVC through external binaries (VVenC/VVdeC built by `make vvc`, or VTM)
# --------------------------------------------------------------------------------------

#: Where ``make vvc`` installs VVenC/VVdeC (``<repository>/tools/vvc/bin``); ``$ICM_VVC_TOOLS``
#: overrides the folder (its ``bin/`` or the folder itself holds vvencapp and vvdecapp).
VVC_TOOLS = str(Path(__file__).resolve().parents[2] / "tools" / "vvc")

_VVC_HINT = ("build VVenC and VVdeC with `make vvc` (offline: `make vvc VVC_SRC=<folder with "
             "vvenc-1.14.0.tar.gz and vvdec-3.2.0.tar.gz>`; they go to tools/vvc/bin, found "
             "there without any variable; $ICM_VVC_TOOLS points elsewhere), or set "
             "ICM_VVC_ENCODER and ICM_VVC_DECODER to vvencapp/vvdecapp or to VTM's EncoderApp/"
             "DecoderApp (https://vcgit.hhi.fraunhofer.de/jvet/VVCSoftware_VTM; VTM also needs "
             "ICM_VVC_CONFIG=cfg/encoder_intra_vtm.cfg), or pass encoder=/decoder=/config=")

# VVC NAL unit types (H.266 Table 5) the anchor checks for in an encoder's output.
_VVC_IRAP = {7: "IDR_W_RADL", 8: "IDR_N_LP", 9: "CRA_NUT"}
_VVC_SPS, _VVC_PPS = 15, 16


def _executable(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    found = shutil.which(path)
    return found if found else None


def vvc_tools_dir() -> str:
    """The folder ``make vvc`` installs into: ``$ICM_VVC_TOOLS`` if set, else ``VVC_TOOLS``."""
    return os.environ.get("ICM_VVC_TOOLS") or VVC_TOOLS


def find_vvc_tool(app: str) -> Optional[str]:
    """``vvencapp`` / ``vvdecapp`` in the tools folder (its ``bin/``, or the folder itself)."""
    root = vvc_tools_dir()
    for folder in (os.path.join(root, "bin"), root):
        exe = os.path.join(folder, app)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


@functools.lru_cache(maxsize=None)
def _tool_version(exe: str, mtime: float) -> str:
    """First line of ``exe --version`` that names a version ('' if none); cached per binary."""
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in proc.stdout.decode(errors="replace").splitlines():
        if "version" in line.lower():
            return " ".join(line.split())
    return ""


def vvc_nal_types(stream: bytes) -> List[int]:
    """NAL unit types of an Annex-B VVC stream, in order (H.266: the type is the top five bits
    of the second header byte). ``[]`` if the stream does not start with a start code."""
    if not (stream.startswith(b"\x00\x00\x01") or stream.startswith(b"\x00\x00\x00\x01")):
        return []
    types, pos = [], 0
    while True:
        pos = stream.find(b"\x00\x00\x01", pos)
        if pos < 0 or pos + 4 >= len(stream):
            return types
        types.append(stream[pos + 4] >> 3)
        pos += 3


class VVC(Codec):
    """VVC intra through VVenC/VVdeC (``vvencapp``/``vvdecapp``) or VTM (``EncoderApp``/
    ``DecoderApp``). The flavour is recognised from each binary's file name (``vvenc`` /
    ``vvdec`` in it → VVenC / VVdeC, else VTM).

    Where the binaries come from, first found wins: ``encoder=``/``decoder=``, then
    ``$ICM_VVC_ENCODER``/``$ICM_VVC_DECODER``, then the project-local tools folder that
    ``make vvc`` fills (``tools/vvc/bin``, or ``$ICM_VVC_TOOLS``). VTM also needs its
    all-intra configuration (``config=`` or ``$ICM_VVC_CONFIG``, default
    ``../cfg/encoder_intra_vtm.cfg`` next to the binary's folder).

    Coding, as for the other video anchors: RGB → YCbCr BT.601 full range, 8-bit 4:2:0
    (``chroma="420"``, the default; ``"444"`` needs VTM: vvencapp reads 4:2:0 input only),
    one intra (IDR) picture at a fixed QP, coded with 10-bit internal sample depth
    (``bitdepth=10``: VVenC's default and the VTM all-intra configuration's); the decoder's
    output is brought back to 8 bits and converted to RGB here. VVenC runs with
    ``--preset medium`` (its default, the middle of its five presets), perceptual QP
    adaptation off (``--qpa 0``, PSNR-fair like x265's ``--tune psnr``) and one thread.
    Measured on four 128×128 synthetic-world images: ``fast`` codes them 0.05 dB worse at
    half the time, ``slow`` 0.03 dB better at 1.7×; a medium round trip takes under a second
    on one core. Setting: QP (0–63; higher = fewer bits); QP 50→26 gives 0.07→2.4 bpp on
    those images (HEVC QP 51→26: 0.08→2.6). Output: the size header and the raw Annex-B
    stream the encoder wrote (VVenC: SPS, PPS and one IDR slice with its picture header),
    checked for an SPS, a PPS and an intra slice."""

    name = "vvc"
    quality_label = "QP"
    rate_format = "sized-vvc"    # the 4-byte size prefix, then the Annex-B stream
    qualities = (50, 47, 44, 41, 38, 35, 32, 29, 26)

    def __init__(self, qualities=None, encoder: Optional[str] = None,
                 decoder: Optional[str] = None, config: Optional[str] = None,
                 preset: str = "medium", chroma: str = "420", bitdepth: int = 10,
                 threads: int = 1, timeout: float = 600):
        if qualities is not None:
            self.qualities = tuple(qualities)
        if chroma not in ("420", "444"):
            raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
        if bitdepth not in (8, 10):
            raise ValueError(f"bitdepth must be 8 or 10, got {bitdepth!r}")
        self.encoder_path, self.encoder_from = self._locate(encoder, "ICM_VVC_ENCODER", "vvencapp")
        self.decoder_path, self.decoder_from = self._locate(decoder, "ICM_VVC_DECODER", "vvdecapp")
        self.config_path = config or os.environ.get("ICM_VVC_CONFIG")
        self.preset = preset
        self.chroma = chroma
        self.bitdepth = bitdepth
        self.threads = threads
        self.timeout = timeout

    @staticmethod
    def _locate(given: Optional[str], env: str, app: str) -> Tuple[Optional[str], str]:
        if given:
            return given, "argument"
        if os.environ.get(env):
            return os.environ[env], f"${env}"
        found = find_vvc_tool(app)
        return (found, "tools folder") if found else (None, "")

    @property
    def flavour(self) -> str:
        """``"vvenc"`` or ``"vtm"``: which encoder command line to use."""
        return "vvenc" if self.encoder_path and "vvenc" in os.path.basename(
            self.encoder_path).lower() else "vtm"

    @property
    def decoder_flavour(self) -> str:
        return "vvdec" if self.decoder_path and "vvdec" in os.path.basename(
            self.decoder_path).lower() else "vtm"

    def _vtm_config(self) -> Optional[str]:
        if self.config_path:
            return self.config_path
        exe = _executable(self.encoder_path)
        if exe:
            guess = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(exe))),
                                 "cfg", "encoder_intra_vtm.cfg")
            if os.path.isfile(guess):
                return guess
        return None

    def available(self) -> Tuple[bool, str]:
        if not self.encoder_path or not self.decoder_path:
            missing = " and ".join(r for r, p in (("encoder", self.encoder_path),
                                                  ("decoder", self.decoder_path)) if not p)
            return False, (f"no VVC {missing} (nothing in {vvc_tools_dir()}/bin, "
                           f"ICM_VVC_ENCODER/ICM_VVC_DECODER not set): " + _VVC_HINT)
        for role, path, source in (("encoder", self.encoder_path, self.encoder_from),
                                   ("decoder", self.decoder_path, self.decoder_from)):
            if not _executable(path):
                return False, (f"VVC {role} {path!r} (from {source}) not found or not "
                               f"executable: " + _VVC_HINT)
        if self.flavour == "vvenc" and self.chroma != "420":
            return False, (f"vvencapp codes 4:2:0 input only (chroma={self.chroma!r}); "
                           f"use VTM (ICM_VVC_ENCODER=EncoderApp) for 4:4:4")
        if self.flavour == "vtm":
            cfg = self._vtm_config()
            if not cfg or not os.path.isfile(cfg):
                return False, (f"VTM needs its all-intra configuration file (looked for "
                               f"{cfg or '../cfg/encoder_intra_vtm.cfg next to the binary'}): "
                               f"set ICM_VVC_CONFIG or pass config=")
        tools = []  # VVenC/VVdeC say their version (part of the reproduction's cache key)
        for path, asks in ((self.encoder_path, self.flavour == "vvenc"),
                           (self.decoder_path, self.decoder_flavour == "vvdec")):
            exe = _executable(path)
            version = _tool_version(exe, os.path.getmtime(exe)) if asks else ""
            tools.append(f"{path}" + (f" ({version})" if version else ""))
        what = (f"{self.flavour}" + (f" --preset {self.preset}" if self.flavour == "vvenc" else "")
                + f", {self.chroma}, {self.bitdepth}-bit")
        return True, f"{what}: {tools[0]}, {tools[1]}"

    def _encode(self, image: Image.Image, quality) -> bytes:
        qp = int(quality)
        if not 0 <= qp <= 63:
            raise ValueError(f"VVC QP must be in 0..63, got {quality!r}")
        rgb = np.asarray(image)
        h, w, _ = rgb.shape
        padded = _pad_even(rgb) if self.chroma == "420" else rgb
        ph, pw, _ = padded.shape
        with tempfile.TemporaryDirectory(prefix="icm-vvc-") as tmp:
            src, out = os.path.join(tmp, "in.yuv"), os.path.join(tmp, "out.266")
            with open(src, "wb") as f:
                f.write(rgb_to_yuv(padded, self.chroma))
            enc = _executable(self.encoder_path)
            if enc is None:
                raise AnchorUnavailable(f"VVC encoder {self.encoder_path!r} not found")
            if self.flavour == "vvenc":
                # one frame, so the only picture is the IDR that starts the stream
                cmd = [enc, "-i", src, "-s", f"{pw}x{ph}", "-c", "yuv420", "-r", "1", "-f", "1",
                       "--preset", self.preset, "-q", str(qp), "--qpa", "0",
                       "--internal-bitdepth", str(self.bitdepth), "-t", str(self.threads),
                       "-v", "1", "-o", out]
            else:
                cmd = [enc, "-c", self._vtm_config(), "-i", src, "-b", out, "-wdt", str(pw),
                       "-hgt", str(ph), "-fr", "1", "-f", "1", "-q", str(qp),
                       "--InputBitDepth=8", f"--InternalBitDepth={self.bitdepth}",
                       "--OutputBitDepth=8", f"--InputChromaFormat={self.chroma}",
                       f"--ChromaFormatIDC={self.chroma}", "--ConformanceWindowMode=1",
                       "--IntraPeriod=1"]
            _run(cmd, "VVC encoder", timeout=self.timeout)
            stream = b""
            if os.path.isfile(out):
                with open(out, "rb") as f:
                    stream = f.read()
        if not stream:
            raise RuntimeError(f"VVC encoder wrote an empty bitstream: {' '.join(cmd)}")
        types = vvc_nal_types(stream)
        if _VVC_SPS not in types or _VVC_PPS not in types or not set(types) & set(_VVC_IRAP):
            raise RuntimeError(f"VVC encoder output is not an Annex-B VVC intra stream (NAL "
                               f"unit types {types[:12]}; need an SPS, a PPS and an IDR/CRA "
                               f"slice): {' '.join(cmd)}")
        return _with_size(w, h, stream)

    def _decode(self, data: bytes) -> Image.Image:
        w, h, stream = _split_size(data)
        pw, ph = (w + w % 2, h + h % 2) if self.chroma == "420" else (w, h)
        with tempfile.TemporaryDirectory(prefix="icm-vvc-") as tmp:
            bit, rec = os.path.join(tmp, "in.266"), os.path.join(tmp, "out.yuv")
            with open(bit, "wb") as f:
                f.write(stream)
            dec = _executable(self.decoder_path)
            if dec is None:
                raise AnchorUnavailable(f"VVC decoder {self.decoder_path!r} not found")
            if self.decoder_flavour == "vvdec":
                cmd = [dec, "-b", bit, "-o", rec, "-t", str(self.threads), "-v", "1"]
            else:
                cmd = [dec, "-b", bit, "-o", rec, "-d", "8"]
            _run(cmd, "VVC decoder", timeout=self.timeout)
            yuv = b""
            if os.path.isfile(rec):
                with open(rec, "rb") as f:
                    yuv = f.read()
        n8 = pw * ph * (3 if self.chroma == "444" else 1) + (0 if self.chroma == "444" else
                                                            2 * (pw // 2) * (ph // 2))
        if len(yuv) == 2 * n8:  # 16-bit little-endian samples: vvdecapp's output for 10-bit content
            yuv = np.clip(np.round(np.frombuffer(yuv, "<u2") / 4.0), 0, 255).astype(np.uint8).tobytes()
        elif len(yuv) != n8:
            raise RuntimeError(f"VVC decoder wrote {len(yuv)} bytes, expected {n8} (8-bit) or "
                               f"{2 * n8} (16-bit) for one {pw}×{ph} {self.chroma} picture: "
                               f"{' '.join(cmd)}")
        rgb = yuv_to_rgb(yuv, pw, ph, self.chroma)
        return Image.fromarray(np.ascontiguousarray(rgb[:h, :w]), "RGB")


# --------------------------------------------------------------------------------------
# Learned codecs
# --------------------------------------------------------------------------------------

# Header of a learned-codec bitstream (big-endian): setting index (B), image H, W (HH),
# latent z shape zh, zw (HH), number of streams (B), then one uint32 length per stream,
# then the streams. 10 + 4·streams bytes; 18 bytes for a hyperprior's two streams.
_LEARNED_HEAD = struct.Struct(">BHHHHB")


def pack_strings(index: int, size: Tuple[int, int], shape: Tuple[int, int],
                 strings: Sequence[bytes]) -> bytes:
    """Serialize ``encode_image``'s output (plus which model made it) with length prefixes."""
    head = _LEARNED_HEAD.pack(index, size[0], size[1], shape[0], shape[1], len(strings))
    return head + b"".join(struct.pack(">I", len(s)) for s in strings) + b"".join(strings)


def unpack_strings(data: bytes) -> Tuple[int, Tuple[int, int], Tuple[int, int], List[bytes]]:
    """Inverse of ``pack_strings``: ``(index, (H, W), (zh, zw), strings)``."""
    if len(data) < _LEARNED_HEAD.size:
        raise ValueError(f"not a learned-codec bitstream: only {len(data)} bytes")
    index, h, w, zh, zw, n = _LEARNED_HEAD.unpack_from(data)
    pos = _LEARNED_HEAD.size
    if len(data) < pos + 4 * n:
        raise ValueError(f"learned-codec bitstream is truncated: {len(data)} bytes, its header "
                         f"names {n} streams whose lengths alone need {pos + 4 * n}")
    lengths = [struct.unpack_from(">I", data, pos + 4 * i)[0] for i in range(n)]
    pos += 4 * n
    strings = []
    for length in lengths:
        strings.append(data[pos:pos + length])
        pos += length
    if pos != len(data):
        raise ValueError(f"learned-codec bitstream is truncated or has trailing bytes "
                         f"({len(data)} bytes, header says {pos})")
    return index, (h, w), (zh, zw), strings


class LearnedCodec(Codec):
    """Any CompressAI-API model (our ``ICMCodec``, a CompressAI zoo model) as an anchor.

    Args:
        nets: one model (a single setting), a sequence of models (settings 0..n-1, ordered by
            rate), or a mapping ``{setting: model}``; a value may also be a zero-argument
            callable that returns the model, loaded on first use (e.g. zoo weights).
        name: the codec's name in tables and plots.
        container: ``"icm"`` (default): the project's ``.icm`` file (``icmlib.codec.bitstream``:
            magic, version, model fingerprint, sizes, stream lengths, CRC-32 — 36 bytes for
            a hyperprior's two streams); the decoder picks the model whose fingerprint the
            file names. ``"raw"``: the streams with a minimal header (``pack_strings``:
            setting index, image and latent sizes, stream lengths — 18 bytes for two
            streams); needed for models the ``.icm`` format does not describe (one stream,
            e.g. ``bmshj2018-factorized``). Either way the whole file is what
            the evaluation's ``bpp_file`` counts; its ``bpp`` counts the streams plus 8 bytes
            of side information (``rate_parts``).

    Encoding runs ``icmlib.codec.model.encode_image`` (pad to the stride, ``net.compress``).
    Decoding runs CompressAI's fast rANS decoder, which trusts its input: ``decode`` is
    for bytes this codec encoded (as in evaluation); decode a file from elsewhere with
    ``icmlib.codec.bitstream.decompress_file``, which checks every read.
    """

    quality_label = "model"

    def __init__(self, nets, name: str, device: str = "cpu", container: str = "icm"):
        if isinstance(nets, Mapping):
            items = list(nets.items())
        elif isinstance(nets, (list, tuple)):
            items = list(enumerate(nets))
        else:
            items = [(0, nets)]
        if not items:
            raise ValueError("LearnedCodec needs at least one model")
        if len(items) > 255:
            raise ValueError("LearnedCodec supports at most 255 settings")
        if container not in ("icm", "raw"):
            raise ValueError(f"container must be 'icm' or 'raw', got {container!r}")
        self.name = name
        self.qualities = tuple(k for k, _ in items)
        self._sources = [v for _, v in items]
        self._loaded: Dict[int, object] = {}
        self._fingerprints: Dict[int, bytes] = {}
        self.device = device
        self.container = container

    @staticmethod
    def _is_model(obj) -> bool:
        return hasattr(obj, "compress") and hasattr(obj, "decompress")

    def available(self) -> Tuple[bool, str]:
        for q, src in zip(self.qualities, self._sources):
            check = getattr(src, "available", None)
            if check is not None and not self._is_model(src):
                ok, why = check()
                if not ok:
                    return False, f"setting {q}: {why}"
        return True, f"{len(self.qualities)} model(s)"

    def model(self, quality):
        """The model for a setting (loaded and put in eval mode on first use)."""
        return self._model_at(self._index(quality))

    def _index(self, quality) -> int:
        try:
            return self.qualities.index(quality)
        except ValueError:
            raise ValueError(f"{self.name}: unknown setting {quality!r}; "
                             f"choose one of {list(self.qualities)}") from None

    def _model_at(self, index: int):
        if index not in self._loaded:
            src = self._sources[index]
            net = src if self._is_model(src) else src()
            net = net.to(self.device).eval()
            self._loaded[index] = net
        return self._loaded[index]

    def _fingerprint_at(self, index: int) -> bytes:
        from icmlib.codec.model import fingerprint
        if index not in self._fingerprints:
            self._fingerprints[index] = fingerprint(self._model_at(index))
        return self._fingerprints[index]

    def _encode(self, image: Image.Image, quality) -> bytes:
        import torch
        index = self._index(quality)
        net = self._model_at(index)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)
        x = x.unsqueeze(0).to(self.device)
        if self.container == "icm":
            from icmlib.codec import bitstream
            f = bitstream.compress_image(net, x)
            try:
                return bitstream.pack(f)
            except bitstream.BitstreamError as err:
                raise ValueError(f"{self.name}: the .icm container cannot describe this "
                                 f"model's output ({err}); use container='raw'") from None
        from icmlib.codec.model import encode_image
        enc = encode_image(net, x)
        return pack_strings(index, enc["size"], enc["shape"], enc["strings"])

    def rate_parts(self, data: bytes) -> Dict[str, int]:
        """The rANS streams plus the minimal side information (image size, a 16-bit length
        per stream: ``overheads.learned_side_bytes``) are coded; the rest of the ``.icm``
        (or raw) header is container."""
        if self.container == "icm":
            from icmlib.codec import bitstream
            streams = bitstream.unpack(data).streams
        else:
            streams = unpack_strings(data)[3]
        return overheads.learned_parts(streams, len(data))

    def _decode(self, data: bytes) -> Image.Image:
        if self.container == "icm":
            from icmlib.codec import bitstream
            f = bitstream.unpack(data)
            # the model the file names: those already loaded first, then the others
            order = sorted(range(len(self.qualities)), key=lambda i: i not in self._loaded)
            for index in order:
                if self._fingerprint_at(index) == f.fingerprint:
                    # the fast C++ rANS decoder: evaluation decodes the bytes it just encoded
                    return to_pil(bitstream.decompress_file(self._model_at(index), f,
                                                            checked=False))
            raise bitstream.BitstreamError(
                f"{self.name}: this file was written by model {f.fingerprint.hex()}, which is "
                f"none of this codec's {len(self.qualities)} model(s)")
        from icmlib.codec.model import decode_image
        index, size, shape, strings = unpack_strings(data)
        if index >= len(self.qualities):
            raise ValueError(f"{self.name}: bitstream names setting #{index}, but this codec has "
                             f"{len(self.qualities)}")
        return to_pil(decode_image(self._model_at(index), strings, shape, size))


def _zoo_url(name: str, quality: int, metric: str) -> str:
    from compressai.zoo import image as zoo_image
    if name not in zoo_image.model_urls:
        raise ValueError(f"no pretrained CompressAI weights for {name!r}; choose one of "
                         f"{sorted(zoo_image.model_urls)}")
    urls = zoo_image.model_urls[name]
    if metric not in urls or quality not in urls[metric]:
        raise ValueError(f"no pretrained {name!r} weights for metric={metric!r}, "
                         f"quality={quality!r}; available: "
                         f"{ {m: sorted(q) for m, q in urls.items()} }")
    return urls[metric][quality]


def _zoo_cache_file(url: str) -> str:
    import torch
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def compressai_zoo(name: str, quality: int, metric: str = "mse", offline: Optional[bool] = None):
    """A pretrained CompressAI zoo model (e.g. ``"bmshj2018-hyperprior"``, ``"mbt2018-mean"``,
    ``"cheng2020-anchor"``), in eval mode with its entropy tables ready.

    Weights come from torch.hub's cache (``~/.cache/torch/hub/checkpoints``) or are downloaded
    there. With no network (or ``offline=True``, or ``$ICM_OFFLINE=1``) and no cached file,
    raises ``AnchorUnavailable`` naming the URL and the file to put in place.
    """
    from compressai import zoo
    url = _zoo_url(name, quality, metric)
    cached = _zoo_cache_file(url)
    if offline is None:
        offline = os.environ.get("ICM_OFFLINE", "") not in ("", "0")
    if not os.path.isfile(cached) and offline:
        raise AnchorUnavailable(
            f"CompressAI weights for {name} (quality {quality}, {metric}) are not cached and "
            f"downloads are off: it would download {url} to {cached}")
    if not os.path.isfile(cached):
        from icmlib.data import hub_checkpoint

        try:  # with a timeout of its own: socket's process-wide default is left alone
            hub_checkpoint(url)
        except OSError as err:  # URLError, HTTPError, timeouts, a damaged download
            raise AnchorUnavailable(
                f"could not download CompressAI weights for {name} (quality {quality}, "
                f"{metric}) from {url} ({type(err).__name__}: {err}). Download that file to "
                f"{cached} on a machine with network access") from None
    net = zoo.image_models[name](quality=quality, metric=metric, pretrained=True,
                                 progress=False)
    net.eval()
    net.update(force=False)
    return net


class _ZooLoader:
    """Zero-argument loader of one zoo model, with an ``available`` that never downloads."""

    def __init__(self, name: str, quality: int, metric: str):
        self.name, self.quality, self.metric = name, quality, metric
        self.url = _zoo_url(name, quality, metric)

    def available(self) -> Tuple[bool, str]:
        cached = _zoo_cache_file(self.url)
        if os.path.isfile(cached):
            return True, cached
        return False, (f"weights not cached: run icmlib.evaluation.anchors.compressai_zoo({self.name!r}, "
                       f"{self.quality}) with network access once (downloads {self.url})")

    def __call__(self):
        return compressai_zoo(self.name, self.quality, self.metric)


def compressai_zoo_codec(name: str = "bmshj2018-hyperprior", qualities: Sequence[int] = (1, 2, 3, 4),
                         metric: str = "mse") -> LearnedCodec:
    """A ``LearnedCodec`` over CompressAI zoo models at the given quality levels (1 = lowest
    rate). Weights load lazily; ``available()`` is False until they are cached."""
    container = "raw" if "factorized" in name else "icm"  # one stream: not an .icm layout
    return LearnedCodec({q: _ZooLoader(name, q, metric) for q in qualities}, name=name,
                        container=container)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

#: The traditional anchors by name, in the order tables list them.
ANCHORS: Dict[str, Callable[..., Codec]] = {
    "jpeg": JPEG, "jpeg2000": JPEG2000, "webp": WebP, "avif": AVIF,
    "hevc": HEVC, "av1": AV1, "vvc": VVC,
}


def make_anchor(name: str, **kwargs) -> Codec:
    """A traditional anchor by name (``ANCHORS``); keyword arguments go to its constructor."""
    try:
        factory = ANCHORS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown anchor {name!r}; choose from {list(ANCHORS)}") from None
    return factory(**kwargs)


def available_anchors(names: Optional[Iterable[str]] = None, verbose: bool = True,
                      file=None) -> List[Codec]:
    """The anchors that can run on this machine (all of ``ANCHORS`` by default). Each one
    that cannot is skipped with a line saying why and how to install it."""
    out = []
    for name in (list(ANCHORS) if names is None else list(names)):
        codec = make_anchor(name)
        ok, why = codec.available()
        if ok:
            out.append(codec)
        elif verbose:
            print(f"skipping anchor {name}: {why}", file=file or sys.stderr)
    return out
