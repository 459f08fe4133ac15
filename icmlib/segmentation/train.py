"""Training segmenters: the loop, and train-or-load of the book's named segmenters.

* :func:`train_segmenter`: cross-entropy, Dice or both (or any callable loss: the
  generative segmenters'); Adam or SGD; a cosine or step learning-rate schedule; gradient
  clipping; early stopping on validation mIoU; a tqdm progress bar;
* :func:`predict`: labels batch by batch, in eval mode;
* train-or-load: :func:`segmenter_for` trains a named segmenter (:data:`SEGMENTERS`) once
  per configuration and loads it afterwards, so notebooks rerun in seconds;
  :func:`compare_recipes` does the same for a few (loss, optimizer) recipes;
* reporting: validation chooses (early stopping), the test split reports:
  :func:`test_metrics` scores a model on it, :func:`segmenter_from_record` rebuilds the
  network a train-or-load record holds, :func:`test_results` does both for many records.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.cache import train_or_load
from icmlib.engine import Reporter, RunState, every, train_loop
from icmlib.presets import Preset, get_preset
from icmlib.segmentation.attention import segformer_for_width
from icmlib.segmentation.data import (JointAugment, SegmentationError, Tensors, segmentation_data,
                                      segmentation_num_classes)
from icmlib.segmentation.dilated import DeepLab
from icmlib.segmentation.generative import AdversarialSegLoss, vae_loss
from icmlib.segmentation.metrics import dice_loss, segmentation_metrics
from icmlib.segmentation.models import FCN, PatchClassifier, PatchDiscriminator, UNet, VAESegmenter

SEG_VERSION = "1"          # bump when training code changes results (invalidates caches)


def training_device(preset: Preset) -> torch.device:
    """``preset.device`` when it is available, else the CPU (with the gpu preset on a laptop)."""
    if preset.device.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(preset.device)


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _world_config(preset: Preset) -> dict:
    """The data a segmenter learns from, for its cache key (with the world generator's
    version: a changed generator makes other images, so cached segmenters must retrain)."""
    import icmlib.data

    return {"dataset": preset.dataset, "world_version": icmlib.data.WORLD_VERSION,
            "image_size": preset.image_size,
            "train_images": preset.train_images, "val_images": preset.val_images,
            "max_objects": preset.max_objects, "world_seed": preset.world_seed,
            "seg_image_size": preset.seg_image_size, "seg_eval_images": preset.seg_eval_images}


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

LOSSES = ("ce", "dice", "ce+dice")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


def segmentation_loss(kind: str) -> Callable:
    """``loss(model, images, masks) -> (loss, logs)`` for ``"ce"``, ``"dice"`` or ``"ce+dice"``."""
    if kind not in LOSSES:
        raise SegmentationError(f"unknown loss {kind!r}; choose one of {LOSSES} or pass a callable")

    def loss_fn(model, images, masks):
        logits = model(images)
        logs, total = {}, 0.0
        if "ce" in kind.split("+"):
            ce = F.cross_entropy(logits, masks)
            logs["ce"] = ce.item()
            total = total + ce
        if "dice" in kind.split("+"):
            d = dice_loss(logits, masks, logits.shape[1])
            logs["dice"] = d.item()
            total = total + d
        return total, logs

    loss_fn.__name__ = kind
    return loss_fn


def _train_mode(model: nn.Module) -> None:
    """``model.train()``, except batch norms whose parameters are frozen keep their statistics.

    A frozen backbone must behave exactly as it did when it was trained; letting its batch
    norms update their running means on the new data would change it behind our back.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Predicted labels [N, H, W] (argmax of the logits), batch by batch, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(images[i:i + batch_size].to(device)).argmax(1).cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out)


def _make_optimizer(params, optimizer: str, lr: float, weight_decay: float):
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise SegmentationError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")


def _make_schedule(opt, schedule: str, steps: int):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, (2 * steps) // 3), gamma=0.1)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    raise SegmentationError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def _check_train_data(images: torch.Tensor, masks: torch.Tensor, steps: int) -> None:
    if images.dim() != 4 or masks.dim() != 3 or len(images) != len(masks):
        raise SegmentationError(f"train_data must be (images [N,3,H,W], masks [N,H,W]); got "
                                f"{tuple(images.shape)} and {tuple(masks.shape)}")
    if steps < 1:
        raise SegmentationError(f"steps must be >= 1, got {steps}")


