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

The uncompressed reference (:func:`reference_accuracy`) runs the same task networks on
the original images, so "the codec made the task *better*" can be checked directly.

The results of :func:`evaluate_codec` are one codec entry of the results schema
(:mod:`icmlib.evaluation.results`), which ``icmlib.evaluation.plots`` draws and :func:`bd_rate_table` turns into
the paper's table. :func:`cached_evaluation` keys an evaluation by everything that
determines it (codec weights' fingerprint, settings, dataset, task networks), so
``icm reproduce`` run twice evaluates nothing twice.
"""
from __future__ import annotations

import collections.abc as _abc
import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from icmlib.evaluation.results import TASK_METRIC, codec_entry, curve

#: bump when the evaluation code changes what it measures (invalidates cached evaluations)
EVALUATION_VERSION = "evaluate/2"  # 2: bpp counts coded bits, bpp_file whole files

DEFAULT_TASKS = ("detection", "instance")


class EvaluationError(ValueError):
    """A codec or setting that cannot be evaluated (what went wrong, and what to do)."""


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


# ---- datasets -----------------------------------------------------------------------------
def subset(dataset, num_images: Optional[int]):
    """The first ``num_images`` images of a :class:`~icmlib.data.CocoDataset` (same COCO
    ground truth object, fewer image ids), or the dataset itself when ``None``/too large.

    Taking the first images (ids sorted) keeps the subset deterministic, so evaluations
    of different codecs always see the same images.
    """
    if num_images is None or num_images >= len(dataset):
        return dataset
    if num_images < 1:
        raise EvaluationError(f"num_images must be at least 1, got {num_images}")
    small = copy.copy(dataset)
    small.ids = list(dataset.ids[:num_images])
    return small


def dataset_info(dataset) -> Dict[str, Any]:
    """Name, split and size of a dataset, for the results file."""
    ann = str(getattr(dataset, "ann_file", ""))
    split = Path(ann).stem.replace("instances_", "") if ann else "unknown"
    name = "coco" if "2017" in split else "synthetic"
    return {"name": name, "split": split, "num_images": len(dataset), "annotations": ann,
            "image_ids": [int(i) for i in dataset.ids[:1000]]}


def dataset_images(dataset, progress: bool = False) -> List[torch.Tensor]:
    """All images of ``dataset`` as [3, H, W] tensors (the evaluation sets are small)."""
    from tqdm.auto import tqdm

    return [dataset[i][0] for i in tqdm(range(len(dataset)), desc="loading images",
                                         disable=not progress, leave=False)]


# ---- task networks ------------------------------------------------------------------------
_NETWORKS: Dict[Tuple[str, str, str, str], torch.nn.Module] = {}


def evaluation_device(preset=None) -> torch.device:
    """Where evaluation runs: ``preset.device`` (the gpu preset's CUDA) when it is
    available, else the CPU."""
    from icmlib.presets import get_preset

    preset = get_preset(preset)
    if preset.device.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(preset.device)


def task_networks(tasks: Iterable[str] = DEFAULT_TASKS, preset=None, *,
                  force: bool = False) -> Dict[str, torch.nn.Module]:
    """The frozen task networks for ``tasks`` (train-or-load through ``icmlib.tasks``), on
    :func:`evaluation_device`, loaded once per process and cache folder (``$ICM_CACHE``)
    and reused by every evaluation. ``force=True`` retrains them and replaces the
    loaded ones."""
    from icmlib.cache import cache_root, config_key
    from icmlib.presets import get_preset
    from icmlib.tasks import task_network

    preset = get_preset(preset)
    device = evaluation_device(preset)
    nets = {}
    for task in tasks:
        key = (task, config_key(preset.to_dict()), str(cache_root().resolve()), str(device))
        if force or key not in _NETWORKS:
            _NETWORKS[key] = task_network(task, preset, force=force).eval().to(device)
        nets[task] = _NETWORKS[key]
    return nets


def learned_codec(nets, name: str, preset=None):
    """A :class:`icmlib.evaluation.anchors.LearnedCodec` over ``nets`` that codes on
    :func:`evaluation_device` (the gpu preset's CUDA), as the task networks run."""
    from icmlib.evaluation.anchors import LearnedCodec

    return LearnedCodec(nets, name, device=str(evaluation_device(preset)))


def network_fingerprint(net: torch.nn.Module) -> str:
    """Hex fingerprint of a network's weights (keys cached evaluations)."""
    from icmlib.codec.model import fingerprint

    return fingerprint(net).hex()


def _task_metrics(task: str, metrics: Mapping[str, Any]) -> Dict[str, float]:
    """Map ``evaluate_task``'s metric names to the flat names of the results schema."""
    out: Dict[str, float] = {}

    def pick(*names):
        for n in names:
            if n in metrics and metrics[n] is not None:
                return float(metrics[n])
        return None

    if task == "detection":
        out["bbox_map"] = pick("bbox_map", "map", "bbox/map")
        out["bbox_map50"] = pick("bbox_map50", "map50", "bbox/map50")
    elif task == "instance":
        out["segm_map"] = pick("segm_map", "segm/map")
        out["segm_map50"] = pick("segm_map50", "segm/map50")
        out["instance_bbox_map"] = pick("bbox_map", "bbox/map", "map")
        out["instance_bbox_map50"] = pick("bbox_map50", "bbox/map50", "map50")
    elif task == "semantic":
        out["miou"] = pick("miou", "mIoU")
        out["pixel_accuracy"] = pick("pixel_accuracy")
    else:
        raise EvaluationError(f"unknown task {task!r}; use detection, instance or semantic")
    missing = [k for k, v in out.items() if v is None and k in TASK_METRIC.values()]
    if missing:
        raise EvaluationError(f"evaluate_task({task!r}) returned {sorted(metrics)}, "
                              f"without {missing}")
    return {k: v for k, v in out.items() if v is not None}


def task_accuracy(networks: Mapping[str, torch.nn.Module], dataset,
                  images: Optional[Sequence[torch.Tensor]] = None) -> Dict[str, float]:
    """Every task network's accuracy on ``images`` (default: the dataset's originals;
    a list, or a lazy :class:`CodedImages`)."""
    from icmlib.tasks import evaluate_task

    out: Dict[str, float] = {}
    for task, net in networks.items():
        with torch.no_grad():
            metrics = evaluate_task(net, task, dataset, images=images)
        out.update(_task_metrics(task, metrics))
    return out


def reference_accuracy(tasks: Iterable[str] = DEFAULT_TASKS, dataset=None, *, preset=None,
                       networks: Optional[Mapping[str, torch.nn.Module]] = None,
                       num_images: Optional[int] = None) -> Dict[str, float]:
    """The task networks' accuracy on the **uncompressed** originals: the horizontal
    line every RD curve is measured against."""
    from icmlib.presets import get_preset

    preset = get_preset(preset)
    dataset = subset(dataset if dataset is not None else _eval_dataset(preset),
                     num_images)
    networks = dict(networks) if networks is not None else task_networks(tasks, preset)
    return task_accuracy({t: networks[t] for t in tasks}, dataset)


def _eval_dataset(preset):
    from icmlib.data import dataset_for

    return subset(dataset_for(preset, split="test"), preset.eval_images)


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


def decode_image(codec, data: bytes, setting, size: Tuple[int, int]) -> torch.Tensor:
    """``codec.decode(data)`` -> [3, H, W] tensor, checked against the original size."""
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
            return decode_image(self.codec, self.data[i], self.setting, self._size(i))
        return self._code(i)

    def _size(self, i: int) -> Tuple[int, int]:
        return self.stats[i]["size"]

    def _code(self, i: int) -> torch.Tensor:
        from icmlib.metrics import ms_ssim, psnr

        original = self.dataset[i][0]
        t0 = time.perf_counter()
        data = encode_bytes(self.codec, tensor_to_pil(original), self.setting)
        t1 = time.perf_counter()
        dec = decode_image(self.codec, data, self.setting, original.shape[-2:])
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
    dataset = subset(dataset if dataset is not None else _eval_dataset(preset), num_images)
    settings = list(settings) if settings is not None else codec_settings(codec)
    if not settings:
        raise EvaluationError(f"no settings to evaluate codec {codec.name!r} at")
    networks = dict(networks) if networks is not None else task_networks(tasks, preset)
    networks = {t: networks[t] for t in tasks}
    points = []
    for s in tqdm(settings, desc=f"evaluating {codec.name}", disable=not progress):
        points.append(evaluate_point(codec, s, dataset, networks, progress=progress))
    if kind is None:
        from icmlib.evaluation.anchors import LearnedCodec

        kind = "learned" if isinstance(codec, LearnedCodec) else "anchor"
    if group is None:
        group = "traditional" if kind == "anchor" else "learned"
    return codec_entry(codec.name, points, kind=kind, group=group, **info)


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


def cached_evaluation(key: Mapping[str, Any], evaluate: Callable[[], Dict[str, Any]],
                      *, force: bool = False) -> Dict[str, Any]:
    """Load the evaluation cached under ``key``, or run ``evaluate()`` and cache it (JSON
    under ``$ICM_CACHE/evaluations``)."""
    from icmlib.cache import atomic_write_text, cache_dir, config_key

    path = cache_dir("evaluations") / f"{config_key(key)}.json"
    if path.exists() and not force:
        try:
            return json.loads(path.read_text())["entry"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: evaluate again
    entry = evaluate()
    from icmlib.evaluation.results import _jsonable

    atomic_write_text(json.dumps({"key": _jsonable(key), "entry": _jsonable(entry)}), path)
    return entry


# ---- comparing curves --------------------------------------------------------------------------
def better_than_reference(results: Mapping[str, Any], metric: str) -> List[Dict[str, Any]]:
    """Every codec point whose task accuracy beats the uncompressed reference on ``metric``
    (the paper observed this at some rates): ``[{codec, setting, bpp, value, reference}]``."""
    ref = results["reference"].get(metric)
    if ref is None:
        return []
    out = []
    for codec in results["codecs"]:
        for p in codec["points"]:
            v = p.get(metric)
            if v is not None and v > ref:
                out.append({"codec": codec["name"], "setting": p["setting"], "bpp": p["bpp"],
                            "value": v, "reference": ref, "gain": v - ref})
    return out


def bd_rate_table(results: Mapping[str, Any], anchors: Optional[Sequence[str]] = None,
                  metric: str = "bbox_map", tests: Optional[Sequence[str]] = None,
                  method: str = "pchip", min_overlap: float = 0.2, as_text: bool = True,
                  rate: str = "bpp"):
    """The paper's BD-rate table from a results file: each test codec against each anchor.

    Args:
        results: a results dict (:func:`icmlib.evaluation.results.load_results`).
        anchors: codec names used as anchors (columns). Default: every ``kind ==
            "anchor"`` codec plus the MSE baseline(s) (``group == "mse"``).
        metric: the quality axis (``"bbox_map"`` for detection, ``"segm_map"`` for
            instance segmentation, ``"psnr"``...).
        tests: codec names in the rows (default: the learned codecs not among anchors).
        method: ``"pchip"`` (JVET CTC, default; non-monotonic mAP curves use their
            running-maximum frontier, see :mod:`icmlib.evaluation.bdrate`) or ``"cubic"``.
        as_text: cells are strings — ``"-41.2 %"`` or ``"n/a (reason)"`` — ready to print;
            with ``False`` they are floats (NaN where not computable).
        rate: ``"bpp"`` (coded bits, the same rule for every codec: :mod:`icmlib.evaluation.overheads`)
            or ``"bpp_file"`` (whole files; an older results file's ``bpp`` serves for
            both, :func:`icmlib.evaluation.results.point_rate`).

    Returns a pandas DataFrame, rows = test codecs, columns = anchors. Negative = the
    test codec needs fewer bits than the anchor for the same accuracy.
    """
    import pandas as pd

    from icmlib.evaluation.bdrate import bd_rate_table as _table

    codecs = {c["name"]: c for c in results["codecs"]}
    if anchors is None:
        anchors = [n for n, c in codecs.items() if c.get("kind") == "anchor"
                   or c.get("group") == "mse"]
    else:
        unknown = [a for a in anchors if a not in codecs]
        if unknown:
            raise EvaluationError(f"anchor(s) {unknown} not in the results; have {list(codecs)}")
    if tests is None:
        tests = [n for n, c in codecs.items() if n not in anchors and c.get("kind") == "learned"]
    curves = {}
    for name in list(anchors) + list(tests):
        rates, values = curve(codecs[name], metric, rate)
        curves[name] = list(zip(rates, values))
    cells: Dict[str, Dict[str, Any]] = {t: {} for t in tests}
    usable = {n: pts for n, pts in curves.items() if len(pts) >= 2}
    table = _table(usable, anchors=[a for a in anchors if a in usable],
                   tests=[t for t in tests if t in usable], method=method,
                   min_overlap=min_overlap, quality_name=metric)
    for t in tests:
        for a in anchors:
            if t == a:
                continue
            if t not in usable or a not in usable:
                cells[t][a] = "n/a (too few points)" if as_text else float("nan")
                continue
            r = table[(t, a)]
            if r["bd_rate"] is None:
                reason = _short_reason(r["error"])
                cells[t][a] = f"n/a ({reason})" if as_text else float("nan")
            else:
                cells[t][a] = f"{r['bd_rate']:+.1f} %" if as_text else float(r["bd_rate"])
    df = pd.DataFrame.from_dict(cells, orient="index", columns=list(anchors))
    df.index.name = f"BD-rate on {metric}" + (" (whole files)" if rate == "bpp_file" else "")
    return df


def overhead_table(results: Mapping[str, Any]):
    """Per codec: the mean bytes per image of each part of its files (:mod:`icmlib.evaluation.overheads`;
    mean over its points), and at its lowest rate point the bpp the rule counts, the whole
    file's bpp and the share of the file the rule leaves out. Codecs whose points carry no
    ``overhead_bytes`` (a results file written before the split) are left out."""
    import pandas as pd

    rows = {}
    for c in results["codecs"]:
        pts = [p for p in c["points"] if p.get("overhead_bytes") and p.get("bpp_file")]
        if not pts:
            continue
        low = min(pts, key=lambda p: p["bpp"])
        row = {f"{k} [B]": float(np.mean([p["overhead_bytes"].get(k, np.nan) for p in pts]))
               for k in ("headers", "container", "metadata", "size_prefix")}
        row.update({"lowest point: bpp": low["bpp"], "bpp_file": low["bpp_file"],
                    "not counted": 1 - low["bpp"] / low["bpp_file"]})
        rows[c["name"]] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "codec"
    return df


def overhead_comparison(codecs: Sequence[Any], sizes: Sequence[Tuple[int, int]] = ((128, 128),
                                                                             (640, 480)),
                        seed: int = 0):
    """What each codec's file carries beside the coded bits, at two image sizes.

    For every codec at its lowest setting (``qualities[0]``), on a synthetic-world image of
    each ``(width, height)`` (the ``cpu`` preset's 128×128 and a COCO-sized 640×480): the
    bytes the BD-rate rule leaves out (container + metadata + size prefix,
    :mod:`icmlib.evaluation.overheads`), what they are in bpp and as a share of the file, and the
    per-image headers the rule counts. Fixed bytes weigh 18.75 times more per pixel on the
    small image. Returns a DataFrame, rows = codecs, columns = (size, quantity)."""
    import pandas as pd

    from icmlib.data.world import _render_image
    from icmlib.evaluation.overheads import measure

    images = {}
    for w, h in sizes:
        pixels, _ = _render_image(np.random.default_rng(seed), max(w, h), 3)
        images[f"{w}×{h}"] = pixels[:h, :w]
    rows: Dict[str, Dict[Tuple[str, str], Any]] = {}
    for codec in codecs:
        for label, image in images.items():
            m = measure(codec, image, codec.qualities[0])
            rows.setdefault(codec.name, {}).update({
                (label, "not counted [B]"): m["not_counted"],
                (label, "not counted [bpp]"): round(m["bpp_not_counted"], 4),
                (label, "share of file"): f"{m['share_not_counted']:.1%}",
                (label, "headers [B]"): m.get("headers", "")})
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    df.index.name = "codec (lowest setting)"
    return df


def _short_reason(error: str) -> str:
    if "overlap" in error:
        return "too little overlap"
    if "point" in error:
        return "too few points"
    return error.split(";")[0][:60]


def bd_rate_details(results: Mapping[str, Any], anchors: Sequence[str], metric: str,
                    tests: Sequence[str], method: str = "pchip",
                    min_overlap: float = 0.2, rate: str = "bpp") -> List[Dict[str, Any]]:
    """The BD-rate table as rows with the full error / warning messages (for the JSON),
    on ``rate`` (``"bpp"``: coded bits; ``"bpp_file"``: whole files)."""
    from icmlib.evaluation.bdrate import bd_rate_table as _table

    codecs = {c["name"]: c for c in results["codecs"]}
    curves = {n: list(zip(*curve(codecs[n], metric, rate))) for n in list(anchors) + list(tests)
              if n in codecs}
    usable = {n: p for n, p in curves.items() if len(p) >= 2}
    table = _table(usable, anchors=[a for a in anchors if a in usable],
                   tests=[t for t in tests if t in usable], method=method,
                   min_overlap=min_overlap, quality_name=metric)
    return [{"test": t, "anchor": a, "metric": metric, "method": method, "rate": rate, **v}
            for (t, a), v in table.items()]


def dataframe_to_markdown(df) -> str:
    """A pandas DataFrame as a GitHub markdown table (no extra dependency)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in df.iterrows():
        cells = [str(idx)] + [("" if (isinstance(v, float) and np.isnan(v)) else
                               (f"{v:.2f}" if isinstance(v, float) else str(v))) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
