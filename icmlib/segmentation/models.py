"""Segmentation networks, small enough to train on a CPU in minutes.

* :class:`PatchClassifier` – classifies the centre pixel of a square patch. Used one
  patch at a time it *is* the sliding-window segmenter; because it is built from valid
  (unpadded) convolutions, the same weights also run on a whole image at once and give
  every window's answer in one pass (the "fully convolutional" trick).
* :class:`FCN` – downsample, classify at low resolution, upsample back in one learned
  step (a transposed convolution initialised as bilinear interpolation), no skips: the
  FCN-32s idea of Long, Shelhamer & Darrell (2015).
* :class:`UNet` – a symmetric encoder-decoder (Ronneberger et al., 2015). With
  ``skip=True`` each decoder stage concatenates the encoder features of the same
  resolution, bringing back the fine detail the downsampling threw away; with
  ``skip=False`` it is the same network without those connections.
* :class:`TorchvisionUNet` – the same decoder on a torchvision backbone (ResNet,
  MobileNet), so ImageNet-pretrained encoders drop in on Colab.
* :class:`PatchDiscriminator` and :class:`VAESegmenter` – the conditional generative
  segmenters of the third segmentation chapter.

Every model exposes ``encoder`` (the part a transfer-learning experiment reuses),
``encoder_stages`` (its stages, shallow to deep) and ``head`` (the final classifier), so
the transfer-learning code treats them alike.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions with batch norm and ReLU: the unit every stage is built from."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _check_image_batch(x: torch.Tensor, in_channels: int, who: str) -> None:
    if not torch.is_tensor(x) or x.dim() != 4:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{who} expects a batch of images shaped [B, {in_channels}, H, W]; "
                         f"got {shape}. Add a batch dimension with x[None] for one image.")
    if x.shape[1] != in_channels:
        raise ValueError(f"{who} was built for {in_channels} input channels but got "
                         f"{x.shape[1]} (shape {tuple(x.shape)}).")


def _pad_to_multiple(x: torch.Tensor, multiple: int):
    """Zero-pad H and W up to a multiple of ``multiple`` (so every pooling halves exactly)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


def bilinear_kernel(channels: int, factor: int) -> torch.Tensor:
    """Weights that make ``ConvTranspose2d(k=2f, stride=f, padding=f//2)`` bilinear upsampling.

    FCN initialises its learned upsampling this way: training starts from plain bilinear
    interpolation and may improve on it.
    """
    size = 2 * factor - factor % 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt1d = 1 - (og - centre).abs() / factor
    filt = filt1d[:, None] * filt1d[None, :]
    weight = torch.zeros(channels, channels, size, size)
    for c in range(channels):
        weight[c, c] = filt
    return weight


class _HasEncoder:
    """``encoder``: the stages a transfer-learning experiment reuses (one module)."""

    @property
    def encoder(self) -> nn.Module:
        return self.encoder_stages


