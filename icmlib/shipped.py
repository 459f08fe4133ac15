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
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / "shipped"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "icmlib-shipped/1"
RETRAIN_ENV = "ICM_RETRAIN"
#: buffers of CompressAI's entropy models that ``update()`` rebuilds: not shipped
_CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
#: training-log rows kept per shipped codec (the validation log is kept whole)
TRAIN_LOG_ROWS = 400


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


# ---- compact form ----------------------------------------------------------------------------
def _map_tensors(obj: Any, fn) -> Any:
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _is_codec(obj: Any) -> bool:
    from icmlib.codec.model import CHECKPOINT_FORMAT

    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def _thin(rows: list, keep: int) -> list:
    if len(rows) <= keep:
        return list(rows)
    step = len(rows) / keep
    return [rows[int(i * step)] for i in range(keep)] + [rows[-1]]


def compact(obj: Any) -> Any:
    """The shipped form of a checkpoint: float16 tensors; a codec without its CDF tables
    and with a thinned training log (its total wall time kept in ``meta``)."""
    obj = dict(obj)
    if _is_codec(obj):
        obj["state_dict"] = {k: v for k, v in obj["state_dict"].items()
                             if k.rsplit(".", 1)[-1] not in _CDF_BUFFERS}
        logs = dict(obj.get("logs") or {})
        train = logs.get("train") or []
        obj["meta"] = dict(obj.get("meta") or {})
        obj["meta"].setdefault("train_seconds", sum(float(r.get("seconds") or 0) for r in train))
        logs["train"] = _thin(train, TRAIN_LOG_ROWS)
        obj["logs"] = logs
        obj.pop("run_dir", None)
    return _map_tensors(obj, lambda t: t.half() if t.dtype == torch.float32 else t)


def expand(obj: Any) -> Any:
    """Inverse of :func:`compact`: float32 tensors; a codec's CDF tables rebuilt."""
    obj = _map_tensors(obj, lambda t: t.float() if t.dtype == torch.float16 else t)
    if _is_codec(obj):
        from torch import nn

        from icmlib.codec.model import ICMCodec

        net = ICMCodec(**obj["config"])
        # one-element buffers are constants of construction (likelihood bounds of 1e-9, GDN
        # pedestals of 1e-11): float16 rounds them to 0, so they come from the new codec
        params = dict(net.named_parameters())
        constants = {k for k, v in net.state_dict().items() if k not in params and v.numel() == 1}
        state = {k: v for k, v in obj["state_dict"].items() if k not in constants}
        nn.Module.load_state_dict(net, state, strict=False)  # CDFs come next
        net.update(force=True)
        obj["state_dict"] = net.state_dict()
    return obj


# ---- reading -----------------------------------------------------------------------------------
def load_shipped(kind: str, config: Mapping[str, Any], *, verbose: bool = True,
                 directory: Optional[Path] = None) -> Optional[Any]:
    """The shipped checkpoint of (``kind``, ``config``), verified and expanded, or ``None``
    when there is none, or when the file fails its check (said, then ``None``: the caller
    trains it instead)."""
    from icmlib.cache import config_key

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


def _verified_load(directory: Path, entry: Mapping[str, Any], config: Mapping[str, Any]):
    path = directory / entry["file"]
    if not path.is_file():
        raise ShippedCheckpointError("the file is missing")
    digest = sha256_of(path)
    if digest != entry["sha256"]:
        raise ShippedCheckpointError(f"its sha256 is {digest[:12]}…, the manifest says "
                                     f"{entry['sha256'][:12]}… (corrupted or replaced)")
    if json.loads(json.dumps(dict(config), default=str)) != entry.get("config"):
        raise ShippedCheckpointError("it was trained with another configuration")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a matching hash makes this unlikely; say what happened
        raise ShippedCheckpointError(f"unreadable ({e})") from None
    return expand(obj)


