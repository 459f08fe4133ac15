"""Results files: what an evaluation measured, and what produced it, in one JSON file.

Numbers in the book are either computed by the book's own build or loaded from a results
file that says which command, commit and hardware produced them. This module defines that
file, writes it and reads it back; ``icmlib.evaluation.plots`` draws straight from it, so plotting
never needs the evaluation to run again.

Schema (``"schema": "icmlib-results/1"``)
-----------------------------------------
::

    {
      "schema": "icmlib-results/1",
      "icmlib_version": "0.1.0",
      "created": "2026-11-21T12:34:56+00:00",      # UTC, ISO 8601
      "command": "icm reproduce --preset cpu",      # what produced the file
      "commit": "c19d9dc...",                       # git rev-parse HEAD, or "unknown"
      "device": {"cpu": "AMD EPYC ...", "gpu": null, "threads": 2,
                 "torch": "2.x", "python": "3.x", "platform": "Linux-..."},
      "preset": {"name": "cpu", ...every preset field...},
      "dataset": {"name": "synthetic", "split": "val", "num_images": 64,
                  "annotations": ".../instances_val.json"},
      "tasks": ["detection", "instance"],
      "bpp_averaging": "per-image mean of 8*(coded bytes)/(H*W)",
      "rate_rule": "coded bitstream only: ...",    # what bpp counts (icmlib.evaluation.overheads.RULE)
      "reference": {"bbox_map": 0.71, "bbox_map50": 0.93, ...},   # uncompressed originals
      "codecs": [                                   # one entry per codec (one RD curve)
        {"name": "JPEG", "kind": "anchor",          # "anchor" | "learned"
         "group": "traditional",                    # "traditional" | "mse" | "icm" | ...
         "task": null, "strategy": null,            # learned codecs: what they were trained for
         "points": [                                # one per rate point, sorted by bpp
           {"setting": 10,                          # the codec's quality knob / rate index
            "bpp": 0.81,                            # mean over images of 8*coded bytes/pixels
            "bpp_file": 0.82,                       # the same over whole files
            "bpp_total": 0.81,                      # total coded bits / total pixels
            "bytes": 26542, "bytes_file": 26830,    # totals over the images
            "overhead_bytes": {"container": 18,     # mean bytes per image not counted in
              "metadata": 0, "size_prefix": 0,      #   bpp, and the per-image headers
              "headers": 280},                      #   counted in it (icmlib.evaluation.overheads)
            "psnr": 27.3, "ms_ssim": 0.93,          # means over images
            "bbox_map": 0.52, "bbox_map50": 0.80,   # detection network (Faster R-CNN)
            "segm_map": 0.44, "segm_map50": 0.75,   # instance network (Mask R-CNN) masks
            "instance_bbox_map": 0.5, ...,          # instance network's boxes
            "miou": 0.6,                            # semantic network (when evaluated)
            "num_images": 64, "encode_s": 0.01, "decode_s": 0.01}, ...]},
        ...],
      "extra": {...}                                # free-form: BD-rate tables, training logs
    }

Every metric name in a point is a flat key, so ``plot_rd_curves(results, "segm_map")``
and ``bd_rate_table(results, metric="bbox_map")`` address them directly. Metric
names produced by the evaluation are listed in :data:`METRICS`; the two rates a BD-rate
can be computed on in :data:`RATES`.

Files written before the rate split (evaluation ``evaluate/1``) have no ``bpp_file``,
``bytes_file`` or ``overhead_bytes``; their ``bpp`` counted whole files, and
:func:`point_rate` reads it for both rates.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

SCHEMA = "icmlib-results/1"

#: metric key -> (human label, higher is better)
METRICS: Dict[str, tuple] = {
    "bpp": ("bits per pixel (coded bitstream, from real bytes)", False),
    "bpp_file": ("bits per pixel (whole files)", False),
    "psnr": ("PSNR [dB]", True),
    "ms_ssim": ("MS-SSIM", True),
    "bbox_map": ("detection mAP@[.5:.95] (bbox)", True),
    "bbox_map50": ("detection AP50 (bbox)", True),
    "segm_map": ("instance segmentation mAP@[.5:.95] (segm)", True),
    "segm_map50": ("instance segmentation AP50 (segm)", True),
    "instance_bbox_map": ("instance network mAP@[.5:.95] (bbox)", True),
    "instance_bbox_map50": ("instance network AP50 (bbox)", True),
    "miou": ("semantic segmentation mIoU", True),
}

#: which metric measures each task in the BD-rate table (as in the paper)
TASK_METRIC = {"detection": "bbox_map", "instance": "segm_map", "semantic": "miou"}

BPP_AVERAGING = "per-image mean of 8*(coded bytes)/(H*W)"

#: the rates a point carries: key -> what it counts
RATES = {"bpp": "coded bits (the BD-rate rule: the bitstream the decoder needs)",
         "bpp_file": "whole files (.icm and each anchor's file format)"}

REQUIRED_KEYS = ("schema", "codecs", "reference", "dataset", "preset", "command", "commit",
                 "device", "created", "icmlib_version")

#: the tasks the reproduction (``icm reproduce``) evaluates, as in the paper
REPRO_TASKS = ("detection", "instance")


def mse_name() -> str:
    """The MSE baseline's codec name in a reproduction's results file."""
    return "MSE baseline"


def icm_name(task: str, strategy: str) -> str:
    """An ICM codec's name in a reproduction's results file: its task and loss weighting."""
    return f"ICM {strategy} ({task})"


class ResultsError(ValueError):
    """A results file that is missing, unreadable or not in the documented schema."""


# ---- provenance --------------------------------------------------------------------------
def git_commit(cwd: Optional[Union[str, Path]] = None) -> str:
    """``git rev-parse HEAD`` of the repository icmlib lives in (or ``cwd``); "unknown"
    when there is no git or no repository (a pip-installed icmlib)."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    if out.returncode != 0 or not commit:
        return "unknown"
    try:  # say so when the working tree differs from the commit
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, capture_output=True, text=True, timeout=10)
        if dirty.returncode == 0 and dirty.stdout.strip():
            commit += "+dirty"
    except (OSError, subprocess.SubprocessError):
        pass
    return commit


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), for provenance."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info() -> Dict[str, Any]:
    """The hardware and software an evaluation ran on."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def describe_device(device: Dict[str, Any]) -> str:
    """One line, e.g. ``AMD EPYC (2 threads), no GPU, torch 2.5.1``."""
    gpu = device.get("gpu") or "no GPU"
    return (f"{device.get('cpu', 'unknown CPU')} ({device.get('threads', '?')} threads), "
            f"{gpu}, torch {device.get('torch', '?')}")


def current_command() -> str:
    """The command line of this process, as a user would type it."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("icm", "__main__.py"):
        argv[0] = "icm"
    return " ".join(argv)


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# ---- building ---------------------------------------------------------------------------
def new_results(*, preset: Any, dataset: Dict[str, Any], tasks, reference: Dict[str, float],
                command: Optional[str] = None, codecs: Optional[List[Dict]] = None,
                extra: Optional[Dict] = None) -> Dict[str, Any]:
    """A results dict with provenance filled in (commit, device, date, version)."""
    from icmlib import __version__

    preset_dict = preset.to_dict() if hasattr(preset, "to_dict") else dict(preset)
    return {
        "schema": SCHEMA,
        "icmlib_version": __version__,
        "created": now_utc(),
        "command": command or current_command(),
        "commit": git_commit(),
        "device": device_info(),
        "preset": preset_dict,
        "dataset": dict(dataset),
        "tasks": list(tasks),
        "bpp_averaging": BPP_AVERAGING,
        "rate_rule": _rate_rule(),
        "reference": dict(reference),
        "codecs": list(codecs or []),
        "extra": dict(extra or {}),
    }


