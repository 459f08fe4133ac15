"""The anchors' one interface: a codec turns an image into bytes and bytes back into an image.

Every anchor (a Pillow codec, an ffmpeg or VVC binary, a learned model) is a :class:`Codec`,
so the evaluation, the explorer widget and the tables treat them alike. This module holds
the interface, the image conversion every codec accepts (:func:`to_pil`), a quick
rate-distortion look at one image (:func:`rd_points`) and the one way an anchor runs an
external tool (:func:`run_tool`).
"""
from __future__ import annotations

import subprocess
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

from icmlib.evaluation import overheads
from icmlib.metrics import bpp


class AnchorUnavailable(RuntimeError):
    """A codec cannot run here (tool missing, weights not downloadable); the message says why."""



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
        out.append({"quality": q, "bytes": len(data), "bpp": bpp(data, pil.height, pil.width),
                    "psnr": _psnr_uint8(ref, np.asarray(dec))})
    return out


def run_tool(cmd: List[str], what: str, input: Optional[bytes] = None, timeout: float = 600) -> bytes:
    """Run ``cmd`` (``input`` on its stdin) and return its stdout; a missing tool raises
    ``AnchorUnavailable``, a failure or a timeout ``RuntimeError`` with its output."""
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
