"""A context model on ŷ: CompressAI's joint autoregressive + hyperprior against the hyperprior alone.

The mean & scale hyperprior (Minnen et al. 2018, :class:`~compressai.models.MeanScaleHyperprior`)
predicts each latent ``ŷ[c, i, j]``'s Gaussian from the side stream ẑ only. The *joint*
model (:class:`~compressai.models.JointAutoregressiveHierarchicalPriors`) also looks at the
latents already decoded, above and to the left, through a masked 5x5 convolution
(:class:`~compressai.layers.MaskedConv2d`, PixelCNN's mask 'A'): neighbours predict a
latent better than ẑ alone, so it costs fewer bits. The price is serial decoding: latent
``(i, j)`` can only be decoded once its context is, one network evaluation per position.

This module uses the library's models as they are (nothing re-written), trains both at the
same N, M, λ, data, steps and seed on the one loop of :mod:`icmlib.engine`, caches them
with :func:`~icmlib.cache.train_or_load`, and measures what matters on the same images:
**real bits** (the lengths of ``compress()``'s strings), the likelihood estimate beside
them, PSNR, and encode / decode wall time.

It sits in the codec layer, below the data: callers hand in the images (``[N, 3, H, W]``
in [0, 1]); the cache key holds a fingerprint of their pixels, so other images train anew.
"""
from __future__ import annotations

import hashlib
import time
from typing import Dict, List, Sequence, Tuple, Union

import torch
import torch.nn as nn
from compressai.models import JointAutoregressiveHierarchicalPriors, MeanScaleHyperprior

from icmlib.cache import train_or_load
from icmlib.codec.losses import mse_loss, psnr_from_mse, rate_bpp
from icmlib.engine import Reporter, RunState, check_finite, train_loop
from icmlib.presets import Preset, get_preset

#: The two models compared: the hyperprior alone, and the hyperprior with a context model.
CONTEXT_MODELS = {"hyperprior": MeanScaleHyperprior,
                  "context": JointAutoregressiveHierarchicalPriors}

#: Bump when the training below changes its results (invalidates cached checkpoints).
CONTEXT_VERSION = "1"

#: Both models' analysis transform divides by 16 and their hyper-analysis by 4 more.
CONTEXT_STRIDE = 64


def context_codec(kind: str, N: int, M: int) -> nn.Module:
    """An untrained CompressAI model: ``"hyperprior"`` (MeanScaleHyperprior) or ``"context"``
    (JointAutoregressiveHierarchicalPriors), with N channels in the transforms, M in ŷ."""
    if kind not in CONTEXT_MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {tuple(CONTEXT_MODELS)}")
    return CONTEXT_MODELS[kind](N, M)


