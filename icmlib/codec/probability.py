"""The probability model, measured: why the hyperprior pays, and why the rate is a cross-entropy.

The rate of a learned codec is the cross-entropy between the distribution q of the
quantized latents and the model p the entropy coder uses (eq. 1–2 of the paper):

    R = E_{ŷ~q}[ −log2 p(ŷ | ẑ) ] + E[ −log2 p(ẑ) ]  =  H(q) + KL(q ‖ p)  (bits)

An entropy coder gets within a few bytes of that number, so the better p predicts ŷ the
fewer bits are spent. These helpers measure each piece on a trained codec:

* ``rate_report``: the estimate −Σ log2 p per stream next to the real rANS bytes;
* ``noise_vs_rounding``: the training proxy (additive uniform noise) against the real
  quantizer (rounding) — their rates agree closely, which is why training with noise works;
* ``factorized_prior_bits``: what ŷ would cost under a *factorized* prior (one learned
  density per channel, no side information), fitted to the very same latents, against the
  mean & scale hyperprior's per-element Gaussians plus the bits of ẑ;
* ``empirical_entropy_bits``: the entropy of the symbols' histogram per channel, a lower
  bound for any factorized model.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from compressai.entropy_models import EntropyBottleneck

from icmlib.codec.model import encode_image, pad


def _hyper_params(net, x: torch.Tensor):
    y = net.g_a(pad(x))
    z = net.h_a(y)
    z_hat, z_lik = net.entropy_bottleneck(z)
    scales, means = net.h_s(z_hat).chunk(2, 1)
    return y, z_lik, scales, means


@torch.no_grad()
def rate_report(net, x: torch.Tensor) -> Dict[str, float]:
    """Estimated and real bits of each stream for one image (1×3×H×W), and bpp."""
    net.eval()
    y, z_lik, scales, means = _hyper_params(net, x)
    _, y_lik = net.gaussian_conditional(y, scales, means=means)
    enc = encode_image(net, x)
    pixels = x.shape[-2] * x.shape[-1]
    est_y = float(-torch.log2(y_lik).sum())
    est_z = float(-torch.log2(z_lik).sum())
    real_y, real_z = (8 * len(s) for s in enc["strings"])
    return {"estimated_bits_y": est_y, "estimated_bits_z": est_z,
            "real_bits_y": real_y, "real_bits_z": real_z,
            "estimated_bpp": (est_y + est_z) / pixels, "real_bpp": (real_y + real_z) / pixels}


@torch.no_grad()
def noise_vs_rounding(net, x: torch.Tensor, samples: int = 8, seed: int = 0) -> Dict[str, float]:
    """Bits per pixel of ŷ with uniform noise (training) and with rounding (testing).

    Also returns the mean squared difference between noisy and rounded latents (≈ 1/12
    for noise, the variance of U(−½, ½)).
    """
    net.eval()
    y, _, scales, means = _hyper_params(net, x)
    bits = compare_noise_and_rounding(net.gaussian_conditional, y, scales, means, samples, seed)
    pixels = x.shape[-2] * x.shape[-1]
    return {"bpp_noise": bits["bits_noise"] / pixels, "bpp_rounding": bits["bits_rounding"] / pixels,
            "mse_noise": bits["mse_noise"], "mse_rounding": bits["mse_rounding"]}


@torch.no_grad()
def compare_noise_and_rounding(gc, y, scales, means, samples: int = 8, seed: int = 0):
    """Bits and squared error of y under a ``GaussianConditional`` with noise vs rounding."""
    torch.manual_seed(seed)
    bits_noise, err_noise = [], []
    for _ in range(samples):
        noisy, lik = gc(y, scales, means=means, training=True)    # y + U(−½, ½)
        bits_noise.append(float(-torch.log2(lik).sum()))
        err_noise.append(float(((noisy - y) ** 2).mean()))
    rounded, lik_round = gc(y, scales, means=means, training=False)  # round(y − μ) + μ
    return {"bits_noise": sum(bits_noise) / samples, "bits_rounding": float(-torch.log2(lik_round).sum()),
            "mse_noise": sum(err_noise) / samples, "mse_rounding": float(((rounded - y) ** 2).mean())}


def factorized_prior_bits(latents: torch.Tensor, steps: int = 300, lr: float = 1e-2,
                          seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fit a factorized prior (CompressAI's ``EntropyBottleneck``) to ``latents`` (B×C×H×W).

    Returns ``(bits per image, symbols)``: the bits it assigns to the quantized latents,
    quantized as a factorized-prior codec does (rounding around each channel's median),
    and those integer symbols. The density is trained with the same noise proxy as the
    codec, on the very latents it is then evaluated on — the most favourable case for it.
    """
    torch.manual_seed(seed)
    latents = latents.detach()
    eb = EntropyBottleneck(latents.shape[1])
    opt = torch.optim.Adam(eb.parameters(), lr=lr)
    for _ in range(steps):
        _, lik = eb(latents, training=True)
        loss = -torch.log2(lik).sum() / latents.shape[0] + eb.loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        quantized, lik = eb(latents, training=False)
        medians = eb._get_medians().reshape(1, -1, 1, 1)
    return (-torch.log2(lik)).flatten(1).sum(1), torch.round(quantized - medians)


def empirical_entropy_bits(symbols: torch.Tensor) -> float:
    """Σ over channels of (count × entropy of that channel's symbol histogram), in bits.

    ``symbols`` is an integer-valued B×C×H×W tensor. No factorized model can beat this on
    these symbols; a conditional model (the hyperprior) can, because it uses ẑ.
    """
    total = 0.0
    sym = torch.round(symbols).to(torch.int64)
    for c in range(sym.shape[1]):
        values = sym[:, c].flatten()
        _, counts = torch.unique(values, return_counts=True)
        p = counts.double() / values.numel()
        total += float(-(counts.double() * torch.log2(p)).sum())
    return total


@torch.no_grad()
def bits_per_element(net, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(ŷ, bits)`` for one image: the quantized latent and −log2 p of each of its elements.

    Summing ``bits`` over channels gives a map of where in the image the bits go; over
    space, which channels carry the most information.
    """
    net.eval()
    y, _, scales, means = _hyper_params(net, x)
    y_hat, lik = net.gaussian_conditional(y, scales, means=means, training=False)
    return y_hat, -torch.log2(lik)


@torch.no_grad()
def decode_keeping_channels(net, y_hat: torch.Tensor, keep) -> torch.Tensor:
    """Decode ŷ with only the channels in ``keep``; the others are set to their spatial mean.

    Shows what each part of the latent contributes to the picture.
    """
    mask = torch.zeros(y_hat.shape[1], dtype=torch.bool)
    mask[list(keep)] = True
    partial = torch.where(mask.view(1, -1, 1, 1), y_hat, y_hat.mean(dim=(2, 3), keepdim=True))
    return net.g_s(partial).clamp(0, 1)
