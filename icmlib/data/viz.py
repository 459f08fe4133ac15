"""Pictures of the data: annotations drawn over images, and the premise of the book in one image.

:func:`draw_annotations` shows a target (or a detector's predictions) on matplotlib axes;
:func:`annotation_grid` a few images of a dataset; :func:`blur_background` keeps the objects
and smooths everything else away -- what a detector needs, and what an ICM codec may learn
to keep.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from icmlib.data.coco import CocoDataset
from icmlib.data.world import CATEGORIES


def blur_background(image: torch.Tensor, target: Dict[str, Any], sigma: float = 3.0,
                    margin: int = 1) -> torch.Tensor:
    """``image`` with everything but the objects blurred (Gaussian, ``sigma`` pixels).

    An illustration of the paper's premise, not part of any codec: the objects (and a
    ``margin`` of pixels around them) are kept exactly, the background's texture,
    stripes, clutter and noise are smoothed away. A detector sees the same objects,
    but an ordinary codec needs far fewer bits for this image -- the saving an ICM
    codec can learn to make.
    """
    from scipy import ndimage

    x = torch.as_tensor(image).detach().cpu().float()
    keep = torch.as_tensor(target["semantic"]).cpu().numpy() > 0
    if margin > 0:
        keep = ndimage.binary_dilation(keep, iterations=int(margin))
    arr = x.numpy()
    smooth = np.stack([ndimage.gaussian_filter(ch, sigma, mode="nearest") for ch in arr])
    out = np.where(keep[None], arr, smooth)
    return torch.from_numpy(out.astype(np.float32))


# ---- drawing ---------------------------------------------------------------------------
def _category_colour(cat_id: int):
    import matplotlib

    return matplotlib.colormaps["tab10"](int(cat_id) % 10)


def _tinted(image: torch.Tensor, masks, cats, alpha: float):
    """``image`` as an [H, W, 3] array with each mask tinted in its category's colour, and
    the ``(region, colour)`` of each non-empty mask (masks may be probabilities)."""
    shown = torch.as_tensor(image).detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    shown = shown.copy()
    m = torch.as_tensor(masks).detach().cpu().float()
    if m.dim() == 4:  # Mask R-CNN predictions: [K, 1, H, W]
        m = m[:, 0]
    regions = []
    for k, cat in enumerate(cats):
        region = (m[k] >= 0.5).numpy()
        colour = np.array(_category_colour(cat)[:3])
        shown[region] = (1 - alpha) * shown[region] + alpha * colour
        if region.any():
            regions.append((region, colour))
    return shown, regions


def _draw_boxes(ax, boxes, cats, names: Dict[int, str], scores, labels: bool) -> None:
    """Each box outlined in its category's colour, with the category's name (and score)."""
    from matplotlib.patches import Rectangle

    for k, (x0, y0, x1, y1) in enumerate(torch.as_tensor(boxes).detach().cpu().tolist()):
        cat = cats[k] if k < len(cats) else 0
        colour = _category_colour(cat)
        # boxes are pixel edges; imshow puts pixel centres on integers
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor=colour, linewidth=1.5))
        if labels:
            text = names.get(cat, str(cat))
            if scores is not None:
                text += f" {float(scores[k]):.2f}"
            ax.text(x0 - 0.5, y0 - 1.0, text, fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))


def draw_annotations(ax, image: torch.Tensor, target: Optional[Dict[str, Any]] = None,
                     categories: Union[Sequence[Dict[str, Any]], Dict[int, str], None] = None,
                     *, masks: bool = True, boxes: bool = True, labels: bool = True,
                     scores: Optional[torch.Tensor] = None, alpha: float = 0.45,
                     contours: bool = True, title: Optional[str] = None,
                     title_size: float = 9):
    """Show ``image`` on the matplotlib axes ``ax`` with ``target``'s masks (tinted by
    category and outlined), boxes and category names. ``categories`` is a COCO category list or an
    ``{id: name}`` dict (default: the synthetic world's). Works for predictions too
    (pass their ``scores`` to print them, masks may be float probabilities)."""
    if categories is None:
        categories = CATEGORIES
    names = categories if isinstance(categories, dict) else {c["id"]: c["name"] for c in categories}
    target = target or {}
    cats = torch.as_tensor(target.get("labels", torch.zeros(0))).cpu().tolist()
    if masks and "masks" in target and len(cats):
        shown, regions = _tinted(image, target["masks"], cats, alpha)
    else:
        shown, regions = _tinted(image, torch.zeros(0, 1, 1), [], alpha)
    ax.imshow(shown, interpolation="nearest")
    for region, colour in regions if contours else []:
        ax.contour(region.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
    if boxes and "boxes" in target:
        _draw_boxes(ax, target["boxes"], cats, names, scores, labels)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=title_size)
    return ax


def annotation_grid(dataset: CocoDataset, indices: Optional[Sequence[int]] = None,
                    cols: int = 4, size: float = 2.6, **kwargs):
    """A figure with ``dataset[i]`` for each index (default: the first ``cols`` * 2)
    drawn by :func:`draw_annotations`. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if indices is None:
        indices = range(min(len(dataset), 2 * cols))
    indices = list(indices)
    rows = max(1, (len(indices) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        image, target = dataset[i]
        ax.axis("on")
        draw_annotations(ax, image, target, dataset.categories,
                         title=f"image {target['image_id']}: {len(target['labels'])} objects",
                         **kwargs)
    fig.tight_layout()
    return fig
