"""The data: a synthetic COCO-format world, and one loader for any COCO-format folder.

Why a synthetic world
---------------------
The paper trains and evaluates on COCO 2017 (118k training images, a 19 GB download)
with COCO-pretrained Faster R-CNN and Mask R-CNN. A student on a laptop, and the test
suite, need something that runs in seconds with no download, yet keeps what makes
*Image Coding for Machines* interesting: **most of the pixels carry detail the machine
task does not need.** A codec trained to reproduce every pixel (MSE) must spend bits on
that detail; a codec trained for the task may drop it. So each image of the world is

* **objects** of ``K = 4`` categories -- ``disc``, ``square``, ``triangle``, ``cross``.
  The *shape* is the class. Colours are random per object (so colour never gives the
  class away), sizes vary from about 12 % to 45 % of the image side, rotations are
  random, and objects may overlap: a later object occludes earlier ones and the
  annotation is the *visible* part (placements that would hide most of an earlier
  object are rejected, so every drawn object is annotated and recognisable). Each
  object is a flat colour with a gentle shading ramp, drawn at 4x resolution and
  box-filtered down, so its edges are anti-aliased like a photograph's. An object's
  colour always differs clearly from the background under it (a minimum RGB
  distance), so objects are easy to see for a human and for a small CNN -- the
  world is fair;
* a **background full of detail the task does not need**: a smooth colour gradient
  (cheap to code), plus band-limited noise and a sinusoidal grating at a random
  orientation and frequency (expensive to code: high-frequency energy everywhere),
  plus clutter -- thin random lines and small specks, clearly too thin or small to be
  objects -- plus mild Gaussian sensor noise over the whole image.

Masks come from the same polygons as the pixels: the 4x coverage of each polygon is
box-filtered to 1x, a pixel belongs to an object when its coverage is at least one half,
and later objects are subtracted from earlier ones. Boxes are tight around the masks.

Why COCO format
---------------
The world is written exactly like COCO (``<root>/<split>/*.png`` and
``<root>/annotations/instances_<split>.json`` with ``images``, ``annotations`` -- box
``[x, y, w, h]``, ``area``, RLE ``segmentation``, ``iscrowd`` -- and ``categories``),
so ``pycocotools`` reads it, COCO mAP is computed by the official code, and the *same*
:class:`CocoDataset` serves the toy world, real COCO 2017 (``preset.dataset ==
"coco"``), or any dataset converted to COCO format (Cityscapes, your own).

Everything is deterministic from a seed: image ``i`` of split ``s`` is drawn from its
own random stream ``(seed, s, i)``, so the same configuration always gives the same
bytes, and :func:`synthetic_world` caches the world under ``$ICM_CACHE/data``, keyed by
its configuration (stored in the JSON's ``info`` too).
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from icmlib.cache import cache_dir, config_key
from icmlib.presets import Preset, get_preset

__all__ = [
    "CATEGORIES", "NUM_CLASSES", "WORLD_VERSION", "COCO_URLS", "COCO_ROOT_ENV",
    "DatasetNotFoundError", "generate_world", "world_config", "synthetic_world",
    "CocoDataset", "dataset_for", "coco_root", "download_coco", "hub_checkpoint",
    "load_image", "save_image", "collate", "stack_images",
    "blur_background", "draw_annotations", "annotation_grid",
]

PathLike = Union[str, os.PathLike]

# ---- the categories --------------------------------------------------------------------
#: COCO category dicts of the synthetic world, ids 1..K (0 is kept for background).
CATEGORIES: List[Dict[str, Any]] = [
    {"id": 1, "name": "disc", "supercategory": "shape"},
    {"id": 2, "name": "square", "supercategory": "shape"},
    {"id": 3, "name": "triangle", "supercategory": "shape"},
    {"id": 4, "name": "cross", "supercategory": "shape"},
]
#: Classes a network must tell apart: the K categories plus background (label 0).
NUM_CLASSES: int = len(CATEGORIES) + 1

#: Bump when the generator changes, so cached worlds (and anything trained on them,
#: if it puts this in its cache key) are rebuilt.
WORLD_VERSION = "1"
#: the generator's public name, part of every cache key built on the world: it must not
#: follow the module's file (issue 11 moved the code, not the world)
WORLD_GENERATOR = "icmlib.data.generate_world"

#: The synthetic world's splits. ``test`` is drawn from its own random stream and used only
#: for reported numbers: steps, λ and loss weights are chosen on ``train``/``val``.
SYNTHETIC_SPLITS = ("train", "val", "test")

# Generator constants (fractions are of the image side).
_SUPERSAMPLE = 4            # polygons are drawn at 4x and box-filtered down: anti-aliasing
_SIZE_RANGE = (0.12, 0.45)  # object extent (circumscribed diameter) / image side
_MIN_VISIBLE = 0.4          # an earlier object must keep >= 40 % of its pixels visible
_MIN_PIXELS = 12            # ... and at least this many pixels
_MIN_CONTRAST = 0.35        # min RGB distance between an object and what lies beneath it
_PLACEMENT_TRIES = 30


# ---- polygons of the shapes ------------------------------------------------------------
def _shape_polygon(name: str, cx: float, cy: float, radius: float, angle: float,
                   aspect: float = 1.0) -> List[Tuple[float, float]]:
    """Vertices of shape ``name`` centred at (cx, cy), circumscribed radius ``radius``,
    rotated by ``angle`` radians (``aspect`` squashes the disc into an ellipse)."""
    if name == "disc":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        pts = np.stack([np.cos(t), aspect * np.sin(t)], 1)
    elif name == "square":
        t = np.pi / 4 + np.arange(4) * np.pi / 2
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "cross":
        a = 0.36  # half width of an arm, relative to the radius (arm tip at radius 1)
        b = 1.0 / np.sqrt(1 + a * a)  # so the arm tips' corners lie on the unit circle
        a, b = a * b, b
        pts = np.array([(a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b),
                        (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a), (-a, -b)])
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown shape {name!r}")
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    pts = radius * pts @ rot.T + np.array([cx, cy])
    return [tuple(p) for p in pts]


def _coverage(polygon, size: int, *, window: bool = False):
    """Fraction of each pixel covered by ``polygon`` (float32 [size, size]): drawn at
    ``_SUPERSAMPLE``x and box-filtered down, i.e. anti-aliasing to 1/16 of a pixel.
    Only the polygon's bounding window is rasterised (speed); ``window=True`` also
    returns that window as a pair of slices."""
    ss = _SUPERSAMPLE
    pts = np.asarray(polygon, dtype=np.float64)
    x0, y0 = np.floor(pts.min(0)).astype(int) - 1
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, size), min(y1, size)
    out = np.zeros((size, size), dtype=np.float32)
    win = (slice(y0, max(y1, y0)), slice(x0, max(x1, x0)))
    if x1 <= x0 or y1 <= y0:
        return (out, win) if window else out
    w, h = x1 - x0, y1 - y0
    canvas = Image.new("L", (w * ss, h * ss), 0)
    # 1x pixel j covers [j, j+1); Pillow puts 4x pixel k's centre at coordinate k
    ImageDraw.Draw(canvas).polygon([((x - x0) * ss - 0.5, (y - y0) * ss - 0.5)
                                    for x, y in pts], fill=255)
    out[y0:y1, x0:x1] = np.asarray(canvas.resize((w, h), Image.BOX), dtype=np.float32) / 255.0
    return (out, win) if window else out


def _draw_clutter(img: np.ndarray, lines, dots) -> np.ndarray:
    """Composite anti-aliased thin lines ``(points, width, colour)`` and specks
    ``(x, y, radius, colour)`` over ``img`` (float [H, W, 3]) in one 4x pass."""
    ss, size = _SUPERSAMPLE, img.shape[0]
    colour_canvas = Image.new("RGB", (size * ss, size * ss), (0, 0, 0))
    alpha_canvas = Image.new("L", (size * ss, size * ss), 0)
    dc, da = ImageDraw.Draw(colour_canvas), ImageDraw.Draw(alpha_canvas)
    for pts, width, colour in lines:
        xy = [(x * ss, y * ss) for x, y in pts]
        w = max(1, int(round(width * ss)))
        dc.line(xy, fill=tuple(int(c * 255) for c in colour), width=w)
        da.line(xy, fill=255, width=w)
    for x, y, r, colour in dots:
        box = [(x - r) * ss, (y - r) * ss, (x + r) * ss, (y + r) * ss]
        dc.ellipse(box, fill=tuple(int(c * 255) for c in colour))
        da.ellipse(box, fill=255)
    # box-filtering the colour canvas (black where nothing is drawn) gives the
    # coverage-weighted ("premultiplied") colour: composite = img * (1 - a) + colour
    premult = np.asarray(colour_canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    alpha = np.asarray(alpha_canvas.resize((size, size), Image.BOX), dtype=np.float32) / 255.0
    return img * (1 - alpha[..., None]) + premult


# ---- the background --------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _grids(size: int):
    """Pixel coordinates scaled to [0, 1], and the radial frequency of each rfft2 bin."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    return yy, xx, np.sqrt(fx ** 2 + fy ** 2).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + band-limited noise + grating + clutter, float32 [H, W, 3] in [0, 1]."""
    yy, xx, radius = _grids(size)
    # 1. a smooth gradient between two random colours (cheap for any codec)
    c0 = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    c1 = rng.uniform(0.15, 0.85, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(theta) * xx + np.sin(theta) * yy
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    img = c0 + (c1 - c0) * ramp[..., None]
    # 2. band-limited colour noise: white noise filtered to a ring of high frequencies
    f0, bw = rng.uniform(0.18, 0.32), rng.uniform(0.05, 0.1)
    band = np.exp(-0.5 * ((radius - f0) / bw) ** 2)
    white = rng.standard_normal((3, size, size), dtype=np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white) * band, s=(size, size)).astype(np.float32)
    noise /= noise.std() + 1e-8
    luma_share = rng.uniform(0.5, 0.9)  # mostly luminance texture, some colour texture
    noise = luma_share * noise.mean(0, keepdims=True) + (1 - luma_share) * noise
    img = img + np.float32(rng.uniform(0.05, 0.09)) * np.transpose(noise, (1, 2, 0))
    # 3. a grating (stripes) at a random orientation and a high-ish frequency
    phi, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.3)
    u = (np.cos(phi) * xx + np.sin(phi) * yy) * (size - 1)
    grating = np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi))
    tint = (rng.uniform(0.6, 1.0, 3) * rng.uniform(0.03, 0.07)).astype(np.float32)
    img = img + grating[..., None] * tint
    # 4. clutter: thin lines (1 px or less wide) and specks (radius <= 1.3 px)
    lines = []
    for _ in range(int(rng.integers(3, 9))):
        points = rng.uniform(-0.1 * size, 1.1 * size, (int(rng.integers(2, 4)), 2))
        lines.append(([tuple(p) for p in points], rng.uniform(0.5, 1.0), rng.uniform(0, 1, 3)))
    n_dots = int(rng.integers(10, 40) * (size / 128) ** 2) + 3
    dots = [(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.5, 1.3),
             rng.uniform(0, 1, 3)) for _ in range(n_dots)]
    img = _draw_clutter(img, lines, dots)
    return img.astype(np.float32)