def _draw_batch(images: torch.Tensor, masks: torch.Tensor, batch_size: int,
                augment: Optional[JointAugment], gen: torch.Generator) -> Tensors:
    """A random batch (drawn with replacement), each pair augmented when ``augment`` is given."""
    idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
    x, y = images[idx], masks[idx]
    if augment is not None:
        pairs = [augment(xi, yi, gen) for xi, yi in zip(x, y)]
        x = torch.stack([p[0] for p in pairs])
        y = torch.stack([p[1] for p in pairs])
    return x, y


class _SegmenterTraining:
    """A segmenter's train step, and the callbacks around it: validation that keeps the
    best weights (early stopping), the history, the bar."""

    def __init__(self, model: nn.Module, train_data: Tensors, val_data: Optional[Tensors],
                 loss_fn: Callable, opt, sched, params, *, batch_size: int, clip_norm,
                 augment: Optional[JointAugment], gen: torch.Generator, num_classes: int,
                 patience: Optional[int], reporter: Reporter):
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.loss_fn, self.opt, self.sched, self.params = loss_fn, opt, sched, params
        self.batch_size, self.clip_norm, self.augment, self.gen = batch_size, clip_norm, augment, gen
        self.num_classes, self.patience, self.reporter = num_classes, patience, reporter
        self.device = next(model.parameters()).device
        self.history: List[dict] = []
        self.best = {"miou": -1.0, "step": 0, "state": None}
        self.bad_evals = 0

    def step(self, step: int) -> dict:
        x, y = _draw_batch(*self.train_data, self.batch_size, self.augment, self.gen)
        x, y = x.to(self.device), y.to(self.device)
        value, logs = self.loss_fn(self.model, x, y)
        self.opt.zero_grad(set_to_none=True)
        value.backward()
        lr_used = self.opt.param_groups[0]["lr"]
        grad_norm = None
        if self.clip_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.params, self.clip_norm).item()
        self.opt.step()
        self.sched.step()
        record = {"step": step + 1, "loss": value.item(), "lr": lr_used, **logs}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    def validate(self, step: int, record: dict) -> None:
        """Validation mIoU into the step's record; the best weights so far are kept."""
        if self.val_data is not None:
            pred = predict(self.model, self.val_data[0], self.batch_size)
            m = segmentation_metrics(pred, self.val_data[1], self.num_classes)
            if m["miou"] > self.best["miou"]:
                self.best.update(miou=m["miou"], step=step,
                                 state=copy.deepcopy(self.model.state_dict()))
                self.bad_evals = 0
            else:
                self.bad_evals += 1
            record.update({f"val_{k}": v for k, v in m.items()})
        _train_mode(self.model)

    def report(self, step: int, record: dict) -> None:
        self.history.append(record)
        post = {"loss": f"{record['loss']:.3f}"}
        if "val_miou" in record:
            post["val_miou"] = f"{record['val_miou']:.3f}"
        self.reporter.advance(post)

    def out_of_patience(self) -> bool:
        return (self.patience is not None and self.val_data is not None
                and self.bad_evals >= self.patience)


