"""Image files in and out: any image Pillow reads as an RGB tensor, a tensor as an 8-bit PNG.

One place decides how odd files become RGB (grayscale, palette, CMYK, 16-bit, transparency
over white), so the ``icm`` command, the book and :class:`~icmlib.data.coco.CocoDataset`
all see the same pixels: :func:`load_image` says what it converted, the dataset converts
quietly.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

PathLike = Union[str, os.PathLike]


def _to_rgb(img: Image.Image, source: str, warn: bool) -> np.ndarray:
    """uint8 [H, W, 3] from any Pillow image; says what it converted when ``warn``."""
    mode = img.mode
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)  # a writable copy
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.array(img, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        gray = np.round(np.clip(arr / scale, 0, 1) * 255).astype(np.uint8)
        out = np.repeat(gray[..., None], 3, axis=2)
        what = f"{mode} (high bit-depth grayscale) image converted to 8-bit RGB"
    elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = np.array(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)
        what = f"{mode} image with transparency converted to RGB over a white background"
    else:
        out = np.array(img.convert("RGB"), dtype=np.uint8)
        kind = {"L": "grayscale", "1": "black-and-white", "P": "palette",
                "CMYK": "CMYK", "YCbCr": "YCbCr"}.get(mode, mode)
        what = f"{kind} ({mode}) image converted to RGB"
    if warn:
        warnings.warn(f"{source}: {what}", stacklevel=3)
    return out


def _open_image(path: PathLike) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path} is not an image file that Pillow can read "
                         f"(PNG, JPEG, ...): {e}") from None
    return img


def load_image(path: PathLike) -> torch.Tensor:
    """An image file as a float tensor [3, H, W] in [0, 1].

    Grayscale, palette, CMYK, 16-bit and transparent (RGBA, LA) images are converted
    to RGB -- transparency is composited over white -- with a warning that says what
    was converted. A file that is not an image raises a clear ``ValueError``. EXIF
    orientation is *not* applied: pixels are used as stored, as COCO's annotations do.
    """
    img = _open_image(path)
    arr = _to_rgb(img, str(path), warn=True)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(255.0)


def save_image(image: torch.Tensor, path: PathLike) -> Path:
    """Save a [3, H, W] (or [1, 3, H, W], or [H, W] gray) tensor in [0, 1] as an 8-bit
    PNG (values are clamped and rounded). Returns the path."""
    t = torch.as_tensor(image).detach().cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 3 and t.shape[0] == 1:
        t = t[0]
    if not (t.dim() == 2 or (t.dim() == 3 and t.shape[0] == 3)):
        raise ValueError(f"save_image needs a [3, H, W], [1, 3, H, W] or [H, W] tensor, "
                         f"got shape {tuple(image.shape)}")
    arr = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if arr.ndim == 3:
        arr = np.transpose(arr, (1, 2, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG")
    return path
