"""Shipping the reproduction's trained checkpoints (the project's maintainers).

``python -m icmlib.ship --preset cpu --trained-at COMMIT [--book]`` copies every checkpoint
of the reproduction (with ``--book``, also of the book's chapters) that ``$ICM_CACHE`` holds into ``icmlib/weights/shipped/`` in its compact form
(float16; a codec without its CDF tables, which :mod:`icmlib.shipped` rebuilds on load, and
with a thinned training log) and records each in the manifest with its sha256, command,
commit, steps, wall time and hardware. What is not trained yet is listed, not trained.
Reading the set is :mod:`icmlib.shipped`.

A retrain that spans sessions (a new recipe for the reproduction's codecs, hours on 2 cores)
is staged: ``--replace icm_steps=6000 --into icmlib/weights/next`` ships each codec the new
recipe has trained so far into a folder of its own (what the shipped set already holds is
skipped), so nothing depends on one machine's cache; the book keeps reading the shipped set.
When the preset takes the new recipe, ``--promote icmlib/weights/next`` moves the staged
files into the shipped set and takes out the codecs the reproduction no longer loads.
"""
from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import torch

from icmlib.cache import atomic_save, atomic_write_text, cache_dir, checkpoint_path, config_key
from icmlib.codec import CHECKPOINT_FORMAT
from icmlib.codec.model import CDF_BUFFERS
from icmlib.evaluation import REPRO_TASKS, cpu_model, git_commit
from icmlib.shipped import (MANIFEST_FORMAT, MANIFEST_NAME, entry_name, map_tensors,
                            read_manifest, sha256_of, shipped_dir, shipped_summary)
from icmlib.tasks import task_config
from icmlib.training import baseline_config, codec_config, has_rate, rate_points
from icmlib.training.recipe import without_unused_fields

#: training-log rows kept per shipped codec (the validation log is kept whole)
TRAIN_LOG_ROWS = 400


def _is_codec(obj: Any) -> bool:
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
                             if k.rsplit(".", 1)[-1] not in CDF_BUFFERS}  # rebuilt by update()
        logs = dict(obj.get("logs") or {})
        train = logs.get("train") or []
        obj["meta"] = dict(obj.get("meta") or {})
        obj["meta"].setdefault("train_seconds", sum(float(r.get("seconds") or 0) for r in train))
        logs["train"] = _thin(train, TRAIN_LOG_ROWS)
        obj["logs"] = logs
        obj.pop("run_dir", None)
        return map_tensors(obj, lambda t: t.half() if t.dtype == torch.float32 else t)
    # other networks have no expander to restore the constants of construction that
    # float16 rounds to 0 (a likelihood bound of 1e-9, GDN's pedestal of 4e-12): a single
    # number stays float32
    return map_tensors(obj, lambda t: t.half() if t.dtype == torch.float32 and t.numel() > 1
                       else t)


def ship(kind: str, config: Mapping[str, Any], obj: Any, *, command: str, trained_at: str,
         steps: Optional[int] = None, wall_seconds: Optional[float] = None,
         hardware: Optional[str] = None, directory: Optional[Path] = None) -> Dict[str, Any]:
    """Add a trained checkpoint to the shipped set (file + manifest entry); returns the entry.

    ``trained_at``: the commit whose code trained it. A file with the same content is not
    rewritten, so unchanged weights are never committed twice, and its manifest entry (when
    it has one) is kept as it is: shipping it again says nothing new about where it came from.
    """
    directory = Path(directory or shipped_dir())
    directory.mkdir(parents=True, exist_ok=True)
    key = config_key(config)
    name = f"{kind}-{key}.pt"
    path = directory / name
    tmp = directory / (name + ".new")
    atomic_save(compact(obj), tmp)
    if path.is_file() and sha256_of(path) == sha256_of(tmp):
        tmp.unlink()
        known = read_manifest(directory)["entries"].get(entry_name(kind, key))
        if known is not None and known["sha256"] == sha256_of(path):
            return known
    else:
        os.replace(tmp, path)
    entry = {"file": name, "kind": kind, "key": key, "sha256": sha256_of(path),
             "bytes": path.stat().st_size, "command": command, "trained_at": trained_at,
             "shipped_at": git_commit(), "steps": steps, "wall_seconds": wall_seconds,
             "hardware": hardware or cpu_model(),
             "config": json.loads(json.dumps(dict(config), default=str))}
    entries = read_manifest(directory)["entries"]
    entries[entry_name(kind, key)] = entry
    write_manifest(entries, directory)
    return entry