def _rate_rule() -> str:
    from icmlib.evaluation.overheads import RULE

    return RULE


def codec_entry(name: str, points: List[Dict[str, Any]], *, kind: str = "anchor",
                group: str = "traditional", task: Optional[str] = None,
                strategy: Optional[str] = None, **info: Any) -> Dict[str, Any]:
    """One codec's RD curve in the results schema (points sorted by bpp)."""
    if kind not in ("anchor", "learned"):
        raise ValueError(f"kind must be 'anchor' or 'learned', got {kind!r}")
    pts = sorted((dict(p) for p in points), key=lambda p: p["bpp"])
    return {"name": name, "kind": kind, "group": group, "task": task, "strategy": strategy,
            "points": pts, **info}


# ---- validation, save, load -------------------------------------------------------------
def validate_results(results: Dict[str, Any]) -> Dict[str, Any]:
    """Check ``results`` follows the schema; raise :class:`ResultsError` saying what is wrong."""
    if not isinstance(results, dict):
        raise ResultsError(f"results must be a JSON object, got {type(results).__name__}")
    if results.get("schema") != SCHEMA:
        raise ResultsError(f"unknown results schema {results.get('schema')!r} "
                           f"(this icmlib reads {SCHEMA!r})")
    missing = [k for k in REQUIRED_KEYS if k not in results]
    if missing:
        raise ResultsError(f"results are missing the key(s) {missing}")
    names = set()
    for i, codec in enumerate(results["codecs"]):
        for key in ("name", "kind", "points"):
            if key not in codec:
                raise ResultsError(f"codec #{i} has no {key!r}")
        if codec["name"] in names:
            raise ResultsError(f"codec name {codec['name']!r} appears twice")
        names.add(codec["name"])
        for j, p in enumerate(codec["points"]):
            if "bpp" not in p or "setting" not in p:
                raise ResultsError(f"point #{j} of codec {codec['name']!r} lacks 'bpp' or 'setting'")
    return results