# ---- writing (the project's maintainers) -------------------------------------------------------
def ship(kind: str, config: Mapping[str, Any], obj: Any, *, command: str, trained_at: str,
         steps: Optional[int] = None, wall_seconds: Optional[float] = None,
         hardware: Optional[str] = None, directory: Optional[Path] = None) -> Dict[str, Any]:
    """Add a trained checkpoint to the shipped set (file + manifest entry); returns the entry.

    ``trained_at``: the commit whose code trained it. A file with the same content is not
    rewritten, so unchanged weights are never committed twice.
    """
    from icmlib.cache import atomic_save, atomic_write_text, config_key
    from icmlib.evaluation.results import cpu_model, git_commit

    directory = Path(directory or shipped_dir())
    directory.mkdir(parents=True, exist_ok=True)
    key = config_key(config)
    name = f"{kind}-{key}.pt"
    path = directory / name
    tmp = directory / (name + ".new")
    atomic_save(compact(obj), tmp)
    if path.is_file() and sha256_of(path) == sha256_of(tmp):
        tmp.unlink()
    else:
        os.replace(tmp, path)
    entry = {"file": name, "kind": kind, "key": key, "sha256": sha256_of(path),
             "bytes": path.stat().st_size, "command": command, "trained_at": trained_at,
             "shipped_at": git_commit(), "steps": steps, "wall_seconds": wall_seconds,
             "hardware": hardware or cpu_model(),
             "config": json.loads(json.dumps(dict(config), default=str))}
    doc = read_manifest(directory)
    doc["entries"][entry_name(kind, key)] = entry
    doc["entries"] = dict(sorted(doc["entries"].items()))
    atomic_write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", directory / MANIFEST_NAME)
    return entry


def shipped_summary(directory: Optional[Path] = None) -> Dict[str, Any]:
    """Files, total megabytes and total training hours of the shipped set (for the book,
    the README and ``icm reproduce --retrain``'s estimate)."""
    entries = list(read_manifest(directory)["entries"].values())
    return {"files": len(entries),
            "megabytes": sum(e.get("bytes", 0) for e in entries) / 1e6,
            "train_hours": sum(e.get("wall_seconds") or 0 for e in entries) / 3600,
            "entries": entries}


# ---- shipping the reproduction's checkpoints (maintainers) ---------------------------------------
def reproduction_checkpoints(preset) -> list:
    """``(kind, config)`` of every checkpoint ``icm reproduce`` loads for ``preset``: the
    frozen task networks, the MSE baseline and each (task, strategy) ICM codec."""
    from icmlib.evaluation.reproduce import REPRO_TASKS
    from icmlib.tasks.networks import task_config
    from icmlib.training.codec import codec_config

    items = [(f"task-{t}", task_config(t, preset)) for t in REPRO_TASKS]
    rates = [0] if preset.variable_rate else range(len(preset.rd_lambdas))
    codecs = [(None, "mse")] + [(t, s) for t in REPRO_TASKS for s in preset.repro_strategies]
    for task, strategy in codecs:
        items += [("codec", codec_config(preset, task, strategy, r)) for r in rates]
    return items


def ship_from_cache(preset, trained_at: str, *, directory: Optional[Path] = None,
                    command: Optional[str] = None) -> list:
    """Ship every checkpoint of the reproduction that the train-or-load cache holds (what
    is not trained yet is listed, not trained). Returns ``[(kind, key, status)]``."""
    from icmlib.cache import checkpoint_path, config_key

    done = []
    for kind, config in reproduction_checkpoints(preset):
        path = checkpoint_path(kind, config)
        key = config_key(config)
        if not path.is_file():
            done.append((kind, key, "not trained yet"))
            continue
        obj = torch.load(path, map_location="cpu", weights_only=False)
        steps, seconds, how = _provenance(kind, obj, config, preset)
        entry = ship(kind, config, obj, command=command or how, trained_at=trained_at,
                     steps=steps, wall_seconds=seconds, directory=directory)
        done.append((kind, key, f"shipped {entry['file']} ({entry['bytes'] / 1e6:.1f} MB)"))
    return done


def _provenance(kind: str, obj: Mapping[str, Any], config: Mapping[str, Any], preset):
    """(steps, wall seconds, command) of a cached checkpoint."""
    if kind == "codec":
        meta = obj.get("meta", {})
        seconds = meta.get("train_seconds")
        if seconds is None:
            seconds = sum(float(r.get("seconds") or 0) for r in obj.get("logs", {}).get("train", []))
        return meta.get("steps"), seconds, meta.get("command") or "icm reproduce"
    metrics = obj.get("metrics", {})
    task = kind.split("-", 1)[1]
    return (config.get("steps"), metrics.get("train_seconds"),
            f"icm train-task --task {task} --preset {preset.name}")


def main(argv=None) -> int:
    import argparse

    from icmlib.presets import get_preset

    parser = argparse.ArgumentParser(
        prog="python -m icmlib.shipped",
        description="Ship the reproduction's trained checkpoints (from $ICM_CACHE) into "
                    "icmlib/weights/shipped with their manifest entries; list what is missing.")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--trained-at", required=True, help="the commit whose code trained them")
    args = parser.parse_args(argv)
    for kind, key, status in ship_from_cache(get_preset(args.preset), args.trained_at):
        print(f"{kind:16s} {key}  {status}")
    s = shipped_summary()
    print(f"shipped set: {s['files']} files, {s['megabytes']:.1f} MB, "
          f"{s['train_hours']:.2f} h of training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
