"""Rate-distortion-accuracy evaluation: real bytes in, bpp / PSNR / MS-SSIM / mAP out.

For one codec and a list of its rate settings, over a COCO-format dataset, every image is

1. **encoded to real bytes** by the codec (a Pillow/ffmpeg anchor or a learned codec),
   and its rate taken from those bytes, split by ``codec.rate_parts`` (:mod:`icmlib.evaluation.overheads`):
   ``bpp = 8 * coded bytes / (H * W)`` counts the coded bitstream the decoder needs, the
   same rule for every codec; ``bpp_file = 8 * len(bytes) / (H * W)`` the whole file, and
   ``overhead_bytes`` what the difference is made of (container, metadata, size prefix);
2. **decoded** back to an 8-bit image, exactly what a receiver would see;
3. compared with the original (PSNR, MS-SSIM: for humans) and handed to the **frozen task
   networks** (Faster R-CNN, Mask R-CNN, the semantic U-Net: for machines), whose
   accuracy is measured with the official COCO code (pycocotools): mAP@[.5:.95] and AP50
   for boxes (``bbox_map``, ``bbox_map50``) and masks (``segm_map``, ``segm_map50``),
   and mIoU for semantic segmentation (``miou``).

Averaging
---------
* ``bpp`` is the **mean over images of each image's bpp** (the convention of CompressAI
  and of learned-compression papers); ``bpp_total`` — total coded bits over total pixels —
  is recorded next to it (the two coincide when all images have the same size, as in the
  synthetic world). ``bpp_file`` is the same mean over whole files, ``bytes`` and
  ``bytes_file`` the totals, ``overhead_bytes`` the mean bytes per image of each part that
  ``bpp`` leaves out (and of the ``headers`` it counts).
* ``psnr`` and ``ms_ssim`` are means over images of the per-image values.
* mAP is one number for the whole dataset, as COCO defines it (all detections of all
  images ranked together), not a mean of per-image APs.

The uncompressed reference (:func:`icmlib.evaluation.accuracy.reference_accuracy`) runs the same task networks on
the original images, so "the codec made the task *better*" can be checked directly.

The results of :func:`evaluate_codec` are one codec entry of the results schema
(:mod:`icmlib.evaluation.results`), which ``icmlib.evaluation.plots`` draws and
:func:`icmlib.evaluation.tables.bd_rate_table` turns into the paper's table. :func:`cached_evaluation` keys an evaluation by everything that
determines it (codec weights' fingerprint, settings, dataset, task networks), so
``icm reproduce`` run twice evaluates nothing twice.
"""
from __future__ import annotations

import collections.abc as _abc
import json
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from icmlib.evaluation.accuracy import (DEFAULT_TASKS, EvaluationError, evaluation_dataset,
                                        evaluation_device, network_fingerprint, subset,
                                        task_accuracy, task_networks)
from icmlib.evaluation.anchors.learned import LearnedCodec
from icmlib.evaluation.results import _jsonable, codec_entry


#: bump when the evaluation code changes what it measures (invalidates cached evaluations)
EVALUATION_VERSION = "evaluate/2"  # 2: bpp counts coded bits, bpp_file whole files


# ---- images: tensors <-> PIL ------------------------------------------------------------
def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] float in [0, 1] -> 8-bit RGB PIL image (lossless for images loaded from PNG)."""
    arr = (image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit PIL image (any mode) -> [3, H, W] float in [0, 1]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# ---- codecs -------------------------------------------------------------------------------
def codec_settings(codec) -> List[Any]:
    """A codec's rate settings (its ``qualities``)."""
    settings = getattr(codec, "qualities", None)
    if settings is None:
        raise EvaluationError(f"codec {getattr(codec, 'name', codec)!r} has no 'qualities'; "
                              f"pass settings= explicitly")
    return list(settings)


def encode_bytes(codec, image: Image.Image, setting) -> bytes:
    """``codec.encode(image, setting)`` -> bytes, with a clear error if it returns none."""
    data = codec.encode(image, setting)
    if not isinstance(data, (bytes, bytearray)):
        raise EvaluationError(f"codec {codec.name!r} returned {type(data).__name__} from "
                              f"encode(), not bytes")
    if len(data) == 0:
        raise EvaluationError(f"codec {codec.name!r} produced no bytes at setting {setting!r}")
    return bytes(data)


def coded_parts(codec, data: bytes) -> Dict[str, int]:
    """``codec.rate_parts(data)`` (:mod:`icmlib.evaluation.overheads`), checked to add up to the file.
    A codec without ``rate_parts`` (any object with ``encode``/``decode``) counts its whole
    output as coded."""
    from icmlib.evaluation import overheads

    split = getattr(codec, "rate_parts", None)
    try:
        parts = split(data) if split is not None else overheads.whole(len(data))
        return overheads.check_parts(parts, len(data), getattr(codec, "name", "codec"))
    except ValueError as err:
        raise EvaluationError(f"codec {codec.name!r}: cannot split its bytes into coded "
                              f"stream and overheads: {err}") from None


