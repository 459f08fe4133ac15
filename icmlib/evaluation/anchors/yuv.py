"""What the video anchors (HEVC, AV1, VVC) share: YCbCr in and out, and the size prefix.

Every external video codec sees exactly the same YUV input and is judged on the same RGB
output, converted here in NumPy: BT.601 full range (the JPEG/JFIF matrix, so no code
values are lost to studio range), chroma downsampled with a 2×2 box filter and upsampled
bilinearly. 4:2:0 needs an even size, so images are padded (:func:`pad_even`) and the
decoder crops them back, told the size by 4 bytes before the stream (:func:`with_size`).
"""
from __future__ import annotations

import struct
from typing import Tuple

import numpy as np
from PIL import Image

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


def pad_even(rgb: np.ndarray) -> np.ndarray:
    """An H×W×3 image padded to an even size by repeating its last row and column."""
    h, w, _ = rgb.shape
    return np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


_SIZE = struct.Struct(">HH")


def with_size(width: int, height: int, stream: bytes) -> bytes:
    """``stream`` behind the 4-byte size prefix (width, height as big-endian uint16)."""
    if width > 0xFFFF or height > 0xFFFF:
        raise ValueError(f"image too large for the anchor size header: {width}×{height}")
    return _SIZE.pack(width, height) + stream


def split_size(data: bytes) -> Tuple[int, int, bytes]:
    """Inverse of :func:`with_size`: ``(width, height, stream)``."""
    if len(data) <= _SIZE.size:
        raise ValueError(f"not an anchor bitstream: only {len(data)} bytes")
    w, h = _SIZE.unpack_from(data)
    return w, h, data[_SIZE.size:]
