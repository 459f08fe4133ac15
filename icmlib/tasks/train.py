"""Training the small task networks, and train-or-load of every task network.

:func:`train_task` trains a ``ci``/``cpu`` task network on the preset's world with its own
training loss (the same :func:`icmlib.tasks.frozen.task_losses` the codec later sees, but
with the weights free); :func:`task_network` loads it from the train-or-load cache, keyed
by :func:`task_config` (or trains it first), or -- on the gpu preset -- takes torchvision's
COCO-pretrained detector, and hands it back frozen.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn

from icmlib.cache import checkpoint_path, train_or_load
from icmlib.engine import Reporter, RunState, every, train_loop
from icmlib.presets import Preset, get_preset
from icmlib.tasks.evaluate import evaluate_task
from icmlib.tasks.frozen import task_losses
from icmlib.tasks.networks import (PRIMARY_METRIC, _check_task, _num_classes, anchor_sizes,
                                   build_task_network, freeze_batchnorm)

#: Bump when the networks or their training change, so cached task networks retrain.
TASKS_VERSION = "2"


_TASK_FIELDS = ("task_backbone_width", "task_fpn_channels", "task_finest_stride",
                "task_image_size",
                "task_representation_size", "task_rpn_batch_size", "task_roi_batch_size",
                "task_detections_per_image", "task_batch_size", "task_lr",
                "task_weight_decay", "task_warmup_steps", "task_train_images")


def _steps_for(task: str, preset: Preset) -> int:
    if task == "semantic":
        return preset.task_semantic_steps
    if task == "instance" and preset.task_instance_init:
        return preset.task_instance_steps
    return preset.task_steps


def _instance_init(preset: Preset) -> str:
    init = preset.task_instance_init
    if init not in ("", "detection"):
        raise ValueError(f"task_instance_init must be 'detection' or '' (from scratch), "
                         f"got {init!r}")
    return init


def task_config(task: str, preset: Union[Preset, str, None] = None,
                steps: Optional[int] = None, seed: int = 0) -> Dict[str, Any]:
    """Everything that determines a trained task network: its train-or-load key."""
    from icmlib.data import world_config

    task = _check_task(task)
    preset = get_preset(preset)
    cfg: Dict[str, Any] = {"task": task, "version": TASKS_VERSION, "seed": int(seed),
                           "steps": int(_steps_for(task, preset) if steps is None else steps),
                           "dataset": preset.dataset,
                           "num_classes": _num_classes(preset)}
    cfg.update({f: getattr(preset, f) for f in _TASK_FIELDS})
    if preset.num_workers:
        # DataLoader workers draw other flips than the main process: other weights. Only
        # in the key when not 0, so the networks trained before this line keep their keys.
        cfg["num_workers"] = int(preset.num_workers)
    if task == "semantic":
        cfg.update(unet_width=preset.task_unet_width, unet_depth=preset.task_unet_depth)
    else:
        cfg["anchor_sizes"] = anchor_sizes(preset.task_image_size)
    if task == "instance" and _instance_init(preset):
        # the starting point is part of what determines the result
        cfg["init"] = task_config("detection", preset, seed=seed)
    if preset.dataset == "synthetic":
        cfg["world_train"] = world_config(_train_world_preset(preset), "train")
        cfg["world_val"] = world_config(preset, "val")
    return cfg


def _train_world_preset(preset: Preset) -> Preset:
    """The preset whose synthetic training world the task networks learn from.

    Task networks may see more training images than the codec (``task_train_images``):
    image ``i`` of the world does not depend on the world's size, so this is the same
    world, extended.
    """
    if preset.task_train_images and preset.task_train_images != preset.train_images:
        return preset.replace(train_images=preset.task_train_images)
    return preset


def _train_dataset(preset: Preset):
    from icmlib.data import CocoDataset, dataset_for

    ds = dataset_for(_train_world_preset(preset), "train", train=True)
    # whole images with random flips: the detector sees the scale it will be tested at
    return CocoDataset(ds.image_dir, ds.ann_file, crop_size=None if preset.dataset ==
                       "synthetic" else preset.crop_size, train=True, seed=0)


_FINETUNE_LR_FACTOR = 1.0 / 3.0


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 1 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _device(preset: Preset) -> torch.device:
    return torch.device(preset.device if (preset.device != "cuda" or torch.cuda.is_available())
                        else "cpu")


def _network_to_train(task: str, preset: Preset, config: Dict[str, Any], progress: bool,
                      seed: int) -> nn.Module:
    """A fresh network for ``task``; Mask R-CNN with the trained detector's weights when
    ``config`` says it starts from them (``"init"``)."""
    model = build_task_network(task, preset, num_classes=config["num_classes"])
    if "init" in config:
        # Mask R-CNN's backbone, FPN, RPN and box head are Faster R-CNN's: start from the
        # trained detector (train-or-load), so only the mask branch learns from scratch
        det = train_or_load("task-detection", config["init"],
                            lambda: train_task("detection", preset, progress=progress,
                                               seed=seed))
        missing, unexpected = model.load_state_dict(det["state_dict"], strict=False)
        if unexpected or any(not k.startswith("roi_heads.mask_") for k in missing):
            raise RuntimeError(f"the detection checkpoint does not fit Mask R-CNN: "
                               f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


def _train_loader(preset: Preset, seed: int):
    from icmlib.data import collate

    train_ds = _train_dataset(preset)
    return torch.utils.data.DataLoader(
        train_ds, batch_size=preset.task_batch_size, shuffle=True, collate_fn=collate,
        num_workers=preset.num_workers, drop_last=len(train_ds) >= preset.task_batch_size,
        generator=torch.Generator().manual_seed(seed))


class _TaskTraining:
    """A task network's train step (AdamW, warm-up then cosine, clipping) and the
    callbacks around it: the logged history, the learning curve's points, the bar."""

    def __init__(self, model: nn.Module, task: str, preset: Preset, base_lr: float, total: int,
                 device: torch.device):
        self.model, self.task, self.preset, self.device = model, task, preset, device
        self.base_lr, self.total = base_lr, total
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=base_lr, weight_decay=preset.task_weight_decay)
        self.warmup = min(preset.task_warmup_steps, max(total // 5, 1))
        self.history: List[Dict[str, float]] = []
        self.running: Dict[str, float] = {}
        self.eval_seconds = self.eval_cpu_seconds = 0.0

    def begin(self, loader, val_ds, reporter: Reporter) -> None:
        self.batches = _endless(loader)
        self.val_ds, self.reporter = val_ds, reporter
        self.t0, self.c0 = time.time(), time.process_time()
        self.model.train()

    def step(self, step: int) -> Dict[str, float]:
        images, targets = next(self.batches)
        lr = _lr_at(step, self.total, self.base_lr, self.warmup)
        for g in self.opt.param_groups:
            g["lr"] = lr
        images = [im.to(self.device) for im in images]
        losses = task_losses(self.model, self.task, images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {self.task} network's loss became {loss.item()} at "
                                     f"step {step}; lower task_lr (now {self.base_lr})")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 10.0)
        self.opt.step()
        for k, v in losses.items():
            v = float(v.detach())
            self.running[k] = 0.9 * self.running.get(k, v) + 0.1 * v
        return {"lr": lr, "loss": float(loss.detach()),
                **{k: float(v.detach()) for k, v in losses.items()}}

    def log(self, step: int, row: Dict[str, float]) -> None:
        """A point of the logged history (every ``preset.log_every`` steps and the last)."""
        self.history.append({"step": step, "lr": row["lr"],
                             "seconds": time.time() - self.t0 - self.eval_seconds,
                             **{k: v for k, v in row.items() if k != "lr"}})

    def validate(self, step: int, row=None) -> None:
        """The learning curve's point at ``step`` (the last step is measured after the loop);
        its time is not training time."""
        if step >= self.total:
            return
        te, tc = time.time(), time.process_time()
        self.model.eval()
        score = evaluate_task(self.model, self.task, self.val_ds,
                              batch_size=self.preset.task_batch_size * 2)
        self.model.train()
        self.history.append({"step": step, "val_" + PRIMARY_METRIC[self.task]: score["score"]})
        self.reporter.say(f"step {step}: val {PRIMARY_METRIC[self.task]} = {score['score']:.3f}")
        self.eval_seconds += time.time() - te
        self.eval_cpu_seconds += time.process_time() - tc

    def report(self, step: int, row=None) -> None:
        self.reporter.advance({k.replace("loss_", ""): f"{v:.3f}" for k, v in self.running.items()})


def _endless(loader):
    """The loader's batches, epoch after epoch (each epoch shuffled anew)."""
    while True:
        yield from loader


def _final_metrics(model: nn.Module, task: str, val_ds, preset: Preset, progress: bool,
                   total: int, train_seconds: float, train_cpu_seconds: float) -> Dict[str, float]:
    """The trained network's validation metrics, with its training time and speed."""
    model.eval()
    metrics = evaluate_task(model, task, val_ds, batch_size=preset.task_batch_size * 2,
                            progress=progress)
    metrics["train_seconds"] = train_seconds
    metrics["train_cpu_seconds"] = train_cpu_seconds
    metrics["steps_per_second"] = total / max(train_seconds, 1e-9)
    return metrics


@torch.enable_grad()  # may be called lazily from inside a caller's torch.no_grad()
def train_task(task: str, preset: Union[Preset, str, None] = None, progress: bool = True,
               *, steps: Optional[int] = None, seed: int = 0,
               eval_every: Optional[int] = None) -> Dict[str, Any]:
    """Train the small network for ``task`` on the preset's world; evaluate it on val.

    Mask R-CNN starts from the trained Faster R-CNN when ``preset.task_instance_init`` is
    ``"detection"`` (its only new parts are the mask head and predictor) and trains for
    ``task_instance_steps``; otherwise from scratch for ``task_steps``.

    AdamW with linear warm-up and cosine decay, gradient clipping; batches of
    ``preset.task_batch_size`` whole training images with random horizontal flips. The
    loss is the network's own training loss (the same :func:`task_losses` the codec later
    sees through :meth:`~icmlib.tasks.frozen.FrozenTask.losses`, but with the weights
    free), on the one training loop of :mod:`icmlib.engine`. Returns ``{"state_dict",
    "config", "metrics", "history"}``: ``metrics`` from :func:`evaluate_task` on the val
    split, ``history`` a list of logged steps (losses, learning rate, seconds), with the
    validation score every ``eval_every`` steps (default ``preset.val_every``; 0: only
    at the end) -- the learning curve.
    """
    from icmlib.data import dataset_for

    task = _check_task(task)
    preset = get_preset(preset)
    config = task_config(task, preset, steps, seed)
    total = config["steps"]
    if preset.task_pretrained and task != "semantic":
        raise ValueError(f"preset {preset.name!r} uses the COCO-pretrained {task} network; "
                         f"it is loaded, not trained (use task_network)")
    torch.manual_seed(seed)
    device = _device(preset)
    model = _network_to_train(task, preset, config, progress, seed).to(device)
    loader = _train_loader(preset, seed)
    # fine-tuning a trained detector: a third of the learning rate, so the mask branch
    # learns without knocking the trained parts far from where they were
    base_lr = preset.task_lr * (_FINETUNE_LR_FACTOR if "init" in config else 1.0)
    trainer = _TaskTraining(model, task, preset, base_lr, total, device)
    reporter = Reporter(total=total, desc=f"train {task} network ({preset.name})",
                        progress=progress, unit="step")
    val_ds = dataset_for(preset, "val", train=False)
    eval_every = preset.val_every if eval_every is None else eval_every
    trainer.begin(loader, val_ds, reporter)
    try:
        train_loop(trainer.step, RunState({"model": model, "opt": trainer.opt}), total,
                   [every(preset.log_every, trainer.log, last=total),
                    every(eval_every, trainer.validate), trainer.report])
    finally:
        reporter.close()
    reporter.summary("last validation")
    train_seconds = time.time() - trainer.t0 - trainer.eval_seconds
    # CPU seconds of this process (all threads): on a shared machine a fairer measure
    train_cpu_seconds = time.process_time() - trainer.c0 - trainer.eval_cpu_seconds
    metrics = _final_metrics(model, task, val_ds, preset, progress, total, train_seconds,
                             train_cpu_seconds)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"state_dict": state, "config": config, "metrics": metrics, "history": trainer.history}


