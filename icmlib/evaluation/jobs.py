"""The reproduction's evaluations as jobs, run side by side in worker processes.

Each codec's evaluation -- code every test image at each setting to real bytes, decode,
run the frozen task networks, measure where a learned codec's bits go -- depends on no
other. Most of its work cannot use a second core: an external encoder (ffmpeg, VVenC) is
one short process per image, CompressAI's rANS coder runs on one thread, and a learned
codec decodes on one thread on purpose (:mod:`icmlib.codec.determinism`). In one process
the ``cpu`` preset's evaluation took 29.4 min on two cores, one of them mostly idle.

:func:`run_jobs` runs the jobs in ``workers`` processes with one torch thread each, the
longest expected first, so the last to finish is a short one. A job carries everything
it needs (its codec, its settings, its cache key), so a worker never trains or
downloads anything; the caller's process writes each result to the evaluation cache as
it arrives, so an interrupted run keeps every evaluation that finished.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from icmlib.evaluation import evaluate
from icmlib.evaluation.accuracy import evaluation_device
from icmlib.evaluation.bitmaps import object_bit_share

#: seconds to code and decode one 128×128 image at one setting, as measured in the
#: ``cpu`` results (data/results/cpu, 2-core Xeon); they only order the jobs
CODING_SECONDS = {"vvc": 0.36, "av1": 0.20, "hevc": 0.19, "learned": 0.10, "avif": 0.03}
#: the same for what is not listed (Pillow's JPEG, WebP, JPEG 2000 take milliseconds)
OTHER_CODING_SECONDS = 0.02
#: seconds for one image through one task network (cpu preset; ordering only)
TASK_SECONDS = 0.035


@dataclass
class Job:
    """One codec's evaluation: what :func:`icmlib.evaluation.evaluate.evaluate_codec` is
    called with, the cache key its entry is stored under and, for a learned codec, its
    networks by setting (for the object bit shares)."""

    name: str
    key: Dict[str, Any]
    codec: Any
    settings: List[Any]
    tasks: Tuple[str, ...]
    options: Dict[str, Any] = field(default_factory=dict)
    bit_share_nets: Optional[Dict[Any, Any]] = None

    def expected_seconds(self, num_images: int) -> float:
        """A rough duration, to start the longest jobs first."""
        kind = "learned" if self.bit_share_nets is not None else self.codec.name
        per_image = CODING_SECONDS.get(kind, OTHER_CODING_SECONDS) + TASK_SECONDS * len(self.tasks)
        return per_image * num_images * len(self.settings)


def default_workers(preset) -> int:
    """One worker per CPU core when the evaluation runs on the CPU; on a GPU one process
    (the task networks and learned codecs share the device, the anchors are few)."""
    if evaluation_device(preset).type != "cpu":
        return 1
    return max(1, os.cpu_count() or 1)


def add_object_bit_shares(entry: Dict[str, Any], nets: Mapping[Any, Any], dataset) -> None:
    """Add ``object_bit_share`` and ``object_area_share`` (:mod:`icmlib.evaluation.bitmaps`)
    to each point of a learned codec's entry, measured on the same images as the rest."""
    for point in entry["points"]:
        point.update(object_bit_share(nets[point["setting"]], dataset))


def run_job(job: Job, preset, dataset, networks: Mapping[str, torch.nn.Module]) -> Dict[str, Any]:
    """One job's entry of the results schema, in this process."""
    entry = evaluate.evaluate_codec(job.codec, job.settings, dataset, job.tasks, preset=preset,
                                    networks=networks, progress=False, **job.options)
    if job.bit_share_nets is not None:
        add_object_bit_shares(entry, job.bit_share_nets, dataset)
    return entry


# ---- worker processes ------------------------------------------------------------------------
_WORKER: Dict[str, Any] = {}


def _start_worker(preset, dataset, networks, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(preset=preset, dataset=dataset, networks=networks)


def _run_in_worker(job: Job) -> Dict[str, Any]:
    return run_job(job, _WORKER["preset"], _WORKER["dataset"], _WORKER["networks"])


def run_jobs(jobs: Sequence[Job], preset, dataset, networks: Mapping[str, torch.nn.Module], *,
             workers: int = 1, progress: bool = True,
             force: bool = False) -> List[Union[Dict[str, Any], Exception]]:
    """Every job's entry, in the order of ``jobs``: from the evaluation cache, or evaluated
    (in ``workers`` processes when more than one, else here) and cached. A job that fails
    gives its exception in its place, for the caller to judge; the others go on."""
    results: List[Any] = [None] * len(jobs)
    todo = []
    for i, job in enumerate(jobs):
        cached = None if force else evaluate.load_cached_evaluation(job.key)
        if cached is None:
            todo.append(i)
        else:
            results[i] = cached
    todo.sort(key=lambda i: -jobs[i].expected_seconds(len(dataset)))
    workers = max(1, min(int(workers), len(todo)))
    bar = _progress_bar(len(todo), workers, progress)
    for i, outcome in _outcomes(jobs, todo, preset, dataset, networks, workers):
        if not isinstance(outcome, Exception):
            evaluate.save_cached_evaluation(jobs[i].key, outcome)
        results[i] = outcome
        bar.set_postfix_str(jobs[i].name)
        bar.update(1)
    bar.close()
    return results


def _progress_bar(total: int, workers: int, progress: bool):
    from tqdm.auto import tqdm

    where = f"{workers} processes" if workers > 1 else "1 process"
    return tqdm(total=total, desc=f"evaluating codecs ({where})", unit="codec",
                disable=not progress or total == 0)


def _outcomes(jobs, todo, preset, dataset, networks, workers):
    """(index, entry or exception) of each job of ``todo``, as they finish."""
    if workers == 1:
        for i in todo:
            try:
                yield i, run_job(jobs[i], preset, dataset, networks)
            except Exception as err:  # noqa: BLE001 - the caller decides what a failure means
                yield i, err
        return
    # spawn, not fork: a forked copy of a process whose OpenMP threads already ran can hang
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(preset, dataset, dict(networks), 1)) as pool:
        futures = {pool.submit(_run_in_worker, jobs[i]): i for i in todo}
        for future in as_completed(futures):
            error = future.exception()
            yield futures[future], error if error is not None else future.result()
