"""Which codec the ``icm`` command uses: a checkpoint given with ``--model``, or the default.

The default codec is a small checkpoint that ships inside the package
(``icmlib/weights/default.pt``, installed as package data), so that ``icm encode`` works
on a fresh install with no training step. The project trains it with its own training
command and records that command in the checkpoint's ``meta``. Every checkpoint is in
``icmlib.codec.model``'s format (``save_codec`` / ``load_codec``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

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
    return _load(DEFAULT_CHECKPOINT)


def resolve_codec(model: Optional[Union[str, Path]] = None) -> ICMCodec:
    """``--model``'s value (a checkpoint path) as a codec; ``None`` means the default."""
    if model is None:
        return default_codec()
    return _load(Path(model))


def _load(path: Path) -> ICMCodec:
    if not path.is_file():
        raise ModelError(f"no codec checkpoint at {path}")
    try:
        return load_codec(path)
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ModelError(f"{path} is not a usable icmlib codec checkpoint: {e}") from None
