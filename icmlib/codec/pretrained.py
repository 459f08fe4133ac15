"""Which codec the ``icm`` command uses: a checkpoint or a zoo codec given with ``--model``,
or the default; and which of a variable-rate codec's rate points (``--quality``).

The default codec is the MSE baseline that the ``cpu`` reproduction reports, at its four
rate points of ``rd_lambdas``: one variable-rate codec of the shipped set
(``icmlib/weights/shipped/``, installed as package data, sha256-checked on load), trained
to convergence on the synthetic world (20000 steps, then 4000 as a variable-rate codec,
then 1000 on whole images), so ``icm encode`` works on a fresh install with no training
step. Every checkpoint is in ``icmlib.codec.model``'s format (``save_codec`` /
``load_codec``; the shipped set's compact form too). ``zoo:NAME:QUALITY`` names one of
CompressAI's pretrained codecs instead (:mod:`icmlib.codec.zoo`), trained on natural photos.
:func:`describe_codec` says which codec is in use and what it learned from.

A variable-rate codec (:class:`~icmlib.codec.model.ICMCodec` with ``rates = R``) codes at
quality 1 (its fewest bits, rate point 0) to R. Its rate points have different
fingerprints, so the decoder needs no quality: :func:`decoder_for` finds the rate point
that wrote the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import torch.nn as nn

from icmlib.codec.model import AtRate, ICMCodec, at_rate, fingerprint, load_codec
from icmlib.shipped import ShippedCheckpointError, load_entry

#: the default codec in the shipped set's manifest: the ``cpu`` reproduction's MSE baseline
#: of ``rd_lambdas`` (``icmlib.training.baseline_run(preset="cpu", rate_index="all")``;
#: ``tests/test_cli.py`` checks that it is still the one the reproduction loads)
DEFAULT_ENTRY = "codec/4afb99236ef1"
#: the default codec's quality when none is asked for: λ = 0.025, 25.7 dB at 0.63 bpp on the
#: synthetic test images (``data/results/cpu``)
DEFAULT_QUALITY = 3


class ModelError(ValueError):
    """The codec asked for cannot be loaded (missing file, not a codec checkpoint, no such
    quality)."""


def default_codec(quality: Optional[int] = None) -> nn.Module:
    """The codec shipped with icmlib at ``quality`` (default :data:`DEFAULT_QUALITY`), in
    eval mode with its CDF tables built."""
    net = _default_network()
    return at_quality(net, DEFAULT_QUALITY if quality is None else quality)


def _default_network() -> ICMCodec:
    try:
        net = load_codec(load_entry(DEFAULT_ENTRY))
    except ShippedCheckpointError as e:
        raise ModelError(
            f"the default codec cannot be loaded: {e}. It ships as package data in "
            f"icmlib/weights/shipped/; reinstall icmlib, or pass a codec checkpoint with "
            f"--model CKPT (any file written by icmlib.codec.model.save_codec)") from None
    net.meta = {**getattr(net, "meta", {}), "default": True}
    return net


def resolve_codec(model: Optional[Union[str, Path]] = None,
                  download: Optional[Callable[[str], Path]] = None,
                  quality: Optional[int] = None) -> nn.Module:
    """``--model``'s value as a codec that codes at one rate: a checkpoint path,
    ``zoo:NAME:QUALITY`` (a CompressAI zoo codec, fetched with ``download(url)`` when not
    cached: :func:`icmlib.codec.zoo.zoo_codec`), or ``None`` for the default. ``quality``
    picks a variable-rate codec's rate point (default: the default codec's
    :data:`DEFAULT_QUALITY`, any other codec's highest)."""
    if _is_zoo(model):
        from icmlib.codec.zoo import zoo_codec

        if quality is not None:
            raise ModelError(f"--quality does not apply to {model}: a zoo codec's quality is "
                             f"part of its name (zoo:NAME:QUALITY)")
        return zoo_codec(model, download=download)
    net = _network(model)
    return at_quality(net, _default_quality(model, net) if quality is None else quality)


def decoder_for(model: Optional[Union[str, Path]], file_fingerprint: bytes,
                download: Optional[Callable[[str], Path]] = None) -> nn.Module:
    """The codec of ``--model`` at the rate point whose fingerprint is the file's, so a
    file decodes without being told its quality. When none matches, the codec as
    :func:`resolve_codec` gives it: decoding then refuses the file with the model check's
    message."""
    if _is_zoo(model):
        return resolve_codec(model, download=download)
    net = _network(model)
    for quality in qualities(net):
        candidate = at_quality(net, quality)
        if fingerprint(candidate) == bytes(file_fingerprint):
            return candidate
    return at_quality(net, _default_quality(model, net))


def _is_zoo(model) -> bool:
    return isinstance(model, str) and model.startswith("zoo:")


def _network(model) -> ICMCodec:
    """The whole codec of ``--model`` (all its rate points): the default, or a checkpoint."""
    return _default_network() if model is None else _load(Path(model))


def _default_quality(model, net) -> int:
    """The default codec's :data:`DEFAULT_QUALITY`; any other codec's highest quality."""
    return DEFAULT_QUALITY if model is None else max(qualities(net), default=1)


def qualities(net: nn.Module) -> range:
    """The qualities ``net`` codes at: 1..R for a variable-rate codec, none for one rate."""
    return range(1, getattr(net, "rates", 0) + 1)


def at_quality(net: ICMCodec, quality: int) -> nn.Module:
    """``net`` at ``quality`` (1 = fewest bits): the view of rate point ``quality - 1`` of a
    variable-rate codec, or a one-rate codec itself (quality 1 only)."""
    rates = getattr(net, "rates", 0)
    if not rates:
        if quality != 1:
            raise ModelError(f"--quality {quality}: this codec has a single rate point "
                             f"(quality 1); a variable-rate codec has several")
        return net
    if not 1 <= quality <= rates:
        raise ModelError(f"--quality {quality}: this codec has qualities 1 (fewest bits) "
                         f"to {rates}")
    return at_rate(net, quality - 1)


def describe_codec(net) -> str:
    """One line: which codec this is, at which quality, and what it was trained on (from its
    ``meta``)."""
    meta = getattr(net, "meta", None) or {}
    if meta.get("source") == "compressai-zoo":
        return (f"CompressAI zoo {meta['name']}, quality {meta['quality']} ({meta['metric']}), "
                f"pretrained on {meta['trained_on']}")
    data = ("COCO train2017 photos" if meta.get("preset") == "gpu" else
            f"the {meta.get('preset', '?')} preset's synthetic world (no photos)")
    which = "the default codec shipped with icmlib" if meta.get("default") else "icmlib codec"
    how = f", made by '{meta['command']}'" if meta.get("command") else ""
    line = f"{which} ({meta.get('strategy', '?')}{how}), trained on {data}"
    if isinstance(net, AtRate):
        lam = meta.get("rate")
        lam = f", λ = {lam[net.rate]}" if isinstance(lam, (list, tuple)) else ""
        line += f"; quality {net.rate + 1} of {net.net.rates}{lam}"
    return line


def _load(path: Path) -> ICMCodec:
    if not path.is_file():
        raise ModelError(f"no codec checkpoint at {path}")
    try:
        return load_codec(path)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ModelError(f"{path} is not a usable icmlib codec checkpoint: {e}") from None
