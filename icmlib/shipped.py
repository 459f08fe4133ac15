"""Shipped checkpoints: trained once, thoroughly, by the project; read many times.

Training the reproduction's codecs to convergence takes hours on a CPU, so the project
trains them once and ships them in the package (``icmlib/weights/shipped/``), the way
CompressAI's zoo and UvA's tutorials serve pretrained weights. ``train_or_load``
(:mod:`icmlib.cache`) looks here first, under the same configuration key it would cache
under, so ``make book`` and ``icm reproduce`` *evaluate* these codecs instead of training.

Each file is compact: float tensors in float16, and a codec's CDF tables left out (they
are rebuilt on load by CompressAI's ``update()``, exactly as after training). The
manifest (``manifest.json``) records, per file, its sha256, size, the configuration it was
trained with (its key is the hash of that), the command, the commit, the steps, the wall
time and the hardware. A file whose sha256 does not match is **refused** with a message
and the checkpoint is trained instead, never used silently.

``ICM_RETRAIN=1`` (or ``icm reproduce --retrain``) ignores the shipped set: everything is
retrained with the same recipe.

This module only *reads* the set, low in the package (the cache uses it); how a kind of
checkpoint is rebuilt from its compact form belongs to the code that owns that kind, which
registers it here (:func:`register_expander`: the codec rebuilds its CDF tables). Writing
the set is :mod:`icmlib.ship`, a maintainer's tool at the top of the package.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / "shipped"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "icmlib-shipped/1"
RETRAIN_ENV = "ICM_RETRAIN"
#: checkpoint format -> function that rebuilds a checkpoint of that format from its compact
#: (float16, tables left out) form; see :func:`register_expander`
_EXPANDERS: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {}


class ShippedCheckpointError(ValueError):
    """A shipped checkpoint that cannot be used (missing, corrupted, mismatching)."""


def retrain_requested() -> bool:
    """True when ``$ICM_RETRAIN`` asks to ignore the shipped checkpoints."""
    return os.environ.get(RETRAIN_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def shipped_dir() -> Path:
    """Where the shipped set lives (``$ICM_SHIPPED_DIR`` overrides it, for tests)."""
    return Path(os.environ.get("ICM_SHIPPED_DIR") or SHIPPED_DIR)


def read_manifest(directory: Optional[Path] = None) -> Dict[str, Any]:
    path = Path(directory or shipped_dir()) / MANIFEST_NAME
    if not path.is_file():
        return {"format": MANIFEST_FORMAT, "entries": {}}
    doc = json.loads(path.read_text())
    if doc.get("format") != MANIFEST_FORMAT:
        raise ShippedCheckpointError(f"{path} is not a shipped-checkpoint manifest "
                                     f"(format {doc.get('format')!r}, expected {MANIFEST_FORMAT!r})")
    return doc


def entry_name(kind: str, key: str) -> str:
    return f"{kind}/{key}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- compact form (see icmlib.ship) ---------------------------------------------------------
def map_tensors(obj: Any, fn) -> Any:
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def register_expander(checkpoint_format: str, expand_fn: Callable[[Dict[str, Any]], Dict[str, Any]]) -> None:
    """Let the code that owns a checkpoint format rebuild it on load (called at its import:
    :mod:`icmlib.codec.model` registers the codec's, which rebuilds the CDF tables)."""
    _EXPANDERS[checkpoint_format] = expand_fn


def expand(obj: Any) -> Any:
    """Inverse of :func:`icmlib.ship.compact`: float32 tensors, then the format's own expander."""
    obj = map_tensors(obj, lambda t: t.float() if t.dtype == torch.float16 else t)
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt is not None and fmt in _EXPANDERS:
        return _EXPANDERS[fmt](obj)
    if fmt is not None and fmt.startswith("icmlib-"):
        raise RuntimeError(f"no expander registered for shipped {fmt!r} checkpoints: import the "
                           f"module that defines that format (e.g. icmlib.codec) before loading one")
    return obj


# ---- reading -----------------------------------------------------------------------------------
def load_shipped(kind: str, config: Mapping[str, Any], *, verbose: bool = True,
                 directory: Optional[Path] = None) -> Optional[Any]:
    """The shipped checkpoint of (``kind``, ``config``), verified and expanded, or ``None``
    when there is none, or when the file fails its check (said, then ``None``: the caller
    trains it instead)."""
    from icmlib.cache import config_key  # the cache imports this module: import at call time

    directory = Path(directory or shipped_dir())
    key = config_key(config)
    entry = read_manifest(directory)["entries"].get(entry_name(kind, key))
    if entry is None:
        return None
    try:
        return _verified_load(directory, entry, config)
    except ShippedCheckpointError as e:
        if verbose:
            print(f"[icmlib] refusing the shipped {kind} checkpoint {entry['file']}: {e}. "
                  f"Training it instead.")
        return None


def load_entry(name: str, *, directory: Optional[Path] = None) -> Any:
    """The shipped checkpoint the manifest lists as ``name`` (``kind/key``), verified and
    expanded, whatever configuration it was trained with: for code that names a file of the
    set rather than asking for a configuration (the ``icm`` command's default codec).
    Raises :class:`ShippedCheckpointError` when it is not listed or fails its check."""
    directory = Path(directory or shipped_dir())
    entry = read_manifest(directory)["entries"].get(name)
    if entry is None:
        raise ShippedCheckpointError(f"{name} is not in the shipped set ({directory})")
    return _verified_load(directory, entry)


def _verified_load(directory: Path, entry: Mapping[str, Any],
                   config: Optional[Mapping[str, Any]] = None):
    path = directory / entry["file"]
    if not path.is_file():
        raise ShippedCheckpointError("the file is missing")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise ShippedCheckpointError(f"its sha256 is {digest[:12]}…, the manifest says "
                                     f"{entry['sha256'][:12]}… (corrupted or replaced)")
    stored = entry.get("config")
    if config is not None and json.loads(json.dumps(dict(config), default=str)) != stored:
        raise ShippedCheckpointError("it was trained with another configuration")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a matching hash makes this unlikely; say what happened
        raise ShippedCheckpointError(f"unreadable ({e})") from None
    return expand(obj)


def shipped_summary(directory: Optional[Path] = None) -> Dict[str, Any]:
    """Files, total megabytes and total training hours of the shipped set (for the book,
    the README and ``icm reproduce --retrain``'s estimate)."""
    entries = list(read_manifest(directory)["entries"].values())
    return {"files": len(entries),
            "megabytes": sum(e.get("bytes", 0) for e in entries) / 1e6,
            "train_hours": sum(e.get("wall_seconds") or 0 for e in entries) / 3600,
            "entries": entries}
