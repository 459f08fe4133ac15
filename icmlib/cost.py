"""What a training step costs, counted rather than guessed: parameters, FLOPs, activations.

Used by the "Running at paper scale" chapter to say what the ``gpu`` preset needs before
a reader spends Colab time on it. FLOPs come from ``torch.utils.flop_counter`` on one real
forward + backward pass; activation memory is the total size of every module output kept
for the backward pass (an upper-bound style estimate: it ignores buffer reuse and counts
in-place outputs once per module). Times are FLOPs divided by an *assumed* sustained
throughput, stated with every number, never a measurement.
"""
from __future__ import annotations

from typing import Dict, Optional

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
