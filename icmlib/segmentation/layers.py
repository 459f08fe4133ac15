"""Semantic segmentation: the layers, metrics and data preparation the book's chapters use.

Semantic segmentation gives every pixel a class (0 = background, else a category id);
unlike instance segmentation it does not tell two objects of the same class apart. The
machine tasks of the ICM codec are segmentation networks, so the book builds them up
from first principles here:

* **Resampling layers** on small tensors – :func:`nearest_unpool`,
  :func:`bed_of_nails_unpool`, :func:`max_pool_with_indices` / :func:`max_unpool`,
  transposed convolution (:func:`transposed_conv1d_by_hand`, checked against PyTorch).
* **Metrics** – :func:`confusion_matrix`, :func:`pixel_accuracy`,
  :func:`mean_pixel_accuracy`, :func:`miou`, :func:`boundary_f1`, :func:`dice_score`,
  and the training loss :func:`dice_loss`.
* **Data preparation** – :func:`normalize`, :func:`resize_pair` (bilinear for images,
  nearest for masks: interpolating class ids would invent classes), and
  :class:`JointAugment` (crop, flip, rotation on image *and* mask; colour jitter and blur
  on the image only).

The networks live in :mod:`icmlib.segmentation.models` (re-exported here: ``UNet``, ``FCN``,
``PatchClassifier``, ...) and training / evaluation / transfer learning / generative
segmenters in :mod:`icmlib.segmentation.train`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from icmlib.segmentation.models import (FCN, PatchClassifier, PatchDiscriminator, TorchvisionUNet, UNet,  # noqa: F401
                         VAESegmenter, bilinear_kernel, conv_block)

__all__ = [
    "UNet", "FCN", "PatchClassifier", "TorchvisionUNet", "PatchDiscriminator", "VAESegmenter",
    "nearest_unpool", "bed_of_nails_unpool", "max_pool_with_indices", "max_unpool",
    "transposed_conv1d_by_hand", "transposed_conv2d",
    "confusion_matrix", "pixel_accuracy", "mean_pixel_accuracy", "per_class_iou", "miou",
    "mask_boundary", "boundary_f1", "dice_loss", "dice_score", "segmentation_metrics",
    "IMAGENET_MEAN", "IMAGENET_STD", "normalize", "denormalize", "resize_pair", "JointAugment",
    "palette", "colorize", "error_overlay", "show_segmentations", "plot_training_curves",
    "plot_generator_analogy",
]


# ---------------------------------------------------------------------------------------
# Up- and down-sampling layers
# ---------------------------------------------------------------------------------------

def _check_spatial(x: torch.Tensor, who: str) -> None:
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError(f"{who} expects a tensor whose last two dimensions are (H, W); "
                         f"got {getattr(x, 'shape', type(x).__name__)}")


def nearest_unpool(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour unpooling: copy every value into a ``factor`` x ``factor`` block.

    ``[[1, 2], [3, 4]]`` becomes ``[[1,1,2,2],[1,1,2,2],[3,3,4,4],[3,3,4,4]]``. No
    parameters; edges come out blocky.
    """
    _check_spatial(x, "nearest_unpool")
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def bed_of_nails_unpool(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """"Bed of nails" unpooling: each value goes to the top-left of its block, zeros elsewhere.

    ``[[1, 2], [3, 4]]`` becomes ``[[1,0,2,0],[0,0,0,0],[3,0,4,0],[0,0,0,0]]``. It is
    what a stride-``factor`` transposed convolution does *before* its kernel spreads the
    values out (see :func:`transposed_conv1d_by_hand`).
    """
    _check_spatial(x, "bed_of_nails_unpool")
    h, w = x.shape[-2:]
    out = x.new_zeros(*x.shape[:-2], h * factor, w * factor)
    out[..., ::factor, ::factor] = x
    return out


def max_pool_with_indices(x: torch.Tensor, kernel_size: int = 2) -> Tuple[torch.Tensor, torch.Tensor]:
    """2-D max pooling that also returns *where* each maximum was (flat index per channel).

    A thin wrapper on ``F.max_pool2d(..., return_indices=True)``. The encoder keeps the
    indices so the decoder can later put each value back where it came from
    (:func:`max_unpool`) – the SegNet idea: the positions of the strongest responses are
    exactly the spatial detail pooling would otherwise forget.
    """
    if x.dim() not in (3, 4):
        raise ValueError(f"max_pool_with_indices expects [C, H, W] or [B, C, H, W]; got {tuple(x.shape)}")
    return F.max_pool2d(x, kernel_size, return_indices=True)


def max_unpool(x: torch.Tensor, indices: torch.Tensor, kernel_size: int = 2,
               output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Max-unpooling: put each value back at the position its maximum came from, zeros elsewhere.

    Wraps ``F.max_unpool2d``. Pass ``output_size`` when the pooled input had an odd size
    (pooling floors it, so the original size cannot be inferred).
    """
    if x.shape != indices.shape:
        raise ValueError(f"max_unpool: values {tuple(x.shape)} and indices {tuple(indices.shape)} "
                         f"must have the same shape (use the indices from max_pool_with_indices)")
    return F.max_unpool2d(x, indices, kernel_size, output_size=output_size)


def transposed_conv1d_by_hand(x: torch.Tensor, w: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """1-D transposed convolution written out: each input scales the kernel, copies add up.

    For input ``x`` (length L) and kernel ``w`` (length K) the output has length
    ``(L - 1) * stride + K`` and ``out[i*stride : i*stride + K] += x[i] * w`` for every i.
    With stride 1 the copies overlap everywhere; with stride 2 they are placed every second
    position, so the layer *upsamples* – it is bed-of-nails unpooling followed by an
    ordinary convolution with the flipped kernel. Matches
    ``F.conv_transpose1d(x[None, None], w[None, None], stride=stride)``.
    """
    if x.dim() != 1 or w.dim() != 1:
        raise ValueError(f"transposed_conv1d_by_hand works on 1-D tensors (a signal and a kernel); "
                         f"got shapes {tuple(x.shape)} and {tuple(w.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    L, K = x.numel(), w.numel()
    out = torch.zeros((L - 1) * stride + K, dtype=torch.result_type(x, w))
    for i in range(L):
        out[i * stride: i * stride + K] += x[i] * w
    return out


def transposed_conv2d(in_channels: int, out_channels: int, factor: int = 2) -> torch.nn.ConvTranspose2d:
    """A learned ``factor``x upsampling layer (kernel = stride = ``factor``, no overlap).

    With kernel size equal to the stride the copies of the kernel tile the output without
    overlapping, which avoids the checkerboard artefacts of overlapping strided kernels.
    """
    return torch.nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor)


# ---------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------

def _labels(pred: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Accept predicted labels (same shape as ``target``) or logits (one extra class dim)."""
    if not torch.is_tensor(pred) or not torch.is_tensor(target):
        raise ValueError("segmentation metrics take torch tensors (pred, target)")
    if pred.dim() == target.dim() + 1 and pred.is_floating_point():
        pred = pred.argmax(dim=-3)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} must "
                         f"have the same shape (or pass logits with one extra class dimension)")
    return pred.long(), target.long()


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: Optional[int] = None) -> torch.Tensor:
    """Pixel counts ``cm[t, p]``: how many pixels of true class t were predicted as p."""
    pred, target = _labels(pred, target)
    pred, target = pred.flatten(), target.flatten()
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes) | (pred < 0) | (pred >= num_classes)
    if bad.any():
        raise ValueError(f"labels must lie in [0, {num_classes}); found "
                         f"{sorted(set(torch.cat([pred[bad], target[bad]]).tolist()))[:5]}")
    return torch.bincount(target * num_classes + pred,
                          minlength=num_classes ** 2).reshape(num_classes, num_classes)


