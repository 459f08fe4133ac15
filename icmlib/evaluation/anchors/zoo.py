"""CompressAI's pretrained zoo models as learned anchors, downloaded once or never.

Weights come from torch.hub's cache (where they are is :func:`icmlib.codec.zoo_weights`, which
``icm --model zoo:NAME:QUALITY`` uses too); with no network the anchor is unavailable with a
message naming the file to put in place, never a crash or a silent download.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

from icmlib.codec import zoo_weights
from icmlib.evaluation.anchors.base import AnchorUnavailable
from icmlib.evaluation.anchors.learned import LearnedCodec


def compressai_zoo(name: str, quality: int, metric: str = "mse", offline: Optional[bool] = None):
    """A pretrained CompressAI zoo model (e.g. ``"bmshj2018-hyperprior"``, ``"mbt2018-mean"``,
    ``"cheng2020-anchor"``), in eval mode with its entropy tables ready.

    Weights come from torch.hub's cache (``~/.cache/torch/hub/checkpoints``) or are downloaded
    there. With no network (or ``offline=True``, or ``$ICM_OFFLINE=1``) and no cached file,
    raises ``AnchorUnavailable`` naming the URL and the file to put in place.
    """
    from compressai import zoo
    url, cached = zoo_weights(name, quality, metric)
    if offline is None:
        from icmlib.data.download import downloads_off

        offline = downloads_off()
    if not os.path.isfile(cached) and offline:
        raise AnchorUnavailable(
            f"CompressAI weights for {name} (quality {quality}, {metric}) are not cached and "
            f"downloads are off: it would download {url} to {cached}")
    if not os.path.isfile(cached):
        from icmlib.data import hub_checkpoint

        try:  # with a timeout of its own: socket's process-wide default is left alone
            hub_checkpoint(url)
        except OSError as err:  # URLError, HTTPError, timeouts, a damaged download
            raise AnchorUnavailable(
                f"could not download CompressAI weights for {name} (quality {quality}, "
                f"{metric}) from {url} ({type(err).__name__}: {err}). Download that file to "
                f"{cached} on a machine with network access") from None
    net = zoo.image_models[name](quality=quality, metric=metric, pretrained=True,
                                 progress=False)
    net.eval()
    net.update(force=False)
    return net


class _ZooLoader:
    """Zero-argument loader of one zoo model, with an ``available`` that never downloads."""

    def __init__(self, name: str, quality: int, metric: str):
        self.name, self.quality, self.metric = name, quality, metric
        self.url = zoo_weights(name, quality, metric)[0]

    def available(self) -> Tuple[bool, str]:
        cached = zoo_weights(self.name, self.quality, self.metric)[1]
        if os.path.isfile(cached):
            return True, str(cached)
        return False, (f"weights not cached: run icmlib.evaluation.anchors.compressai_zoo({self.name!r}, "
                       f"{self.quality}) with network access once (downloads {self.url})")

    def __call__(self):
        return compressai_zoo(self.name, self.quality, self.metric)


def compressai_zoo_codec(name: str = "bmshj2018-hyperprior", qualities: Sequence[int] = (1, 2, 3, 4),
                         metric: str = "mse") -> LearnedCodec:
    """A ``LearnedCodec`` over CompressAI zoo models at the given quality levels (1 = lowest
    rate). Weights load lazily; ``available()`` is False until they are cached."""
    container = "raw" if "factorized" in name else "icm"  # one stream: not an .icm layout
    return LearnedCodec({q: _ZooLoader(name, q, metric) for q in qualities}, name=name,
                        container=container)
