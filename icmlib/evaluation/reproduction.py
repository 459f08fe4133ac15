"""Reproduce the paper's results with the project's own code: ``icm reproduce --preset P``.

One call trains (or loads) everything and measures it:

1. **task networks** — Faster R-CNN (detection) and Mask R-CNN (instance segmentation),
   through ``icmlib.tasks.task_network`` (train-or-load; COCO-pretrained on ``gpu``);
2. **codecs** at every rate point λ of ``preset.rd_lambdas`` and ``preset.low_rd_lambdas``
   (shipped, or trained; :func:`icmlib.training.recipe.rate_points`):

   * the **MSE baseline** (the human-vision codec: same network, ``w_task = 0``);
   * **ICM** codecs for each task and each weighting strategy of
     ``preset.repro_strategies`` (fixed weights, the paper's dynamic strategy, auto);

3. **anchors** — every traditional codec of :mod:`icmlib.evaluation.anchors` that can run here
   (a missing tool is skipped with its install hint);
4. **evaluation** of every codec on the same images, the test split, which chose nothing
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
``bitmaps.png``             where the bits go: the learned codecs' bit maps on test images
==========================  ===============================================================

This module runs the steps; the numbers are read from the results dict by
:mod:`icmlib.evaluation.summary` and written out by :mod:`icmlib.evaluation.report`, so
both can be made again from a committed ``results.json`` alone.

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

On a preset with ``codec_zoo`` (``gpu``) each MSE codec is CompressAI's pretrained zoo
codec trained with that rate point's λ (:mod:`icmlib.training.zoo`), and every ICM codec
is fine-tuned from it. Every codec is a train-or-load step keyed by its whole configuration (its
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

from icmlib.evaluation import accuracy, evaluate, jobs, report, summary
from icmlib.evaluation.anchors import ANCHORS, AnchorUnavailable, make_anchor
from icmlib.evaluation.bitmaps import FOLLOWED_OBJECTS, object_share_if_bits_followed_objects
from icmlib.evaluation.results import (REPRO_TASKS, describe_device, icm_name, load_results,
                                       mse_name, new_results, save_results)
from icmlib.presets import Preset, get_preset

#: the preset fields that decide what the reproduction trains (recorded in results.json)
BUDGET_FIELDS = ("rd_lambdas", "low_rd_lambdas", "mse_low_rd_lambdas", "mse_mid_rd_lambdas",
                 "codec_steps", "codec_base_rate", "codec_finetune_steps", "mse_finish_steps", "icm_steps",
                 "icm_val_every", "icm_task_weight", "icm_mse_weight", "lr", "codec_zoo",
                 "codec_transforms")


class ReproductionError(RuntimeError):
    """A reproduction step that cannot run (what is wrong and what to do)."""


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
    """``{rate point: checkpoint dict}``, rate points numbered by λ, lowest first
    (:func:`~icmlib.training.recipe.rate_points`); a variable-rate codec's checkpoint
    serves each of its points (:func:`rate_in_checkpoint` says which of its rates). The
    MSE baseline's own lowest points are left out of an ICM codec's, so a point's number
    is its λ's for every codec. The MSE baseline is :func:`~icmlib.training.baseline_run`'s
    (finished on the ICM codecs' crops where the preset says so)."""
    from icmlib.training import has_rate, rate_points

    ckpts: Dict[Any, Dict[str, Any]] = {}
    out = {}
    for point, (codec_rate, _, _) in enumerate(rate_points(preset)):
        if not has_rate(task, codec_rate):
            continue
        if codec_rate not in ckpts:
            ckpts[codec_rate] = _checkpoint(preset, task, strategy, codec_rate, progress)
        out[point] = ckpts[codec_rate]
    return out


def _checkpoint(preset: Preset, task, strategy, codec_rate, progress) -> Dict[str, Any]:
    """The reproduction's checkpoint of one codec's rate group: the reported MSE baseline
    (:func:`~icmlib.training.baseline_run`) or an ICM codec's run."""
    from icmlib.training import baseline_run, codec_run

    if task is None:
        return baseline_run(preset, codec_rate, progress=progress)
    return codec_run(preset, task, strategy, codec_rate, progress=progress)


def reproduction_codec(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                       strategy: str = "mse", *, progress: bool = False):
    """One codec of the reproduction, the MSE baseline (``task=None``) or an ICM codec, as a
    :class:`~icmlib.evaluation.anchors.LearnedCodec` whose settings are its rate points,
    numbered as in ``results.json``. The MSE baseline is the one the reproduction reports
    (:func:`~icmlib.training.baseline_run`), whose points reach the ICM codecs' low rates;
    comparing with it at the closest rate compares codecs that spend about the same bits.
    Each point's network is loaded (or trained) the first time it codes."""
    from icmlib.training import codec_at_rate, has_rate, rate_points

    preset = get_preset(preset)

    def loader(codec_rate, index):
        return lambda: codec_at_rate(_checkpoint(preset, task, strategy, codec_rate, progress),
                                     index)

    nets = {point: loader(codec_rate, index)
            for point, (codec_rate, index, _) in enumerate(rate_points(preset))
            if has_rate(task, codec_rate)}
    name = mse_name() if task is None else icm_name(task, strategy)
    return evaluate.learned_codec(nets, name, preset)


def rate_in_checkpoint(preset: Preset, point: int) -> int:
    """Which rate of its codec's checkpoint serves the reproduction's rate ``point``."""
    from icmlib.training import rate_points

    return rate_points(preset)[point][1]


def point_lambdas(preset: Preset) -> List[float]:
    """λ of each of the reproduction's rate points, lowest first."""
    from icmlib.training import rate_points

    return [lam for _, _, lam in rate_points(preset)]


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


def training_logs(codecs: Dict[str, Dict[int, Dict[str, Any]]],
                  preset: Optional[Preset] = None) -> List[Dict[str, Any]]:
    """Per ICM run: its validation log (bpp, PSNR, task score over steps) and a thinned
    training log (loss terms and weights over steps), for the weighting comparison."""
    from icmlib.training import logs_at_rate

    keep_train = ("step", "loss", "rate", "mse", "task", "w_rate", "w_mse", "w_task", "psnr")
    runs = []
    for name, by_rate in codecs.items():
        for r, ckpt in sorted(by_rate.items()):
            meta = ckpt.get("meta", {})
            inner = r if preset is None else rate_in_checkpoint(preset, r)
            logs = logs_at_rate(ckpt.get("logs", {}), inner)
            lam = meta.get("rate")
            runs.append({
                "codec": name, "task": meta.get("task"), "strategy": meta.get("strategy"),
                "rate_index": r, "lambda": lam[inner] if isinstance(lam, list) else lam,
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
              force_evaluation: bool = False, retrain: bool = False,
              workers: Optional[int] = None) -> Dict[str, Any]:
    """Train or load, evaluate, and write the reproduction's outputs (see module docstring).

    ``retrain``: ignore the shipped checkpoints (:mod:`icmlib.shipped`) and train every
    task network and codec with the same recipe (their measured time is printed first).
    ``workers``: processes that evaluate codecs side by side (default: one per CPU core
    on the CPU, one on a GPU; :mod:`icmlib.evaluation.jobs`). The numbers do not depend
    on it.
    Returns the results dict (also written to ``<out>/results.json``).
    """
    import os

    from icmlib.shipped import RETRAIN_ENV

    if workers is not None and workers < 1:  # before hours of training, not after
        raise ReproductionError(f"workers must be at least 1, got {workers}")
    before = os.environ.get(RETRAIN_ENV)
    if retrain:
        os.environ[RETRAIN_ENV] = "1"
        if progress:
            print(retrain_estimate())
    try:
        return _reproduce(preset, out, progress, command, force_evaluation, workers)
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


def _reproduce(preset, out, progress, command, force_evaluation, workers) -> Dict[str, Any]:
    import torch

    from icmlib.data import dataset_for

    preset = get_preset(preset)
    out = Path(out) if out is not None else Path("data") / "results" / preset.name
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"icmlib.evaluation.reproduce({preset.name!r}, out={str(out)!r})"
    timings: Dict[str, float] = {}
    t_start = time.time()
    torch.set_num_threads(min(torch.get_num_threads(), 2) if preset.device == "cpu"
                          else torch.get_num_threads())

    # 1. task networks ---------------------------------------------------------------------
    t0 = time.time()
    networks = accuracy.task_networks(REPRO_TASKS, preset)
    timings["task_networks_s"] = time.time() - t0

    # 2. codecs -----------------------------------------------------------------------------
    t0 = time.time()
    ckpts = train_codecs(preset, REPRO_TASKS, progress=progress)
    timings["codec_training_s"] = time.time() - t0
    # a second run loads the codecs: keep how long they took when they were trained
    timings["codec_training_logged_s"] = 60 * training_minutes(ckpts)

    # 3. evaluation -------------------------------------------------------------------------
    t0 = time.time()
    workers = jobs.default_workers(preset) if workers is None else workers
    # reported numbers come from the test split, which chose nothing (0: all of it)
    dataset = accuracy.subset(dataset_for(preset, split="test"), preset.repro_eval_images or None)
    ref_key = evaluate.evaluation_key({"reference": True}, dataset, networks, [])
    reference = evaluate.cached_evaluation(ref_key, lambda: accuracy.reference_accuracy(
        REPRO_TASKS, dataset, preset=preset, networks=networks), force=force_evaluation)
    entries, learned_nets, skipped = _evaluate_codecs(ckpts, preset, dataset, networks,
                                                      progress, force_evaluation, workers)
    timings["evaluation_s"] = time.time() - t0

    # 4. results ------------------------------------------------------------------------------
    results = new_results(preset=preset, dataset=accuracy.dataset_info(dataset),
                          tasks=REPRO_TASKS, reference=reference, command=command,
                          codecs=entries)
    _add_extra(results, preset, ckpts, skipped)
    results["extra"][FOLLOWED_OBJECTS] = object_share_if_bits_followed_objects(dataset)
    timings["total_s"] = time.time() - t_start
    results["extra"]["timings"] = timings
    results["extra"]["evaluation_workers"] = workers
    save_results(results, out / "results.json")
    report.write_outputs(results, out)
    report.write_bit_maps(learned_nets, dataset, out / "bitmaps.png")
    if progress:
        print((out / "summary.md").read_text())
    return results


def _evaluate_codecs(ckpts, preset, dataset, networks, progress, force_evaluation, workers):
    """Every learned codec's and every anchor's entry (in that order; cached, or evaluated
    side by side in ``workers`` processes: :mod:`icmlib.evaluation.jobs`), the learned
    codecs' networks by rate, and the anchors that could not run with why."""
    learned, learned_nets = _learned_jobs(ckpts, preset, dataset, networks)
    anchors, skipped = anchors_for(preset)
    anchor_jobs = [_anchor_job(a, preset, dataset, networks) for a in anchors]
    outcomes = jobs.run_jobs(learned + anchor_jobs, preset, dataset, networks,
                             workers=workers, progress=progress, force=force_evaluation)
    entries = []
    for job, outcome in zip(learned + anchor_jobs, outcomes):
        if isinstance(outcome, Exception):
            if job.bit_share_nets is not None or not _anchor_failure(outcome):
                raise outcome
            # an external tool that is installed but fails: report it, keep the others
            skipped[job.name] = f"failed while encoding: {outcome}"
            print(f"[icmlib] skipping anchor {job.name}: {outcome}")
            continue
        if job.bit_share_nets is not None and not all("object_bit_share" in p
                                                      for p in outcome["points"]):
            jobs.add_object_bit_shares(outcome, job.bit_share_nets, dataset)  # an older cache
        entries.append(outcome)
    return entries, learned_nets, skipped


def _anchor_failure(error: Exception) -> bool:
    """Whether an anchor's error means its tool failed (skip it), not the evaluation."""
    from concurrent.futures.process import BrokenProcessPool

    return (isinstance(error, (AnchorUnavailable, RuntimeError, OSError))
            and not isinstance(error, BrokenProcessPool))


def _learned_jobs(ckpts, preset, dataset, networks):
    """A job per learned codec (keyed by its weights), and its networks by rate."""
    from icmlib.codec import fingerprint
    from icmlib.training import codec_at_rate

    out, learned_nets = [], {}
    for name, by_rate in ckpts.items():
        rates = sorted(by_rate)
        nets = [codec_at_rate(by_rate[r], rate_in_checkpoint(preset, r)) for r in rates]
        meta = by_rate[rates[0]].get("meta", {})
        task, strategy = meta.get("task"), meta.get("strategy")
        tasks = REPRO_TASKS if task is None else (task,)
        identity = {"learned": name, "nets": [fingerprint(n).hex() for n in nets]}
        key = evaluate.evaluation_key(identity, dataset, {t: networks[t] for t in tasks}, rates)
        options = {"kind": "learned", "group": "mse" if task is None else "icm",
                   "task": task, "strategy": strategy,
                   "lambdas": [point_lambdas(preset)[r] for r in rates],
                   "steps": [by_rate[r].get("meta", {}).get("steps") for r in rates]}
        # settings are the rate points' numbers: an ICM codec's may not start at 0
        by_point = dict(zip(rates, nets))
        out.append(jobs.Job(name, key, evaluate.learned_codec(by_point, name, preset), rates,
                            tuple(tasks), options, bit_share_nets=by_point))
        learned_nets[name] = dict(zip(rates, nets))
    return out, learned_nets


def _anchor_job(anchor, preset, dataset, networks) -> "jobs.Job":
    """An anchor's job at the preset's settings (keyed by its tool's version)."""
    settings = spread(anchor.qualities, preset.repro_anchor_points)
    identity = {"anchor": anchor.name, "tool": anchor.available()[1],
                "class": type(anchor).__name__}
    key = evaluate.evaluation_key(identity, dataset, networks, settings)
    options = {"kind": "anchor", "group": "traditional",
               "quality_label": getattr(anchor, "quality_label", "quality")}
    return jobs.Job(anchor.name, key, anchor, settings, tuple(REPRO_TASKS), options)


def _add_extra(results: Dict[str, Any], preset: Preset, ckpts, skipped: Dict[str, str]) -> None:
    """The results file's ``extra``: training logs, skipped anchors, budget, the BD-rate
    pairs on both rates and the summary."""
    results["extra"]["training"] = training_logs({n: c for n, c in ckpts.items()
                                                  if n != mse_name()}, preset)
    results["extra"]["skipped_anchors"] = skipped
    results["extra"]["budget"] = {k: getattr(preset, k) for k in preset.to_dict()
                                  if k.startswith("repro_") or k in BUDGET_FIELDS}
    results["extra"]["bd_rate"] = summary.bd_details(results)
    results["extra"]["bd_rate_file"] = summary.bd_details(results, rate="bpp_file")
    results["extra"]["summary"] = summary.summarize(results)


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
                        command=f"icmlib.evaluation.book_results(fallback={fallback.name!r})")
    source = (f"no data/results/{preset_name}/results.json here, so this is a LIVE run at the "
              f"`{fallback.name}` preset's scale (tiny: {results['dataset']['num_images']} "
              f"images, a few training steps) on {describe_device(results['device'])} — "
              f"its numbers show the pipeline working, not the paper's result")
    return results, source

