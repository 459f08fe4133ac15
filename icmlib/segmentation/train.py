"""Training, evaluating and measuring segmentation networks; transfer learning; generative segmenters.

Everything the segmentation chapters run lives here, so each notebook cell is one call:

* data – :func:`segmentation_data` turns the preset's COCO-format dataset into tensors
  (images resized bilinearly, masks with nearest neighbour);
* training – :func:`train_segmenter`: cross-entropy, Dice or both; Adam or SGD; a cosine
  or step learning-rate schedule; gradient clipping; early stopping on validation mIoU;
  a tqdm progress bar. :func:`evaluate_segmenter` gives the metrics table row, with
  images per second and peak memory;
* cost – :func:`sliding_window_predict` against :meth:`PatchClassifier.dense`, and
  :func:`compare_inference_cost` / :func:`compare_resolution_cost` measuring time and
  peak memory;
* transfer learning – :func:`pretrain_backbone`, :func:`transfer_model` (four regimes),
  :func:`run_transfer_experiment`, and :func:`imagenet_backbone` for Colab;
* generative segmenters – :class:`AdversarialSegLoss` (pix2pix-style cGAN) and
  :func:`vae_loss`, trained by the same loop;
* train-or-load – :func:`segmenter_for` trains a named segmenter once per configuration
  and loads it afterwards, so notebooks rerun in seconds.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.cache import train_or_load
from icmlib.presets import Preset, get_preset
from icmlib.segmentation.layers import (FCN, JointAugment, PatchClassifier, PatchDiscriminator, TorchvisionUNet,
                           UNet, VAESegmenter, dice_loss, resize_pair, segmentation_metrics)

SEG_VERSION = "1"          # bump when training code changes results (invalidates caches)

Tensors = Tuple[torch.Tensor, torch.Tensor]


class SegmentationError(ValueError):
    """A user error in the segmentation helpers (bad option, wrong shapes...)."""


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

def dataset_to_tensors(dataset, size: int, max_images: Optional[int] = None) -> Tensors:
    """Stack ``(image, target)`` items into (images [N,3,S,S] in [0,1], masks Int64 [N,S,S]).

    Every image is resized to ``size`` x ``size`` (bilinear) and its ``target["semantic"]``
    mask with nearest neighbour, so images of any size (real COCO) batch together.
    """
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if n == 0:
        raise SegmentationError("the dataset is empty")
    images, masks = [], []
    for i in range(n):
        image, target = dataset[i]
        if "semantic" not in target:
            raise SegmentationError("dataset targets need a 'semantic' mask (Int64 [H, W]); "
                                    "use icmlib.data.CocoDataset")
        image, mask = resize_pair(image, target["semantic"].long(), size)
        images.append(image)
        masks.append(mask)
    return torch.stack(images), torch.stack(masks)


@functools.lru_cache(maxsize=8)
def _cached_data(preset: Preset, split: str) -> Tuple[Tensors, int]:
    from icmlib.data import dataset_for

    ds = dataset_for(preset, split, train=False)
    limit = preset.train_images if split == "train" else preset.seg_eval_images
    data = dataset_to_tensors(ds, preset.seg_image_size, limit)
    return data, int(getattr(ds, "num_classes"))


def segmentation_data(preset: Union[Preset, str, None] = None, split: str = "train") -> Tensors:
    """The preset's images and semantic masks as tensors (loaded once per process).

    ``train`` gives up to ``preset.train_images`` images, ``val`` up to
    ``preset.seg_eval_images``, all at ``preset.seg_image_size``.
    """
    images, masks = _cached_data(get_preset(preset), split)[0]
    return images.clone(), masks.clone()


def segmentation_num_classes(preset: Union[Preset, str, None] = None) -> int:
    """Number of classes (background included) of the preset's dataset."""
    return _cached_data(get_preset(preset), "val")[1]


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
    from icmlib.data import world as data

    return {"dataset": preset.dataset, "world_version": data.WORLD_VERSION,
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

    Returns ``{"history": [...], "val": metrics of the restored model, "best_step",
    "stopped_early", "steps_run", "train_seconds", "trainable_params"}``.
    """
    images, masks = train_data
    if images.dim() != 4 or masks.dim() != 3 or len(images) != len(masks):
        raise SegmentationError(f"train_data must be (images [N,3,H,W], masks [N,H,W]); got "
                                f"{tuple(images.shape)} and {tuple(masks.shape)}")
    if steps < 1:
        raise SegmentationError(f"steps must be >= 1, got {steps}")
    loss_fn = segmentation_loss(loss) if isinstance(loss, str) else loss
    num_classes = num_classes or getattr(model, "num_classes", None) or int(masks.max()) + 1
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SegmentationError("the model has no trainable parameters (everything is frozen)")
    opt = _make_optimizer(params, optimizer, lr, weight_decay)
    sched = _make_schedule(opt, schedule, steps)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    history: List[dict] = []
    best = {"miou": -1.0, "step": 0, "state": None}
    bad_evals, stopped_early, step = 0, False, 0

    def validate(step: int) -> Optional[dict]:
        nonlocal bad_evals
        if val_data is None:
            return None
        pred = predict(model, val_data[0], batch_size)
        m = segmentation_metrics(pred, val_data[1], num_classes)
        if m["miou"] > best["miou"]:
            best.update(miou=m["miou"], step=step, state=copy.deepcopy(model.state_dict()))
            bad_evals = 0
        else:
            bad_evals += 1
        return m

    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=desc, leave=False)
    t0 = time.perf_counter()
    _train_mode(model)
    for step in range(1, steps + 1):
        idx = torch.randint(len(images), (min(batch_size, len(images)),), generator=gen)
        x, y = images[idx], masks[idx]
        if augment is not None:
            pairs = [augment(xi, yi, gen) for xi, yi in zip(x, y)]
            x = torch.stack([p[0] for p in pairs])
            y = torch.stack([p[1] for p in pairs])
        x, y = x.to(device), y.to(device)
        value, logs = loss_fn(model, x, y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        lr_used = opt.param_groups[0]["lr"]
        grad_norm = None
        if clip_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(params, clip_norm).item()
        opt.step()
        sched.step()
        record = {"step": step, "loss": value.item(), "lr": lr_used, **logs}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        if step % val_every == 0 or step == steps:
            m = validate(step)
            _train_mode(model)
            if m is not None:
                record.update({f"val_{k}": v for k, v in m.items()})
        history.append(record)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value.item():.3f}",
                            **({"val_miou": f"{record['val_miou']:.3f}"} if "val_miou" in record else {}))
        if patience is not None and val_data is not None and bad_evals >= patience:
            stopped_early = True
            break
    seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    result = {"history": history, "best_step": best["step"] if best["state"] is not None else step,
              "stopped_early": stopped_early, "steps_run": step, "train_seconds": seconds,
              "trainable_params": sum(p.numel() for p in params)}
    if val_data is not None:
        result["val"] = segmentation_metrics(predict(model, val_data[0], batch_size),
                                             val_data[1], num_classes)
    return result


# ---------------------------------------------------------------------------------------
# Measuring time and memory
# ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _native_stderr_silenced():
    """Send the C++ side's stderr (file descriptor 2) to /dev/null for a moment.

    ``torch.profiler`` logs start/stop lines and a harmless "no GPU" message from its
    native code; in a notebook they would show up as alarming stderr output.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):      # no real fd 2 (unusual hosts)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_mb(fn: Callable[[], object], device: Union[str, torch.device] = "cpu") -> Tuple[float, object]:
    """(peak memory in MiB allocated while ``fn()`` runs, its return value).

    On CUDA: ``torch.cuda.max_memory_allocated``. On the CPU: ``torch.profiler`` with
    ``profile_memory=True`` records every allocation and free of PyTorch's CPU allocator;
    replaying them in time order gives the peak of live tensor memory above what was
    allocated before ``fn`` started (weights and inputs excluded).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20, out
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            out = fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2 ** 20, out


def activation_memory_mb(model: nn.Module, x: torch.Tensor) -> float:
    """Sum of the sizes of every layer's output for input ``x`` (counted, not measured).

    This is what training must keep for the backward pass (roughly: each layer's
    output is the next one's saved input), so it is the number that explodes when every
    layer works at full resolution.
    """
    total = 0

    def hook(_m, _inp, out):
        nonlocal total
        if torch.is_tensor(out):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if len(list(m.children())) == 0]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(x)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    return total / 2 ** 20


def _timed(fn: Callable[[], object], repeats: int = 1, warmup: bool = True) -> Tuple[float, object]:
    if warmup:
        fn()                            # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    out = None
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - t0) / repeats, out


@torch.no_grad()
def sliding_window_predict(model: PatchClassifier, images: torch.Tensor,
                           windows_per_batch: int = 1024) -> torch.Tensor:
    """Segment by classifying one window per pixel: the naive way, window by window.

    Every pixel gets the prediction for the ``patch_size`` x ``patch_size`` window centred
    on it (the image is zero-padded at the borders). Neighbouring windows overlap in all
    but one row or column, so almost every convolution is computed again and again –
    exactly the work :meth:`PatchClassifier.dense` shares. Returns logits [B, C, H, W].
    """
    if not isinstance(model, PatchClassifier):
        raise SegmentationError("sliding_window_predict needs a PatchClassifier "
                                "(a network that labels the centre of a fixed-size window)")
    b, c, h, w = images.shape
    p, r = model.patch_size, model.patch_size // 2
    padded = F.pad(images, (r, r, r, r))
    rows_per_chunk = max(1, windows_per_batch // w)
    out = images.new_empty(b, model.num_classes, h, w)
    for i in range(b):
        for top in range(0, h, rows_per_chunk):
            rows = min(rows_per_chunk, h - top)
            strip = padded[i:i + 1, :, top:top + rows + 2 * r]                 # [1,C,rows+2r,W+2r]
            patches = F.unfold(strip, p)                                      # [1,C*p*p,rows*W]
            patches = patches[0].T.reshape(-1, c, p, p)                        # one window each
            logits = model(patches)[:, :, 0, 0]                               # [rows*W, K]
            out[i, :, top:top + rows] = logits.T.reshape(-1, rows, w)
    return out


def compare_inference_cost(model: PatchClassifier, images: torch.Tensor, repeats: int = 1):
    """Sliding window vs fully convolutional inference of the same PatchClassifier.

    Returns a DataFrame (method, seconds per image, peak memory MiB, convolutions
    evaluated) and the largest difference between the two outputs (should be ~1e-6).
    """
    import pandas as pd

    model = model.eval()
    n = len(images)
    t_slide, slide = _timed(lambda: sliding_window_predict(model, images), repeats, warmup=False)
    with torch.no_grad():
        t_dense, dense = _timed(lambda: model.dense(images), repeats)
    # the sliding window's peak is reached within one batch of windows: profile one row
    # of windows of the first image only (profiling all of them would take minutes)
    mem_slide, _ = peak_memory_mb(lambda: sliding_window_predict(model, images[:1, :, :1 + 1024 // images.shape[-1]]))
    with torch.no_grad():
        mem_dense, _ = peak_memory_mb(lambda: model.dense(images))
    h, w = images.shape[-2:]
    layers = (model.patch_size - 1) // 2
    # conv output positions evaluated: sliding = every window computes its whole pyramid
    per_window = sum((model.patch_size - 2 * k) ** 2 for k in range(1, layers + 1))
    per_image_dense = sum((h + model.patch_size - 1 - 2 * k) * (w + model.patch_size - 1 - 2 * k)
                          for k in range(1, layers + 1))
    table = pd.DataFrame([
        {"method": "sliding window", "seconds/image": t_slide / n, "peak memory (MiB)": mem_slide,
         "conv positions/image": h * w * per_window},
        {"method": "fully convolutional", "seconds/image": t_dense / n, "peak memory (MiB)": mem_dense,
         "conv positions/image": per_image_dense},
    ]).set_index("method")
    return table, (slide - dense).abs().max().item()


class FullResolutionCNN(nn.Module):
    """``num_layers`` 3x3 conv blocks that all work at full resolution (no downsampling).

    Its receptive field grows by only 2 pixels per layer, so seeing a whole object takes
    many layers – each storing a full-resolution, ``width``-channel activation.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16,
                 num_layers: int = 8):
        super().__init__()
        layers: List[nn.Module] = []
        c = in_channels
        for _ in range(num_layers):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x):
        return self.head(self.body(x))


