"""An ICM codec for a task network and a COCO-format folder of your own.

:func:`~icmlib.training.codec.train_codec` trains the book's codecs: for a task *name*,
whose network is the preset's (``icmlib.tasks.task_network``), on the preset's data
(``icmlib.data.dataset_for``). Coursework brings its own: a torchvision detector trained
elsewhere, images and ``annotations/instances_*.json`` in a folder. :func:`train_icm_codec`
trains a codec for *that* network on *that* folder with the same train step
(:class:`~icmlib.training.codec.CodecTraining`: the two optimizers, the weighting
strategies, checkpoints, resume, logs) on the same loop (:mod:`icmlib.engine`); the preset
gives only the codec's size and the training settings.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn as nn

from icmlib.cache import cache_dir, config_key
from icmlib.codec.model import fingerprint
from icmlib.engine import processes, threads, training_device
from icmlib.presets import Preset, get_preset
from icmlib.training.batches import crop_and_batch
from icmlib.training.codec import CodecTraining, _check_steps, run_training
from icmlib.training.recipe import ALL_RATES, resolve_rate, run_config, synthesis_quantizer
from icmlib.training.start import init_identity
from icmlib.training.weighting import STRATEGIES

__all__ = ["train_icm_codec"]

#: the strategies that train an ICM codec (``"mse"`` has no task term)
ICM_STRATEGIES = tuple(s for s in STRATEGIES if s != "mse")


def train_icm_codec(task, dataset, *, val_dataset=None,
                    preset: Union[Preset, str, None] = None, strategy: str = "fixed",
                    rate: Union[int, float, str] = ALL_RATES, steps: Optional[int] = None,
                    init_from=None, out_dir: Union[str, Path, None] = None,
                    resume: bool = False, progress: bool = True, seed: Optional[int] = None,
                    on_step: Optional[Callable[[int, Dict[str, float]], None]] = None
                    ) -> Dict[str, Any]:
    """Train an ICM codec for your own task network on your own COCO-format dataset.

    Args:
        task: the frozen task network: an :class:`icmlib.tasks.FrozenTask`
            (``FrozenTask(model, "detection")``), or a torchvision ``FasterRCNN`` /
            ``MaskRCNN``, which is wrapped as ``"detection"`` / ``"instance"``. Its weights
            never change; its own training loss on the decoded images is the task term.
        dataset: the training images, an :class:`icmlib.data.CocoDataset` (of any folder:
            ``CocoDataset(image_dir, ann_file)``). Training sees random
            ``preset.icm_crop_size`` crops of its images, flipped at random, in batches of
            ``preset.icm_batch_size``; the dataset passed in is left as it is.
        val_dataset: a ``CocoDataset`` to validate on every ``preset.icm_val_every`` steps
            and at the end (real bytes, PSNR, the task's score on the first
            ``preset.train_val_images`` images: ``val_log.csv``); ``None``: no validation.
        preset: the codec's architecture and the training settings (learning rates,
            weighting constants, λs); default ``$ICM_PRESET``.
        strategy: ``"fixed"``, ``"dynamic"`` or ``"auto"`` (:mod:`icmlib.training.weighting`).
        rate: ``"all"`` (default): one variable-rate codec serving every λ of
            ``preset.rd_lambdas`` (view rate ``r`` with ``icmlib.codec.at_rate``); an index
            into ``preset.rd_lambdas`` or λ itself: a one-rate codec.
        steps: training steps (default ``preset.icm_steps``). More steps, a better codec.
        init_from: the codec to start from (a checkpoint dict or path, or an ``ICMCodec``
            of the preset's architecture), e.g. the preset's MSE codec
            ``icmlib.training.codec_run(preset, None, "mse", "all")``; ``None``: random weights.
        out_dir: where ``checkpoint.pt``, ``codec.pt`` and the CSV logs go (default: a
            folder under ``$ICM_CACHE/runs/own`` named by the run's configuration, which
            includes the network's weights and the dataset's annotation file).
        resume, progress, seed, on_step: as for :func:`~icmlib.training.codec.train_codec`.

    Returns what :func:`~icmlib.training.codec.train_codec` returns: the codec's checkpoint
    dict (``icmlib.codec.load_codec`` reads it) with ``"logs"`` and ``"run_dir"``.
    Raises ``TypeError`` for a task or dataset of the wrong kind or a network that does not
    return its training losses, ``ValueError`` for a strategy without a task term, a dataset
    whose labels the network cannot predict, or losses through which no gradient reaches
    the image: all before any training.
    """
    preset = get_preset(preset)
    frozen = as_frozen_task(task)
    _check_dataset(dataset, "dataset")
    if val_dataset is not None:
        _check_dataset(val_dataset, "val_dataset")
    if strategy not in ICM_STRATEGIES:
        raise ValueError(f"strategy {strategy!r} does not train an ICM codec; choose one of "
                         f"{ICM_STRATEGIES} (the MSE baseline is train_codec(preset, None, 'mse'))")
    _check_labels(frozen, dataset)
    # the caller may be inside torch.no_grad(): gradients must be on here
    with threads(preset.train_threads), torch.enable_grad():
        _check_task_output(frozen, dataset)
        return _train(preset, frozen, dataset, val_dataset, strategy, rate, steps, init_from,
                      out_dir, resume, progress, seed, on_step)


def _train(preset, frozen, dataset, val_dataset, strategy, rate, steps, init_from, out_dir,
           resume, progress, seed, on_step) -> Dict[str, Any]:
    rate_index, lmbda = resolve_rate(preset, rate)
    steps = _check_steps(preset.icm_steps if steps is None else steps)
    seed = preset.train_seed if seed is None else int(seed)
    procs = processes()
    device = training_device(preset.device, procs.local_rank, f"preset {preset.name!r}")
    network = fingerprint(frozen.model).hex()
    cfg = run_config(preset, frozen.task, strategy, rate_index, lmbda, steps, seed,
                     init_identity(init_from), procs.world)
    cfg.update(task_network=network, dataset=_dataset_identity(dataset))
    out_dir = Path(out_dir) if out_dir is not None else cache_dir("runs", "own", config_key(cfg))
    crop, _ = crop_and_batch(preset, with_task=True)
    data = (training_view(dataset, crop, seed + procs.rank), val_dataset)
    trainer = CodecTraining(preset, frozen.task, strategy, lmbda, steps, seed, init_from,
                            device, procs, progress, frozen=frozen, data=data,
                            synthesis_quantizer=synthesis_quantizer(preset))
    val_every = max(1, preset.icm_val_every) if val_dataset is not None else 0
    command = f"icmlib.training.train_icm_codec(<{frozen.task} network {network}>, " \
              f"{str(dataset.ann_file)!r}, strategy={strategy!r}, rate={rate!r})"
    return run_training(trainer, cfg, out_dir, val_every=val_every, resume=resume,
                        progress=progress, command=command, on_step=on_step,
                        meta={"task_network": network, "dataset": cfg["dataset"]["annotations"]})


def _dataset_identity(dataset) -> Dict[str, Any]:
    """Which images a run trains on, for its configuration: the annotation file and the ids."""
    ids = ",".join(str(int(i)) for i in dataset.ids)
    return {"annotations": str(Path(dataset.ann_file).resolve()), "images": len(dataset.ids),
            "ids": hashlib.sha256(ids.encode()).hexdigest()[:16]}


def as_frozen_task(task):
    """``task`` as an :class:`icmlib.tasks.FrozenTask`: itself, or a torchvision Faster R-CNN
    (``"detection"``) or Mask R-CNN (``"instance"``) wrapped; a ``TypeError`` otherwise."""
    from icmlib.tasks import FrozenTask

    if isinstance(task, FrozenTask):
        return task
    kind = _torchvision_task(task)
    if kind is None:
        raise TypeError(
            f"task must be the frozen task network: icmlib.tasks.FrozenTask(model, kind) with "
            f"kind 'detection', 'instance' or 'semantic', or a torchvision FasterRCNN / "
            f"MaskRCNN; got {type(task).__module__}.{type(task).__name__}")
    return FrozenTask(task, kind)


def _torchvision_task(model) -> Optional[str]:
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    if isinstance(model, MaskRCNN):
        return "instance"
    if isinstance(model, FasterRCNN):
        return "detection"
    return None


def _check_dataset(dataset, name: str) -> None:
    from icmlib.data import CocoDataset

    if not isinstance(dataset, CocoDataset):
        raise TypeError(f"{name} must be an icmlib.data.CocoDataset (a COCO-format folder: "
                        f"CocoDataset(image_dir, 'annotations/instances_<split>.json')); got "
                        f"{type(dataset).__module__}.{type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError(f"{name} has no images ({dataset.ann_file})")


def _check_labels(frozen, dataset) -> None:
    """A detector's class scores must cover the folder's category ids (labels are COCO ids)."""
    head = getattr(getattr(getattr(frozen.model, "roi_heads", None), "box_predictor", None),
                   "cls_score", None)
    if not isinstance(head, nn.Linear) or not dataset.categories:
        return
    top = max(c["id"] for c in dataset.categories)
    if top >= head.out_features:
        raise ValueError(
            f"the dataset's category ids go up to {top}, but the {frozen.task} network predicts "
            f"{head.out_features} classes (ids 0..{head.out_features - 1}, 0 = background): "
            f"it was not trained for this folder's categories ({dataset.ann_file})")


def _check_task_output(frozen, dataset) -> None:
    """The first image of ``dataset`` through the task loss, before any training.

    The codec learns only from what the network's loss says about the decoded image, so the
    network must return its training losses as torchvision's detectors do in train mode (a
    dict of scalar tensors for ``model(images, targets)``), and their gradient must reach
    the image: a network that returns predictions, or detaches its input, would train a
    codec that ignores the task, and nobody would notice until the results.
    """
    image, target = dataset[0]
    device = next((p.device for p in frozen.model.parameters()), torch.device("cpu"))
    image = image.to(device).requires_grad_(True)
    target = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in target.items()}
    where = f"the {frozen.task} network, given the first image of {dataset.ann_file} and its targets"
    try:
        out = frozen.losses(image[None], [target])
    except (TypeError, ValueError) as e:
        raise TypeError(f"{where}, did not return its training losses (a dict of scalar "
                        f"tensors from model(images, targets) in train mode, as torchvision's "
                        f"detectors do): {type(e).__name__}: {e}") from e
    wrong = {k: type(v).__name__ if not torch.is_tensor(v) else tuple(v.shape)
             for k, v in out.items() if not torch.is_tensor(v) or v.numel() != 1}
    if not out or wrong:
        raise TypeError(f"{where}, returned {wrong or 'no losses'}: the task term needs a dict "
                        f"of scalar loss tensors")
    total = sum(v.reshape(()) for v in out.values())
    if not torch.isfinite(total):
        raise ValueError(f"{where}, returned a loss that is not finite: "
                         f"{ {k: float(v) for k, v in out.items()} }")
    if not total.requires_grad:
        raise ValueError(f"{where}, returned losses through which no gradient reaches the "
                         f"image (does it detach its input, or run under torch.no_grad?): the "
                         f"codec could not learn from them")


def training_view(dataset, crop: int, seed: int):
    """The training view of a :class:`~icmlib.data.CocoDataset`: the same images (a subset
    stays a subset) and annotation settings, random ``crop`` x ``crop`` crops and flips
    drawn from ``seed``. A new dataset: the one passed in is left as it is."""
    from icmlib.data import CocoDataset

    view = CocoDataset(dataset.image_dir, dataset.ann_file, crop_size=crop, train=True,
                       seed=seed, skip_crowd=dataset.skip_crowd,
                       min_visible=dataset.min_visible, min_area=dataset.min_area)
    view.ids = list(dataset.ids)
    return view