def task_network(task: str, preset: Union[Preset, str, None] = None, *, force: bool = False,
                 steps: Optional[int] = None, progress: bool = True,
                 verbose: bool = True) -> nn.Module:
    """The task network for ``task`` on ``preset``, ready to be frozen: trained on the
    synthetic world (or loaded from the train-or-load cache), or -- on the gpu preset --
    torchvision's COCO-pretrained detector. Eval mode, ``requires_grad`` off, batch norms
    converted to ``FrozenBatchNorm2d``. ``model.task_info`` holds the validation metrics
    and the checkpoint path (``None`` for pretrained weights)."""
    task = _check_task(task)
    preset = get_preset(preset)
    if preset.task_pretrained and task != "semantic":
        model = build_task_network(task, preset)
        info = {"task": task, "checkpoint": None, "metrics": {}, "pretrained": True}
    else:
        config = task_config(task, preset, steps)
        ckpt = train_or_load(f"task-{task}", config,
                             lambda: train_task(task, preset, progress=progress, steps=steps),
                             force=force, verbose=verbose)
        model = build_task_network(task, preset, num_classes=config["num_classes"])
        model.load_state_dict(ckpt["state_dict"])
        info = {"task": task, "checkpoint": str(checkpoint_path(f"task-{task}", config)),
                "metrics": ckpt.get("metrics", {}), "history": ckpt.get("history", []),
                "pretrained": False}
    freeze_batchnorm(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.task_info = info
    return model