class PatchClassifier(_HasEncoder, nn.Module):
    """A CNN that labels the centre pixel of a ``patch_size`` x ``patch_size`` patch.

    It is made of ``(patch_size - 1) // 2`` valid 3x3 convolutions (each shrinks the
    input by 2 pixels) and a 1x1 classifier, so a patch of exactly ``patch_size`` pixels
    comes out as a single 1x1 prediction. Fed a larger image it slides itself: the output
    at (i, j) is the prediction for the window centred there. Call :meth:`dense` to get a
    prediction for every pixel of an image (it pads by ``patch_size // 2``).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16,
                 patch_size: int = 9):
        super().__init__()
        if patch_size < 3 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and >= 3 (a centre pixel plus a border); "
                             f"got {patch_size}")
        self.in_channels, self.num_classes, self.patch_size = in_channels, num_classes, patch_size
        layers: List[nn.Module] = []
        c = in_channels
        for _ in range((patch_size - 1) // 2):
            layers += [nn.Conv2d(c, width, 3), nn.ReLU(inplace=True)]
            c = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every *valid* window: [B, C, H - p + 1, W - p + 1]."""
        _check_image_batch(x, self.in_channels, "PatchClassifier")
        if min(x.shape[-2:]) < self.patch_size:
            raise ValueError(f"PatchClassifier needs inputs of at least {self.patch_size}x"
                             f"{self.patch_size} pixels; got {tuple(x.shape[-2:])}")
        return self.head(self.features(x))

    @property
    def encoder_stages(self) -> nn.ModuleList:
        return nn.ModuleList([self.features])

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every pixel [B, C, H, W]: pad by half a patch, run once."""
        r = self.patch_size // 2
        return self.forward(F.pad(x, (r, r, r, r)))


def encoder_stages(in_channels: int, width: int, depth: int):
    """The shared encoder: a stem block, then ``depth`` × (2×2 max pool, block doubling the
    channels). Returns the stages and the channels of the last one."""
    stages = [conv_block(in_channels, width)]
    c = width
    for _ in range(depth):
        stages.append(nn.Sequential(nn.MaxPool2d(2), conv_block(c, 2 * c)))
        c *= 2
    return nn.ModuleList(stages), c


class FCN(_HasEncoder, nn.Module):
    """Downsample ``depth`` times, classify at 1/2^depth resolution, upsample in one step.

    No skip connections: everything the classifier knows about where an edge is must
    survive the bottleneck, which is why its masks come out blobby (compare :class:`UNet`).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16, depth: int = 3):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.in_channels, self.num_classes, self.depth = in_channels, num_classes, depth
        self.encoder_stages, c = encoder_stages(in_channels, width, depth)
        self.head = nn.Conv2d(c, num_classes, 1)
        f = 2 ** depth
        self.upsample = nn.ConvTranspose2d(num_classes, num_classes, 2 * f, stride=f,
                                           padding=f // 2, bias=False)
        with torch.no_grad():
            self.upsample.weight.copy_(bilinear_kernel(num_classes, f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.in_channels, "FCN")
        x, (h, w) = _pad_to_multiple(x, 2 ** self.depth)
        for stage in self.encoder_stages:
            x = stage(x)
        return self.upsample(self.head(x))[..., :h, :w]


class UNet(_HasEncoder, nn.Module):
    """U-Net: encoder-decoder with (optional) skip connections.

    Encoder: a stem block at full resolution, then ``depth`` stages of 2x2 max pooling
    followed by a conv block that doubles the channels. Decoder: ``depth`` stages of a 2x2
    transposed convolution (stride 2, halving the channels) followed by a conv block; with
    ``skip=True`` the block sees the upsampled features concatenated with the encoder
    features of the same resolution. Inputs of any size are zero-padded to a multiple of
    2^depth and the output is cropped back, so logits are [B, num_classes, H, W].
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16,
                 depth: int = 3, skip: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class); "
                             f"got {num_classes}")
        self.in_channels, self.num_classes = in_channels, num_classes
        self.width, self.depth, self.skip = width, depth, skip
        self.encoder_stages, c = encoder_stages(in_channels, width, depth)
        self.ups = nn.ModuleList()
        self.decoder_blocks = nn.ModuleList()
        for _ in range(depth):
            self.ups.append(nn.ConvTranspose2d(c, c // 2, 2, stride=2))
            self.decoder_blocks.append(conv_block(c if skip else c // 2, c // 2))
            c //= 2
        self.head = nn.Conv2d(width, num_classes, 1)

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Features of every encoder stage, full resolution first."""
        feats = []
        for stage in self.encoder_stages:
            x = stage(x)
            feats.append(x)
        return feats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's last feature map [B, width, H', W'] (padded size), before the head."""
        feats = self.encode(x)
        y = feats[-1]
        for up, block, skip_feat in zip(self.ups, self.decoder_blocks, reversed(feats[:-1])):
            y = up(y)
            if self.skip:
                y = torch.cat([y, skip_feat], dim=1)
            y = block(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.in_channels, "UNet")
        x, (h, w) = _pad_to_multiple(x, 2 ** self.depth)
        return self.head(self.features(x))[..., :h, :w]


# --- torchvision backbones --------------------------------------------------------------

def _backbone_children(name: str, model: nn.Module) -> List[nn.Module]:
    if name.startswith("resnet") or name.startswith("resnext") or name.startswith("wide_resnet"):
        return list(model.children())[:-2]          # drop avgpool and fc
    if hasattr(model, "features"):                  # mobilenet, efficientnet, vgg, convnext
        return list(model.features.children())
    raise ValueError(f"don't know how to take the feature layers out of {name!r}; "
                     f"use a ResNet or MobileNet/EfficientNet")


class TorchvisionUNet(_HasEncoder, nn.Module):
    """A U-Net decoder on a torchvision classification backbone.

    The backbone's layers are grouped into stages by the resolution they output (found
    with one dummy forward pass), and a decoder stage per resolution upsamples, concatenates
    the backbone features of that resolution and mixes them with a conv block. Images are
    expected normalised with the ImageNet mean and std (see
    :func:`icmlib.segmentation.normalize`).
    """

    def __init__(self, backbone: nn.Module, name: str, num_classes: int, width: int = 32):
        super().__init__()
        self.in_channels, self.num_classes = 3, num_classes
        children = _backbone_children(name, backbone)
        with torch.no_grad():
            was_training = backbone.training
            backbone.eval()
            x = torch.zeros(1, 3, 64, 64)
            groups, current, sizes, channels = [], [], [], []
            size = 64
            for child in children:
                y = child(x)
                if y.shape[-1] != size and current:
                    groups.append(current)
                    sizes.append(size)
                    channels.append(x.shape[1])
                    current = []
                current.append(child)
                x, size = y, y.shape[-1]
            groups.append(current)
            sizes.append(size)
            channels.append(x.shape[1])
            backbone.train(was_training)
        if sizes[0] == 64:      # a group at full resolution (rare): merge it into the next
            groups[1] = groups[0] + groups[1]
            groups, sizes, channels = groups[1:], sizes[1:], channels[1:]
        self.encoder_stages = nn.ModuleList(nn.Sequential(*g) for g in groups)
        self.stage_channels = channels
        self.decoder_blocks = nn.ModuleList()
        c = channels[-1]
        for skip_c in reversed(channels[:-1]):
            self.decoder_blocks.append(conv_block(c + skip_c, width))
            c = width
        self.final = conv_block(c, width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, 3, "TorchvisionUNet")
        h, w = x.shape[-2:]
        x, _ = _pad_to_multiple(x, 32)
        padded_size = x.shape[-2:]
        feats = []
        for stage in self.encoder_stages:
            x = stage(x)
            feats.append(x)
        y = feats[-1]
        for block, skip_feat in zip(self.decoder_blocks, reversed(feats[:-1])):
            y = F.interpolate(y, size=skip_feat.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip_feat], dim=1))
        y = self.final(F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False))
        y = F.interpolate(self.head(y), size=padded_size, mode="bilinear", align_corners=False)
        return y[..., :h, :w]


