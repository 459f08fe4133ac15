"""Conditional generative segmenters: a segmenter judged by a discriminator, or sampled from a VAE.

Both are losses for :func:`icmlib.segmentation.train.train_segmenter` (a callable
``loss(model, images, masks) -> (loss, logs)``): :class:`AdversarialSegLoss` (pix2pix-style
cGAN with a :class:`PatchDiscriminator`) and :func:`vae_loss` (for a :class:`VAESegmenter`).
A segmenter generates a mask conditioned on an image, as the codec's decoder generates an
image conditioned on the bits.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from icmlib.segmentation.models import PatchDiscriminator

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
