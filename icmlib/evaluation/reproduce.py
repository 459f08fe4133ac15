"""Reproduce the paper's results with the project's own code: ``icm reproduce --preset P``.

One call trains (or loads) everything and measures it:

1. **task networks** — Faster R-CNN (detection) and Mask R-CNN (instance segmentation),
   through ``icmlib.tasks.task_network`` (train-or-load; COCO-pretrained on ``gpu``);
2. **codecs** at every rate point λ of ``preset.rd_lambdas`` (shipped, or trained):

   * the **MSE baseline** (the human-vision codec: same network, ``w_task = 0``);
   * **ICM** codecs for each task and each weighting strategy of
     ``preset.repro_strategies`` (fixed weights, the paper's dynamic strategy, auto);

3. **anchors** — every traditional codec of :mod:`icmlib.evaluation.anchors` that can run here
   (a missing tool is skipped with its install hint);
4. **evaluation** of every codec on the same validation images
   (:func:`icmlib.evaluation.evaluate.evaluate_codec`: bpp from real bytes, PSNR, MS-SSIM, COCO mAP),
   and of the uncompressed originals;

and writes, under ``--out`` (default ``data/results/<preset>/``):

==========================  ===============================================================
``results.json``            everything measured, with command, commit, hardware, date
                            (schema in :mod:`icmlib.evaluation.results`)
``rd_detection.png``        detection mAP against bpp, uncompressed as a horizontal line
``rd_instance.png``         instance-segmentation mask mAP against bpp
``rd_psnr.png``             PSNR against bpp
``weighting_<task>.png``    the loss-weighting comparison (accuracy and rate over training,
                            weights, final RD points per strategy)
``bd_rate.md``, ``.csv``    the BD-rate table in the paper's form, on coded bits (the rule
                            of :mod:`icmlib.evaluation.overheads`, the same for every codec)
``bd_rate_file.md``, ``.csv``  the same table on whole files (``.icm``, JFIF, HEIF, ...)
``summary.md``              headline numbers, better-than-uncompressed points, timings
==========================  ===============================================================

Budget: how the codecs are trained
----------------------------------
Training is decoupled from reading: the reproduction's task networks and codecs are
trained once, to where the convergence study (:mod:`icmlib.evaluation.convergence`) says they stop
improving, and **shipped** with the package (:mod:`icmlib.shipped`, sha256-verified). A
run of ``icm reproduce`` loads them and only evaluates; ``--retrain`` trains everything
again with the same recipe. The recipe (:func:`icmlib.training.recipe.codec_parent`) **fine-tunes**:

* the MSE codec at rate point ``preset.codec_base_rate`` is trained from scratch for
  ``codec_steps`` steps;
* on a ``variable_rate`` preset (``cpu``), one codec per (task, strategy) serves every rate
  point through learned gain vectors (Cui et al. 2021): the variable-rate MSE codec starts
  from the base codec (``codec_finetune_steps``), each ICM codec from it (``icm_steps``),
  the rate points taking turns; otherwise the MSE codecs at the other rate points start
  from the base codec and every ICM codec from the MSE codec of its rate point.

``codec_base_rate = -1`` (the ``gpu`` preset) trains every MSE codec from scratch
instead. Every codec is a train-or-load step keyed by its whole configuration (its
parent's included) and shared with the book's chapters, and every evaluation is cached
keyed by the codec's weights, the settings, the images and the task networks -- so a
second run, or a run after an interruption, redoes nothing that is done (an interrupted
training resumes from its last checkpoint). Reported numbers come from the test split.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from icmlib.presets import Preset, get_preset

#: the preset fields that decide what the reproduction trains (recorded in results.json)
BUDGET_FIELDS = ("rd_lambdas", "codec_steps", "codec_base_rate", "codec_finetune_steps",
                 "icm_steps", "icm_val_every", "icm_task_weight", "icm_mse_weight", "lr")

REPRO_TASKS = ("detection", "instance")

#: How the ``cpu`` preset's budget of about 45 minutes on 2 cores is spent, as measured in
#: the run committed under ``data/results/cpu`` (wall minutes from the codecs'
#: ``train_log.csv``; the base codec's first minutes shared the CPU with another job). The
#: real times of a run are in its ``summary.md`` and ``results.json`` (``extra.timings``).
#: Task networks are shared with the rest of the book (train-or-load), so after chapter 7
#: they cost nothing here.
CPU_BUDGET = """\
task networks (2, train-or-load, shared with chapter 7)         0 if cached (else ~10 min)
MSE base codec: 2000 steps from scratch at rate point 2            10.6 min
3 MSE codecs fine-tuned to their λ from it, 400 steps each          4.6 min
16 ICM codecs (2 tasks x 2 strategies x 4 rates), 150 steps each   20.2 min (from the MSE codec
  of their rate; 3 validations on 16 images each)
evaluation on 32 val images: 20 learned points (+ reference),      1.7 min (anchors cached);
  6 anchors x 6 settings, each on both task networks                 4.2 min all of it