def pixel_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of pixels labelled correctly (dominated by the background on sparse scenes)."""
    pred, target = _labels(pred, target)
    return (pred == target).float().mean().item()


def mean_pixel_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Per-class pixel accuracy (recall), averaged over the classes present in the target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    support = cm.sum(dim=1)
    present = support > 0
    return (cm.diag()[present] / support[present]).mean().item()


def per_class_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from both pred and target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean intersection-over-union over the classes that appear in pred or target.

    Computed from one confusion matrix accumulated over all pixels given (the usual
    dataset-level definition), background included.
    """
    iou = per_class_iou(pred, target, num_classes)
    return iou[~iou.isnan()].mean().item()


def _erode(mask: torch.Tensor) -> torch.Tensor:
    """3x3 binary erosion of [N, H, W] bool masks; the image border counts as 'same'."""
    m = F.pad(mask[:, None].float(), (1, 1, 1, 1), mode="replicate")
    return (-F.max_pool2d(-m, 3, stride=1))[:, 0] > 0.5


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return F.max_pool2d(mask[:, None].float(), k, stride=1, padding=radius)[:, 0] > 0.5


def mask_boundary(mask: torch.Tensor) -> torch.Tensor:
    """Boundary pixels of binary masks [..., H, W]: the mask minus its 3x3 erosion."""
    shape = mask.shape
    m = mask.reshape(-1, *shape[-2:]).bool()
    return (m & ~_erode(m)).reshape(shape)