def write_manifest(entries: Mapping[str, Any], directory: Path) -> None:
    """The manifest of ``directory``, written at once (entries sorted by name)."""
    doc = {"format": MANIFEST_FORMAT, "entries": dict(sorted(entries.items()))}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    atomic_write_text(text, Path(directory) / MANIFEST_NAME)


def unship(kind: str, key: str, *, directory: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """Take a checkpoint out of the shipped set (file + manifest entry), e.g. one that only
    a shipped codec was trained from; returns its entry, or None if it was not shipped."""
    directory = Path(directory or shipped_dir())
    entries = read_manifest(directory)["entries"]
    entry = entries.pop(entry_name(kind, key), None)
    if entry is None:
        return None
    write_manifest(entries, directory)
    (directory / entry["file"]).unlink(missing_ok=True)
    return entry


def reproduction_checkpoints(preset) -> list:
    """``(kind, config)`` of every checkpoint ``icm reproduce`` loads for ``preset``: the
    frozen task networks, the MSE baseline and each (task, strategy) ICM codec."""
    items = [(f"task-{t}", task_config(t, preset)) for t in REPRO_TASKS]
    rates = sorted({rate for rate, _, _ in rate_points(preset)}, key=str)
    items += [("codec", baseline_config(preset, r)) for r in rates]
    for task in REPRO_TASKS:
        for strategy in preset.repro_strategies:
            items += [("codec", codec_config(preset, task, strategy, r)) for r in rates
                      if has_rate(task, r)]
    return items


def ship_from_cache(preset, trained_at: str, *, directory: Optional[Path] = None,
                    command: Optional[str] = None, skip_shipped: bool = False) -> list:
    """Ship every checkpoint of the reproduction that the train-or-load cache holds (what
    is not trained yet is listed, not trained). ``skip_shipped``: leave out what the
    shipped set already holds (staging a retrain into ``directory``). Returns
    ``[(kind, key, status)]``."""
    done = []
    already = read_manifest()["entries"] if skip_shipped else {}
    for kind, config in reproduction_checkpoints(preset):
        path = checkpoint_path(kind, config)
        key = config_key(config)
        if entry_name(kind, key) in already:
            done.append((kind, key, "in the shipped set already"))
            continue
        if not path.is_file():
            done.append((kind, key, "not trained yet"))
            continue
        obj = torch.load(path, map_location="cpu", weights_only=False)
        steps, seconds, how = _provenance(kind, obj, config, preset)
        entry = ship(kind, config, obj, command=command or how, trained_at=trained_at,
                     steps=steps, wall_seconds=seconds, directory=directory)
        done.append((kind, key, f"shipped {entry['file']} ({entry['bytes'] / 1e6:.1f} MB)"))
    return done


#: what the book's chapters train beyond the reproduction: the semantic U-Net (chapter 7,
#: s4), the segmentation chapters' networks and s5's two CompressAI codecs (hyperprior and
#: context model), plus the codecs of tasks the reproduction does not cover (s4's)
BOOK_KINDS = ("task-semantic", "segmenter", "segmenter-recipe", "segmenter-source",
              "segmenter-transfer", "context-codec")


def ship_cached(kind: str, trained_at: str, *, preset_name: str,
                where: Callable[[Mapping[str, Any]], bool] = lambda config: True,
                directory: Optional[Path] = None) -> list:
    """Ship every ``kind`` checkpoint in ``$ICM_CACHE`` whose configuration passes ``where``.

    The configuration is the ``<key>.json`` the cache writes beside each ``<key>.pt``; a
    file whose configuration does not hash to its name (edited, or written by other code)
    is skipped and said, never shipped under a key it does not have. Only configurations
    of ``preset_name`` are shipped. Returns ``[(kind, key, status)]``.
    """
    folder = cache_dir("checkpoints", kind)
    done = []
    for path in sorted(folder.glob("*.pt")):
        key, meta = path.stem, path.with_suffix(".json")
        config = json.loads(meta.read_text()) if meta.is_file() else None
        if config is None or config_key(config) != key:
            done.append((kind, key, "skipped: its configuration is missing or does not hash to its name"))
            continue
        if config.get("preset", preset_name) != preset_name or not where(config):
            continue
        obj = torch.load(path, map_location="cpu", weights_only=False)
        steps, seconds, how = _provenance(kind, obj, config, preset_name)
        entry = ship(kind, config, obj, command=how, trained_at=trained_at, steps=steps,
                     wall_seconds=seconds, directory=directory)
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
    name = getattr(preset, "name", preset)
    if kind.startswith("segmenter"):
        return (obj.get("steps_run", config.get("steps")), obj.get("train_seconds"),
                f"icmlib.segmentation ({kind}, kind={config.get('kind')!r}) in make book, "
                f"preset {name}")
    metrics = obj.get("metrics", {})
    task = kind.split("-", 1)[1]
    return (config.get("steps"), metrics.get("train_seconds"),
            f"icm train-task --task {task} --preset {name}")


def promote(staged: Path, preset, *, directory: Optional[Path] = None) -> list:
    """Move a staged retrain (``ship_from_cache(..., skip_shipped=True)`` into ``staged``)
    into the shipped set, entries as they were staged, then take out every codec of the
    reproduction's tasks that ``preset``'s reproduction no longer loads (the old recipe's).
    Refuses, changing nothing, while the reproduction still lacks a checkpoint, does not
    load one that is staged (the preset does not take the new recipe yet), or a staged
    file does not have its entry's sha256."""
    directory = Path(directory or shipped_dir())
    staged_entries = read_manifest(staged)["entries"]
    shipped_entries = read_manifest(directory)["entries"]
    wanted = {entry_name(kind, config_key(config)) for kind, config in reproduction_checkpoints(preset)}
    preset_name = getattr(preset, "name", preset)
    missing = sorted(wanted - set(staged_entries) - set(shipped_entries))
    if missing:
        raise ValueError(f"not promoting {staged}: the reproduction of preset {preset_name!r} still "
                         f"lacks {', '.join(missing)}")
    unused = sorted(set(staged_entries) - wanted)
    if unused:
        raise ValueError(f"not promoting {staged}: the reproduction of preset {preset_name!r} does not "
                         f"load {', '.join(unused)} (does the preset take the new recipe yet?)")
    corrupted = sorted(n for n, e in staged_entries.items()
                       if not (staged / e["file"]).is_file() or sha256_of(staged / e["file"]) != e["sha256"])
    if corrupted:
        raise ValueError(f"not promoting {staged}: {', '.join(corrupted)} missing or not the "
                         f"file its staged entry describes (sha256)")
    done = []
    for name, entry in staged_entries.items():
        os.replace(staged / entry["file"], directory / entry["file"])
        shipped_entries[name] = entry
        done.append((entry["kind"], entry["key"], f"promoted {entry['file']}"))
    for name, entry in list(shipped_entries.items()):
        superseded = (entry["kind"] == "codec" and name not in wanted
                      and entry.get("config", {}).get("task") in REPRO_TASKS)
        if superseded:
            (directory / entry["file"]).unlink(missing_ok=True)
            del shipped_entries[name]
            done.append(("codec", entry["key"], "taken out: the reproduction no longer loads it"))
    write_manifest(shipped_entries, directory)
    (staged / MANIFEST_NAME).unlink()
    return done


def rekey(directory: Optional[Path] = None) -> list:
    """Give every codec entry the key its configuration has now: the configuration
    without the settings its training never read
    (:func:`~icmlib.training.recipe.without_unused_fields`), the file renamed to the new
    key, its bytes (and sha256) unchanged. Run once after the key's rules change, so the shipped codecs are found
    again without retraining. Returns ``[("codec", new key, "was <old key>")]``."""
    directory = Path(directory or shipped_dir())
    entries = read_manifest(directory)["entries"]
    done = []
    for name, entry in list(entries.items()):
        if entry["kind"] != "codec":
            continue
        config = without_unused_fields(entry["config"])
        key = config_key(config)
        if key == entry["key"]:
            continue
        file = f"codec-{key}.pt"
        if entry_name("codec", key) in entries:
            raise ValueError(f"{entry['file']} and {entries[entry_name('codec', key)]['file']} "
                             f"get the same key {key}: they differ only in settings their "
                             f"training never read; take one out first (unship)")
        os.replace(directory / entry["file"], directory / file)
        del entries[name]
        entries[entry_name("codec", key)] = dict(entry, key=key, file=file, config=config)
        done.append(("codec", key, f"was {entry['key']}"))
        write_manifest(entries, directory)  # after each rename: an interruption loses nothing
    return done


def preset_override(text: str):
    """``FIELD=VALUE`` of ``--replace`` as (field, value): the value is a Python literal
    (``icm_steps=6000``, ``rd_lambdas=(0.002, 0.01)``) or, failing that, a string."""
    field, sep, value = text.partition("=")
    if not sep or not field.strip():
        raise ValueError(f"--replace wants FIELD=VALUE, got {text!r}")
    try:
        return field.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return field.strip(), value.strip()


def main(argv=None) -> int:
    import argparse

    from icmlib.presets import get_preset

    parser = argparse.ArgumentParser(
        prog="python -m icmlib.ship",
        description="Ship the reproduction's trained checkpoints (from $ICM_CACHE) into "
                    "icmlib/weights/shipped with their manifest entries; list what is missing.")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--trained-at", help="the commit whose code trained them")
    parser.add_argument("--book", action="store_true",
                        help="also ship what the book's chapters train beyond the reproduction "
                             f"(kinds {', '.join(BOOK_KINDS)}, and codecs for the semantic task), "
                             "as $ICM_CACHE holds them after `make book`")
    parser.add_argument("--replace", action="append", default=[], metavar="FIELD=VALUE",
                        help="a preset field the checkpoints were trained with, e.g. "
                             "icm_steps=6000, to stage a retrain before the preset takes it "
                             "(repeatable; with --into)")
    parser.add_argument("--into", type=Path, metavar="DIR",
                        help="a staging folder instead of the shipped set: what the shipped set "
                             "already holds is skipped (a retrain that spans sessions)")
    parser.add_argument("--promote", type=Path, metavar="DIR",
                        help="move the staged checkpoints of DIR into the shipped set and take "
                             "out the codecs the preset's reproduction no longer loads "
                             "(--trained-at is not needed)")
    parser.add_argument("--rekey", type=Path, nargs="?", const=shipped_dir(), metavar="DIR",
                        help="give the codecs of DIR (default: the shipped set) the keys their "
                             "configurations have under today's rules, the files unchanged "
                             "(after a change to what a codec's key holds)")
    args = parser.parse_args(argv)
    if args.rekey:
        for kind, key, status in rekey(args.rekey):
            print(f"{kind:18s} {key}  {status}")
        return 0
    try:
        preset = get_preset(args.preset).replace(**dict(map(preset_override, args.replace)))
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    if args.promote and args.replace:
        parser.error("--promote reads the preset as icmlib/presets.py defines it (what the book "
                     "and `icm reproduce` will load): give the preset the new recipe there, "
                     "not with --replace")
    if args.promote:
        try:
            done = promote(args.promote, preset)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 1
    elif not args.trained_at:
        parser.error("--trained-at is required (the commit whose code trained them)")
    else:
        done = ship_from_cache(preset, args.trained_at, directory=args.into,
                               skip_shipped=args.into is not None)
    if args.book and not args.promote:
        for kind in BOOK_KINDS:
            done += ship_cached(kind, args.trained_at, preset_name=args.preset,
                                directory=args.into)
        done += ship_cached("codec", args.trained_at, preset_name=args.preset,
                            where=lambda config: config.get("task") == "semantic",
                            directory=args.into)
    for kind, key, status in done:
        print(f"{kind:18s} {key}  {status}")
    s = shipped_summary(args.into)
    print(f"{'staged' if args.into else 'shipped'} set: {s['files']} files, {s['megabytes']:.1f} MB, "
          f"{s['train_hours']:.2f} h of training")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