def train_segmenter(model: nn.Module, train_data: Tensors, val_data: Optional[Tensors] = None, *,
                    steps: int, batch_size: int = 8, loss: Union[str, Callable] = "ce",
                    optimizer: str = "adam", lr: float = 2e-3, weight_decay: float = 0.0,
                    schedule: str = "cosine", clip_norm: Optional[float] = 1.0,
                    val_every: int = 50, patience: Optional[int] = None,
                    augment: Optional[JointAugment] = None, num_classes: Optional[int] = None,
                    seed: int = 0, progress: bool = True, desc: str = "train") -> dict:
    """Train ``model`` in place on (images, masks) tensors; returns history and metrics.

    * ``loss``: ``"ce"`` (cross-entropy), ``"dice"`` (soft Dice), ``"ce+dice"``, or a callable
      ``loss(model, images, masks) -> (loss, logs)`` (used by the cGAN and VAE segmenters).
    * ``optimizer``: ``"adam"`` or ``"sgd"`` (momentum 0.9); only parameters with
      ``requires_grad`` are optimised, so freezing a backbone is just switching it off.
    * ``schedule``: ``"cosine"`` decay to 0 over ``steps``, ``"step"`` (x0.1 after 2/3), or
      ``"constant"``.
    * ``clip_norm``: gradient clipping of the global norm (``None``: off).
    * early stopping: every ``val_every`` steps the validation mIoU is measured; the best
      weights are kept and restored at the end, and with ``patience`` the run stops after
      that many validations without improvement.
    * ``augment``: a :class:`JointAugment` applied to every training pair.

    The steps run on the one training loop of :mod:`icmlib.engine`. Returns ``{"history":
    [...], "val": metrics of the restored model, "best_step", "stopped_early",
    "steps_run", "train_seconds", "trainable_params"}``.
    """
    images, masks = train_data
    _check_train_data(images, masks, steps)
    loss_fn = segmentation_loss(loss) if isinstance(loss, str) else loss
    num_classes = num_classes or getattr(model, "num_classes", None) or int(masks.max()) + 1
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SegmentationError("the model has no trainable parameters (everything is frozen)")
    opt = _make_optimizer(params, optimizer, lr, weight_decay)
    sched = _make_schedule(opt, schedule, steps)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reporter = Reporter(total=steps, desc=desc, progress=progress, leave=False)
    trainer = _SegmenterTraining(model, train_data, val_data, loss_fn, opt, sched, params,
                                 batch_size=batch_size, clip_norm=clip_norm, augment=augment,
                                 gen=gen, num_classes=num_classes, patience=patience,
                                 reporter=reporter)
    run = RunState({"model": model, "opt": opt, "sched": sched})

    def stop_early(step: int, record: dict) -> None:
        run.stopped = trainer.out_of_patience()

    t0 = time.perf_counter()
    _train_mode(model)
    try:
        train_loop(trainer.step, run, steps,
                   [every(val_every, trainer.validate, last=steps), trainer.report, stop_early])
    finally:
        reporter.close()
    seconds = time.perf_counter() - t0
    return _segmenter_result(model, trainer, run, seconds, val_data, batch_size, num_classes)


def _segmenter_result(model, trainer: _SegmenterTraining, run: RunState, seconds: float,
                      val_data, batch_size: int, num_classes: int) -> dict:
    """The best weights put back (when validated), and what the run returns."""
    best = trainer.best
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    result = {"history": trainer.history,
              "best_step": best["step"] if best["state"] is not None else run.step,
              "stopped_early": run.stopped, "steps_run": run.step, "train_seconds": seconds,
              "trainable_params": sum(p.numel() for p in trainer.params)}
    if val_data is not None:
        result["val"] = segmentation_metrics(predict(model, val_data[0], batch_size),
                                             val_data[1], num_classes)
    return result


# ---------------------------------------------------------------------------------------
# Train-or-load of named segmenters
# ---------------------------------------------------------------------------------------

SEGMENTERS = ("patch", "fcn", "unet_noskip", "unet", "unet_dice", "cgan", "vae", "deeplab",
              "attention")


def build_segmenter(kind: str, preset: Union[Preset, str, None] = None,
                    num_classes: Optional[int] = None) -> nn.Module:
    """An untrained segmenter of ``kind`` sized by the preset."""
    preset = get_preset(preset)
    k = num_classes or segmentation_num_classes(preset)
    return _build(kind, k, preset.seg_width, preset.seg_depth, preset.seg_patch_size,
                  preset.seg_latent_dim)


def _build(kind: str, k: int, w: int, d: int, patch_size: int, latent_dim: int) -> nn.Module:
    if kind == "patch":
        return PatchClassifier(3, k, w, patch_size)
    if kind == "fcn":
        return FCN(3, k, w, d)
    if kind in ("unet", "unet_dice", "cgan"):
        return UNet(3, k, w, d, skip=True)
    if kind == "unet_noskip":
        return UNet(3, k, w, d, skip=False)
    if kind == "vae":
        return VAESegmenter(3, k, w, d, latent_dim)
    if kind == "deeplab":
        return DeepLab(3, k, w, d)
    if kind == "attention":
        return segformer_for_width(3, k, w)
    raise SegmentationError(f"unknown segmenter {kind!r}; choose one of {SEGMENTERS}")