# ---- one image -------------------------------------------------------------------------
def _render_image(rng: np.random.Generator, size: int, max_objects: int):
    """One image of the world: (uint8 [H, W, 3], list of (category_id, bool mask [H, W]))."""
    bg = _background(rng, size)
    img = bg.copy()
    placed: List[Dict[str, Any]] = []  # dicts: cat, full (bool), visible (bool), colour
    n_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(n_objects):
        for _try in range(_PLACEMENT_TRIES):
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            radius = 0.5 * size * rng.uniform(*_SIZE_RANGE)
            margin = 0.75 * radius  # centres keep most of the object inside the image
            cx, cy = rng.uniform(margin, size - margin, 2)
            poly = _shape_polygon(cat["name"], cx, cy, radius, rng.uniform(0, 2 * np.pi),
                                  aspect=rng.uniform(0.8, 1.0))
            cov, win = _coverage(poly, size, window=True)
            mask = cov >= 0.5
            if mask.sum() < _MIN_PIXELS:
                continue
            ok = all(((p["visible"] & ~mask).sum() >= max(_MIN_VISIBLE * p["full"].sum(),
                                                          _MIN_PIXELS)) for p in placed)
            if ok:
                break
        else:
            continue  # no room for this object: the image gets fewer objects
        # a colour that stands out from what lies beneath: the background's mean colour
        # under the object, and the colour of every object it overlaps (best of 40 draws
        # if none reaches the minimum contrast)
        beneath = [bg[mask].mean(0)] + [p["colour"] for p in placed
                                        if (p["visible"] & mask).any()]
        best, best_d = None, -1.0
        for _c in range(40):
            colour = rng.uniform(0, 1, 3)
            d = min(float(np.linalg.norm(colour - b)) for b in beneath)
            if d > best_d:
                best, best_d = colour, d
            if d >= _MIN_CONTRAST:
                break
        colour = best
        # gentle shading: a linear ramp of up to +-12 % across the object
        psi = rng.uniform(0, 2 * np.pi)
        shade = rng.uniform(0.04, 0.12)
        ys, xs = np.mgrid[win].astype(np.float32)
        ramp = ((np.cos(psi) * (xs - cx) + np.sin(psi) * (ys - cy)) / radius).clip(-1, 1)
        fill = np.clip(colour[None, None, :] * (1 + shade * ramp[..., None]), 0, 1)
        a = cov[win][..., None]
        img[win] = img[win] * (1 - a) + fill * a
        for p in placed:
            p["visible"] = p["visible"] & ~mask
        placed.append({"cat": cat["id"], "full": mask, "visible": mask.copy(),
                       "colour": colour})
    # mild sensor noise over everything
    img += np.float32(rng.uniform(0.01, 0.025)) * rng.standard_normal(img.shape, dtype=np.float32)
    pixels = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    objects = [(p["cat"], p["visible"]) for p in placed if p["visible"].sum() >= _MIN_PIXELS]
    return pixels, objects


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode("utf-8"))