def images_fingerprint(images: torch.Tensor) -> str:
    """A short hash of the images' 8-bit pixels (and their shape): the data in a cache key."""
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().contiguous()
    digest = hashlib.sha256(str(tuple(pixels.shape)).encode())
    digest.update(pixels.numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_images(images: torch.Tensor, what: str) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must be [N, 3, H, W] in [0, 1]; got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % CONTEXT_STRIDE or w % CONTEXT_STRIDE:
        raise ValueError(f"{what}: height and width must be multiples of {CONTEXT_STRIDE} "
                         f"(the models' total stride); got {h}x{w}")


def _random_crops(images: torch.Tensor, size: int, batch: int, gen: torch.Generator):
    """``batch`` random ``size`` x ``size`` crops (with random horizontal flips)."""
    idx = torch.randint(len(images), (batch,), generator=gen)
    h, w = images.shape[-2:]
    tops = torch.randint(h - size + 1, (batch,), generator=gen)
    lefts = torch.randint(w - size + 1, (batch,), generator=gen)
    flips = torch.rand(batch, generator=gen) < 0.5
    crops = []
    for i, t, l, f in zip(idx.tolist(), tops.tolist(), lefts.tolist(), flips.tolist()):
        c = images[i, :, t:t + size, l:l + size]
        crops.append(c.flip(-1) if f else c)
    return torch.stack(crops)


class _RateDistortionSteps:
    """One step of CompressAI's recipe: ``bpp + λ·255²·MSE`` on the main optimizer, the
    entropy bottleneck's quantile loss on the auxiliary one."""

    def __init__(self, net: nn.Module, images: torch.Tensor, *, lmbda: float, lr: float,
                 aux_lr: float, batch_size: int, crop: int, gen: torch.Generator,
                 reporter: Reporter):
        self.net, self.images, self.lmbda = net, images, lmbda
        self.batch_size, self.crop, self.gen, self.reporter = batch_size, crop, gen, reporter
        main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
        aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
        self.opt = torch.optim.Adam(main, lr=lr)
        self.aux_opt = torch.optim.Adam(aux, lr=aux_lr)
        self.main_params = main

    def step(self, step: int) -> dict:
        x = _random_crops(self.images, self.crop, self.batch_size, self.gen)
        out = self.net(x)
        rate = rate_bpp(out["likelihoods"], x.shape[0] * x.shape[2] * x.shape[3])
        mse = mse_loss(out["x_hat"], x)
        loss = rate + self.lmbda * mse
        check_finite(loss.item(), "rate-distortion loss", step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.main_params, 1.0)
        self.opt.step()
        aux = self.net.aux_loss()
        self.aux_opt.zero_grad(set_to_none=True)
        aux.backward()
        self.aux_opt.step()
        row = {"step": step + 1, "loss": loss.item(), "bpp": rate.item(),
               "psnr": psnr_from_mse(mse.item()), "aux": aux.item()}
        self.reporter.advance({"bpp": f"{row['bpp']:.3f}", "psnr": f"{row['psnr']:.1f}"})
        return row


def train_context_codec(kind: str, images: torch.Tensor, *, N: int, M: int, lmbda: float,
                        steps: int, batch_size: int = 8, crop: int = 64, lr: float = 1e-3,
                        aux_lr: float = 1e-3, seed: int = 0, progress: bool = True,
                        force: bool = False) -> Tuple[nn.Module, dict]:
    """Train (once per configuration) or load one of :data:`CONTEXT_MODELS` on ``images``.

    Every model with the same arguments sees the same crops in the same order (the crops
    come from a generator seeded by ``seed``) and starts from ``torch.manual_seed(seed)``.
    Returns the model, ``update()``-d for real coding and in eval mode, and its record
    (``history``: one row per step; ``train_seconds``; ``config``).
    """
    _check_images(images, "images")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    config = {"kind": kind, "N": N, "M": M, "lmbda": lmbda, "steps": steps,
              "batch_size": batch_size, "crop": crop, "lr": lr, "aux_lr": aux_lr, "seed": seed,
              "data": images_fingerprint(images), "version": CONTEXT_VERSION}

    def train() -> dict:
        torch.manual_seed(seed)
        net = context_codec(kind, N, M).train()
        reporter = Reporter(total=steps, desc=kind, progress=progress, leave=False)
        steps_of = _RateDistortionSteps(net, images, lmbda=lmbda, lr=lr, aux_lr=aux_lr,
                                        batch_size=batch_size, crop=crop, reporter=reporter,
                                        gen=torch.Generator().manual_seed(seed))
        history: List[dict] = []
        t0 = time.perf_counter()
        try:
            train_loop(steps_of.step, RunState({"model": net, "opt": steps_of.opt}), steps,
                       [lambda step, row: history.append(row)])
        finally:
            reporter.close()
        return {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                "history": history, "train_seconds": time.perf_counter() - t0,
                "config": config}

    record = train_or_load("context-codec", config, train, force=force)
    net = context_codec(kind, N, M)
    net.load_state_dict(record["state_dict"])
    net.update(force=True)
    return net.eval(), record


def _stream_bytes(strings: Sequence) -> int:
    """Total length of ``compress()``'s strings (a list per stream, one bytes per image)."""
    return sum(len(s) for stream in strings for s in stream)


@torch.no_grad()
def code_images(net: nn.Module, images: torch.Tensor) -> Dict[str, float]:
    """Code each image to real bytes and back; the averages over the images.

    ``bpp``: bits of ``compress()``'s strings (ŷ and ẑ streams, lengths summed) per pixel;
    ``bpp_estimate``: ``-log2`` of the likelihoods of the forward pass (eval mode, so
    rounded latents) per pixel, for comparison; ``psnr`` (dB, decoded image clamped to
    [0, 1]); ``encode_ms`` and ``decode_ms``: wall time of ``compress`` and ``decompress``
    per image, one image at a time (how a decoder meets them).
    """
    _check_images(images, "images")
    net.eval()
    rows = []
    for x in images.split(1):
        pixels = x.shape[2] * x.shape[3]
        t0 = time.perf_counter()
        enc = net.compress(x)
        t1 = time.perf_counter()
        dec = net.decompress(enc["strings"], enc["shape"])
        t2 = time.perf_counter()
        estimate = rate_bpp(net(x)["likelihoods"], pixels).item()
        x_hat = dec["x_hat"].clamp(0, 1)
        rows.append({"bpp": 8 * _stream_bytes(enc["strings"]) / pixels,
                     "bpp_estimate": estimate,
                     "psnr": psnr_from_mse(mse_loss(x_hat, x).item()),
                     "encode_ms": 1e3 * (t1 - t0), "decode_ms": 1e3 * (t2 - t1)})
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} | {"images": len(rows)}


