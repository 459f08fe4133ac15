"""The synthetic world: shapes on detailed backgrounds, written as a COCO-format dataset.

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

The world is written in COCO format (``<root>/<split>/*.png`` and
``<root>/annotations/instances_<split>.json``; see :mod:`icmlib.data.coco` for why), so
pycocotools, the official COCO mAP and :class:`~icmlib.data.coco.CocoDataset` read it as
they read COCO itself.

Everything is deterministic from a seed: image ``i`` of split ``s`` is drawn from its
own random stream ``(seed, s, i)``, so the same configuration always gives the same
bytes, and :func:`synthetic_world` caches the world under ``$ICM_CACHE/data``, keyed by
its configuration (stored in the JSON's ``info`` too).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from icmlib.cache import cache_dir, config_key
from icmlib.presets import Preset, get_preset

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
def _place_object(rng: np.random.Generator, size: int, placed: List[Dict[str, Any]]):
    """Draw a shape, a position and a size until the object keeps every earlier object
    recognisable (``_PLACEMENT_TRIES`` tries). Returns ``(category, (cx, cy), radius,
    coverage, window, mask)``, or ``None`` when there is no room for it."""
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
        if all(((p["visible"] & ~mask).sum() >= max(_MIN_VISIBLE * p["full"].sum(), _MIN_PIXELS))
               for p in placed):
            return cat, (cx, cy), radius, cov, win, mask
    return None


def _contrasting_colour(rng: np.random.Generator, beneath) -> np.ndarray:
    """A colour that stands out from every colour in ``beneath``: the first of up to 40
    random draws at least ``_MIN_CONTRAST`` away from all of them, else the best draw."""
    best, best_d = None, -1.0
    for _c in range(40):
        colour = rng.uniform(0, 1, 3)
        d = min(float(np.linalg.norm(colour - b)) for b in beneath)
        if d > best_d:
            best, best_d = colour, d
        if d >= _MIN_CONTRAST:
            break
    return best


def _paint_object(rng: np.random.Generator, img: np.ndarray, colour: np.ndarray, centre,
                  radius: float, cov: np.ndarray, win) -> None:
    """Composite the object (coverage ``cov``) over ``img`` in place, in ``colour`` with
    gentle shading: a linear ramp of up to +-12 % across the object."""
    cx, cy = centre
    psi = rng.uniform(0, 2 * np.pi)
    shade = rng.uniform(0.04, 0.12)
    ys, xs = np.mgrid[win].astype(np.float32)
    ramp = ((np.cos(psi) * (xs - cx) + np.sin(psi) * (ys - cy)) / radius).clip(-1, 1)
    fill = np.clip(colour[None, None, :] * (1 + shade * ramp[..., None]), 0, 1)
    a = cov[win][..., None]
    img[win] = img[win] * (1 - a) + fill * a


def _render_image(rng: np.random.Generator, size: int, max_objects: int):
    """One image of the world: (uint8 [H, W, 3], list of (category_id, bool mask [H, W]))."""
    bg = _background(rng, size)
    img = bg.copy()
    placed: List[Dict[str, Any]] = []  # dicts: cat, full (bool), visible (bool), colour
    n_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(n_objects):
        found = _place_object(rng, size, placed)
        if found is None:
            continue  # no room for this object: the image gets fewer objects
        cat, centre, radius, cov, win, mask = found
        # stand out from what lies beneath: the background's mean colour under the object,
        # and the colour of every object it overlaps
        beneath = [bg[mask].mean(0)] + [p["colour"] for p in placed
                                        if (p["visible"] & mask).any()]
        colour = _contrasting_colour(rng, beneath)
        _paint_object(rng, img, colour, centre, radius, cov, win)
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
