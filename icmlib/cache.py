"""Train-or-load: every expensive step goes through one helper keyed by its configuration.

A checkpoint's file name carries a hash of the configuration that produced it, so a
notebook never silently uses weights trained with other settings: change a setting and
the helper trains anew. Files are written atomically (temporary file + rename), so a run
killed half-way never leaves a truncated checkpoint behind.

The cache lives in ``$ICM_CACHE`` (default ``~/.cache/icmlib``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from icmlib.shipped import load_shipped, retrain_requested, shipped_dir

ENV_VAR = "ICM_CACHE"


def cache_root() -> Path:
    return Path(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "icmlib")


def cache_dir(*parts: str) -> Path:
    """``$ICM_CACHE/<parts...>``, created if missing."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown_path(path: Path) -> str:
    """``path`` as messages show it: ``$ICM_CACHE/...`` inside the cache (the book's pages
    should not print the build machine's folders), else unchanged."""
    try:
        return f"${ENV_VAR}/{Path(path).resolve().relative_to(cache_root().resolve())}"
    except ValueError:
        return str(path)


def config_key(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a JSON-able configuration."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(text: str, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def checkpoint_path(kind: str, config: Mapping[str, Any]) -> Path:
    """Where the checkpoint of ``kind`` trained with ``config`` lives."""
    return cache_dir("checkpoints", kind) / f"{config_key(config)}.pt"


#: Checkpoints whose "loaded" line this process has already printed.
_ANNOUNCED: set = set()


def _say_once(key, message: str) -> None:
    """Print ``message`` the first time this process loads the checkpoint ``key``.

    A chapter or a reproduction loads the same task network or codec many times (every
    evaluation, every figure); one line saying where it came from is information, the
    same line six times is noise. Training and saving are still said every time.
    """
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        print(message)


def train_or_load(kind: str, config: Mapping[str, Any], train: Callable[[], Any],
                  *, force: bool = False, verbose: bool = True) -> Any:
    """Load the object cached for (``kind``, ``config``), or call ``train()`` and cache it.

    The project's shipped checkpoints come first (:mod:`icmlib.shipped`: same key, sha256
    verified; skipped with ``force`` or ``$ICM_RETRAIN``), then the cache, then ``train()``.

    ``train`` returns something ``torch.save`` can write (usually a dict holding a
    ``state_dict`` and metrics). The configuration is stored beside it so a reader can
    see what produced a checkpoint.
    """
    if not force and not retrain_requested():
        shipped = load_shipped(kind, config, verbose=verbose)
        if shipped is not None:
            if verbose:
                _say_once(("shipped", str(shipped_dir()), kind, config_key(config)),
                          f"[icmlib] loaded {kind} from the shipped checkpoints (sha256 verified)")
            return shipped
    path = checkpoint_path(kind, config)
    if path.exists() and not force:
        if verbose:
            _say_once(path, f"[icmlib] loaded {kind} from cache: {shown_path(path)}")
        return torch.load(path, map_location="cpu", weights_only=False)
    if verbose:
        print(f"[icmlib] training {kind} (no cached checkpoint for this configuration) ...")
    obj = train()
    atomic_save(obj, path)
    atomic_write_text(json.dumps(dict(config), indent=2, sort_keys=True, default=str),
                      path.with_suffix(".json"))
    if verbose:
        print(f"[icmlib] saved {kind} to {shown_path(path)}")
    return obj
