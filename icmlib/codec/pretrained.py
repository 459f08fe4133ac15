"""Which codec the ``icm`` command uses: a checkpoint or a zoo codec given with ``--model``,
or the default.

The default codec is a small checkpoint that ships inside the package
(``icmlib/weights/default.pt``, installed as package data), so that ``icm encode`` works
on a fresh install with no training step. The project trains it with its own training
command and records that command in the checkpoint's ``meta``. Every checkpoint is in
``icmlib.codec.model``'s format (``save_codec`` / ``load_codec``). ``zoo:NAME:QUALITY``
names one of CompressAI's pretrained codecs instead (:mod:`icmlib.codec.zoo`), trained on
natural photos. :func:`describe_codec` says which codec is in use and what it learned from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from icmlib.codec.model import ICMCodec, load_codec

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
DEFAULT_CHECKPOINT = WEIGHTS_DIR / "default.pt"


class ModelError(ValueError):
    """The codec asked for cannot be loaded (missing file, not a codec checkpoint)."""


def default_codec() -> ICMCodec:
    """The codec shipped with icmlib (eval mode, CDF tables ready)."""
    if not DEFAULT_CHECKPOINT.is_file():
        raise ModelError(
            f"the default codec {DEFAULT_CHECKPOINT} is not part of this installation. "
            f"It is trained by the project and shipped as package data; until it is, pass "
            f"a codec checkpoint with --model CKPT (any file written by "
            f"icmlib.codec.model.save_codec, e.g. one made by the project's training command)")
    net = _load(DEFAULT_CHECKPOINT)
    net.meta = {**getattr(net, "meta", {}), "default": True}
    return net


def resolve_codec(model: Optional[Union[str, Path]] = None,
                  download: Optional[Callable[[str], Path]] = None):
    """``--model``'s value as a codec: a checkpoint path, ``zoo:NAME:QUALITY`` (a CompressAI
    zoo codec, fetched with ``download(url)`` when not cached: :func:`icmlib.codec.zoo.zoo_codec`),
    or ``None`` for the default."""
    if model is None:
        return default_codec()
    if isinstance(model, str) and model.startswith("zoo:"):
        from icmlib.codec.zoo import zoo_codec

        return zoo_codec(model, download=download)
    return _load(Path(model))


def describe_codec(net) -> str:
    """One line: which codec this is and what it was trained on (from its ``meta``)."""
    meta = getattr(net, "meta", None) or {}
    if meta.get("source") == "compressai-zoo":
        return (f"CompressAI zoo {meta['name']}, quality {meta['quality']} ({meta['metric']}), "
                f"pretrained on {meta['trained_on']}")
    data = ("COCO train2017 photos" if meta.get("preset") == "gpu" else
            f"the {meta.get('preset', '?')} preset's synthetic world (no photos)")
    which = "the default codec shipped with icmlib" if meta.get("default") else "icmlib codec"
    how = f", made by '{meta['command']}'" if meta.get("command") else ""
    return f"{which} ({meta.get('strategy', '?')}{how}), trained on {data}"


def _load(path: Path) -> ICMCodec:
    if not path.is_file():
        raise ModelError(f"no codec checkpoint at {path}")
    try:
        return load_codec(path)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ModelError(f"{path} is not a usable icmlib codec checkpoint: {e}") from None