def _mask_to_coco(mask: np.ndarray) -> Dict[str, Any]:
    """RLE (counts as str, JSON-able), tight [x, y, w, h] box and area of a bool mask."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    bbox = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
    return {"segmentation": rle, "bbox": [float(v) for v in bbox], "area": float(mask.sum())}


def generate_world(out_dir: PathLike, split: str, num_images: int, image_size: int,
                   max_objects: int, seed: int, *, progress: bool = False
                   ) -> Tuple[Path, Path]:
    """Write ``num_images`` synthetic images and their COCO annotations.

    Creates ``out_dir/<split>/000000.png ...`` and
    ``out_dir/annotations/instances_<split>.json``; returns ``(image_dir, ann_file)``.
    Image ``i`` is drawn from the random stream ``(seed, split, i)``, so the result is
    byte-for-byte reproducible and independent of ``num_images`` (a bigger world starts
    with the same images). The JSON is written last, so its presence means the folder
    is complete.
    """
    if num_images < 0 or image_size < 16 or max_objects < 1:
        raise ValueError(f"generate_world needs num_images >= 0, image_size >= 16 and "
                         f"max_objects >= 1 (got {num_images}, {image_size}, {max_objects})")
    out_dir = Path(out_dir)
    image_dir = out_dir / split
    ann_file = out_dir / "annotations" / f"instances_{split}.json"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    config = {"generator": WORLD_GENERATOR, "version": WORLD_VERSION,
              "split": split, "num_images": int(num_images), "image_size": int(image_size),
              "max_objects": int(max_objects), "seed": int(seed)}
    images, annotations = [], []
    iterator = range(num_images)
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(iterator, desc=f"synthetic world ({split})", unit="img", mininterval=1.0)
    for i in iterator:
        rng = np.random.default_rng([int(seed), _split_code(split), i])
        pixels, objects = _render_image(rng, image_size, max_objects)
        name = f"{i:06d}.png"
        Image.fromarray(pixels).save(image_dir / name)
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": image_size,
                       "height": image_size})
        for cat_id, mask in objects:
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id,
                   "iscrowd": 0}
            ann.update(_mask_to_coco(mask))
            annotations.append(ann)
    doc = {"info": {"description": "icmlib synthetic world: shapes on detailed backgrounds",
                    "version": WORLD_VERSION, "config": config},
           "licenses": [], "images": images, "annotations": annotations,
           "categories": CATEGORIES}
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, ann_file)
    return image_dir, ann_file


def world_config(preset: Union[Preset, str, None] = None, split: str = "train") -> Dict[str, Any]:
    """The settings that define the synthetic world of ``preset``'s ``split``.

    Other modules may put this in their train-or-load configuration, so a network
    trained on one world is never reused on another.
    """
    preset = get_preset(preset)
    sizes = {"train": preset.train_images, "val": preset.val_images, "test": preset.test_images}
    if split not in sizes:
        raise ValueError(f"unknown split {split!r}; the synthetic world has {sorted(sizes)}")
    num = sizes[split]
    return {"generator": WORLD_GENERATOR, "version": WORLD_VERSION,
            "split": split, "num_images": int(num), "image_size": int(preset.image_size),
            "max_objects": int(preset.max_objects), "seed": int(preset.world_seed)}


def _world_is_complete(ann_file: Path, config: Dict[str, Any]) -> bool:
    try:
        doc = json.loads(ann_file.read_text())
    except (OSError, ValueError):
        return False
    if doc.get("info", {}).get("config") != config:
        return False
    image_dir = ann_file.parent.parent / config["split"]
    return all((image_dir / im["file_name"]).exists() for im in doc["images"])


def synthetic_world(preset: Union[Preset, str, None] = None, split: str = "train",
                    *, progress: bool = True) -> Tuple[Path, Path]:
    """The synthetic world of ``preset`` (``split`` "train", "val" or "test"), generated on first
    use and cached under ``$ICM_CACHE/data/synthetic-<key>``; returns
    ``(image_dir, ann_file)``.

    The folder name is a hash of :func:`world_config`, and the JSON's ``info.config``
    is checked too: change a preset size or the seed and a new world is generated,
    never a stale one reused. Generation writes to a temporary folder and renames it,
    so concurrent or interrupted runs never leave a half-written world.
    """
    config = world_config(preset, split)
    root = cache_dir("data") / f"synthetic-{split}-{config_key(config)}"
    ann_file = root / "annotations" / f"instances_{split}.json"
    if _world_is_complete(ann_file, config):
        return root / split, ann_file
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=root.name + ".tmp"))
    try:
        generate_world(tmp, split, config["num_images"], config["image_size"],
                       config["max_objects"], config["seed"],
                       progress=progress and config["num_images"] >= 200)
        if root.exists():
            if _world_is_complete(ann_file, config):  # another process finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return root / split, ann_file
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.replace(tmp, root)
        except OSError:  # lost a race to an identical world
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / split, ann_file


# ---- images ----------------------------------------------------------------------------
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


# ---- the dataset -----------------------------------------------------------------------
class CocoDataset(torch.utils.data.Dataset):
    """Images and instance annotations of any COCO-format folder.

    ``ds[i]`` returns ``(image, target)``: ``image`` a float tensor [3, H, W] in [0, 1]
    (grayscale and other modes converted to RGB) and ``target`` a dict:

    ============ ===================== ==============================================
    ``boxes``    float32 [K, 4]        ``x0, y0, x1, y1`` in pixels (x1, y1 exclusive)
    ``labels``   int64 [K]             COCO category ids (not made contiguous)
    ``masks``    uint8 [K, H, W]       instance masks (0/1)
    ``image_id`` int                   the COCO image id
    ``area``     float32 [K]           mask pixels after cropping
    ``iscrowd``  int64 [K]             0 (crowd annotations are skipped by default)
    ``semantic`` int64 [H, W]          0 background, else the category id
    ============ ===================== ==============================================

    Parameters
    ----------
    crop_size : int or None
        ``None``: the whole image. With ``train=True`` a random ``crop_size`` square
        crop and a random horizontal flip; with ``train=False`` the centre crop. An
        image smaller than the crop is first padded by replicating its border (not
        mirroring: a mirror would show unannotated copies of objects).
    train : bool
        Random crops and flips (training) or deterministic views (evaluation).
    seed : int
        Seeds the random crops and flips. In DataLoader workers the stream is
        ``(seed, worker seed)``: different per worker and per epoch, reproducible under
        ``torch.manual_seed``.
    skip_crowd : bool
        Leave out ``iscrowd=1`` annotations (COCO's "a crowd of people" regions), as
        torchvision's detection references do.
    min_visible : float, min_area : float
        After a crop an object is dropped if less than ``min_visible`` of its pixels
        remain, or fewer than ``min_area`` pixels -- a sliver at the crop's edge is not
        an object a detector should be asked to find. Objects untouched by the crop
        are always kept. Boxes are recomputed from the cropped masks.

    The semantic map is painted from all (non-crowd) instance masks *before* dropping,
    larger objects first, so every visible pixel of an object keeps its class.
    """

    def __init__(self, image_dir: PathLike, ann_file: PathLike,
                 crop_size: Optional[int] = None, train: bool = False, seed: int = 0, *,
                 skip_crowd: bool = True, min_visible: float = 0.3, min_area: float = 8.0):
        from pycocotools.coco import COCO

        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"no COCO annotation file at {self.ann_file}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"no image folder at {self.image_dir}")
        if crop_size is not None and int(crop_size) < 1:
            raise ValueError(f"crop_size must be a positive int or None, got {crop_size}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            try:
                self.coco = COCO(str(self.ann_file))
            except (ValueError, KeyError, TypeError, AssertionError) as e:
                raise ValueError(f"{self.ann_file} is not a COCO instances file: {e}") from None
        missing = [k for k in ("images", "annotations", "categories") if k not in self.coco.dataset]
        if missing:
            raise ValueError(f"{self.ann_file} is not a COCO instances file: it has no "
                             f"{', '.join(repr(k) for k in missing)} (expected the layout of "
                             f"COCO's annotations/instances_<split>.json)")
        self.crop_size = None if crop_size is None else int(crop_size)
        self.train = bool(train)
        self.seed = int(seed)
        self.skip_crowd = skip_crowd
        self.min_visible = float(min_visible)
        self.min_area = float(min_area)
        self.ids: List[int] = sorted(self.coco.imgs.keys())
        self.categories: List[Dict[str, Any]] = [self.coco.cats[k] for k in sorted(self.coco.cats)]
        self.category_names: Dict[int, str] = {c["id"]: c["name"] for c in self.categories}
        #: labels are COCO category ids, so a network needs max id + 1 outputs
        self.num_classes: int = (max(self.coco.cats) + 1) if self.coco.cats else 1
        self._rng: Optional[np.random.Generator] = None
        self._rng_worker: Optional[Tuple[int, int]] = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        crop = "full images" if self.crop_size is None else (
            f"{'random' if self.train else 'centre'} {self.crop_size}px crops")
        return (f"CocoDataset({len(self)} images, {len(self.categories)} categories, {crop}, "
                f"{self.ann_file})")

    # randomness: in the main process one stream from ``seed``; in a DataLoader worker a
    # stream from (seed, the worker's torch seed), which torch draws afresh for every
    # epoch -- so workers differ from each other and from one epoch to the next, and
    # ``torch.manual_seed`` makes it all reproducible
    def _random(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        key = (info.id, info.seed) if info is not None else None
        if self._rng is None or self._rng_worker != key:
            entropy = [self.seed] if info is None else [self.seed, info.seed % 2 ** 63]
            self._rng = np.random.default_rng(entropy)
            self._rng_worker = key
        return self._rng

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def _load(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        pixels = _to_rgb(_open_image(path), str(path), warn=False)
        h, w = pixels.shape[:2]
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id))
        if self.skip_crowd:
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)
        boxes = np.zeros((len(anns), 4), dtype=np.float32)
        for k, ann in enumerate(anns):
            if ann.get("segmentation"):
                m = self.coco.annToMask({**ann, "image_id": image_id})
                if m.shape != (h, w):
                    raise ValueError(f"{path}: image is {w}x{h} but annotation {ann['id']} "
                                     f"is for {m.shape[1]}x{m.shape[0]}")
                masks[k] = m
            x, y, bw, bh = ann["bbox"]
            boxes[k] = (x, y, x + bw, y + bh)
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        crowd = np.array([int(a.get("iscrowd", 0)) for a in anns], dtype=np.int64)
        return image_id, pixels, masks, boxes, labels, crowd

    def view_params(self, index: int) -> Tuple[Optional[Tuple[int, int]], bool]:
        """The view ``ds[index]`` shows: ``(corner, flip)``, where ``corner`` is the
        crop's top-left ``(x0, y0)`` in image pixels (``None``: the whole image; negative,
        or reaching past the far edge, where the image is smaller than the crop) and
        ``flip`` a horizontal flip. Random when ``train``, else the centre and no flip."""
        if index < 0:
            index += len(self)
        info = self.coco.imgs[self.ids[index]]
        h, w = int(info["height"]), int(info["width"])
        rng = self._random() if self.train else None
        corner = None
        if self.crop_size is not None:
            c = self.crop_size
            if rng is not None:  # uniform over all windows inside the image (or holding it)
                x0 = int(rng.integers(min(0, w - c), max(0, w - c) + 1))
                y0 = int(rng.integers(min(0, h - c), max(0, h - c) + 1))
            else:
                x0, y0 = (w - c) // 2, (h - c) // 2
            corner = (x0, y0)
        flip = bool(rng.random() < 0.5) if rng is not None else False
        return corner, flip

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        corner, flip = self.view_params(index)
        return self.view(index, corner, flip)

    def view(self, index: int, corner: Optional[Tuple[int, int]] = None, flip: bool = False):
        """``(image, target)`` of image ``index`` seen through the ``crop_size`` window
        whose top-left corner is ``corner = (x0, y0)`` (``None``: the whole image), then
        flipped horizontally if ``flip``. Pixels outside the image replicate its border;
        masks are zero there. ``ds[i]`` is ``ds.view(i, *ds.view_params(i))``."""
        if corner is not None and self.crop_size is None:
            raise ValueError("view(corner=...) needs a dataset with a crop_size")
        image_id, pixels, masks, ann_boxes, labels, crowd = self._load(index)
        h, w = pixels.shape[:2]
        full_area = masks.sum(axis=(1, 2)).astype(np.float64)
        has_mask = full_area > 0
        x_off = y_off = 0
        if corner is not None:
            c = self.crop_size
            x0, y0 = int(corner[0]), int(corner[1])
            pad = (max(0, -y0), max(0, y0 + c - h)), (max(0, -x0), max(0, x0 + c - w))
            if any(pad[0]) or any(pad[1]):
                pixels = np.pad(pixels, pad + ((0, 0),), mode="edge")
                masks = np.pad(masks, ((0, 0),) + pad)
            ys, xs = y0 + pad[0][0], x0 + pad[1][0]
            pixels = pixels[ys:ys + c, xs:xs + c]
            masks = masks[:, ys:ys + c, xs:xs + c]
            x_off, y_off = x0, y0
            h, w = c, c
        # boxes: tight around the (cropped) masks; the annotation's box, shifted and
        # clipped, for annotations without a usable mask
        area = masks.sum(axis=(1, 2)).astype(np.float64)
        boxes = ann_boxes - np.array([x_off, y_off, x_off, y_off], dtype=np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        for k in np.nonzero(area > 0)[0]:
            ys = np.nonzero(masks[k].any(1))[0]
            xs = np.nonzero(masks[k].any(0))[0]
            boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        no_mask_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        area = np.where(has_mask, area, no_mask_area)
        if flip:
            pixels = pixels[:, ::-1]
            masks = masks[:, :, ::-1]
            boxes = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], 1)
        # semantic map from every visible instance pixel, larger objects painted first
        semantic = np.zeros((h, w), dtype=np.int64)
        for k in np.argsort(-area, kind="stable"):
            if not crowd[k]:
                semantic[masks[k] > 0] = labels[k]
        # drop what the crop cut away (objects untouched by the crop are always kept)
        box_area = (ann_boxes[:, 2] - ann_boxes[:, 0]) * (ann_boxes[:, 3] - ann_boxes[:, 1])
        original = np.where(has_mask, full_area, box_area)
        cut = area < original - 1e-6
        keep = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        keep &= ~(cut & ((area < self.min_visible * original) | (area < self.min_area)))
        keep &= ~(has_mask & (area <= 0))
        target = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes[keep], dtype=np.float32)
                                      ).reshape(-1, 4),
            "labels": torch.from_numpy(labels[keep]),
            "masks": torch.from_numpy(np.ascontiguousarray(masks[keep])),
            "image_id": int(image_id),
            "area": torch.from_numpy(area[keep].astype(np.float32)),
            "iscrowd": torch.from_numpy(crowd[keep]),
            "semantic": torch.from_numpy(np.ascontiguousarray(semantic)),
        }
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255.0)
        return image, target


def collate(batch: Sequence[Tuple[torch.Tensor, Dict[str, Any]]]):
    """DataLoader ``collate_fn`` for detection: ``(list of images, list of targets)``
    (images may differ in size; torchvision's detectors take lists)."""
    images, targets = zip(*batch) if len(batch) else ((), ())
    return list(images), list(targets)


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack same-size [3, H, W] images into [B, 3, H, W] (a clear error otherwise)."""
    images = list(images)
    if not images:
        raise ValueError("stack_images got no images")
    sizes = {tuple(im.shape) for im in images}
    if len(sizes) > 1:
        raise ValueError(f"stack_images needs images of one size, got {sorted(sizes)}; "
                         f"use a crop_size in the dataset, or pass the list to a model "
                         f"that takes lists")
    return torch.stack(images)


# ---- real COCO -------------------------------------------------------------------------
COCO_ROOT_ENV = "ICM_COCO_ROOT"
COCO_URLS = {
    "train2017": "http://images.cocodataset.org/zips/train2017.zip",
    "val2017": "http://images.cocodataset.org/zips/val2017.zip",
    "annotations": "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset the preset asks for is not on disk; the message says how to get it."""


def coco_root(root: Optional[PathLike] = None) -> Path:
    """Where COCO 2017 lives: ``root``, else ``$ICM_COCO_ROOT``, else ``$ICM_CACHE/coco``."""
    if root is not None:
        return Path(root)
    env = os.environ.get(COCO_ROOT_ENV)
    return Path(env) if env else cache_dir() / "coco"


def _coco_split_name(split: str) -> str:
    # COCO's test2017 has no public annotations: like the paper, report on val2017 (the
    # gpu preset chooses nothing on it: its recipe comes from the cpu study)
    names = {"train": "train2017", "val": "val2017", "test": "val2017",
             "train2017": "train2017", "val2017": "val2017"}
    if split not in names:
        raise ValueError(f"unknown COCO split {split!r}; use 'train', 'val' or 'test' "
                         f"(train2017 / val2017 / val2017)")
    return names[split]


def _coco_paths(root: Path, split: str) -> Tuple[Path, Path]:
    return root / split, root / "annotations" / f"instances_{split}.json"


def _download(url: str, dest: Path, desc: str) -> None:
    """Stream ``url`` to ``dest`` with a tqdm bar (via a .part file, renamed at the end).

    60 s timeout per network operation, for this download only: ``socket``'s process-wide
    default (which every other connection of the process uses) is left alone."""
    import urllib.request

    from tqdm.auto import tqdm

    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=desc) as bar:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(part, dest)


