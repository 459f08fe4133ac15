"""HEVC (x265) and AV1 (libaom) intra through ffmpeg's command line.

One still frame, YUV in and out through pipes; the bytes kept are the raw elementary
stream behind the project's 4-byte size prefix: HEVC Annex-B NAL units (``-f hevc``:
VPS/SPS/PPS and one IDR slice, the x265 info SEI switched off), AV1 low-overhead OBUs
(``-f obu``: temporal delimiter, sequence header, frame; no IVF/MP4 container).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from icmlib.evaluation.anchors.base import Codec, run_tool
from icmlib.evaluation.anchors.yuv import pad_even, rgb_to_yuv, split_size, with_size, yuv_to_rgb


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
    setting_range: Tuple[int, int] = (0, 0)   # valid quality settings (QP, CRF), inclusive

    def __init__(self, qualities: Optional[Sequence] = None, chroma: str = "420",
                 ffmpeg: Optional[str] = None):
        if qualities is not None:
            self.qualities = tuple(qualities)
        if chroma not in ("420", "444"):
            raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
        self.chroma = chroma
        self._ffmpeg = ffmpeg

    def _setting(self, quality) -> int:
        """``quality`` as the encoder's integer setting, refused outside ``setting_range``."""
        low, high = self.setting_range
        value = int(quality)
        if not low <= value <= high:
            raise ValueError(f"{self.name.upper()} {self.quality_label} must be in "
                             f"{low}..{high}, got {quality!r}")
        return value

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
        padded = pad_even(rgb) if self.chroma == "420" else rgb
        ph, pw, _ = padded.shape
        cmd = [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-f", "rawvideo",
               "-pix_fmt", self.pix_fmt, "-s", f"{pw}x{ph}", "-r", "1", "-i", "pipe:0",
               "-frames:v", "1", "-an", *self._encoder_args(quality),
               "-f", self.bitstream_format, "pipe:1"]
        stream = run_tool(cmd, f"{self.name} encoder", input=rgb_to_yuv(padded, self.chroma))
        if not stream:
            raise RuntimeError(f"{self.name} encoder produced no bytes: {' '.join(cmd)}")
        return with_size(w, h, stream)

    def _decode(self, data: bytes) -> Image.Image:
        w, h, stream = split_size(data)
        pw, ph = (w + w % 2, h + h % 2) if self.chroma == "420" else (w, h)
        cmd = [self.ffmpeg, "-hide_banner", "-loglevel", "error", "-f", self.bitstream_format,
               "-i", "pipe:0", "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", self.pix_fmt,
               "pipe:1"]
        yuv = run_tool(cmd, f"{self.name} decoder", input=stream)
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
    setting_range = (0, 51)

    def __init__(self, qualities=None, chroma="420", ffmpeg=None, preset: str = "medium"):
        super().__init__(qualities, chroma, ffmpeg)
        self.preset = preset

    def _encoder_args(self, quality) -> List[str]:
        qp = self._setting(quality)
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
    setting_range = (0, 63)

    def __init__(self, qualities=None, chroma="420", ffmpeg=None, cpu_used: int = 6):
        super().__init__(qualities, chroma, ffmpeg)
        self.cpu_used = cpu_used

    def _encoder_args(self, quality) -> List[str]:
        crf = self._setting(quality)
        return ["-c:v", "libaom-av1", "-usage", "allintra", "-still-picture", "1",
                "-crf", str(crf), "-b:v", "0", "-cpu-used", str(self.cpu_used),
                "-threads", "1"]