total (task networks cached)                                       ~40 min
"""


class ReproductionError(RuntimeError):
    """A reproduction step that cannot run (what is wrong and what to do)."""


# ---- naming ---------------------------------------------------------------------------
def mse_name() -> str:
    return "MSE baseline"


def icm_name(task: str, strategy: str) -> str:
    return f"ICM {strategy} ({task})"


# ---- training the codecs ------------------------------------------------------------------
def train_codecs(preset: Union[Preset, str, None] = None, tasks: Sequence[str] = REPRO_TASKS,
                 strategies: Optional[Sequence[str]] = None, progress: bool = True
                 ) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """Train (or load) every codec of the reproduction, by ``codec_for``'s recipe.

    Returns ``{codec name: {rate index: checkpoint dict}}`` for the MSE baseline and each
    (task, strategy) ICM codec; each checkpoint dict has ``logs`` and ``meta``. The codecs
    are the book's (same cache), so a reproduction run makes the book's build fast too.
    """
    preset = get_preset(preset)
    strategies = list(strategies if strategies is not None else preset.repro_strategies)
    out = {mse_name(): _by_rate(preset, None, "mse", progress)}
    for task in tasks:
        for strategy in strategies:
            out[icm_name(task, strategy)] = _by_rate(preset, task, strategy, progress)
    return out


def _by_rate(preset: Preset, task, strategy, progress) -> Dict[int, Dict[str, Any]]:
    """``{rate index: checkpoint dict}``; a variable-rate codec is one checkpoint for all."""
    from icmlib.training import codec_run

    rates = range(len(preset.rd_lambdas))
    if preset.variable_rate:
        ckpt = codec_run(preset, task, strategy, 0, progress=progress)
        return {r: ckpt for r in rates}
    return {r: codec_run(preset, task, strategy, r, progress=progress) for r in rates}


def training_minutes(codecs: Dict[str, Dict[int, Dict[str, Any]]]) -> float:
    """Wall minutes the codecs took to train when they were trained (from their logs; a
    shipped codec's thinned log keeps the total in ``meta["train_seconds"]``)."""
    unique = {id(c): c for by_rate in codecs.values() for c in by_rate.values()}
    return sum(train_seconds(c) for c in unique.values()) / 60


def train_seconds(ckpt: Dict[str, Any]) -> float:
    meta = ckpt.get("meta") or {}
    if meta.get("train_seconds") is not None:
        return float(meta["train_seconds"])
    return sum(float(row.get("seconds") or 0.0) for row in ckpt.get("logs", {}).get("train", []))


def _downsample(rows: List[Dict[str, float]], keep: int = 200) -> List[Dict[str, float]]:
    if len(rows) <= keep:
        return rows
    idx = np.unique(np.linspace(0, len(rows) - 1, keep).round().astype(int))
    return [rows[i] for i in idx]


def training_logs(codecs: Dict[str, Dict[int, Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Per ICM run: its validation log (bpp, PSNR, task score over steps) and a thinned
    training log (loss terms and weights over steps), for the weighting comparison."""
    from icmlib.training import logs_at_rate

    keep_train = ("step", "loss", "rate", "mse", "task", "w_rate", "w_mse", "w_task", "psnr")
    runs = []
    for name, by_rate in codecs.items():
        for r, ckpt in sorted(by_rate.items()):
            meta = ckpt.get("meta", {})
            logs = logs_at_rate(ckpt.get("logs", {}), r)
            lam = meta.get("rate")
            runs.append({
                "codec": name, "task": meta.get("task"), "strategy": meta.get("strategy"),
                "rate_index": r, "lambda": lam[r] if isinstance(lam, list) else lam,
                "steps": meta.get("steps"),
                "weighting": meta.get("weighting"),
                "val": [{k: v for k, v in row.items()} for row in logs.get("val", [])],
                "train": _downsample([{k: row.get(k) for k in keep_train if k in row}
                                      for row in logs.get("train", [])]),
            })
    return runs


# ---- anchors ---------------------------------------------------------------------------------
def spread(settings: Sequence[Any], n: int) -> List[Any]:
    """``n`` settings spread evenly over ``settings`` (all of them when ``n`` is 0)."""
    settings = list(settings)
    if n <= 0 or n >= len(settings):
        return settings
    idx = np.unique(np.linspace(0, len(settings) - 1, n).round().astype(int))
    return [settings[i] for i in idx]


def anchors_for(preset: Preset) -> Tuple[list, Dict[str, str]]:
    """The anchors the preset asks for that can run here, and why the others cannot."""
    from icmlib.evaluation.anchors import ANCHORS, make_anchor

    names = list(preset.repro_anchors) or list(ANCHORS)
    available, skipped = [], {}
    for name in names:
        codec = make_anchor(name)
        ok, why = codec.available()
        if ok:
            available.append(codec)
        else:
            skipped[name] = why
            print(f"[icmlib] skipping anchor {name}: {why}")
    return available, skipped


# ---- the whole thing -------------------------------------------------------------------------
def _keeps_thread_count(fn):
    """The reproduction caps torch's CPU threads (cpu preset, comparable timings): hand the
    caller its own setting back when it ends, however it ends."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import torch

        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper


@_keeps_thread_count
def reproduce(preset: Union[Preset, str, None] = None, out: Union[str, Path, None] = None, *,
              progress: bool = True, command: Optional[str] = None,
              force_evaluation: bool = False, retrain: bool = False) -> Dict[str, Any]:
    """Train or load, evaluate, and write the reproduction's outputs (see module docstring).

    ``retrain``: ignore the shipped checkpoints (:mod:`icmlib.shipped`) and train every
    task network and codec with the same recipe (their measured time is printed first).
    Returns the results dict (also written to ``<out>/results.json``).
    """
    import os

    from icmlib.shipped import RETRAIN_ENV

    before = os.environ.get(RETRAIN_ENV)
    if retrain:
        os.environ[RETRAIN_ENV] = "1"
        if progress:
            print(retrain_estimate())
    try:
        return _reproduce(preset, out, progress, command, force_evaluation)
    finally:  # the caller's process keeps its own setting
        if before is None:
            os.environ.pop(RETRAIN_ENV, None)
        else:
            os.environ[RETRAIN_ENV] = before


def retrain_estimate() -> str:
    """What a full retrain costs, as measured when the shipped set was trained."""
    from icmlib.shipped import shipped_summary

    s = shipped_summary()
    if not s["files"]:
        return "[icmlib] retraining everything (no shipped set to compare its time with)"
    hardware = sorted({e.get("hardware") or "?" for e in s["entries"]})
    return (f"[icmlib] retraining everything: the shipped set ({s['files']} checkpoints) took "
            f"{s['train_hours']:.1f} h of training on {', '.join(hardware)}")


def _reproduce(preset, out, progress, command, force_evaluation) -> Dict[str, Any]:
    import torch

    from icmlib.evaluation.anchors import AnchorUnavailable
    from icmlib.codec.model import fingerprint
    from icmlib.training import codec_at_rate
    from icmlib.data import dataset_for
    from icmlib.evaluation.evaluate import (cached_evaluation, dataset_info, evaluate_codec,
                                 evaluation_key, learned_codec, reference_accuracy, subset,
                                 task_networks)
    from icmlib.evaluation.results import new_results, save_results

    preset = get_preset(preset)
    out = Path(out) if out is not None else Path("data") / "results" / preset.name
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"icmlib.evaluation.reproduce.reproduce({preset.name!r}, out={str(out)!r})"
    timings: Dict[str, float] = {}
    t_start = time.time()
    torch.set_num_threads(min(torch.get_num_threads(), 2) if preset.device == "cpu"
                          else torch.get_num_threads())

    # 1. task networks ---------------------------------------------------------------------
    t0 = time.time()
    networks = task_networks(REPRO_TASKS, preset)
    timings["task_networks_s"] = time.time() - t0

    # 2. codecs -----------------------------------------------------------------------------
    t0 = time.time()
    ckpts = train_codecs(preset, REPRO_TASKS, progress=progress)
    timings["codec_training_s"] = time.time() - t0
    # a second run loads the codecs: keep how long they took when they were trained
    timings["codec_training_logged_s"] = 60 * training_minutes(ckpts)

    # 3. evaluation -------------------------------------------------------------------------
    t0 = time.time()
    # reported numbers come from the test split, which chose nothing (0: all of it)
    dataset = subset(dataset_for(preset, split="test"), preset.repro_eval_images or None)
    ref_key = evaluation_key({"reference": True}, dataset, networks, [])
    reference = cached_evaluation(ref_key, lambda: reference_accuracy(
        REPRO_TASKS, dataset, preset=preset, networks=networks), force=force_evaluation)
    entries = []
    learned_nets: Dict[str, Dict[int, Any]] = {}
    for name, by_rate in ckpts.items():
        rates = sorted(by_rate)
        nets = [codec_at_rate(by_rate[r], r) for r in rates]
        codec = learned_codec(nets, name, preset)
        meta = by_rate[rates[0]].get("meta", {})
        task, strategy = meta.get("task"), meta.get("strategy")
        tasks = REPRO_TASKS if task is None else (task,)
        group = "mse" if task is None else "icm"
        identity = {"learned": name, "nets": [fingerprint(n).hex() for n in nets]}
        key = evaluation_key(identity, dataset, {t: networks[t] for t in tasks}, rates)
        info = {"lambdas": [float(preset.rd_lambdas[r]) for r in rates],
                "steps": [by_rate[r].get("meta", {}).get("steps") for r in rates]}
        entry = cached_evaluation(key, lambda: evaluate_codec(
            codec, rates, dataset, tasks, preset=preset, networks=networks, progress=progress,
            kind="learned", group=group, task=task, strategy=strategy, **info),
            force=force_evaluation)
        add_object_bit_shares(entry, dict(zip(rates, nets)), dataset)
        entries.append(entry)
        learned_nets[name] = dict(zip(rates, nets))
    anchors, skipped = anchors_for(preset)
    for anchor in anchors:
        settings = spread(anchor.qualities, preset.repro_anchor_points)
        identity = {"anchor": anchor.name, "tool": anchor.available()[1],
                    "class": type(anchor).__name__}
        key = evaluation_key(identity, dataset, networks, settings)
        try:
            entries.append(cached_evaluation(key, lambda: evaluate_codec(
                anchor, settings, dataset, REPRO_TASKS, preset=preset, networks=networks,
                progress=progress, kind="anchor", group="traditional",
                quality_label=getattr(anchor, "quality_label", "quality")),
                force=force_evaluation))
        except (AnchorUnavailable, RuntimeError, OSError) as err:
            # an external tool that is installed but fails: report it, keep the others
            skipped[anchor.name] = f"failed while encoding: {err}"
            print(f"[icmlib] skipping anchor {anchor.name}: {err}")
    timings["evaluation_s"] = time.time() - t0

    # 4. results ------------------------------------------------------------------------------
    results = new_results(preset=preset, dataset=dataset_info(dataset), tasks=REPRO_TASKS,
                          reference=reference, command=command, codecs=entries)
    results["extra"]["training"] = training_logs({n: c for n, c in ckpts.items()
                                                  if n != mse_name()})
    results["extra"]["skipped_anchors"] = skipped
    results["extra"]["budget"] = {k: getattr(preset, k) for k in preset.to_dict()
                                  if k.startswith("repro_") or k in BUDGET_FIELDS}
    results["extra"]["bd_rate"] = bd_details(results)
    results["extra"]["bd_rate_file"] = bd_details(results, rate="bpp_file")
    summary = summarize(results)
    results["extra"]["summary"] = summary
    timings["total_s"] = time.time() - t_start
    results["extra"]["timings"] = timings
    save_results(results, out / "results.json")
    write_outputs(results, out)
    write_bit_maps(learned_nets, dataset, out / "bitmaps.png")
    if progress:
        print((out / "summary.md").read_text())
    return results


# ---- where the bits go ------------------------------------------------------------------------
def add_object_bit_shares(entry: Dict[str, Any], nets: Dict[Any, Any], dataset) -> None:
    """Add ``object_bit_share`` and ``object_area_share`` (:mod:`icmlib.evaluation.bitmaps`) to each
    point of a learned codec's entry, measured on the same images as the rest."""
    from icmlib.evaluation.bitmaps import object_bit_share

    for point in entry["points"]:
        point.update(object_bit_share(nets[point["setting"]], dataset))


def write_bit_maps(learned: Dict[str, Dict[int, Any]], dataset, path: Path,
                   rate_index: int = 1, images: Sequence[int] = (0, 1, 2)) -> Optional[Path]:
    """``bitmaps.png``: the MSE baseline's and the ICM codecs' (dynamic weighting) bit maps
    on the same test images, at one rate point."""
    from matplotlib.figure import Figure

    from icmlib.evaluation.bitmaps import plot_bit_maps

    chosen = {name: by_rate[rate_index] for name, by_rate in learned.items()
              if rate_index in by_rate and (name == mse_name() or "dynamic" in name)}
    if len(chosen) < 2:
        return None
    images = [i for i in images if i < len(dataset)]
    fig = Figure(figsize=(3 * (1 + len(chosen)), 3 * len(images)))
    axes = fig.subplots(len(images), 1 + len(chosen), squeeze=False)
    plot_bit_maps(chosen, dataset, images, axes=axes)
    fig.suptitle(f"Where the bits go: estimated bits of ŷ per 16×16 block, rate point "
                 f"{rate_index}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def object_share_table(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per learned codec and rate point: bpp, object bit share, and the ratio to the MSE
    baseline's share at the same rate point."""
    mse = {p["setting"]: p for c in results["codecs"] if c.get("group") == "mse"
           for p in c["points"]}
    rows = []
    for c in results["codecs"]:
        if c.get("kind") != "learned":
            continue
        for p in c["points"]:
            if "object_bit_share" not in p:
                continue
            base = mse.get(p["setting"], {}).get("object_bit_share")
            rows.append({"codec": c["name"], "setting": p["setting"], "bpp": p["bpp"],
                         "object_bit_share": p["object_bit_share"],
                         "object_area_share": p["object_area_share"],
                         "vs_mse": p["object_bit_share"] / base if base else None})
    return rows


# ---- tables and summary ----------------------------------------------------------------------
def paper_table(results: Dict[str, Any], as_text: bool = True, method: str = "pchip",
                rate: str = "bpp"):
    """The BD-rate table in the paper's form: rows = (task, codec) — the ICM codecs and
    the MSE baseline of each task — columns = anchors (traditional codecs and the MSE
    baseline); detection on bbox mAP, instance segmentation on mask (segm) mAP.
    ``rate``: ``"bpp"``, the coded bits (the rule, :mod:`icmlib.evaluation.overheads`), or
    ``"bpp_file"``, whole files."""
    import pandas as pd

    from icmlib.evaluation.evaluate import bd_rate_table
    from icmlib.evaluation.results import TASK_METRIC

    codecs = results["codecs"]
    anchors = [c["name"] for c in codecs if c["kind"] == "anchor"] + \
              [c["name"] for c in codecs if c.get("group") == "mse"]
    frames = []
    for task in results.get("tasks", REPRO_TASKS):
        metric = TASK_METRIC[task]
        tests = [c["name"] for c in codecs if c.get("group") == "mse"] + \
                [c["name"] for c in codecs if c.get("group") == "icm" and c.get("task") == task]
        if not tests:
            continue
        df = bd_rate_table(results, anchors=anchors, metric=metric, tests=tests,
                           method=method, as_text=as_text, rate=rate)
        if as_text:
            df = df.fillna("")
            for t in tests:
                if t in df.columns:
                    df.loc[t, t] = "—"
        df.index = pd.MultiIndex.from_tuples([(task, i) for i in df.index],
                                             names=["task (metric)", "codec"])
        frames.append(df)
    return pd.concat(frames) if frames else pd.DataFrame()


def bd_details(results: Dict[str, Any], method: str = "pchip",
               rate: str = "bpp") -> List[Dict[str, Any]]:
    """Every (test, anchor) pair of :func:`paper_table` with its number or its full error
    message and warnings (dropped non-monotonic points...), for the results file."""
    from icmlib.evaluation.evaluate import bd_rate_details
    from icmlib.evaluation.results import TASK_METRIC

    codecs = results["codecs"]
    anchors = [c["name"] for c in codecs if c["kind"] == "anchor" or c.get("group") == "mse"]
    rows = []
    for task in results.get("tasks", REPRO_TASKS):
        tests = [c["name"] for c in codecs if c.get("group") == "mse" or
                 (c.get("group") == "icm" and c.get("task") == task)]
        for row in bd_rate_details(results, anchors, TASK_METRIC[task], tests, method=method,
                                   rate=rate):
            rows.append({"task": task, **row})
    return rows


def summarize(results: Dict[str, Any]) -> Dict[str, Any]:
    """Headline numbers: per task, the best ICM codec's BD-rate against the best
    traditional anchor and against the MSE baseline, and the points where decoded images
    beat the uncompressed originals."""
    from icmlib.evaluation.evaluate import better_than_reference, bd_rate_table
    from icmlib.evaluation.results import TASK_METRIC

    codecs = results["codecs"]
    trad = [c["name"] for c in codecs if c["kind"] == "anchor"]
    mse = [c["name"] for c in codecs if c.get("group") == "mse"]
    out: Dict[str, Any] = {"tasks": {}}
    for task in results.get("tasks", REPRO_TASKS):
        metric = TASK_METRIC[task]
        icm = [c["name"] for c in codecs if c.get("group") == "icm" and c.get("task") == task]
        if not icm:
            continue
        num = bd_rate_table(results, anchors=trad + mse, metric=metric, tests=icm,
                            as_text=False)
        txt = bd_rate_table(results, anchors=trad + mse, metric=metric, tests=icm,
                            as_text=True)
        per = {}
        for t in icm:
            row = num.loc[t]
            trad_vals = {a: float(row[a]) for a in trad if np.isfinite(row[a])}
            # the "best" anchor is the one the ICM codec saves least against
            best_anchor = max(trad_vals, key=trad_vals.get) if trad_vals else None
            per[t] = {
                "vs_best_traditional": (best_anchor, trad_vals.get(best_anchor)) if best_anchor
                else (None, None),
                "vs_mse": {m: (float(row[m]) if np.isfinite(row[m]) else txt.loc[t, m])
                           for m in mse},
                "all": {a: txt.loc[t, a] for a in trad + mse},
            }
        better = better_than_reference({"reference": results["reference"],
                                        "codecs": [c for c in codecs if c["name"] in icm + mse + trad]},
                                       metric)
        out["tasks"][task] = {"metric": metric, "reference": results["reference"].get(metric),
                              "icm": per, "better_than_uncompressed": better}
    # where the learned codecs start: the MSE baseline against each anchor for the eye.
    # ICM's gain over MSE is measured from there, so a baseline behind the anchors on
    # PSNR has that much to make up before it can beat them on task accuracy.
    if trad and mse:
        psnr = bd_rate_table(results, anchors=trad, metric="psnr", tests=mse, as_text=True)
        out["mse_vs_anchors_psnr"] = {a: psnr.loc[mse[0], a] for a in trad}
        out["mse_vs_anchors_equal_psnr"] = equal_quality_rates(results, mse[0], trad, "psnr")
    return out


def equal_quality_rates(results: Dict[str, Any], test: str, anchors: Sequence[str],
                        metric: str = "psnr") -> Dict[str, Any]:
    """At the quality of ``test``'s highest-rate point: the bpp each anchor needs for it.

    A one-point comparison that exists even when a BD-rate cannot (a curve whose quality
    barely changes with rate overlaps nothing): ``{"bpp", "quality", "anchors": {name:
    bpp or a reason}}``. The anchor's rate is interpolated linearly in log(bpp) between its
    two points around that quality (after dropping points below its running maximum)."""
    from icmlib.evaluation.results import find_codec

    top = max(find_codec(results, test)["points"], key=lambda p: p["bpp"])
    q = top.get(metric)
    out = {"bpp": top["bpp"], "quality": q, "anchors": {}}
    for name in anchors:
        pts = sorted((p["bpp"], p.get(metric)) for p in find_codec(results, name)["points"]
                     if p.get(metric) is not None)
        frontier = [pts[0]] if pts else []
        for b, v in pts[1:]:
            if v > frontier[-1][1]:
                frontier.append((b, v))
        if q is None or not frontier:
            out["anchors"][name] = "no points"
        elif q < frontier[0][1]:
            out["anchors"][name] = f"below its lowest setting ({frontier[0][0]:.3f} bpp)"
        elif q > frontier[-1][1]:
            out["anchors"][name] = f"above its highest setting ({frontier[-1][0]:.3f} bpp)"
        else:
            qs = [v for _, v in frontier]
            out["anchors"][name] = float(np.exp(np.interp(q, qs, [np.log(b) for b, _ in frontier])))
    return out


TIMING_LABELS = {
    "task_networks_s": "task networks (this run; 0 when loaded from the cache)",
    "codec_training_s": "codec training (this run; 0 when loaded from the cache)",
    "codec_training_logged_s": "codec training when the codecs were trained (their logs)",
    "evaluation_s": "evaluation (this run)",
    "total_s": "total (this run)",
}


def summary_markdown(results: Dict[str, Any]) -> str:
    """``summary.md``: provenance, headline BD-rates, better-than-uncompressed, timings."""
    from icmlib.evaluation.evaluate import dataframe_to_markdown
    from icmlib.evaluation.results import describe_device

    s = results["extra"].get("summary") or summarize(results)
    lines = [f"# Reproduction: preset `{results['preset'].get('name')}`", "",
             f"- command: `{results['command']}`",
             f"- commit: `{results['commit']}`",
             f"- device: {describe_device(results['device'])}",
             f"- date: {results['created']}, icmlib {results['icmlib_version']}",
             f"- dataset: {results['dataset'].get('name')} / {results['dataset'].get('split')}, "
             f"{results['dataset'].get('num_images')} images; bpp = {results['bpp_averaging']}",
             ""]
    skipped = results["extra"].get("skipped_anchors") or {}
    if skipped:
        lines += ["Skipped anchors:", ""] + [f"- {k}: {v}" for k, v in skipped.items()] + [""]
    lines += ["## BD-rate (PCHIP; negative = fewer bits for the same task accuracy)", "",
              f"What the rates count, the same for every codec: "
              f"{results.get('rate_rule') or RATE_RULE_OLD}.", "",
              dataframe_to_markdown(_flat(paper_table(results))), "",
              "Paper (Le et al. 2021, vs VVC): detection −37.87 %, instance segmentation "
              "−32.90 %.", ""] + overhead_lines(results)
    if s.get("mse_vs_anchors_psnr"):
        lines += ["## The learned baseline against the anchors, for the eye", "",
                  "ICM codecs are fine-tuned from the MSE baseline, so they start where it "
                  "stands. BD-rate of the MSE baseline against each anchor at equal PSNR "
                  "(negative: the learned codec needs fewer bits):",
                  ""] + [f"- vs {a}: {v}" for a, v in s["mse_vs_anchors_psnr"].items()] + [""]
        eq = s.get("mse_vs_anchors_equal_psnr")
        if eq:
            lines += [f"At the MSE baseline's highest rate ({eq['bpp']:.3f} bpp, "
                      f"{eq['quality']:.2f} dB), the bits each anchor needs for the same PSNR:",
                      ""] + [f"- {a}: " + (f"{v:.3f} bpp ({eq['bpp'] / v:.1f}x fewer)"
                                           if isinstance(v, float) else v)
                             for a, v in eq["anchors"].items()] + [""]
    for task, t in s["tasks"].items():
        lines.append(f"## {task} ({t['metric']}; uncompressed: {_fmt(t['reference'])})")
        lines.append("")
        for name, v in t["icm"].items():
            anchor, value = v["vs_best_traditional"]
            vs_trad = (f"{value:+.1f} % vs {anchor} (the traditional anchor it saves least "
                       f"against)" if anchor else "no BD-rate against any traditional anchor "
                       "(see the table for why)")
            vs_mse = ", ".join(f"{(f'{x:+.1f} %' if isinstance(x, float) else x)} vs {m}"
                               for m, x in v["vs_mse"].items())
            lines.append(f"- {name}: {vs_trad}; {vs_mse}")
        better = t["better_than_uncompressed"]
        if better:
            lines.append(f"- decoded images beat the uncompressed originals at "
                         f"{len(better)} point(s):")
            for b in better:
                lines.append(f"  - {b['codec']} at setting {b['setting']} "
                             f"({b['bpp']:.3f} bpp): {b['value']:.4f} vs {b['reference']:.4f} "
                             f"({b['gain']:+.4f})")
        else:
            lines.append("- no codec point gives higher accuracy than the uncompressed "
                         "originals")
        lines.append("")
    shares = object_share_table(results)
    if shares:
        area = np.mean([r["object_area_share"] for r in shares])
        lines += ["## Where the bits go", "",
                  f"Share of the main stream's bits spent inside objects (objects cover "
                  f"{area:.0%} of the test images); ×MSE: that share over the MSE baseline's "
                  f"at the same rate point.", "",
                  "| codec | rate point | bpp | bits inside objects | ×MSE |", "|---|---|---|---|---|"]
        lines += [_share_row(r) for r in shares] + [""]
    timings = results["extra"].get("timings", {})
    if timings:
        lines += ["## Run time (wall clock)", ""] + [
            f"- {TIMING_LABELS.get(k, k)}: {v / 60:.1f} min" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


#: what ``bpp`` counted in a results file written before the rate split
RATE_RULE_OLD = ("whole files (this results file predates the split of coded bits and "
                 "overheads; both tables below count whole files)")


def overhead_lines(results: Dict[str, Any]) -> List[str]:
    """Summary lines: the BD-rate table on whole files, and what each codec's files carry
    beside the coded bits (mean bytes per image)."""
    from icmlib.evaluation.evaluate import dataframe_to_markdown, overhead_table

    lines = ["### The same table on whole files", "",
             "Each codec's complete file (`.icm` container, JFIF, RIFF, HEIF boxes, the 4-byte "
             "size prefix of the video anchors): what a reader sees containers cost at this "
             "image size.", "",
             dataframe_to_markdown(_flat(paper_table(results, rate="bpp_file"))), ""]
    table = overhead_table(results)
    if not table.empty:
        lines += ["### What the files carry beside the coded bits", "",
                  "Mean bytes per image (headers are counted, being part of the coded "
                  "stream; container, metadata and size prefix are not), and at each "
                  "codec's lowest rate point the share of the file the rule leaves out.",
                  "", dataframe_to_markdown(_formatted(table)), ""]
    return lines


def _formatted(table):
    """:func:`icmlib.evaluation.evaluate.overhead_table` as text: bytes whole, bpp to 3 places, shares
    in per cent."""
    text = table.astype(object)
    for col in table.columns:
        fmt = "{:.1%}" if col == "not counted" else ("{:.3f}" if "bpp" in col else "{:.0f}")
        text[col] = ["" if v != v else fmt.format(v) for v in table[col]]
    return text


def _share_row(r: Dict[str, Any]) -> str:
    ratio = "" if r["vs_mse"] is None else f"{r['vs_mse']:.2f}"
    return (f"| {r['codec']} | {r['setting']} | {r['bpp']:.3f} | {r['object_bit_share']:.1%} "
            f"| {ratio} |")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _flat(df):
    """A (task, codec) MultiIndex flattened to "task: codec" for markdown and CSV."""
    if df.empty:
        return df
    df = df.copy()
    df.index = [f"{t}: {c}" for t, c in df.index]
    df.index.name = "codec (task)"
    return df


def write_outputs(results: Dict[str, Any], out: Union[str, Path]) -> Dict[str, Path]:
    """Figures, tables and summary of a results dict into ``out`` (from the file alone)."""
    # Figure objects, not pyplot: writing files must not change the caller's backend or
    # leave figures open (a notebook calling this still shows its own figures inline)
    from matplotlib.figure import Figure

    def subplots(ncols=1, figsize=(7, 4.8)):
        fig = Figure(figsize=figsize)
        return fig, fig.subplots(1, ncols)

    from icmlib.evaluation import plots
    from icmlib.evaluation.evaluate import dataframe_to_markdown
    from icmlib.evaluation.results import TASK_METRIC

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: Dict[str, Path] = {}
    for task in results.get("tasks", REPRO_TASKS):
        fig, ax = subplots()
        plots.plot_rd_curves(results, TASK_METRIC[task], ax=ax, task=task)
        fig.tight_layout()
        files[f"rd_{task}"] = out / f"rd_{task}.png"
        fig.savefig(files[f"rd_{task}"], dpi=120)
        if any(r.get("task") == task for r in results["extra"].get("training", [])):
            fig, axes = subplots(4, figsize=(18, 4))
            plots.plot_weighting_comparison(results, task, axes=axes)
            fig.tight_layout()
            files[f"weighting_{task}"] = out / f"weighting_{task}.png"
            fig.savefig(files[f"weighting_{task}"], dpi=110)
    fig, ax = subplots()
    plots.plot_rd_curves(results, "psnr", ax=ax, reference=False)
    fig.tight_layout()
    files["rd_psnr"] = out / "rd_psnr.png"
    fig.savefig(files["rd_psnr"], dpi=120)
    for suffix, rate in (("", "bpp"), ("_file", "bpp_file")):
        table = _flat(paper_table(results, rate=rate))
        files[f"bd_rate{suffix}_md"] = out / f"bd_rate{suffix}.md"
        files[f"bd_rate{suffix}_md"].write_text(dataframe_to_markdown(table))
        files[f"bd_rate{suffix}_csv"] = out / f"bd_rate{suffix}.csv"
        table.to_csv(files[f"bd_rate{suffix}_csv"])
    files["summary"] = out / "summary.md"
    files["summary"].write_text(summary_markdown(results))
    return files


# ---- for the book -------------------------------------------------------------------------
def find_results(preset_name: str = "cpu", start: Union[str, Path, None] = None) -> Optional[Path]:
    """``data/results/<preset_name>/results.json`` in the current folder or one of its
    parents (the book's notebooks run in ``book/``), or ``None``."""
    here = Path(start or Path.cwd()).resolve()
    for folder in [here, *here.parents]:
        candidate = folder / "data" / "results" / preset_name / "results.json"
        if candidate.is_file():
            return candidate
    return None


def book_results(preset_name: str = "cpu", fallback: Union[Preset, str] = "ci",
                 out: Union[str, Path, None] = None, progress: bool = False
                 ) -> Tuple[Dict[str, Any], str]:
    """The results the evaluation chapter shows, and a sentence saying where they come from.

    The committed ``data/results/<preset_name>/results.json`` when it exists; otherwise a
    live reproduction at the ``fallback`` preset's scale (train-or-load, so fast when the
    cache holds it) into ``out`` (default: a temporary folder).
    """
    import tempfile

    from icmlib.evaluation.results import describe_device, load_results

    path = find_results(preset_name)
    if path is not None:
        results = load_results(path)
        source = (f"loaded from {path.relative_to(path.parents[3]) if len(path.parents) > 3 else path}"
                  f", produced by `{results['command']}` at commit {results['commit'][:12]} on "
                  f"{describe_device(results['device'])}, {results['created']}")
        return results, source
    fallback = get_preset(fallback)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="icm-repro-"))
    results = reproduce(fallback, out, progress=progress,
                        command=f"icmlib.evaluation.reproduce.book_results(fallback={fallback.name!r})")
    source = (f"no data/results/{preset_name}/results.json here, so this is a LIVE run at the "
              f"`{fallback.name}` preset's scale (tiny: {results['dataset']['num_images']} "
              f"images, a few training steps) on {describe_device(results['device'])} — "
              f"its numbers show the pipeline working, not the paper's result")
    return results, source


#: The paper's BD-rates (Le et al., ICASSP 2021, Table 1: ICM codec vs VVC)
PAPER_BD_RATE = {"detection": -37.87, "instance": -32.90}


def headline_table(results: Dict[str, Any]):
    """Per task: the paper's BD-rate against VVC next to ours — the best ICM codec against
    the strongest traditional anchor available here and against the MSE baseline."""
    import pandas as pd

    s = results["extra"].get("summary") or summarize(results)
    rows = []
    for task, t in s["tasks"].items():
        best = None
        for name, v in t["icm"].items():
            anchor, value = v["vs_best_traditional"]
            if value is not None and (best is None or value < best[2]):
                best = (name, anchor, value, v["vs_mse"])
        if best is None:
            rows.append({"task": task, "paper (vs VVC)": f"{PAPER_BD_RATE.get(task, float('nan')):+.2f} %",
                         "ours: codec": "—", "ours: vs strongest traditional anchor": "n/a",
                         "ours: vs MSE baseline": "n/a"})
            continue
        name, anchor, value, vs_mse = best
        mse = "; ".join(f"{x:+.1f} %" if isinstance(x, float) else str(x) for x in vs_mse.values())
        rows.append({"task": task, "paper (vs VVC)": f"{PAPER_BD_RATE.get(task, float('nan')):+.2f} %",
                     "ours: codec": name,
                     "ours: vs strongest traditional anchor": f"{value:+.1f} % ({anchor})",
                     "ours: vs MSE baseline": mse})
    return pd.DataFrame(rows).set_index("task")


def illustration_pair(results: Dict[str, Any], metric: str = "psnr",
                      test: Optional[str] = None, min_overlap: float = 0.2):
    """A pair of curves to draw the Bjøntegaard delta with: ``test`` (default the MSE
    baseline) and the anchor whose ``metric`` range overlaps it most; when no anchor
    overlaps it by ``min_overlap`` (a tiny, barely trained run), the two anchors that
    overlap each other most.

    Returns ``(anchor_name, anchor_points, test_name, test_points)``, points as
    ``[(bpp, quality), ...]``; the anchor is ``None`` when nothing overlaps at all.
    """
    from icmlib.evaluation.bdrate import overlap
    from icmlib.evaluation.results import curve, find_codec

    def points(codec):
        return list(zip(*curve(codec, metric)))

    def frac(a, b):
        qa, qb = [q for _, q in a], [q for _, q in b]
        return overlap((min(qa), max(qa)), (min(qb), max(qb)))[2]

    anchors = [(c["name"], points(c)) for c in results["codecs"] if c["kind"] == "anchor"]
    anchors = [(n, p) for n, p in anchors if len(p) >= 4]
    test = test or mse_name()
    t_pts = points(find_codec(results, test))
    pairs = [(frac(p, t_pts), n, p, test, t_pts) for n, p in anchors if len(t_pts) >= 2]
    best = max(pairs, default=None, key=lambda x: x[0])
    if best is None or best[0] < min_overlap:
        others = [(frac(pa, pb), na, pa, nb, pb) for i, (na, pa) in enumerate(anchors)
                  for nb, pb in anchors[i + 1:]]
        alt = max(others, default=None, key=lambda x: x[0])
        if alt is not None and (best is None or alt[0] > best[0]):
            best = alt
    if best is None or best[0] <= 0:
        return None, [], test, t_pts
    return best[1], best[2], best[3], best[4]