def compare_context_models(train_images: torch.Tensor, eval_images: torch.Tensor, *, N: int,
                           M: int, lmbda: float, steps: int, batch_size: int = 8,
                           crop: int = 64, lr: float = 1e-3, seed: int = 0,
                           progress: bool = True,
                           kinds: Sequence[str] = tuple(CONTEXT_MODELS)) -> Dict[str, dict]:
    """Train (or load) each model of ``kinds`` with the same settings and code the same
    ``eval_images`` with each: ``{kind: {"model", "record", "metrics"}}``
    (``metrics`` from :func:`code_images`)."""
    out = {}
    for kind in kinds:
        net, record = train_context_codec(kind, train_images, N=N, M=M, lmbda=lmbda,
                                          steps=steps, batch_size=batch_size, crop=crop, lr=lr,
                                          seed=seed, progress=progress)
        out[kind] = {"model": net, "record": record, "metrics": code_images(net, eval_images)}
    return out


def decode_evaluations(net: nn.Module, image_shape: Sequence[int]) -> Dict[str, int]:
    """How many times decoding one image runs each network: ``latents`` (ŷ's positions),
    ``context_evaluations`` (the context model and entropy parameters, once per position
    for the joint model, never for the hyperprior) and ``synthesis_evaluations`` (1)."""
    h, w = image_shape[-2:]
    positions = (h // 16) * (w // 16)
    serial = isinstance(net, JointAutoregressiveHierarchicalPriors)
    return {"latents": positions, "context_evaluations": positions if serial else 0,
            "synthesis_evaluations": 1}


def context_training_curves(records: Dict[str, dict], key: str = "bpp",
                    window: int = 50) -> Dict[str, Tuple[List[int], List[float]]]:
    """``{kind: (steps, running mean of key)}`` from the records' histories, for a plot."""
    curves = {}
    for kind, rec in records.items():
        hist = rec["history"] if "history" in rec else rec["record"]["history"]
        values = [row[key] for row in hist]
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                  for i in range(len(values))]
        curves[kind] = ([row["step"] for row in hist], smooth)
    return curves


#: The comparison's budget per preset: small on purpose (two models trained inside the book's
#: build, each a few minutes on one CPU core), so the numbers are *at this budget*.
CONTEXT_BUDGETS = {
    "ci": {"N": 16, "M": 24, "steps": 20, "batch_size": 4, "crop": 64, "eval_images": 4},
    "cpu": {"N": 32, "M": 48, "steps": 1000, "batch_size": 8, "crop": 64, "eval_images": 16},
    "gpu": {"N": 128, "M": 192, "steps": 200_000, "batch_size": 16, "crop": 256,
            "eval_images": 100},
}


def context_settings(preset: Union[Preset, str, None] = None) -> dict:
    """The comparison's settings for a preset: N, M, steps, batch, crop and the number of
    images to code from :data:`CONTEXT_BUDGETS` (``cpu``'s for a preset it does not
    name); λ the book's base
    MSE codec's (``rd_lambdas[codec_base_rate]``, the last one when that index is -1);
    the preset's learning rate."""
    preset = get_preset(preset)
    settings = dict(CONTEXT_BUDGETS.get(preset.name, CONTEXT_BUDGETS["cpu"]))
    base = preset.codec_base_rate
    lambdas = preset.rd_lambdas
    settings["lmbda"] = float(lambdas[base] if 0 <= base < len(lambdas) else lambdas[-1])
    settings["lr"] = float(max(preset.lr, 1e-4))
    return settings
