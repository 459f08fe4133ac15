"""An autoregressive segmenter: PixelCNN's masked convolutions over the label map.

The U-Net predicts every pixel's label *independently* given the image. An autoregressive
model factorises the joint distribution of the label map in raster order,

    p(y | x) = Π_i p(y_i | y_<i, x),

so each label is predicted from the image *and* from the labels already decided above
and to its left. The conditional is a PixelCNN (van den Oord et al. 2016): convolutions
whose kernels are masked so that position i never sees i itself or anything after it
(mask 'A' in the first layer, which also hides the centre; mask 'B' afterwards). The same
layer, :class:`compressai.layers.MaskedConv2d`, is the codec's context model on ŷ.

* **Training** is parallel, by *teacher forcing*: the ground-truth label map goes in, the
  masks make every output see only its past, one pass scores every position.
* **Sampling** is serial: one network evaluation per label, in raster order, each
  feeding the labels chosen so far back in. That is the price this module measures.

To keep that price teachable on a CPU the labels live on a grid ``factor`` times coarser
than the image (a 96 x 96 image: 24 x 24 = 576 evaluations); the coarse labels are
upsampled for scoring, which caps the mIoU the model can reach
(:func:`grid_ceiling_miou` measures that cap). Each evaluation only computes the few rows
that can influence the current label (the masked stack's receptive field), which gives
the same numbers as the whole grid at a fraction of the cost.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from compressai.layers import MaskedConv2d

from icmlib.cache import train_or_load
from icmlib.presets import Preset, get_preset
from icmlib.segmentation.data import SegmentationError, segmentation_data, segmentation_num_classes
from icmlib.segmentation.metrics import miou
from icmlib.segmentation.train import (SEG_VERSION, _cpu_state, _world_config, test_metrics,
                                       train_segmenter, training_device)


#: How much coarser the label grid is than the image (a 96-pixel image: a 24 x 24 grid).
AR_FACTOR = 4


def coarse_labels(masks: torch.Tensor, factor: int, num_classes: int) -> torch.Tensor:
    """The label map on a grid ``factor`` times coarser: each cell's most frequent label."""
    if masks.shape[-1] % factor or masks.shape[-2] % factor:
        raise SegmentationError(f"mask size {tuple(masks.shape[-2:])} is not a multiple of {factor}")
    onehot = F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, factor).argmax(1)


