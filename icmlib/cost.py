"""What a training step costs, counted rather than guessed: parameters, FLOPs, activations.

Used by the "Running at paper scale" chapter to say what the ``gpu`` preset needs before
a reader spends Colab time on it. FLOPs come from ``torch.utils.flop_counter`` on one real
forward + backward pass; activation memory is the total size of every module output kept
for the backward pass (an upper-bound style estimate: it ignores buffer reuse and counts
in-place outputs once per module). Times are FLOPs divided by an *assumed* sustained
throughput, stated with every number, never a measurement.

The ``gpu`` recipe's budget (:func:`icm_step_cost`, :func:`budget_table`): one ICM
fine-tuning step -- the codec on its crops, the frozen torchvision detector's loss and its
backward into the decoded crops -- on the GPUs of :data:`GPUS`, at the assumed
:data:`UTILIZATION` of their data-sheet peak.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from icmlib.codec import ICMCodec
from icmlib.presets import Preset, get_preset


def _activation_bytes(model: torch.nn.Module, run) -> int:
    """Bytes of all leaf-module output tensors produced while ``run()`` executes."""
    total = [0]

    def hook(_module, _inputs, output):
        outputs = output if isinstance(output, (tuple, list)) else [output]
        for t in outputs:
            if torch.is_tensor(t) and t.requires_grad:
                total[0] += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if not list(m.children())]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return total[0]


def codec_step_cost(preset: Optional[Preset] = None, batch_size: Optional[int] = None,
                    crop_size: Optional[int] = None) -> Dict[str, float]:
    """Parameters, FLOPs and activation memory of one codec training step (forward + backward)."""
    preset = get_preset(preset)
    b = batch_size or preset.batch_size
    s = crop_size or preset.crop_size
    net = ICMCodec.from_preset(preset).train()
    x = torch.rand(b, 3, s, s)

    def step():
        out = net(x)
        loss = out["x_hat"].square().mean() + sum(-l.log2().mean() for l in out["likelihoods"].values())
        loss.backward()

    with FlopCounterMode(display=False) as counter:
        act = _activation_bytes(net, step)
    return {"parameters": sum(p.numel() for p in net.parameters()),
            "flops_per_step": float(counter.get_total_flops()),
            "activation_bytes": float(act), "batch_size": b, "crop_size": s}


def task_forward_backward_cost(model: torch.nn.Module, images: torch.Tensor, targets) -> Dict[str, float]:
    """FLOPs and activation memory of one pass of a task network's training loss + backward
    into the images (the network itself is frozen, as in ICM training)."""
    model.train()
    images = images.clone().requires_grad_(True)

    def step():
        losses = model(list(images), targets)
        sum(losses.values()).backward()

    with FlopCounterMode(display=False) as counter:
        act = _activation_bytes(model, step)
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "flops_per_step": float(counter.get_total_flops()), "activation_bytes": float(act)}


def seconds_at(flops: float, tflops: float) -> float:
    """Time for ``flops`` at an assumed sustained throughput of ``tflops`` TFLOP/s."""
    return flops / (tflops * 1e12)


# ---- the gpu recipe's budget: ICM fine-tuning with a frozen torchvision detector ----------
#: Peak dense FP16 tensor-core throughput (TFLOP/s, without sparsity) and memory (GiB) of
#: the GPUs a reader is likely to get, from NVIDIA's data sheets: T4 (Colab's free GPU)
#: 65 TFLOP/s mixed precision, 16 GB; L4 121 TFLOP/s (242 with sparsity), 24 GB; A100
#: 312 TFLOP/s (624 with sparsity), 40 GB (Colab's A100; 80 GB exists too).
GPUS = {"T4": {"peak_tflops": 65.0, "memory_gib": 16.0},
        "L4": {"peak_tflops": 121.0, "memory_gib": 24.0},
        "A100": {"peak_tflops": 312.0, "memory_gib": 40.0}}
#: An *assumption*, not a measurement: the share of the peak a training step of
#: convolutional networks sustains with AMP (small convolutions, GDN, the detector's
#: region heads and the data loader keep it far from the peak). Change it and every
#: estimate below follows.
UTILIZATION = 0.15
#: An assumption too: the CUDA context, cuDNN workspaces and the allocator's slack.
CUDA_OVERHEAD_GIB = 1.0


def _toy_targets(task: str, n: int, side: int):
    """One box (and mask) per image: what the loss needs to run, not what COCO holds."""
    targets = []
    for _ in range(n):
        t = {"boxes": torch.tensor([[side * 0.1, side * 0.1, side * 0.5, side * 0.6]]),
             "labels": torch.tensor([1])}
        if task == "instance":
            t["masks"] = torch.zeros(1, side, side, dtype=torch.uint8)
            t["masks"][0, side // 10:side * 6 // 10, side // 10:side // 2] = 1
        targets.append(t)
    return targets


def frozen_detector_cost(task: str = "detection", image_size: int = 800,
                         sides=(128, 256)) -> Dict[str, float]:
    """FLOPs and activation bytes *per image* of the frozen torchvision R50-FPN detector's
    training loss and its backward into the image (no weight gradients: it is frozen, as
    :class:`~icmlib.tasks.FrozenTask` holds it), at ``image_size``² pixels.

    Counted on random weights (nothing is downloaded) at two small sides and extended to
    ``image_size`` by a line in the number of pixels: the backbone and FPN grow with the
    pixels, the region heads (a fixed number of sampled proposals) do not. Scaling one
    count by the pixels alone would scale the heads too.
    """
    from torchvision.models import detection as tvd

    from icmlib.tasks import FrozenTask

    builder = tvd.fasterrcnn_resnet50_fpn if task == "detection" else tvd.maskrcnn_resnet50_fpn
    counts = []
    for side in sides:
        torch.manual_seed(0)
        net = FrozenTask(builder(weights=None, weights_backbone=None, min_size=side,
                                 max_size=side), task)
        images = torch.rand(1, 3, side, side, requires_grad=True)
        targets = _toy_targets(task, 1, side)
        with FlopCounterMode(display=False) as counter:
            act = _activation_bytes(net, lambda: net.loss(images, targets).backward())
        counts.append((side * side, counter.get_total_flops(), act))
    (p0, f0, a0), (p1, f1, a1) = counts
    pixels = float(image_size) ** 2
    line = lambda y0, y1: y0 + (y1 - y0) / (p1 - p0) * (pixels - p0)  # noqa: E731
    return {"flops_per_image": line(f0, f1), "activation_bytes_per_image": line(a0, a1),
            "parameters": sum(p.numel() for p in net.parameters()), "image_size": image_size}


def icm_step_cost(preset: Optional[Preset] = None, task: str = "detection",
                  counted_crop: int = 64, detector: Optional[Dict[str, float]] = None
                  ) -> Dict[str, float]:
    """One ICM fine-tuning step of ``preset``: the codec's forward and backward on the ICM
    batch of crops, and the frozen detector's loss and backward into the decoded crops,
    which it resizes to ``preset.task_image_size`` (torchvision's ``min_size``) first.

    The codec is counted at ``counted_crop``² and scaled by the pixels (convolutions only);
    ``detector`` may pass an earlier :func:`frozen_detector_cost` of the same task and size.
    """
    from icmlib.training.batches import crop_and_batch

    preset = get_preset(preset)
    crop, batch = crop_and_batch(preset, True)
    codec = codec_step_cost(preset, batch_size=1, crop_size=counted_crop)
    scale = batch * (crop / counted_crop) ** 2
    detector = detector or frozen_detector_cost(task, preset.task_image_size)
    return {"batch_size": batch, "crop_size": crop,
            "codec_parameters": codec["parameters"],
            "detector_parameters": detector["parameters"],
            "codec_flops": codec["flops_per_step"] * scale,
            "detector_flops": detector["flops_per_image"] * batch,
            "flops_per_step": codec["flops_per_step"] * scale + detector["flops_per_image"] * batch,
            "activation_bytes": codec["activation_bytes"] * scale
            + detector["activation_bytes_per_image"] * batch}


def peak_memory_gib(step: Dict[str, float], amp: bool = True) -> float:
    """Estimated peak GPU memory of an ICM step (:func:`icm_step_cost`): the activations
    kept for the backward pass (counted in float32; halved under AMP, which keeps them in
    16 bits), the codec's weights, gradients and Adam's two moments (4 × 4 bytes per
    parameter), the frozen detector's weights (4 bytes each: no gradients, no optimizer
    state) and :data:`CUDA_OVERHEAD_GIB`."""
    activations = step["activation_bytes"] * (0.5 if amp else 1.0)
    state = 16 * step["codec_parameters"] + 4 * step["detector_parameters"]
    return (activations + state) / 2**30 + CUDA_OVERHEAD_GIB


def budget_table(step: Dict[str, float], steps_per_codec: int, codecs: int,
                 session_hours: float = 12.0, gpus: Optional[Dict[str, Dict]] = None,
                 utilization: float = UTILIZATION, amp: bool = True) -> List[Dict[str, Any]]:
    """One row per GPU of :data:`GPUS`: the *estimated* minutes per 1000 ICM steps, hours
    per codec (``steps_per_codec``) and for all ``codecs``, peak memory, and whether one
    codec's fine-tuning and its memory fit (a session of ``session_hours``). Every time is
    FLOPs / (peak × ``utilization``): an estimate from counts, not a measurement."""
    rows = []
    memory = peak_memory_gib(step, amp)
    for name, gpu in (gpus or GPUS).items():
        sustained = gpu["peak_tflops"] * utilization
        seconds = seconds_at(step["flops_per_step"], sustained)
        codec_hours = seconds * steps_per_codec / 3600
        rows.append({"GPU": name, "peak TFLOP/s (FP16, data sheet)": gpu["peak_tflops"],
                     "assumed TFLOP/s": sustained, "s per step": seconds,
                     "min per 1000 steps": seconds * 1000 / 60,
                     "h per ICM codec": codec_hours, "h for all codecs": codec_hours * codecs,
                     "peak memory (GiB)": memory, "GPU memory (GiB)": gpu["memory_gib"],
                     "memory fits": memory <= gpu["memory_gib"],
                     "codec fits a session": codec_hours <= session_hours})
    return rows