def hub_checkpoint(url: str) -> Path:
    """``url``'s file in torch's hub cache (``$TORCH_HOME/hub/checkpoints``), downloaded
    if missing, where torchvision's and CompressAI's pretrained weights then load from.

    Unlike ``torch.hub``'s own download it times out (see ``_download``); like it, it
    checks the sha256 prefix that the file's name carries (``name-<sha256 prefix>.pth``).
    Network failures raise ``OSError`` (``URLError``, timeouts, a wrong hash).
    """
    import hashlib
    import re
    from urllib.parse import urlparse

    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if file.is_file():
        return file
    file.parent.mkdir(parents=True, exist_ok=True)
    _download(url, file, file.name)
    expected = re.search(r"-([a-f0-9]+)\.", file.name)
    if expected:
        sha = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
        digest = sha.hexdigest()
        if not digest.startswith(expected.group(1)):
            file.unlink()
            raise OSError(f"{url} downloaded with sha256 {digest[:16]}..., but its name "
                          f"promises {expected.group(1)}...: a damaged download")
    return file


def download_coco(root: Optional[PathLike] = None, split: str = "val2017", *,
                  keep_zips: bool = False) -> Tuple[Path, Path]:
    """Download and unpack COCO 2017 ``split`` (``"val2017"``: 5k images, 0.8 GB;
    ``"train2017"``: 118k images, 18 GB) and its annotations into ``root`` (default
    :func:`coco_root`). Returns ``(image_dir, ann_file)``. Parts already present are
    not downloaded again. Without network it raises a ``RuntimeError`` that names the
    URLs and where to put the files by hand.
    """
    split = _coco_split_name(split)
    root = coco_root(root)
    root.mkdir(parents=True, exist_ok=True)
    image_dir, ann_file = _coco_paths(root, split)
    wanted = []
    if not (image_dir.is_dir() and any(image_dir.iterdir())):
        wanted.append((split, COCO_URLS[split]))
    if not ann_file.is_file():
        wanted.append(("annotations", COCO_URLS["annotations"]))
    for name, url in wanted:
        zip_path = root / Path(url).name
        if not zip_path.is_file():
            try:
                _download(url, zip_path, desc=f"COCO {name}")
            except OSError as e:  # URLError, HTTPError, timeouts, DNS failures
                part = zip_path.with_name(zip_path.name + ".part")
                if part.exists():
                    part.unlink()
                urls = "\n  ".join(COCO_URLS[n] for n in (split, "annotations"))
                raise RuntimeError(
                    f"could not download COCO {name} from {url} ({e}).\n"
                    f"Without network, download these files elsewhere:\n  {urls}\n"
                    f"and unzip them into {root}, so that it holds {image_dir}/*.jpg and "
                    f"{ann_file} (or set ${COCO_ROOT_ENV} to a folder laid out like that)."
                ) from None
        try:
            with zipfile.ZipFile(zip_path) as z:
                members = z.namelist()
                if name == "annotations":
                    members = [m for m in members if m.endswith(f"instances_{split}.json")
                               or m.endswith("instances_train2017.json")
                               or m.endswith("instances_val2017.json")]
                from tqdm.auto import tqdm
                for m in tqdm(members, desc=f"unzip {zip_path.name}", unit="file",
                              mininterval=1.0):
                    z.extract(m, root)
        except zipfile.BadZipFile:
            zip_path.unlink()
            raise RuntimeError(f"{zip_path} was not a complete zip file (deleted it); "
                               f"run download_coco again") from None
        if not keep_zips:
            zip_path.unlink()
    return image_dir, ann_file