def _encoder(in_channels: int, width: int, factor: int) -> nn.Sequential:
    """Image → features on the label grid: stride-2 stages down to 1/factor, then dilated
    3x3 convolutions that widen the view without shrinking the grid."""
    layers, ch = [], in_channels
    for _ in range(max(0, factor.bit_length() - 1)):
        layers += [nn.Conv2d(ch, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                   nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
    for d in (2, 4):
        layers += [nn.Conv2d(ch, width, 3, padding=d, dilation=d), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        ch = width
    return nn.Sequential(*layers)


class AutoregressiveSegmenter(nn.Module):
    """A PixelCNN over the coarse label map, conditioned on image features.

    ``logits(images, labels)``: teacher forcing, one parallel pass, logits ``[B, K, h, w]``
    on the label grid, position (i, j) seeing only the labels before it in raster order.
    ``sample(images)``: the labels, chosen one position at a time (greedy or sampled).
    ``forward(images)``: the sampled labels upsampled to the image, as one-hot scores, so
    the U-Net's ``predict`` and metrics work unchanged.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, factor: int = 4,
                 layers: int = 4):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise SegmentationError(f"factor must be a power of two, got {factor}")
        self.num_classes, self.factor = num_classes, factor
        self.encoder = _encoder(in_channels, width, factor)
        self.first = MaskedConv2d(num_classes, width, 5, padding=2, mask_type="A")
        self.masked = nn.ModuleList(MaskedConv2d(width, width, 3, padding=1, mask_type="B")
                                    for _ in range(layers))
        self.condition = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers + 1))
        self.head = nn.Conv2d(width, num_classes, 1)
        #: rows above a position that can reach it (the masked stack's upward view)
        self.rows_above = 2 + layers

    def _stack(self, features: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """The masked stack: labels through masked convolutions, the image's features added
        (1x1, unmasked: the whole image is known) before every nonlinearity."""
        h = F.relu(self.first(onehot) + self.condition[0](features))
        for conv, cond in zip(self.masked, self.condition[1:]):
            h = h + F.relu(conv(h) + cond(features))
        return self.head(h)

    def logits(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits on the label grid given the true coarse ``labels``."""
        onehot = F.one_hot(labels.long(), self.num_classes).permute(0, 3, 1, 2).float()
        return self._stack(self.encoder(images), onehot)

    @torch.no_grad()
    def sample(self, images: torch.Tensor, greedy: bool = True, temperature: float = 1.0,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, int]:
        """Labels ``[B, h, w]`` in raster order, and the number of network evaluations.

        Each position runs the masked stack on the strip of rows that can reach it (its
        receptive field), reads its logits, and picks the argmax (``greedy``) or a sample
        at ``temperature``. All images of the batch advance together.
        """
        features = self.encoder(images)
        b, _, h, w = features.shape
        onehot = torch.zeros(b, self.num_classes, h, w, device=images.device)
        labels = torch.zeros(b, h, w, dtype=torch.long, device=images.device)
        evaluations = 0
        for i in range(h):
            top = max(0, i - self.rows_above)
            for j in range(w):
                logits = self._stack(features[:, :, top:i + 1], onehot[:, :, top:i + 1])[:, :, -1, j]
                evaluations += 1
                if greedy:
                    choice = logits.argmax(1)
                else:
                    probs = F.softmax(logits / temperature, dim=1)
                    choice = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                labels[:, i, j] = choice
                onehot[:, :, i, j] = F.one_hot(choice, self.num_classes).float()
        return labels, evaluations

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        labels, _ = self.sample(images)
        up = labels.repeat_interleave(self.factor, 1).repeat_interleave(self.factor, 2)
        return F.one_hot(up, self.num_classes).permute(0, 3, 1, 2).float()


def teacher_forcing_loss(model: AutoregressiveSegmenter, images: torch.Tensor,
                         masks: torch.Tensor):
    """Cross-entropy of every grid position given the *true* labels before it:
    ``loss(model, images, masks) -> (loss, logs)``, the form ``train_segmenter`` takes."""
    target = coarse_labels(masks, model.factor, model.num_classes)
    logits = model.logits(images, target)
    ce = F.cross_entropy(logits, target)
    return ce, {"ce": ce.item()}


def grid_ceiling_miou(masks: torch.Tensor, factor: int, num_classes: int) -> float:
    """The mIoU of the *true* coarse labels upsampled: the best any model on this grid can do."""
    grid = coarse_labels(masks, factor, num_classes)
    up = grid.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    return float(miou(up, masks, num_classes))


def autoregressive_segmenter_for(preset: Union[Preset, str, None] = None, seed: int = 0,
                                 progress: bool = True, force: bool = False,
                                 steps: Optional[int] = None
                                 ) -> Tuple[AutoregressiveSegmenter, dict]:
    """Train (once per configuration) or load the autoregressive segmenter.

    Same data, batch size, learning rate and steps (``preset.seg_steps``) as the U-Net of
    :func:`~icmlib.segmentation.segmenter_for`, on the same loop (``train_segmenter``) with
    :func:`teacher_forcing_loss`. No validation during training: validating means
    sampling, which is the slow part; the weights of the last step are kept. The record's
    ``test`` holds the metrics on the test split (sampled labels, upsampled), computed
    when the model is loaded, as :func:`~icmlib.segmentation.segmenter_for` does.
    """
    preset = get_preset(preset)
    num_classes = segmentation_num_classes(preset)
    factor = AR_FACTOR
    steps = steps or preset.seg_steps
    config = {"kind": "autoregressive", "seed": seed, "version": SEG_VERSION, "ar_version": "1",
              "num_classes": num_classes, "steps": steps, "batch_size": preset.seg_batch_size,
              "lr": preset.seg_lr, "width": 2 * preset.seg_width, "factor": factor,
              **_world_config(preset)}

    def train() -> dict:
        torch.manual_seed(seed)
        model = AutoregressiveSegmenter(3, num_classes, 2 * preset.seg_width, factor)
        model.to(training_device(preset))
        result = train_segmenter(model, segmentation_data(preset, "train"), None, steps=steps,
                                 batch_size=preset.seg_batch_size, loss=teacher_forcing_loss,
                                 lr=preset.seg_lr, num_classes=num_classes, seed=seed,
                                 progress=progress, desc="autoregressive")
        return {**result, "state_dict": _cpu_state(model), "config": config}

    record = train_or_load("segmenter", config, train, force=force)
    model = AutoregressiveSegmenter(3, num_classes, 2 * preset.seg_width, factor)
    model.load_state_dict(record["state_dict"])
    model.eval()
    return model, {**record, "test": test_metrics(model, preset)}


def sampling_cost(model: nn.Module, images: torch.Tensor) -> dict:
    """Wall time per image and network evaluations of one prediction, one image at a time.

    For an :class:`AutoregressiveSegmenter`: one evaluation per label-grid position; for
    any other segmenter (the U-Net): one forward pass."""
    model.eval()
    seconds, evaluations = 0.0, 0
    with torch.no_grad():
        for x in images.split(1):
            t0 = time.perf_counter()
            if isinstance(model, AutoregressiveSegmenter):
                _, n = model.sample(x)
            else:
                model(x)
                n = 1
            seconds += time.perf_counter() - t0
            evaluations += n
    return {"seconds/image": seconds / len(images), "evaluations/image": evaluations / len(images)}