def receptive_field(model: nn.Module, size: int = 129, in_channels: int = 3) -> int:
    """Receptive field (pixels, along one axis) of the centre output, measured by backprop.

    The gradient of the centre pixel's logits with respect to the input is non-zero
    exactly on the pixels that can influence it; the width of that region is returned.
    """
    was = model.training
    model.eval()
    x = torch.rand(1, in_channels, size, size, requires_grad=True)
    out = model(x)
    c = size // 2
    out[0, :, c, c].sum().backward()
    model.train(was)
    cols = (x.grad.abs().sum(dim=(0, 1, 2)) > 0).nonzero()
    return int(cols.max() - cols.min() + 1) if len(cols) else 0


def compare_resolution_cost(num_classes: int, image_size: int = 128, batch_size: int = 4,
                            width: int = 16, depth: int = 3, full_res_layers: Sequence[int] = (8, 16)):
    """Full-resolution conv stacks vs a downsample-upsample U-Net: one training step each.

    Measures receptive field, parameters, activation memory (counted: the sum of every
    layer's output), peak memory of a forward+backward pass (measured) and its time.
    """
    import pandas as pd

    x = torch.rand(batch_size, 3, image_size, image_size)
    y = torch.randint(num_classes, (batch_size, image_size, image_size))
    models = {f"full resolution, {n} conv layers": FullResolutionCNN(3, num_classes, width, n)
              for n in full_res_layers}
    models[f"U-Net, depth {depth} ({4 * depth + 2} conv layers)"] = UNet(3, num_classes, width, depth)
    rows = []
    for name, model in models.items():
        def step():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        seconds, _ = _timed(step)
        mem, _ = peak_memory_mb(step)
        rows.append({"model": name, "receptive field (px)": receptive_field(model),
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "activations (MiB, counted)": activation_memory_mb(model, x),
                     "peak memory fwd+bwd (MiB, measured)": mem,
                     "seconds per step": seconds})
    return pd.DataFrame(rows).set_index("model")


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, data: Tensors, num_classes: Optional[int] = None,
                       batch_size: int = 8, tolerance: int = 2) -> dict:
    """Pixel acc., mean pixel acc., mIoU, boundary F1, Dice, images/s, peak memory (MiB)."""
    images, masks = data
    num_classes = num_classes or getattr(model, "num_classes")
    model.eval()
    device = next(model.parameters()).device
    probe = images[:batch_size].to(device)
    mem, _ = peak_memory_mb(lambda: model(probe), device)
    t0 = time.perf_counter()
    pred = predict(model, images, batch_size)
    seconds = time.perf_counter() - t0
    metrics = segmentation_metrics(pred, masks, num_classes, tolerance)
    metrics["images/s"] = len(images) / seconds
    metrics["peak memory (MiB)"] = mem
    return metrics


