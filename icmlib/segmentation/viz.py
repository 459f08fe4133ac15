"""Pictures and tables of segmentations: coloured label maps, error overlays, training curves.

:func:`colorize` draws a label map with one colour per class (:func:`palette`),
:func:`error_overlay` marks the wrongly labelled pixels, :func:`show_segmentations` puts
images and masks in a grid, :func:`plot_training_curves` compares training records,
:func:`plot_generator_analogy` sets a segmenter beside the codec's decoder, and
:func:`results_table` makes the chapters' metric tables.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

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


def results_table(results: Dict[str, dict], columns: Optional[Sequence[str]] = None):
    """A pandas DataFrame with one row per model (``results`` maps name -> metrics dict)."""
    import pandas as pd

    df = pd.DataFrame.from_dict(results, orient="index")
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df