# ---- the preset's dataset --------------------------------------------------------------
def dataset_for(preset: Union[Preset, str, None] = None, split: str = "train",
                train: Optional[bool] = None, *, seed: int = 0) -> CocoDataset:
    """The dataset the preset trains or evaluates on.

    ``preset.dataset == "synthetic"`` (ci, cpu): the synthetic world (generated on first
    use). ``"coco"`` (gpu): COCO 2017 under ``$ICM_COCO_ROOT`` or ``$ICM_CACHE/coco``.
    ``train`` defaults to ``split == "train"``: random ``preset.crop_size`` crops and
    flips; otherwise full images.
    """
    preset = get_preset(preset)
    if train is None:
        train = split in ("train", "train2017")
    crop = preset.crop_size if train else None
    if preset.dataset == "synthetic":
        if split not in SYNTHETIC_SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SYNTHETIC_SPLITS}")
        image_dir, ann_file = synthetic_world(preset, split)
        return CocoDataset(image_dir, ann_file, crop_size=crop, train=train, seed=seed)
    if preset.dataset == "coco":
        name = _coco_split_name(split)
        root = coco_root()
        image_dir, ann_file = _coco_paths(root, name)
        if not (ann_file.is_file() and image_dir.is_dir()):
            raise DatasetNotFoundError(
                f"preset {preset.name!r} uses COCO 2017, but {ann_file} or {image_dir}/ "
                f"is missing.\nDownload it once with:\n"
                f"  from icmlib.data.world import download_coco; download_coco(split={name!r})\n"
                f"(or put an existing copy in {root}, or point ${COCO_ROOT_ENV} at it).")
        return CocoDataset(image_dir, ann_file, crop_size=crop, train=train, seed=seed)
    raise ValueError(f"preset {preset.name!r} has unknown dataset {preset.dataset!r}; "
                     f"use 'synthetic' or 'coco'")