# --- conditional generative segmenters ----------------------------------------------------

class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN: judges (image, mask) pairs patch by patch.

    Input: the image concatenated with a mask given as per-class probabilities (one-hot
    for a real mask, softmax for a generated one). Output: one real/fake logit per
    overlapping patch. Spectral normalisation bounds each layer's Lipschitz constant,
    which keeps the adversarial game from blowing up (Miyato et al., 2018).
    """

    def __init__(self, image_channels: int = 3, num_classes: int = 2, width: int = 16,
                 n_layers: int = 3, spectral_norm: bool = True):
        super().__init__()
        sn = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        c_in = image_channels + num_classes
        layers: List[nn.Module] = [sn(nn.Conv2d(c_in, width, 4, stride=2, padding=1)),
                                   nn.LeakyReLU(0.2, inplace=True)]
        c = width
        for i in range(1, n_layers):
            stride = 2 if i < n_layers - 1 else 1
            layers += [sn(nn.Conv2d(c, 2 * c, 4, stride=stride, padding=1)),
                       nn.LeakyReLU(0.2, inplace=True)]
            c *= 2
        layers.append(sn(nn.Conv2d(c, 1, 4, padding=1)))
        self.net = nn.Sequential(*layers)
        self.image_channels, self.num_classes = image_channels, num_classes

    def forward(self, image: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
        if mask_probs.shape[1] != self.num_classes:
            raise ValueError(f"PatchDiscriminator expects masks as {self.num_classes} class "
                             f"probabilities per pixel; got {mask_probs.shape[1]} channels")
        return self.net(torch.cat([image, mask_probs], dim=1))


class _LatentEncoder(nn.Module):
    """Conv stack + global average pooling -> (mean, log-variance) of a latent vector."""

    def __init__(self, in_channels: int, width: int, latent_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1))
        self.out = nn.Linear(2 * width, 2 * latent_dim)

    def forward(self, x):
        mu, logvar = self.out(self.net(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-8, 8)


class VAESegmenter(_HasEncoder, nn.Module):
    """A VAE-style conditional segmenter (a small Probabilistic U-Net, Kohl et al. 2018).

    A U-Net computes features of the image. A latent vector ``z`` is broadcast over the
    image and concatenated to those features before the 1x1 head, so different ``z`` give
    different plausible masks. Training samples ``z`` from a *posterior* net q(z | image,
    mask); a *prior* net p(z | image) is pulled towards it by the KL term, so at test time
    (no mask available) ``z`` comes from the prior: its mean for the single best guess, or
    samples for alternatives.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, width: int = 16,
                 depth: int = 3, latent_dim: int = 6):
        super().__init__()
        self.in_channels, self.num_classes, self.latent_dim = in_channels, num_classes, latent_dim
        self.unet = UNet(in_channels, num_classes, width, depth, skip=True)
        self.prior = _LatentEncoder(in_channels, width, latent_dim)
        self.posterior = _LatentEncoder(in_channels + num_classes, width, latent_dim)
        self.head = nn.Sequential(nn.Conv2d(width + latent_dim, width, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, num_classes, 1))

    @property
    def encoder_stages(self) -> nn.ModuleList:
        return self.unet.encoder_stages

    def decode(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        xp, (h, w) = _pad_to_multiple(x, 2 ** self.unet.depth)
        feats = self.unet.features(xp)
        zmap = z[:, :, None, None].expand(-1, -1, *feats.shape[-2:])
        return self.head(torch.cat([feats, zmap], dim=1))[..., :h, :w]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                sample: bool = False) -> torch.Tensor:
        """Logits. Without ``mask``: z = prior mean (or a prior sample if ``sample``)."""
        _check_image_batch(x, self.in_channels, "VAESegmenter")
        mu, logvar = self.prior(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return self.decode(x, z)

    def training_outputs(self, x: torch.Tensor, mask: torch.Tensor):
        """(logits with z ~ q(z|x,y), KL(q || p) per image) for the training loss."""
        onehot = F.one_hot(mask, self.num_classes).permute(0, 3, 1, 2).float()
        mu_q, logvar_q = self.posterior(torch.cat([x, onehot], dim=1))
        mu_p, logvar_p = self.prior(x)
        z = mu_q + torch.randn_like(mu_q) * (0.5 * logvar_q).exp()
        kl = 0.5 * (logvar_p - logvar_q
                    + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1).sum(dim=1)
        return self.decode(x, z), kl
