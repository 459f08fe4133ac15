"""What a segmenter costs: time and memory, measured; the sliding window against one dense pass.

* :func:`peak_memory_mb` (CUDA's counters, or the CPU allocator's events replayed) and
  :func:`activation_memory_mb` (counted: the outputs a backward pass keeps);
* :func:`sliding_window_predict` against :meth:`PatchClassifier.dense`, compared by
  :func:`compare_inference_cost`;
* full-resolution conv stacks against a U-Net (:func:`compare_resolution_cost`,
  :func:`receptive_field`);
* :func:`evaluate_segmenter`: the metrics table row, with images per second and peak memory.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from icmlib.segmentation.data import SegmentationError, Tensors
from icmlib.segmentation.metrics import segmentation_metrics
from icmlib.segmentation.models import PatchClassifier, UNet
from icmlib.segmentation.train import predict

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