# ---- what the machine needs -------------------------------------------------------------
def blur_background(image: torch.Tensor, target: Dict[str, Any], sigma: float = 3.0,
                    margin: int = 1) -> torch.Tensor:
    """``image`` with everything but the objects blurred (Gaussian, ``sigma`` pixels).

    An illustration of the paper's premise, not part of any codec: the objects (and a
    ``margin`` of pixels around them) are kept exactly, the background's texture,
    stripes, clutter and noise are smoothed away. A detector sees the same objects,
    but an ordinary codec needs far fewer bits for this image -- the saving an ICM
    codec can learn to make.
    """
    from scipy import ndimage

    x = torch.as_tensor(image).detach().cpu().float()
    keep = torch.as_tensor(target["semantic"]).cpu().numpy() > 0
    if margin > 0:
        keep = ndimage.binary_dilation(keep, iterations=int(margin))
    arr = x.numpy()
    smooth = np.stack([ndimage.gaussian_filter(ch, sigma, mode="nearest") for ch in arr])
    out = np.where(keep[None], arr, smooth)
    return torch.from_numpy(out.astype(np.float32))


# ---- drawing ---------------------------------------------------------------------------
def _category_colour(cat_id: int):
    import matplotlib

    return matplotlib.colormaps["tab10"](int(cat_id) % 10)