def decode_to_tensor(codec, data: bytes, size: Tuple[int, int]) -> torch.Tensor:
    """``codec.decode(data)`` -> [3, H, W] tensor, checked against the original size
    (``encode_bytes``'s inverse; ``icmlib.codec.model.decode_image`` decodes a model's
    strings instead)."""
    out = codec.decode(data)
    image = out if torch.is_tensor(out) else pil_to_tensor(out)
    if image.dim() == 4:
        image = image[0]
    if tuple(image.shape[-2:]) != tuple(size):
        raise EvaluationError(f"codec {codec.name!r} decoded a {tuple(image.shape[-2:])} "
                              f"image for a {tuple(size)} original")
    return image.clamp(0, 1)


class CodedImages(_abc.Sequence):
    """The dataset's images as a codec delivers them, coded lazily, one image at a time.

    ``coded[i]`` encodes image ``i`` to bytes the first time it is asked for (recording
    its byte count, PSNR, MS-SSIM and timings), and returns the decoded [3, H, W] image.
    The task networks read it like a list (``icmlib.tasks.evaluate_task(images=coded)``),
    so the decoded set never has to fit in memory at once: for large sets (more than
    ``keep`` images) only the bytes are kept and a second task decodes them again.
    """

    def __init__(self, codec, setting, dataset, keep: int = 512, progress: bool = False,
                 desc: Optional[str] = None):
        from tqdm.auto import tqdm

        self.codec, self.setting, self.dataset = codec, setting, dataset
        self.keep = len(dataset) <= keep
        self.data: Dict[int, bytes] = {}
        self.decoded: Dict[int, torch.Tensor] = {}
        self.stats: Dict[int, Dict[str, float]] = {}
        self._bar = tqdm(total=len(dataset), desc=desc or f"{codec.name} @ {setting}",
                         disable=not progress, leave=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if i in self.decoded:
            return self.decoded[i]
        if i in self.data:  # coded before, decoded set not kept: decode again
            return decode_to_tensor(self.codec, self.data[i], self._size(i))
        return self._code(i)

    def _size(self, i: int) -> Tuple[int, int]:
        return self.stats[i]["size"]

    def _code(self, i: int) -> torch.Tensor:
        from icmlib.metrics import ms_ssim, psnr

        original = self.dataset[i][0]
        t0 = time.perf_counter()
        data = encode_bytes(self.codec, tensor_to_pil(original), self.setting)
        t1 = time.perf_counter()
        dec = decode_to_tensor(self.codec, data, original.shape[-2:])
        t2 = time.perf_counter()
        try:
            ms = float(ms_ssim(dec, original))
        except ValueError:  # image too small for even one MS-SSIM scale
            ms = float("nan")
        h, w = original.shape[-2:]
        self.stats[i] = {"bytes": len(data), "parts": coded_parts(self.codec, data),
                         "pixels": int(h * w), "psnr": float(psnr(dec, original)),
                         "ms_ssim": ms, "encode_s": t1 - t0, "decode_s": t2 - t1,
                         "size": (int(h), int(w))}
        self.data[i] = data
        if self.keep:
            self.decoded[i] = dec
        self._bar.update(1)
        return dec

    def complete(self) -> "CodedImages":
        """Code every image not coded yet (when no task network asked for them)."""
        for i in range(len(self)):
            if i not in self.stats:
                self._code(i)
        self._bar.close()
        return self

    def summary(self) -> Dict[str, Any]:
        """bpp of the coded bits (per-image mean and total) and of whole files, the mean
        bytes per image of each overhead, PSNR and MS-SSIM means, timings."""
        self.complete()
        st = [self.stats[i] for i in range(len(self))]
        coded = [s["parts"]["coded"] for s in st]
        psnrs = [s["psnr"] for s in st if np.isfinite(s["psnr"])]
        ssims = [s["ms_ssim"] for s in st if np.isfinite(s["ms_ssim"])]
        n = max(len(st), 1)
        return {
            "bpp": float(np.mean([8.0 * c / s["pixels"] for c, s in zip(coded, st)])),
            "bpp_file": float(np.mean([8.0 * s["bytes"] / s["pixels"] for s in st])),
            "bpp_total": 8.0 * sum(coded) / sum(s["pixels"] for s in st),
            "bytes": int(sum(coded)),
            "bytes_file": int(sum(s["bytes"] for s in st)),
            "overhead_bytes": _mean_overheads([s["parts"] for s in st]),
            "psnr": float(np.mean(psnrs)) if psnrs else None,
            "ms_ssim": float(np.mean(ssims)) if ssims else None,
            "num_images": len(st),
            "encode_s": sum(s["encode_s"] for s in st) / n,
            "decode_s": sum(s["decode_s"] for s in st) / n,
        }


def _mean_overheads(parts: Sequence[Mapping[str, int]]) -> Dict[str, float]:
    """Mean bytes per image of every part but ``coded`` (``headers`` only if measured on
    every image)."""
    from icmlib.evaluation.overheads import OVERHEADS

    keys = list(OVERHEADS) + (["headers"] if all("headers" in p for p in parts) else [])
    return {k: float(np.mean([p.get(k, 0) for p in parts])) for k in keys}


def evaluate_point(codec, setting, dataset, networks: Mapping[str, torch.nn.Module], *,
                   progress: bool = True) -> Dict[str, Any]:
    """All metrics of one codec at one setting over ``dataset`` (see module docstring)."""
    coded = CodedImages(codec, setting, dataset, progress=progress)
    accuracy = task_accuracy(networks, dataset, coded) if networks else {}
    point: Dict[str, Any] = {"setting": setting}
    point.update(coded.summary())
    point.update(accuracy)
    return point


def evaluate_codec(codec, settings: Optional[Sequence[Any]] = None, dataset=None,
                   tasks: Sequence[str] = DEFAULT_TASKS, *, preset=None,
                   networks: Optional[Mapping[str, torch.nn.Module]] = None,
                   num_images: Optional[int] = None, progress: bool = True,
                   kind: Optional[str] = None, group: Optional[str] = None,
                   **info: Any) -> Dict[str, Any]:
    """Evaluate ``codec`` at each of ``settings`` (default: its ``qualities``).

    Args:
        codec: anything with ``name``, ``encode(image, setting) -> bytes`` and
            ``decode(bytes) -> PIL image`` (an anchor from :mod:`icmlib.evaluation.anchors`, or a
            :class:`icmlib.evaluation.anchors.LearnedCodec` holding one network per rate).
        dataset: a COCO-format dataset (default: the preset's test split, its first
            ``preset.eval_images`` images: reported numbers never come from the images
            that chose the recipe).
        tasks: which frozen task networks to run on the decoded images.
        networks: already-loaded task networks ``{task: model}`` (default: loaded once
            through :func:`task_networks`).
        num_images: evaluate on the first ``num_images`` images only.
        kind, group, info: recorded in the codec entry (``kind`` "anchor"/"learned").

    Returns one codec entry of the results schema (:mod:`icmlib.evaluation.results`).
    """
    from tqdm.auto import tqdm

    from icmlib.presets import get_preset

    preset = get_preset(preset)
    dataset = subset(dataset if dataset is not None else evaluation_dataset(preset), num_images)
    settings = list(settings) if settings is not None else codec_settings(codec)
    if not settings:
        raise EvaluationError(f"no settings to evaluate codec {codec.name!r} at")
    networks = dict(networks) if networks is not None else task_networks(tasks, preset)
    networks = {t: networks[t] for t in tasks}
    points = []
    for s in tqdm(settings, desc=f"evaluating {codec.name}", disable=not progress):
        points.append(evaluate_point(codec, s, dataset, networks, progress=progress))
    if kind is None:
        kind = "learned" if isinstance(codec, LearnedCodec) else "anchor"
    if group is None:
        group = "traditional" if kind == "anchor" else "learned"
    return codec_entry(codec.name, points, kind=kind, group=group, **info)


def learned_codec(nets, name: str, preset=None):
    """A :class:`icmlib.evaluation.anchors.LearnedCodec` over ``nets`` that codes on
    :func:`evaluation_device` (the gpu preset's CUDA), as the task networks run."""
    return LearnedCodec(nets, name, device=str(evaluation_device(preset)))


# ---- caching evaluations ----------------------------------------------------------------------
def evaluation_key(codec_identity: Mapping[str, Any], dataset, networks: Mapping[str, Any],
                   settings: Sequence[Any]) -> Dict[str, Any]:
    """Everything that determines an evaluation's numbers, as a JSON-able dict."""
    return {
        "version": EVALUATION_VERSION,
        "codec": dict(codec_identity),
        "settings": [str(s) for s in settings],
        "dataset": {"annotations": str(getattr(dataset, "ann_file", "")),
                    "ids": [int(i) for i in dataset.ids]},
        "networks": {t: network_fingerprint(n) for t, n in sorted(networks.items())},
    }


def _cache_file(key: Mapping[str, Any]):
    from icmlib.cache import cache_dir, config_key

    return cache_dir("evaluations") / f"{config_key(key)}.json"


def load_cached_evaluation(key: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The entry cached under ``key`` (JSON under ``$ICM_CACHE/evaluations``), or None
    when there is none or it cannot be read."""
    path = _cache_file(key)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())["entry"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable cache: evaluate again


def save_cached_evaluation(key: Mapping[str, Any], entry: Dict[str, Any]) -> None:
    """Cache ``entry`` under ``key`` (written atomically: a reader never sees half a file)."""
    from icmlib.cache import atomic_write_text

    atomic_write_text(json.dumps({"key": _jsonable(key), "entry": _jsonable(entry)}),
                      _cache_file(key))


def cached_evaluation(key: Mapping[str, Any], evaluate: Callable[[], Dict[str, Any]],
                      *, force: bool = False) -> Dict[str, Any]:
    """Load the evaluation cached under ``key``, or run ``evaluate()`` and cache it (JSON
    under ``$ICM_CACHE/evaluations``)."""
    entry = None if force else load_cached_evaluation(key)
    if entry is None:
        entry = evaluate()
        save_cached_evaluation(key, entry)
    return entry