def boundary_f1(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                tolerance: int = 2) -> float:
    """Boundary F1 (the BF score of Csurka et al., 2013): how well the *outlines* agree.

    For every image and every class present in it, the boundary of the class mask is its
    pixels minus the mask's morphological erosion. A predicted boundary pixel counts as
    correct (precision) if a true boundary pixel lies within ``tolerance`` pixels
    (Chebyshev distance), and vice versa for recall. F1 per (image, class), averaged.
    Region metrics like mIoU hardly notice a one-pixel-wide error band around every
    object; this metric is made of nothing else.
    """
    pred, target = _labels(pred, target)
    if pred.dim() == 2:
        pred, target = pred[None], target[None]
    scores = []
    for p_img, t_img in zip(pred, target):
        classes = torch.unique(torch.cat([p_img.flatten(), t_img.flatten()]))
        pm = torch.stack([p_img == c for c in classes])
        tm = torch.stack([t_img == c for c in classes])
        pb, tb = mask_boundary(pm), mask_boundary(tm)
        pb_near, tb_near = _dilate(pb, tolerance), _dilate(tb, tolerance)
        for k in range(len(classes)):
            n_p, n_t = pb[k].sum().item(), tb[k].sum().item()
            if n_p == 0 and n_t == 0:
                continue                      # a class filling the whole image: no outline
            if n_p == 0 or n_t == 0:
                scores.append(0.0)
                continue
            precision = (pb[k] & tb_near[k]).sum().item() / n_p
            recall = (tb[k] & pb_near[k]).sum().item() / n_t
            scores.append(0.0 if precision + recall == 0 else
                          2 * precision * recall / (precision + recall))
    return float(sum(scores) / len(scores)) if scores else 1.0