def _jsonable(obj: Any) -> Any:
    """numpy / torch scalars and tuples to plain JSON; NaN kept as null."""
    import math

    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def save_results(results: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Validate and write ``results`` as indented JSON (atomically)."""
    from icmlib.cache import atomic_write_text

    validate_results(results)
    path = Path(path)
    atomic_write_text(json.dumps(_jsonable(results), indent=1) + "\n", path)
    return path


def load_results(source: Union[str, Path, Dict[str, Any]]) -> Dict[str, Any]:
    """A results dict from a path (or a dict, validated and passed through)."""
    if isinstance(source, dict):
        return validate_results(source)
    path = Path(source)
    if not path.is_file():
        raise ResultsError(f"no results file at {path} (produce one with "
                           f"'icm evaluate' or 'icm reproduce')")
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path} is not a readable JSON results file: {e}") from None
    return validate_results(results)


# ---- access -----------------------------------------------------------------------------
def find_codec(results: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The codec entry called ``name`` (``ResultsError`` naming the others if none is)."""
    for codec in results["codecs"]:
        if codec["name"] == name:
            return codec
    raise ResultsError(f"no codec {name!r} in the results; have "
                       f"{[c['name'] for c in results['codecs']]}")


def point_rate(point: Dict[str, Any], rate: str = "bpp") -> Optional[float]:
    """A point's rate: ``"bpp"`` (coded bits) or ``"bpp_file"`` (whole files). A point of
    an older file, written before the split, has only ``bpp`` (then counting whole files):
    it serves for both."""
    if rate not in RATES:
        raise ValueError(f"rate must be one of {list(RATES)}, got {rate!r}")
    value = point.get(rate)
    return point.get("bpp") if value is None and rate == "bpp_file" else value


def curve(codec: Dict[str, Any], metric: str, rate: str = "bpp"):
    """(rates, values) of one codec for ``metric``, points without the metric left out;
    ``rate``: ``"bpp"`` (coded bits) or ``"bpp_file"`` (whole files, :func:`point_rate`)."""
    pts = [(point_rate(p, rate), p[metric]) for p in codec["points"]
           if p.get(metric) is not None and point_rate(p, rate) is not None]
    pts.sort(key=lambda p: p[0])
    return [r for r, _ in pts], [v for _, v in pts]


def metric_label(metric: str) -> str:
    return METRICS.get(metric, (metric, True))[0]
