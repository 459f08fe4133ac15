"""Anchors Pillow writes itself: JPEG, WebP, AVIF and JPEG 2000, as complete files.

No external tool: each is available when this Pillow was built with its library
(``PIL.features``), and the message says how to get it otherwise.
"""
from __future__ import annotations

import io
from typing import Dict, Optional, Sequence, Tuple

from PIL import Image, features

from icmlib.evaluation.anchors.base import Codec


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