def results_table(results: Dict[str, dict], columns: Optional[Sequence[str]] = None):
    """A pandas DataFrame with one row per model (``results`` maps name -> metrics dict)."""
    import pandas as pd

    df = pd.DataFrame.from_dict(results, orient="index")
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df


# ---------------------------------------------------------------------------------------
# Conditional generative segmenters
# ---------------------------------------------------------------------------------------

class AdversarialSegLoss:
    """pix2pix-style conditional GAN loss for a segmenter, usable as ``train_segmenter``'s loss.

    The generator is the segmenter (mask logits from an image); a
    :class:`PatchDiscriminator` judges (image, mask) pairs: real pairs carry one-hot
    ground-truth masks, fake ones the generator's softmax. Every call

    1. takes one discriminator step (its own Adam optimizer) on real vs. fake pairs, and
    2. returns the generator's loss ``CE + adv_weight * BCE(D(image, softmax), real)``.

    The cross-entropy keeps the generator on the right labels; the adversarial term
    pushes its masks to *look* like real masks (sharp, plausible shapes), which is what
    per-pixel losses cannot express. Spectral normalisation in the discriminator keeps
    the game stable.
    """

    def __init__(self, discriminator: PatchDiscriminator, adv_weight: float = 0.05,
                 lr: float = 2e-4):
        self.discriminator = discriminator
        self.adv_weight = adv_weight
        self.opt = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))

    def __call__(self, model, images, masks):
        d = self.discriminator
        d.train()
        logits = model(images)
        probs = logits.softmax(dim=1)
        onehot = F.one_hot(masks, probs.shape[1]).permute(0, 3, 1, 2).float()
        real = d(images, onehot)
        fake = d(images, probs.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        self.opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt.step()
        for p in d.parameters():
            p.requires_grad_(False)
        fooled = d(images, probs)
        for p in d.parameters():
            p.requires_grad_(True)
        adv = F.binary_cross_entropy_with_logits(fooled, torch.ones_like(fooled))
        ce = F.cross_entropy(logits, masks)
        return ce + self.adv_weight * adv, {"ce": ce.item(), "adv": adv.item(), "d_loss": d_loss.item()}


def vae_loss(beta: float = 1.0) -> Callable:
    """Loss of a :class:`VAESegmenter`: cross-entropy with z from the posterior + beta * KL."""

    def loss_fn(model, images, masks):
        logits, kl = model.training_outputs(images, masks)
        ce = F.cross_entropy(logits, masks)
        kl = kl.mean()
        return ce + beta * kl, {"ce": ce.item(), "kl": kl.item()}

    return loss_fn


# ---------------------------------------------------------------------------------------
# Train-or-load of named segmenters
# ---------------------------------------------------------------------------------------

SEGMENTERS = ("patch", "fcn", "unet_noskip", "unet", "unet_dice", "cgan", "vae")


def build_segmenter(kind: str, preset: Union[Preset, str, None] = None,
                    num_classes: Optional[int] = None) -> nn.Module:
    """An untrained segmenter of ``kind`` sized by the preset."""
    preset = get_preset(preset)
    k = num_classes or segmentation_num_classes(preset)
    w, d = preset.seg_width, preset.seg_depth
    if kind == "patch":
        return PatchClassifier(3, k, w, preset.seg_patch_size)
    if kind == "fcn":
        return FCN(3, k, w, d)
    if kind in ("unet", "unet_dice", "cgan"):
        return UNet(3, k, w, d, skip=True)
    if kind == "unet_noskip":
        return UNet(3, k, w, d, skip=False)
    if kind == "vae":
        return VAESegmenter(3, k, w, d, preset.seg_latent_dim)
    raise SegmentationError(f"unknown segmenter {kind!r}; choose one of {SEGMENTERS}")


def segmenter_for(kind: str, preset: Union[Preset, str, None] = None, seed: int = 0,
                  progress: bool = True, force: bool = False,
                  steps: Optional[int] = None) -> Tuple[nn.Module, dict]:
    """Train (once per configuration) or load a segmenter; returns (model in eval mode, record).

    ``kind`` is one of :data:`SEGMENTERS`: ``patch`` (sliding-window classifier),
    ``fcn``, ``unet_noskip``, ``unet`` (cross-entropy), ``unet_dice`` (CE + Dice),
    ``cgan`` (U-Net generator + PatchGAN), ``vae`` (VAE segmenter). All see the same
    data, batch size and learning rate from the preset, and ``preset.seg_steps`` steps
    (``preset.seg_gan_steps`` for ``cgan`` / ``vae``) unless ``steps`` is given. The
    record holds the training history, validation metrics and training time.
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
    return model.eval(), record


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
    Cached with train-or-load. Returns ``{"loss, optimizer": record}``.
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


# ---------------------------------------------------------------------------------------
# Transfer learning
# ---------------------------------------------------------------------------------------

REGIMES = ("scratch", "frozen", "last", "all")
REGIME_NAMES = {"scratch": "from scratch", "frozen": "frozen backbone + new head",
                "last": "fine-tune last layers", "all": "fine-tune everything"}


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
    * ``last``: the encoder's first stages are frozen, its last stage, decoder and head train.
    """
    if regime not in REGIMES:
        raise SegmentationError(f"unknown regime {regime!r}; choose one of {REGIMES}")
    for p in model.parameters():
        p.requires_grad_(True)
    if regime == "frozen":
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


def run_transfer_experiment(preset: Union[Preset, str, None] = None, regimes: Sequence[str] = REGIMES,
                            seed: int = 0, progress: bool = True):
    """Pretrain on the source task, then train each regime on few target labels, same budget.

    Target: the real world (original colours, all classes) with only
    ``preset.seg_transfer_labels`` labelled training images, ``preset.seg_transfer_steps``
    steps each. Returns (DataFrame of validation metrics and training time, records).
    """
    import pandas as pd

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

        def train(regime=regime, config=config):
            model = transfer_model(regime, num_classes, preset, source["state_dict"], seed)
            model = model.to(training_device(preset))
            images, masks = segmentation_data(preset, "train")
            few = (images[:preset.seg_transfer_labels], masks[:preset.seg_transfer_labels])
            result = train_segmenter(model, few, segmentation_data(preset, "val"),
                                     steps=preset.seg_transfer_steps,
                                     batch_size=preset.seg_batch_size, lr=preset.seg_lr,
                                     val_every=preset.seg_val_every, num_classes=num_classes,
                                     seed=seed, progress=progress, desc=regime,
                                     augment=JointAugment(max_rotation=10, color_jitter=0.1,
                                                          blur_prob=0.2))
            return {**result, "state_dict": _cpu_state(model), "config": config}

        records[regime] = train_or_load("segmenter-transfer", config, train)
    rows = {REGIME_NAMES[r]: {"trainable params": rec["trainable_params"], **rec["val"],
                              "train seconds": rec["train_seconds"]}
            for r, rec in records.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    return table, {"source": source, **records}


class BackboneDownloadError(RuntimeError):
    """Pretrained weights are not cached locally and could not be downloaded."""


def imagenet_backbone(name: str = "resnet18", pretrained: bool = True) -> nn.Module:
    """A torchvision classification network with ImageNet weights (torchvision's weights API).

    ``name``: any torchvision classification model, e.g. ``resnet18``, ``resnet50``,
    ``mobilenet_v3_large``. Weights are cached under ``torch.hub.get_dir()``; offline and
    not cached, a :class:`BackboneDownloadError` names the URL it would download. Wrap it
    with :func:`imagenet_segmenter` (or :class:`TorchvisionUNet`) to segment, and
    normalise images with :func:`icmlib.segmentation.layers.normalize`.
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
            f"(icmlib.segmentation.train.pretrain_backbone).\n(cause: {err})") from err


def imagenet_segmenter(name: str, num_classes: int, pretrained: bool = True,
                       width: int = 32) -> TorchvisionUNet:
    """A :class:`TorchvisionUNet` on ``imagenet_backbone(name)``; use it in the transfer regimes."""
    return TorchvisionUNet(imagenet_backbone(name, pretrained), name, num_classes, width)