def draw_annotations(ax, image: torch.Tensor, target: Optional[Dict[str, Any]] = None,
                     categories: Union[Sequence[Dict[str, Any]], Dict[int, str], None] = None,
                     *, masks: bool = True, boxes: bool = True, labels: bool = True,
                     scores: Optional[torch.Tensor] = None, alpha: float = 0.45,
                     contours: bool = True, title: Optional[str] = None,
                     title_size: float = 9):
    """Show ``image`` on the matplotlib axes ``ax`` with ``target``'s masks (tinted by
    category and outlined), boxes and category names. ``categories`` is a COCO category list or an
    ``{id: name}`` dict (default: the synthetic world's). Works for predictions too
    (pass their ``scores`` to print them, masks may be float probabilities)."""
    from matplotlib.patches import Rectangle

    if categories is None:
        categories = CATEGORIES
    names = categories if isinstance(categories, dict) else {c["id"]: c["name"] for c in categories}
    img = torch.as_tensor(image).detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    shown = img.copy()
    target = target or {}
    lab = torch.as_tensor(target.get("labels", torch.zeros(0))).cpu().tolist()
    outlines = []
    if masks and "masks" in target and len(lab):
        m = torch.as_tensor(target["masks"]).detach().cpu().float()
        if m.dim() == 4:  # Mask R-CNN predictions: [K, 1, H, W]
            m = m[:, 0]
        for k, cat in enumerate(lab):
            region = (m[k] >= 0.5).numpy()
            colour = np.array(_category_colour(cat)[:3])
            shown[region] = (1 - alpha) * shown[region] + alpha * colour
            if contours and region.any():
                outlines.append((region, colour))
    ax.imshow(shown, interpolation="nearest")
    for region, colour in outlines:
        ax.contour(region.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
    if boxes and "boxes" in target:
        bx = torch.as_tensor(target["boxes"]).detach().cpu().tolist()
        for k, (x0, y0, x1, y1) in enumerate(bx):
            cat = lab[k] if k < len(lab) else 0
            colour = _category_colour(cat)
            # boxes are pixel edges; imshow puts pixel centres on integers
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=colour, linewidth=1.5))
            if labels:
                text = names.get(cat, str(cat))
                if scores is not None:
                    text += f" {float(scores[k]):.2f}"
                ax.text(x0 - 0.5, y0 - 1.0, text, fontsize=7, color="white", va="bottom",
                        bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=title_size)
    return ax


def annotation_grid(dataset: CocoDataset, indices: Optional[Sequence[int]] = None,
                    cols: int = 4, size: float = 2.6, **kwargs):
    """A figure with ``dataset[i]`` for each index (default: the first ``cols`` * 2)
    drawn by :func:`draw_annotations`. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if indices is None:
        indices = range(min(len(dataset), 2 * cols))
    indices = list(indices)
    rows = max(1, (len(indices) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        image, target = dataset[i]
        ax.axis("on")
        draw_annotations(ax, image, target, dataset.categories,
                         title=f"image {target['image_id']}: {len(target['labels'])} objects",
                         **kwargs)
    fig.tight_layout()
    return fig
