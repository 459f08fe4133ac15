"""Transfer learning: reuse a backbone trained on another task, with five regimes.

:func:`pretrain_backbone` trains a U-Net on a *source task* (:func:`source_task_data`:
other colours, other labels); :func:`transfer_model` builds the target network from its
encoder and :func:`set_trainable` freezes what a regime keeps (:data:`REGIMES`);
:func:`train_staged` unfreezes the encoder stage by stage during training;
:func:`run_transfer_experiment` trains each regime on few labels with the same budget
(with or without augmentation). On Colab, :func:`imagenet_backbone` /
:func:`imagenet_segmenter` bring ImageNet weights.
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from icmlib.cache import train_or_load
from icmlib.presets import Preset, get_preset
from icmlib.segmentation.data import (JointAugment, SegmentationError, Tensors, segmentation_data,
                                      segmentation_num_classes)
from icmlib.segmentation.models import TorchvisionUNet, UNet
from icmlib.segmentation.train import SEG_VERSION, _cpu_state, _world_config, train_segmenter, training_device

REGIMES = ("scratch", "frozen", "last", "all", "staged")
REGIME_NAMES = {"scratch": "from scratch", "frozen": "frozen backbone + new head",
                "last": "fine-tune last layers", "all": "fine-tune everything",
                "staged": "staged unfreezing"}
STAGES = ("frozen", "last", "all")      # what the staged regime unfreezes, in order


def source_task_data(data: Tensors) -> Tensors:
    """The source task: a *different version of the world* and a *different label set*.

    Images have their colour channels rotated (RGB -> BRG: another "camera"), and the
    labels are foreground vs background only. A backbone trained on it has learned
    edges, regions and shapes, but neither the target's colours nor its classes.
    """
    images, masks = data
    return images[:, [2, 0, 1]].contiguous(), (masks > 0).long()


def pretrain_backbone(preset: Union[Preset, str, None] = None, seed: int = 0,
                      progress: bool = True) -> dict:
    """Train (or load) a U-Net on the source task; returns its record with ``state_dict``."""
    preset = get_preset(preset)
    config = {"kind": "source", "seed": seed, "version": SEG_VERSION,
              "steps": preset.seg_pretrain_steps, "batch_size": preset.seg_batch_size,
              "lr": preset.seg_lr, "width": preset.seg_width, "depth": preset.seg_depth,
              **_world_config(preset)}

    def train():
        torch.manual_seed(seed)
        model = UNet(3, 2, preset.seg_width, preset.seg_depth).to(training_device(preset))
        train_data = source_task_data(segmentation_data(preset, "train"))
        val_data = source_task_data(segmentation_data(preset, "val"))
        result = train_segmenter(model, train_data, val_data, steps=preset.seg_pretrain_steps,
                                 batch_size=preset.seg_batch_size, lr=preset.seg_lr,
                                 val_every=preset.seg_val_every, num_classes=2, seed=seed,
                                 progress=progress, desc="source task")
        return {**result, "state_dict": _cpu_state(model), "config": config}

    return train_or_load("segmenter-source", config, train)


def set_trainable(model: nn.Module, regime: str) -> nn.Module:
    """Freeze parts of ``model`` for a transfer regime (see :data:`REGIMES`).

    * ``scratch`` / ``all``: everything trains;
    * ``frozen``: the encoder (backbone) is frozen, only decoder and head train;
    * ``last``: the encoder's first stages are frozen, its last stage, decoder and head train;
    * ``staged``: starts as ``frozen``; :func:`train_staged` then walks through :data:`STAGES`.
    """
    if regime not in REGIMES:
        raise SegmentationError(f"unknown regime {regime!r}; choose one of {REGIMES}")
    for p in model.parameters():
        p.requires_grad_(True)
    if regime in ("frozen", "staged"):
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    elif regime == "last":
        for stage in list(model.encoder_stages)[:-1]:
            for p in stage.parameters():
                p.requires_grad_(False)
    return model


def transfer_model(regime: str, num_classes: int, preset: Union[Preset, str, None] = None,
                   source_state: Optional[dict] = None, seed: int = 0) -> UNet:
    """A U-Net for the target task: encoder from ``source_state`` (unless ``scratch``), new decoder/head."""
    preset = get_preset(preset)
    torch.manual_seed(seed)
    model = UNet(3, num_classes, preset.seg_width, preset.seg_depth)
    if regime != "scratch":
        if source_state is None:
            raise SegmentationError(f"regime {regime!r} needs the pretrained source_state")
        enc = {k: v for k, v in source_state.items() if k.startswith("encoder_stages.")}
        missing = model.load_state_dict(enc, strict=False)
        if missing.unexpected_keys:
            raise SegmentationError(f"pretrained weights do not fit: {missing.unexpected_keys[:3]}")
    return set_trainable(model, regime)


# what the transfer runs augment with: milder than JointAugment's defaults
TRANSFER_AUGMENT = JointAugment(max_rotation=10, color_jitter=0.1, blur_prob=0.2)


def train_staged(model: nn.Module, train_data: Tensors, val_data: Tensors, *, steps: int,
                 stages: Sequence[str] = STAGES, seed: int = 0, desc: str = "staged",
                 **train_kwargs) -> dict:
    """Staged (gradual) unfreezing: train the new decoder first, then deeper into the encoder.

    The ``steps`` are split evenly over ``stages`` (regimes of :func:`set_trainable`;
    by default encoder frozen, then its last stage unfrozen, then everything). Each stage
    is a :func:`~icmlib.segmentation.train.train_segmenter` run with a fresh optimizer and
    cosine schedule, starting from the best validation weights of the stage before, so a
    random new decoder never sends large gradients into pretrained layers. The best
    validation weights over all stages are kept. Returns a record like
    ``train_segmenter``'s, its history's steps counted across stages (each entry names
    its ``stage``).
    """
    if not stages:
        raise SegmentationError("train_staged needs at least one stage")
    history, seconds, done, best = [], 0.0, 0, None
    for i, stage in enumerate(stages):
        set_trainable(model, stage)
        n = steps // len(stages) + (steps % len(stages) if i == len(stages) - 1 else 0)
        result = train_segmenter(model, train_data, val_data, steps=max(1, n), seed=seed + i,
                                 desc=f"{desc}: {stage}", **train_kwargs)
        history += [{**h, "step": done + h["step"], "stage": stage} for h in result["history"]]
        if best is None or result["val"]["miou"] > best["val"]["miou"]:
            best = {"val": result["val"], "step": done + result["best_step"],
                    "state": copy.deepcopy(model.state_dict())}
        seconds, done = seconds + result["train_seconds"], done + result["steps_run"]
    trainable = result["trainable_params"]
    model.load_state_dict(best["state"])
    return {"history": history, "val": best["val"], "best_step": best["step"],
            "stopped_early": False, "steps_run": done, "train_seconds": seconds,
            "trainable_params": trainable, "stages": tuple(stages)}


def run_transfer_experiment(preset: Union[Preset, str, None] = None, regimes: Sequence[str] = REGIMES,
                            seed: int = 0, progress: bool = True, augment: bool = True) -> dict:
    """Pretrain on the source task, then train each regime on few target labels, same budget.

    Target: the real world (original colours, all classes) with only
    ``preset.seg_transfer_labels`` labelled training images, ``preset.seg_transfer_steps``
    steps each, with :class:`JointAugment` (or without, ``augment=False``: same steps, same
    seed, to measure what augmentation does). Returns ``{"source": record, regime:
    record, ...}``; their ``val`` metrics chose the best step, so report the test split:
    :func:`icmlib.segmentation.train.test_results`.
    """
    preset = get_preset(preset)
    num_classes = segmentation_num_classes(preset)
    source = pretrain_backbone(preset, seed, progress)
    records = {}
    for regime in regimes:
        config = {"kind": "transfer", "regime": regime, "seed": seed, "version": SEG_VERSION,
                  "labels": preset.seg_transfer_labels, "steps": preset.seg_transfer_steps,
                  "pretrain_steps": preset.seg_pretrain_steps, "batch_size": preset.seg_batch_size,
                  "lr": preset.seg_lr, "width": preset.seg_width, "depth": preset.seg_depth,
                  "num_classes": num_classes, **_world_config(preset)}
        if not augment:         # only then: the augmented runs keep the keys they always had
            config["augment"] = False

        def train(regime=regime, config=config):
            model = transfer_model(regime, num_classes, preset, source["state_dict"], seed)
            model = model.to(training_device(preset))
            images, masks = segmentation_data(preset, "train")
            few = (images[:preset.seg_transfer_labels], masks[:preset.seg_transfer_labels])
            fit = train_staged if regime == "staged" else train_segmenter
            result = fit(model, few, segmentation_data(preset, "val"),
                         steps=preset.seg_transfer_steps, batch_size=preset.seg_batch_size,
                         lr=preset.seg_lr, val_every=preset.seg_val_every,
                         num_classes=num_classes, seed=seed, progress=progress, desc=regime,
                         augment=TRANSFER_AUGMENT if augment else None)
            return {**result, "state_dict": _cpu_state(model), "config": config}

        records[regime] = train_or_load("segmenter-transfer", config, train)
    return {"source": source, **records}



class BackboneDownloadError(RuntimeError):
    """Pretrained weights are not cached locally and could not be downloaded."""


def imagenet_backbone(name: str = "resnet18", pretrained: bool = True) -> nn.Module:
    """A torchvision classification network with ImageNet weights (torchvision's weights API).

    ``name``: any torchvision classification model, e.g. ``resnet18``, ``resnet50``,
    ``mobilenet_v3_large``. Weights are cached under ``torch.hub.get_dir()``; offline and
    not cached, a :class:`BackboneDownloadError` names the URL it would download. Wrap it
    with :func:`imagenet_segmenter` (or :class:`TorchvisionUNet`) to segment, and
    normalise images with :func:`icmlib.segmentation.normalize`.
    """
    import os
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as err:
        raise SegmentationError(f"unknown torchvision model {name!r}; try resnet18, resnet50, "
                                f"mobilenet_v3_large") from err
    if not pretrained:
        return torchvision.models.get_model(name, weights=None)
    weights = weights_enum.DEFAULT
    target = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        return torchvision.models.get_model(name, weights=weights)
    except (OSError, RuntimeError) as err:       # URLError is an OSError
        raise BackboneDownloadError(
            f"could not get the ImageNet weights of {name} ({weights}).\n"
            f"They would be downloaded from {weights.url}\n"
            f"to {target}. Connect to the internet (e.g. run on Colab) or copy that file "
            f"there by hand; offline, use pretrained=False or the book's own pretraining "
            f"(icmlib.segmentation.pretrain_backbone).\n(cause: {err})") from err


def imagenet_segmenter(name: str, num_classes: int, pretrained: bool = True,
                       width: int = 32) -> TorchvisionUNet:
    """A :class:`TorchvisionUNet` on ``imagenet_backbone(name)``; use it in the transfer regimes."""
    return TorchvisionUNet(imagenet_backbone(name, pretrained), name, num_classes, width)
