"""The machine's side of an evaluation: which images, which task networks, what they score.

Every codec is measured on the same images (:func:`subset`: the first ids, so always the
same ones) by the same frozen task networks, loaded once per process and cache folder
(:func:`task_networks`) on the device evaluation runs on (:func:`evaluation_device`: the
``gpu`` preset's CUDA when there is one). :func:`task_accuracy` turns what
``icmlib.tasks.evaluate_task`` returns into the flat metric names of the results
schema (``bbox_map``, ``segm_map``, ``miou``...); :func:`reference_accuracy` measures the
uncompressed originals, the line every rate-accuracy curve is drawn against.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

from icmlib.evaluation.results import TASK_METRIC

DEFAULT_TASKS = ("detection", "instance")


class EvaluationError(ValueError):
    """A codec or setting that cannot be evaluated (what went wrong, and what to do)."""


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


def evaluation_dataset(preset):
    """The images a preset reports on: the first ``preset.eval_images`` of its test split
    (reported numbers never come from the images that chose the recipe)."""
    from icmlib.data import dataset_for

    return subset(dataset_for(preset, split="test"), preset.eval_images)


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


def network_fingerprint(net: torch.nn.Module) -> str:
    """Hex fingerprint of a network's weights (keys cached evaluations)."""
    from icmlib.codec import fingerprint

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
    a list, or a lazy :class:`icmlib.evaluation.evaluate.CodedImages`)."""
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
    dataset = subset(dataset if dataset is not None else evaluation_dataset(preset),
                     num_images)
    networks = dict(networks) if networks is not None else task_networks(tasks, preset)
    return task_accuracy({t: networks[t] for t in tasks}, dataset)