def dice_loss(logits: torch.Tensor, target: torch.Tensor, num_classes: Optional[int] = None,
              smooth: float = 1.0) -> torch.Tensor:
    """Soft multiclass Dice loss: 1 - mean over classes of 2|P∩T| / (|P| + |T|).

    ``P`` are the softmax probabilities and ``T`` the one-hot target, summed over the
    batch and all pixels, so the loss is differentiable. Every class weighs the same
    however few pixels it has – the reason to use Dice (often added to cross-entropy) on
    scenes that are mostly background. ``smooth`` keeps classes absent from both finite.
    """
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(f"dice_loss expects logits [B, C, H, W] and target [B, H, W]; got "
                         f"{tuple(logits.shape)} and {tuple(target.shape)}")
    num_classes = num_classes or logits.shape[1]
    probs = logits.softmax(dim=1)
    onehot = F.one_hot(target.long(), num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def dice_score(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Hard Dice (= F1 of pixels) per class, averaged over classes in pred or target."""
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    present = denom > 0
    return (2 * tp[present] / denom[present]).mean().item()


def segmentation_metrics(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                         tolerance: int = 2) -> dict:
    """All region and boundary metrics of a batch of predictions, as one dict."""
    return {
        "pixel_acc": pixel_accuracy(pred, target),
        "mean_pixel_acc": mean_pixel_accuracy(pred, target, num_classes),
        "miou": miou(pred, target, num_classes),
        "boundary_f1": boundary_f1(pred, target, num_classes, tolerance),
        "dice": dice_score(pred, target, num_classes),
    }


# ---------------------------------------------------------------------------------------
# Data preparation
# ---------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """(image - mean) / std per channel: what ImageNet-pretrained backbones were trained on."""
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    if image.shape[-3] != m.shape[0]:
        raise ValueError(f"normalize: image has {image.shape[-3]} channels but mean/std have {m.shape[0]}")
    return (image - m) / s


def denormalize(image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return image * s + m


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size) -> Tuple[torch.Tensor, torch.Tensor]:
    """Resize an image bilinearly and its mask with nearest neighbour to ``size`` (int or (h, w)).

    Bilinear interpolation of a mask would average class ids: halfway between class 1
    and class 3 it would invent class 2. Nearest neighbour only ever copies real labels.
    Works on [3, H, W] + [H, W] or batched [B, 3, H, W] + [B, H, W].
    """
    size = (size, size) if isinstance(size, int) else tuple(size)
    batched = image.dim() == 4
    img = image if batched else image[None]
    msk = mask if batched else mask[None]
    if img.shape[-2:] != msk.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
    msk = F.interpolate(msk[:, None].float(), size=size, mode="nearest")[:, 0].to(mask.dtype)
    return (img, msk) if batched else (img[0], msk[0])


class JointAugment:
    """Random augmentation applied consistently to an image and its mask.

    Geometric changes – random crop, horizontal flip, rotation – move image and mask
    together (the mask is rotated with nearest-neighbour interpolation and filled with
    background); photometric changes – colour jitter and Gaussian blur – touch the image
    only, since they do not move any object. Call with a ``torch.Generator`` for
    reproducible draws: ``image, mask = aug(image, mask, generator)``.
    """

    def __init__(self, crop_size: Optional[int] = None, flip: bool = True,
                 max_rotation: float = 15.0, color_jitter: float = 0.2, blur_prob: float = 0.3,
                 blur_sigma: Tuple[float, float] = (0.3, 1.2)):
        self.crop_size, self.flip, self.max_rotation = crop_size, flip, max_rotation
        self.color_jitter, self.blur_prob, self.blur_sigma = color_jitter, blur_prob, blur_sigma

    def __repr__(self):
        return (f"JointAugment(crop_size={self.crop_size}, flip={self.flip}, "
                f"max_rotation={self.max_rotation}, color_jitter={self.color_jitter}, "
                f"blur_prob={self.blur_prob})")

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        if image.dim() != 3 or mask.dim() != 2 or image.shape[-2:] != mask.shape:
            raise ValueError(f"JointAugment expects image [C, H, W] and mask [H, W] of the same "
                             f"size; got {tuple(image.shape)} and {tuple(mask.shape)}")
        g = generator

        def u() -> float:
            return torch.rand((), generator=g).item()

        h, w = mask.shape
        if self.crop_size is not None:
            c = self.crop_size
            if c > min(h, w):
                raise ValueError(f"crop_size {c} is larger than the image {h}x{w}")
            top, left = int(u() * (h - c + 1)), int(u() * (w - c + 1))
            image, mask = image[:, top:top + c, left:left + c], mask[top:top + c, left:left + c]
        if self.flip and u() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        if self.max_rotation > 0:
            angle = (2 * u() - 1) * self.max_rotation
            image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
            mask = TF.rotate(mask[None], angle, interpolation=InterpolationMode.NEAREST, fill=0)[0]
        if self.color_jitter > 0:
            j = self.color_jitter
            brightness = 1 + (2 * u() - 1) * j
            contrast = 1 + (2 * u() - 1) * j
            saturation = 1 + (2 * u() - 1) * j
            image = TF.adjust_brightness(image, brightness)
            image = TF.adjust_contrast(image, contrast)
            image = TF.adjust_saturation(image, saturation)
        if self.blur_prob > 0 and u() < self.blur_prob:
            lo, hi = self.blur_sigma
            sigma = lo + u() * (hi - lo)
            k = 2 * math.ceil(2 * sigma) + 1
            image = TF.gaussian_blur(image, [k, k], [sigma, sigma])
        return image.clamp(0, 1), mask


# ---------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------

def palette(num_classes: int) -> torch.Tensor:
    """RGB colours [num_classes, 3] in [0, 1]: black background, distinct hues for classes."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if num_classes <= 11 else "tab20"]
    colours = [(0.0, 0.0, 0.0)] + [tuple(cmap(i % cmap.N)[:3]) for i in range(num_classes - 1)]
    return torch.tensor(colours, dtype=torch.float32)


def colorize(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """A label map [H, W] as an RGB image [H, W, 3] (for ``plt.imshow``)."""
    return palette(num_classes)[mask.long().clamp(0, num_classes - 1)]


def error_overlay(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The image, darkened, with wrongly labelled pixels in red: where a segmenter errs."""
    out = 0.35 * image.permute(1, 2, 0).clone()
    wrong = pred != target
    out[wrong] = torch.tensor([1.0, 0.1, 0.1])
    return out


def show_segmentations(images: torch.Tensor, masks: dict, num_classes: int, target=None,
                       errors: bool = False, max_images: int = 4, size: float = 2.2):
    """A grid: one row per image; columns = the image, then each entry of ``masks``.

    ``masks`` maps a column title to label maps [N, H, W] (the ground truth and/or
    predictions). With ``errors=True`` (and ``target``) predictions are drawn as error
    overlays instead of colours. Returns the matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = min(max_images, len(images))
    cols = 1 + len(masks)
    fig, axes = plt.subplots(n, cols, figsize=(size * cols, size * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i].permute(1, 2, 0).clamp(0, 1).numpy())
        axes[0, 0].set_title("image")
        for j, (title, m) in enumerate(masks.items(), start=1):
            if errors and target is not None and m is not target:
                axes[i, j].imshow(error_overlay(images[i], m[i], target[i]).numpy())
            else:
                axes[i, j].imshow(colorize(m[i], num_classes).numpy(), interpolation="nearest")
            axes[0, j].set_title(title)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_training_curves(records: dict, size=(10, 3.2)):
    """Training loss and validation mIoU against step for several training records."""
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=size)
    for name, rec in records.items():
        hist = rec["history"]
        ax_loss.plot([h["step"] for h in hist], [h.get("ce", h["loss"]) for h in hist], label=name, alpha=0.8)
        val = [(h["step"], h["val_miou"]) for h in hist if "val_miou" in h]
        if val:
            ax_val.plot(*zip(*val), marker="o", label=name)
    ax_loss.set(xlabel="step", ylabel="training cross-entropy", yscale="log")
    ax_val.set(xlabel="step", ylabel="validation mIoU")
    ax_val.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_generator_analogy(image: torch.Tensor, samples: Sequence[torch.Tensor], num_classes: int,
                           size: float = 1.9):
    """The segmenter and the codec's decoder side by side, as conditional generators.

    Top row (computed): image -> conditional segmenter -> masks it generates (e.g. samples
    of a VAE segmenter). Bottom row (a diagram): latent y_hat read from the bitstream ->
    the codec's synthesis transform -> decoded image x_hat, whose target is the image.
    """
    import matplotlib.pyplot as plt

    n = max(2, len(samples))
    fig, axes = plt.subplots(2, n + 2, figsize=(size * (n + 2), 2 * size + 0.5))
    box = dict(ha="center", va="center", fontsize=9)
    axes[0, 0].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[0, 0].set_title("condition: image $x$", fontsize=8)
    axes[0, 1].text(0.5, 0.5, "segmenter\n(generator of\n$p(\\mathrm{mask} \\mid x)$)",
                    bbox=dict(boxstyle="round", fc="#dde8f5"), **box)
    for k, s in enumerate(samples):
        axes[0, k + 2].imshow(colorize(s, num_classes).numpy(), interpolation="nearest")
        axes[0, k + 2].set_title(f"generated mask {k + 1}", fontsize=8)
    axes[1, 0].text(0.5, 0.5, "condition:\nlatent $\\hat y$\n(from the bits)",
                    bbox=dict(boxstyle="round", fc="#eeeeee"), **box)
    axes[1, 1].text(0.5, 0.5, "codec decoder\n$\\hat x = D(\\hat y)$\n(generator of the image)",
                    bbox=dict(boxstyle="round", fc="#f5e6dd"), **box)
    axes[1, 2].imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    axes[1, 2].set_title("its target: the image", fontsize=8)
    axes[1, 3].text(0.5, 0.5, "ICM: judged by a\nmachine's loss on $\\hat x$,\nnot only by MSE",
                    bbox=dict(boxstyle="round", fc="#e6f5dd"), **box)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in (axes[0, 1], axes[1, 0], axes[1, 1], axes[1, 3]):
        ax.axis("off")
    for k in range(4, n + 2):
        axes[1, k].set_visible(False)
    for k in range(len(samples) + 2, n + 2):
        axes[0, k].set_visible(False)
    for row in (0, 1):
        for k in (0, 1):
            axes[row, k].annotate("", xy=(1.12, 0.5), xytext=(0.98, 0.5), xycoords="axes fraction",
                                  arrowprops=dict(arrowstyle="->", lw=1.5))
    fig.tight_layout()
    return fig