def segmenter_for(kind: str, preset: Union[Preset, str, None] = None, seed: int = 0,
                  progress: bool = True, force: bool = False,
                  steps: Optional[int] = None) -> Tuple[nn.Module, dict]:
    """Train (once per configuration) or load a segmenter; returns (model in eval mode, record).

    ``kind`` is one of :data:`SEGMENTERS`: ``patch`` (sliding-window classifier),
    ``fcn``, ``unet_noskip``, ``unet`` (cross-entropy), ``unet_dice`` (CE + Dice),
    ``cgan`` (U-Net generator + PatchGAN), ``vae`` (VAE segmenter), ``deeplab``
    (dilated encoder + ASPP, :class:`~icmlib.segmentation.dilated.DeepLab`). All see the
    same data, batch size and learning rate from the preset, and ``preset.seg_steps`` steps
    (``preset.seg_gan_steps`` for ``cgan`` / ``vae``) unless ``steps`` is given. The
    record holds the training history, validation metrics (``val``: what early stopping
    chose on), training time, and ``test``: the metrics on the test split, computed when
    the model is loaded (they are not part of the cached checkpoint, nor of its key).
    """
    preset = get_preset(preset)
    if kind not in SEGMENTERS:
        raise SegmentationError(f"unknown segmenter {kind!r}; choose one of {SEGMENTERS}")
    num_classes = segmentation_num_classes(preset)
    generative = kind in ("cgan", "vae")
    if steps is None:
        steps = preset.seg_gan_steps if generative else preset.seg_steps
    config = {"kind": kind, "seed": seed, "version": SEG_VERSION, "num_classes": num_classes,
              "steps": steps, "batch_size": preset.seg_batch_size, "lr": preset.seg_lr,
              "width": preset.seg_width, "depth": preset.seg_depth,
              "patch_size": preset.seg_patch_size, "latent_dim": preset.seg_latent_dim,
              "val_every": preset.seg_val_every, **_world_config(preset)}

    def train():
        torch.manual_seed(seed)
        device = training_device(preset)
        model = build_segmenter(kind, preset, num_classes).to(device)
        loss: Union[str, Callable] = "ce"
        extra = {}
        if kind == "unet_dice":
            loss = "ce+dice"
        elif kind == "vae":
            loss = vae_loss(beta=1.0)
        elif kind == "cgan":
            disc = PatchDiscriminator(3, num_classes, preset.seg_width).to(device)
            loss = AdversarialSegLoss(disc)
            extra["discriminator"] = disc
        result = train_segmenter(
            _DenseWrapper(model) if kind == "patch" else model,
            segmentation_data(preset, "train"), segmentation_data(preset, "val"),
            steps=steps, batch_size=preset.seg_batch_size, loss=loss, lr=preset.seg_lr,
            val_every=preset.seg_val_every, num_classes=num_classes, seed=seed,
            progress=progress, desc=kind)
        record = {k: v for k, v in result.items()}
        record["state_dict"] = _cpu_state(model)
        if "discriminator" in extra:
            record["discriminator_state_dict"] = _cpu_state(extra["discriminator"])
        record["config"] = config
        return record

    record = train_or_load("segmenter", config, train, force=force)
    model = build_segmenter(kind, preset, num_classes)
    model.load_state_dict(record["state_dict"])
    model.eval()
    return model, {**record, "test": test_metrics(model, preset)}


def test_metrics(model: nn.Module, preset: Union[Preset, str, None] = None,
                 data: Optional[Tensors] = None) -> dict:
    """``model``'s metrics on the preset's test split (or on ``data``): what a chapter reports.

    Validation chose the model (early stopping keeps the best validation checkpoint), so
    validation scores are a little optimistic; the test images were used for nothing.
    """
    preset = get_preset(preset)
    images, masks = segmentation_data(preset, "test") if data is None else data
    k = getattr(model, "num_classes", None) or segmentation_num_classes(preset)
    pred = predict(dense_segmenter(model), images, preset.seg_batch_size)
    return segmentation_metrics(pred, masks, k)


def segmenter_from_record(record: dict) -> nn.Module:
    """The trained network a train-or-load record holds, rebuilt from its ``config``, in eval mode.

    Works for the records of :func:`segmenter_for`, :func:`compare_recipes` and the
    transfer experiment (:func:`icmlib.segmentation.transfer.run_transfer_experiment`):
    their U-Nets are sized by the config's ``width`` and ``depth``.
    """
    config = record["config"]
    kind, k, w, d = config["kind"], config.get("num_classes", 2), config["width"], config["depth"]
    if kind in SEGMENTERS:
        model = _build(kind, k, w, d, config["patch_size"], config["latent_dim"])
    elif kind in ("recipe", "transfer", "source"):
        model = UNet(3, k, w, d)
    else:
        raise SegmentationError(f"don't know how to rebuild a {kind!r} record")
    model.load_state_dict(record["state_dict"])
    return model.eval()


def test_results(records: dict, preset: Union[Preset, str, None] = None) -> dict:
    """``{name: test metrics + trainable params, steps run, train seconds}`` for named records,
    ready for :func:`icmlib.segmentation.viz.results_table`."""
    return {name: {**test_metrics(segmenter_from_record(r), preset),
                   "trainable params": r["trainable_params"], "steps run": r["steps_run"],
                   "train seconds": r["train_seconds"]}
            for name, r in records.items()}


class _DenseWrapper(nn.Module):
    """Makes a PatchClassifier's ``forward`` its dense (per-pixel) prediction, for training/eval."""

    def __init__(self, patch_model: PatchClassifier):
        super().__init__()
        self.model = patch_model
        self.num_classes = patch_model.num_classes

    def forward(self, x):
        return self.model.dense(x)

    def dense(self, x):
        return self.model.dense(x)

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state, *args, **kwargs):
        return self.model.load_state_dict(state, *args, **kwargs)


def dense_segmenter(model: nn.Module) -> nn.Module:
    """A module whose ``forward`` gives per-pixel logits [B, C, H, W] (wraps a PatchClassifier)."""
    return _DenseWrapper(model) if isinstance(model, PatchClassifier) else model


DEFAULT_RECIPES = (("ce", "adam", 1.0), ("ce+dice", "adam", 1.0), ("ce", "sgd", 10.0))


def compare_recipes(preset: Union[Preset, str, None] = None,
                    recipes: Sequence[Tuple[str, str, float]] = DEFAULT_RECIPES,
                    steps: Optional[int] = None, seed: int = 0, progress: bool = True) -> dict:
    """Train one U-Net per (loss, optimizer, lr multiplier) recipe, same data/steps/seed.

    The learning rate is ``preset.seg_lr`` times the multiplier (SGD needs a larger one
    than Adam). Cosine schedule, clipping at norm 1, early stopping with
    ``preset.seg_patience``.
    Cached with train-or-load. Returns ``{"loss, optimizer": record}``; their
    ``val`` metrics chose each run's best step: report :func:`test_results` instead.
    """
    preset = get_preset(preset)
    num_classes = segmentation_num_classes(preset)
    steps = steps or max(10, preset.seg_steps // 3)
    records = {}
    for loss, optimizer, lr_mult in recipes:
        config = {"kind": "recipe", "loss": loss, "optimizer": optimizer, "lr": preset.seg_lr * lr_mult,
                  "steps": steps, "seed": seed, "version": SEG_VERSION, "width": preset.seg_width,
                  "patience": preset.seg_patience,
                  "depth": preset.seg_depth, "batch_size": preset.seg_batch_size,
                  "num_classes": num_classes, **_world_config(preset)}

        def train(loss=loss, optimizer=optimizer, config=config):
            torch.manual_seed(seed)
            model = UNet(3, num_classes, preset.seg_width, preset.seg_depth).to(training_device(preset))
            result = train_segmenter(
                model, segmentation_data(preset, "train"), segmentation_data(preset, "val"),
                steps=steps, batch_size=preset.seg_batch_size, loss=loss, optimizer=optimizer,
                lr=config["lr"], schedule="cosine", clip_norm=1.0, val_every=max(5, steps // 4),
                patience=preset.seg_patience, num_classes=num_classes, seed=seed, progress=progress,
                desc=f"{loss}/{optimizer}")
            return {**result, "state_dict": _cpu_state(model), "config": config}

        records[f"{loss}, {optimizer}"] = train_or_load("segmenter-recipe", config, train)
    return records
