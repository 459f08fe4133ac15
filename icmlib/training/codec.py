"""Training the codec: the MSE (human-vision) baseline and ICM codecs for a frozen task.

One function, :func:`train_codec`, trains one codec at one rate point with one
loss-weighting strategy; :func:`codec_for` wraps it in the train-or-load cache.

The loop follows CompressAI's ``examples/train.py``:

* **two optimizers** — Adam on the transforms and entropy-model parameters (the *main*
  loss, eq. 3), and a second Adam on the ``EntropyBottleneck``'s ``quantiles`` only,
  driven by ``net.aux_loss()``. The quantiles decide the range of ẑ values the rANS
  tables cover; they must not be moved by the rate–distortion loss, so they have their
  own optimizer (:func:`configure_optimizers`).
* **gradient clipping** of the main parameters (``preset.clip_max_norm``).
* ``net.update()`` before any real coding (validation, the final checkpoint): it builds
  the CDF tables the rANS coder uses.

Around it:

* **data** — random ``preset.crop_size`` crops (and flips) from
  ``dataset_for(preset, "train", train=True)``; targets are cropped with the image, so
  the task loss sees the objects where they are in the crop.
* **losses / weights** — ``icmlib.codec.losses.loss_terms`` and a strategy from
  ``icmlib.training.weighting``; every term and weight goes to ``train_log.csv`` every step.
* **validation** every ``preset.val_every`` steps (``icm_val_every`` for ICM codecs) on
  ``preset.train_val_images`` val images: bpp from the *real* rANS bytes (after
  ``update()``) next to the likelihood estimate, PSNR, and the task metric (COCO mAP / mIoU through
  ``icmlib.tasks.evaluate_task`` on the decoded images) → ``val_log.csv``.
* **checkpoints** every ``preset.checkpoint_every`` steps, written atomically, holding
  the model, both optimizers, the schedulers, the AMP scaler, the weighting strategy's
  state, the step and every random state (torch, CUDA, numpy, python, the dataset's crop
  stream) — ``resume=True`` continues from the last one and reproduces the
  uninterrupted run exactly (on CPU; on GPU up to cuDNN nondeterminism).
* **divergence** — a non-finite loss or gradient stops the run with
  :class:`TrainingDiverged`; the last checkpoint (written only from finite steps) stays.
* **mixed precision** on CUDA (``torch.autocast`` + ``GradScaler``; ``preset.amp``).
* **DDP** — launched with ``torchrun --nproc_per_node N -m icmlib.cli train ...`` (or
  any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``), the model is wrapped
  in ``DistributedDataParallel``, each rank reads its own shard of every epoch
  (``DistributedSampler``) with its own crop stream, and rank 0 alone logs, validates
  and writes checkpoints. The loss values the weighting strategy sees are averaged over
  the ranks, so every rank uses the same weights.

``init_from`` starts from an existing codec instead of random weights. The reproduction
trains ICM codecs this way from the MSE codec at the same rate point (common practice:
the task loss alone is a poor teacher for a codec that cannot yet reconstruct, and it
saves most of the steps), and MSE codecs at other rates from the one at
``preset.codec_base_rate``: that recipe is :func:`codec_parent`, which ``codec_for`` (and
so the book and ``icm reproduce``) follows.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from icmlib.codec import losses as losses
from icmlib.cache import atomic_save, cache_dir, config_key, shown_path, train_or_load
from icmlib.codec.model import (ICMCodec, at_rate, codec_checkpoint, decode_image, encode_image,
                    load_codec, quantized_image, run_codec, save_codec)
from icmlib.presets import Preset, get_preset
from icmlib.training.weighting import STRATEGIES, WeightingStrategy, make_strategy, rate_at

#: Bump when the training procedure changes, so cached codecs are retrained.
TRAIN_VERSION = "1"

CHECKPOINT_NAME = "checkpoint.pt"
CODEC_NAME = "codec.pt"
TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"

__all__ = ["TrainingDiverged", "train_codec", "codec_for", "codec_run", "codec_config",
           "configure_optimizers", "resolve_rate", "read_log", "validate_codec",
           "TRAIN_VERSION", "STRATEGIES"]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------

#: ``rate_index`` of a variable-rate codec: it serves every rate point of the preset
ALL_RATES = "all"


def resolve_rate(preset: Preset, rate: Union[int, float, str]) -> Tuple[Optional[int], float]:
    """``(rate_index, λ)`` from an index into ``preset.rd_lambdas`` or an explicit λ.

    An int (or a string of digits) is an index; a float (or a string with a ``.`` or an
    exponent) is λ itself, the weight of the MSE term in ``L = R + λ·255²·MSE``.
    ``"all"`` (:data:`ALL_RATES`) asks for a variable-rate codec: ``("all", [λ...])``.
    """
    if rate == ALL_RATES:
        return ALL_RATES, [float(l) for l in preset.rd_lambdas]
    if isinstance(rate, str):
        text = rate.strip()
        try:
            rate = int(text) if text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise ValueError(f"rate {text!r} is neither an index (0..{len(preset.rd_lambdas) - 1}) "
                             f"nor a λ value like 0.0067") from None
    if isinstance(rate, bool):
        raise ValueError("rate must be an index or a λ value, not a bool")
    if isinstance(rate, (int, np.integer)):
        n = len(preset.rd_lambdas)
        if not 0 <= int(rate) < n:
            raise ValueError(f"rate index {rate} is out of range: preset {preset.name!r} has "
                             f"{n} rate points (0..{n - 1}, λ = {list(preset.rd_lambdas)}); "
                             f"or pass λ itself, e.g. 0.0067")
        return int(rate), float(preset.rd_lambdas[int(rate)])
    lmbda = float(rate)
    if not math.isfinite(lmbda) or lmbda <= 0:
        raise ValueError(f"λ must be a positive number, got {rate}")
    return None, lmbda


def configure_optimizers(net: nn.Module, preset: Preset):
    """CompressAI's split: Adam on every parameter but the quantiles (main), Adam on the
    ``*.quantiles`` of the entropy bottleneck (auxiliary)."""
    named = dict(net.named_parameters())
    main = [p for n, p in sorted(named.items()) if p.requires_grad and not n.endswith(".quantiles")]
    aux = [p for n, p in sorted(named.items()) if p.requires_grad and n.endswith(".quantiles")]
    if not aux:
        raise ValueError("the codec has no entropy-bottleneck quantiles; is it a CompressAI model?")
    return torch.optim.Adam(main, lr=preset.lr), torch.optim.Adam(aux, lr=preset.aux_lr)


def _milestone(preset: Preset, steps: int) -> List[int]:
    m = int(round(preset.lr_decay_at * steps))
    return [m] if 0 < m < steps else []


def read_log(path: Union[str, Path]) -> List[Dict[str, float]]:
    """A CSV log written by the trainer, as a list of dicts of floats (empty cells → NaN)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else float("nan")) for k, v in r.items()})
    return rows


class _CSVLog:
    """Append rows to a CSV; the columns are fixed by the first row (or the existing header)."""

    def __init__(self, path: Path, keep_until: Optional[int] = None):
        self.path = Path(path)
        self.fields: Optional[List[str]] = None
        if keep_until is None:
            if self.path.exists():
                self.path.unlink()
        elif self.path.exists():
            # resume: keep the rows up to the checkpoint's step; a killed run may have
            # logged steps that the resumed run will now do again
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or [])
                kept = [r for r in reader if r.get("step") and float(r["step"]) <= keep_until]
            tmp = self.path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(kept)
            os.replace(tmp, self.path)
        self._file = None

    def write(self, row: Mapping[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(row)
            self._file = open(self.path, "w", newline="")
            csv.DictWriter(self._file, fieldnames=self.fields).writeheader()
        if self._file is None:
            self._file = open(self.path, "a", newline="")
        w = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")
        w.writerow({k: _fmt(row.get(k, "")) for k in self.fields})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fmt(v):
    if isinstance(v, float):
        return repr(v)  # full precision, so resumed and uninterrupted logs compare exactly
    return v


# ---- randomness -----------------------------------------------------------------------

def _rng_state(dataset) -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    # the dataset draws its crops from its own numpy Generator (icmlib.data.CocoDataset)
    rng = getattr(dataset, "_rng", None)
    if rng is not None:
        state["dataset"] = {"bit_generator": rng.bit_generator.state,
                            "worker": getattr(dataset, "_rng_worker", None)}
    return state


def _set_rng_state(state: Mapping[str, Any], dataset) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "dataset" in state and hasattr(dataset, "_rng"):
        rng = np.random.default_rng()
        rng.bit_generator.state = state["dataset"]["bit_generator"]
        dataset._rng = rng
        dataset._rng_worker = state["dataset"]["worker"]


@contextlib.contextmanager
def _isolated_rng():
    """Run a block (validation) without consuming any global random state."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


# ---- distributed ----------------------------------------------------------------------

def _dist_info() -> Tuple[bool, int, int, int]:
    """(distributed?, rank, world size, local rank), initialising the process group when a
    launcher (torchrun) has set the environment and nobody has initialised it yet."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return (dist.get_world_size() > 1, dist.get_rank(), dist.get_world_size(),
                int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        return True, dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return False, 0, 1, 0


def _all_mean(values: Dict[str, float], distributed: bool, device) -> Dict[str, float]:
    if not distributed:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def _all_gather_object(obj, distributed: bool):
    if not distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---- data ------------------------------------------------------------------------------

class _Batches:
    """Batches for step ``s`` onwards, the same whether or not the run was interrupted.

    Epoch ``e`` is a permutation of the dataset drawn by ``DistributedSampler`` from
    ``(seed, e)`` (one shard per rank); step ``s`` takes batch ``s mod per_epoch`` of
    epoch ``s // per_epoch``. The crops and flips come from the dataset's own random
    stream, which the checkpoint saves. With ``num_workers > 0`` a ``DataLoader`` loads
    each (remaining part of an) epoch; its workers draw crops from a stream seeded per
    epoch, so a resumed run then gets other crops (still a valid run, not bit-identical).
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int, world: int,
                 num_workers: int):
        from torch.utils.data import DistributedSampler

        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.num_workers = int(num_workers)
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                          seed=seed, drop_last=True)
        self.per_epoch = len(self.sampler) // self.batch_size
        if self.per_epoch < 1:
            raise ValueError(f"the training set has {len(dataset)} images: too few for batches of "
                             f"{batch_size} on {world} process(es); lower batch_size or add images")

    def from_step(self, step: int):
        from icmlib.data import collate, stack_images

        while True:
            epoch, offset = divmod(step, self.per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(iter(self.sampler))
            chunks = [order[i * self.batch_size:(i + 1) * self.batch_size]
                      for i in range(offset, self.per_epoch)]
            if self.num_workers == 0:
                source = (collate([self.dataset[i] for i in c]) for c in chunks)
            else:
                # each worker draws crops from (dataset.seed, its torch seed), which comes
                # from this generator: (seed, epoch, offset) decide the crops, and the
                # caller's dataset is left as it was
                source = torch.utils.data.DataLoader(
                    self.dataset, batch_sampler=chunks, num_workers=self.num_workers,
                    collate_fn=collate, pin_memory=torch.cuda.is_available(),
                    generator=torch.Generator().manual_seed(
                        self.seed * 1_000_003 + epoch * 1009 + offset))
            for images, targets in source:
                yield stack_images(images), targets
                step += 1


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------

@torch.no_grad()
def validate_codec(net: ICMCodec, dataset, num_images: int, frozen_task=None,
                   task: Optional[str] = None, device="cpu") -> Dict[str, float]:
    """Code ``num_images`` val images for real and measure them.

    Returns ``bpp`` (from the real rANS bytes of both streams), ``bpp_estimate`` (the
    likelihood estimate of the rounded latents, for comparison), ``psnr`` (of the
    decoded image rounded to 8 bits) and, with a task, ``task_<metric>`` from
    ``icmlib.tasks.evaluate_task`` on the decoded images (``task_score`` is the task's
    headline number: bbox mAP, segm mAP or mIoU). The caller must have run
    ``net.update()``.
    """
    from icmlib.metrics import psnr

    was_training = net.training
    net.eval()
    n = min(int(num_images), len(dataset))
    bits = est_bits = pixels = 0.0
    psnrs, decoded = [], []
    for i in range(n):
        x = dataset[i][0].to(device)[None]
        h, w = x.shape[-2:]
        enc = encode_image(net, x)
        bits += 8 * sum(len(s) for s in enc["strings"])
        x_hat = quantized_image(decode_image(net, enc["strings"], enc["shape"], enc["size"]))
        est_bits += float(losses.rate_bpp(run_codec(net, x)["likelihoods"], h * w)) * h * w
        pixels += h * w
        psnrs.append(psnr(x_hat, x))
        decoded.append(x_hat[0].cpu())
    out = {"bpp": bits / pixels, "bpp_estimate": est_bits / pixels,
           "psnr": float(np.mean(psnrs))}
    if frozen_task is not None:
        from icmlib.tasks import evaluate_task

        metrics = evaluate_task(frozen_task, task, dataset, images=decoded, max_images=n)
        out.update({f"task_{k}": float(v) for k, v in metrics.items()})
    net.train(was_training)
    return out


# --------------------------------------------------------------------------------------
# The training run
# --------------------------------------------------------------------------------------

def _run_config(preset: Preset, task, strategy, rate_index, lmbda, steps, seed,
                init_id, world: int = 1) -> Dict[str, Any]:
    """What must match for ``resume=True`` to continue a run (and the cache key)."""
    fields = ("codec_channels", "latent_channels", "codec_blocks", "crop_size", "batch_size",
              "lr", "aux_lr", "clip_max_norm", "lr_decay_at", "icm_task_weight",
              "icm_mse_weight", "weighting_warmup", "weighting_ramp_end", "auto_momentum",
              "amp", "dataset", "image_size", "train_images", "world_seed", "icm_crop_size",
              "icm_batch_size")
    cfg = {"version": TRAIN_VERSION, "preset": preset.name, "task": task, "strategy": strategy,
           "rate_index": rate_index, "lambda": lmbda, "steps": int(steps), "seed": int(seed),
           "init_from": init_id}
    cfg.update({f: getattr(preset, f) for f in fields})
    # These also change the weights: DataLoader workers draw other crops than the main
    # process, more processes train on other (and more) batches. They enter the key only
    # when they differ from what every earlier key assumed (0 workers, 1 process), so the
    # codecs already trained keep their keys.
    if preset.num_workers:
        cfg["num_workers"] = int(preset.num_workers)
    if world > 1:
        cfg["world_size"] = int(world)
    return cfg


def _world_size() -> int:
    """Processes of this (torchrun) run, from the environment: no process group is started."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _init_identity(init_from) -> Optional[str]:
    if init_from is None:
        return None
    if isinstance(init_from, (str, Path)):
        return f"file:{Path(init_from).resolve()}"
    if isinstance(init_from, dict):
        return f"codec:{_state_hash(init_from['state_dict'])}"
    if isinstance(init_from, nn.Module):
        return f"codec:{_state_hash(init_from.state_dict())}"
    raise ValueError(f"init_from must be a codec checkpoint path, a checkpoint dict or an "
                     f"ICMCodec, got {type(init_from).__name__}")


def _state_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short hash of a codec's weights: which codec a run started from."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(state_dict.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()[:16]


def _build_net(preset: Preset, init_from, lambdas=None) -> ICMCodec:
    """The codec a run starts from: random, or a copy of ``init_from``.

    ``lambdas`` (a list) builds a variable-rate codec; it may start from a one-rate codec
    of the same architecture (see :func:`_gains_from_one_rate`).
    """
    rates = len(lambdas) if isinstance(lambdas, list) else 0
    net = ICMCodec.from_preset(preset, rates)
    if init_from is None:
        return net
    src = init_from if isinstance(init_from, nn.Module) else load_codec(init_from)
    src_config = dict(getattr(src, "config", None) or {})
    if src_config != net.config and not (rates and src_config == _one_rate(net.config)):
        raise ValueError(f"init_from codec has architecture {src_config or None}, but preset "
                         f"{preset.name!r} builds {net.config}; start from a codec of this preset")
    if src_config == net.config:
        net.load_state_dict(src.state_dict())
    else:
        net.load_state_dict(src.state_dict(), strict=False)  # all but the gains
        _gains_from_one_rate(net, lambdas, (getattr(src, "meta", None) or {}).get("rate"))
    return net


def _one_rate(config: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in config.items() if k != "rates"}


def _gains_from_one_rate(net: ICMCodec, lambdas: List[float], source_lambda) -> None:
    """Start a variable-rate codec's gains where a one-rate codec trained at
    ``source_lambda`` would put them: at high rate, D ∝ Δ² and the best step Δ ∝ λ^-1/2,
    so gain_r = √(λ_r / λ_source) (and the inverse gain its reciprocal)."""
    if not source_lambda:
        return  # unknown rate: gains of 1, training finds them
    with torch.no_grad():
        for r, lam in enumerate(lambdas):
            g = math.sqrt(float(lam) / float(source_lambda))
            net.gain[r].fill_(g)
            net.inv_gain[r].fill_(1.0 / g)


def _describe_terms(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


def _bar_is_a_widget(bar) -> bool:
    """True for tqdm's notebook (ipywidgets) bar: there, validation lines written under the
    bar pile up into a long log on the chapter's page, so they are summed up instead."""
    return type(bar).__module__.startswith("tqdm.notebook")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


@contextlib.contextmanager
def _threads(n: int):
    """Use ``n`` torch CPU threads inside the block (0: leave the setting alone)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)


def train_codec(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                strategy: str = "mse", rate_index: Union[int, float, str] = 0, *,
                steps: Optional[int] = None, out_dir: Union[str, Path, None] = None,
                resume: bool = False, progress: bool = True, init_from=None,
                seed: Optional[int] = None, command: Optional[str] = None,
                on_step: Optional[Callable[[int, Dict[str, float]], None]] = None) -> Dict[str, Any]:
    """Train one codec; return its checkpoint dict (``icmlib.codec.model`` format) plus logs.

    Args:
        preset: a ``Preset`` or its name (default ``$ICM_PRESET``).
        task: ``None`` for the MSE codec, else ``"detection"``, ``"instance"`` or
            ``"semantic"``: the frozen task network (``icmlib.tasks.task_network``) whose
            loss enters eq. 3.
        strategy: ``"mse"`` (baseline, no task), ``"fixed"``, ``"dynamic"`` or ``"auto"``
            (see ``icmlib.training.weighting``).
        rate_index: index into ``preset.rd_lambdas``, or λ itself as a float.
        steps: training steps (default ``preset.codec_steps`` for MSE,
            ``preset.icm_steps`` with a task).
        out_dir: where ``checkpoint.pt``, ``codec.pt``, ``train_log.csv`` and
            ``val_log.csv`` go (default: a folder under ``$ICM_CACHE/runs`` named by the
            run's configuration).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (same configuration
            required); otherwise start fresh.
        init_from: start from this codec (path, checkpoint dict or ``ICMCodec``) instead
            of random weights, e.g. the MSE codec at the same rate.
        seed: default ``preset.train_seed``.
        command: recorded in the codec's metadata (default: this process's command line).
        on_step: called as ``on_step(step, row)`` after every completed step (row = the
            logged values); an exception raised there stops the run like a kill would.

    Returns ``codec_checkpoint(net, **meta)`` with ``"logs": {"train": [...], "val":
    [...]}`` and ``"run_dir"`` added; ``icmlib.codec.model.load_codec`` reads it.
    Raises :class:`TrainingDiverged` on NaN/inf.
    """
    preset = get_preset(preset)
    # training may be triggered lazily from inside a caller's torch.no_grad() (e.g. a
    # LearnedCodec loading its networks during evaluation): gradients must be on here
    with _threads(preset.train_threads), torch.enable_grad():
        return _train_codec(preset, task, strategy, rate_index, steps, out_dir, resume,
                            progress, init_from, seed, command, on_step)


def _train_codec(preset: Preset, task, strategy, rate_index, steps, out_dir, resume, progress,
                 init_from, seed, command, on_step) -> Dict[str, Any]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
    if task is not None:
        from icmlib.tasks import TASKS
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {TASKS} (or none for the "
                             f"MSE codec)")
    if strategy == "mse" and task is not None:
        raise ValueError("strategy 'mse' trains the human-vision baseline: give no task, or "
                         "pick 'fixed', 'dynamic' or 'auto' for an ICM codec")
    if strategy in ("fixed", "dynamic") and task is None:
        raise ValueError(f"strategy {strategy!r} trains an ICM codec: it needs a task "
                         f"('detection', 'instance' or 'semantic')")
    rate_index, lmbda = resolve_rate(preset, rate_index)
    rates = len(lmbda) if rate_index == ALL_RATES else 0
    steps = int(steps if steps is not None else (preset.icm_steps if task else preset.codec_steps))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    # ICM runs validate more often: their curves over training are the weighting comparison
    val_every = max(1, preset.icm_val_every if task is not None else preset.val_every)
    seed = preset.train_seed if seed is None else int(seed)
    command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])

    distributed, rank, world, local_rank = _dist_info()
    is_main = rank == 0
    if preset.device == "cuda" and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        if preset.device == "cuda":
            warnings.warn(f"preset {preset.name!r} asks for CUDA, which is not available: "
                          f"training on the CPU (slowly)")
        device = torch.device("cpu")
    use_amp = bool(preset.amp) and device.type == "cuda"

    cfg = _run_config(preset, task, strategy, rate_index, lmbda, steps, seed,
                      _init_identity(init_from), world)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir("runs", "codec", config_key(cfg))
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    # ---- model, task, optimizers, strategy -------------------------------------------
    torch.manual_seed(seed)
    net = _build_net(preset, init_from, lmbda).to(device)
    net.train()  # under autocast its entropy models still run in float32 (ICMCodec.forward)
    frozen = None
    if task is not None:
        from icmlib.tasks import FrozenTask, task_network
        frozen = FrozenTask(task_network(task, preset, progress=progress and is_main), task).to(device)
    main_opt, aux_opt = configure_optimizers(net, preset)
    milestones = _milestone(preset, steps)
    main_sched = torch.optim.lr_scheduler.MultiStepLR(main_opt, milestones, gamma=0.1)
    aux_sched = torch.optim.lr_scheduler.MultiStepLR(aux_opt, milestones, gamma=0.1)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weighting: WeightingStrategy = make_strategy(strategy, lmbda, steps, task is not None, preset)

    from icmlib.data import dataset_for
    crop, batch_size = preset.crop_size, preset.batch_size
    if task is not None:  # whole images for the toy task networks (see icm_crop_size)
        crop, batch_size = preset.icm_crop_size or crop, preset.icm_batch_size or batch_size
    train_ds = dataset_for(preset.replace(crop_size=crop), "train", train=True, seed=seed + rank)
    val_ds = dataset_for(preset, "val", train=False) if is_main else None
    batches = _Batches(train_ds, batch_size, seed, rank, world, preset.num_workers)

    # ---- resume ------------------------------------------------------------------------
    start = 0
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if state.get("config") != cfg:
            old = state.get("config") or {}
            diff = sorted(k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k))
            raise ValueError(f"cannot resume from {ckpt_path}: it was trained with other settings "
                             f"({', '.join(f'{k}: {old.get(k)!r} -> {cfg.get(k)!r}' for k in diff)}). "
                             f"Use another --out folder, or resume=False to start over.")
        if len(state["rng"]) != world:
            raise ValueError(f"cannot resume from {ckpt_path}: it was written by a run with "
                             f"{len(state['rng'])} process(es), this one has {world}; resume "
                             f"with the same number of processes")
        net.load_state_dict(state["model"])
        main_opt.load_state_dict(state["main_opt"])
        aux_opt.load_state_dict(state["aux_opt"])
        main_sched.load_state_dict(state["main_sched"])
        aux_sched.load_state_dict(state["aux_sched"])
        scaler.load_state_dict(state["scaler"])
        weighting.load_state_dict(state["strategy"])
        start = int(state["step"])
        _set_rng_state(state["rng"][rank], train_ds)
        if is_main and progress:
            print(f"[icmlib] resuming {shown_path(out_dir)} at step {start}/{steps}")
    elif resume and is_main and progress:
        print(f"[icmlib] no checkpoint in {shown_path(out_dir)}: starting from step 0")

    model = net
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP
        # the quantiles get no gradient from the main loss (aux optimizer only): DDP must
        # not wait for them; their aux gradients are averaged by hand below
        DDP._set_params_and_buffers_to_ignore_for_model(
            net, [n for n, _ in net.named_parameters() if n.endswith(".quantiles")])
        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
                    broadcast_buffers=False)
    aux_params = [p for g in aux_opt.param_groups for p in g["params"]]
    main_params = [p for g in main_opt.param_groups for p in g["params"]]

    train_log = val_log = writer = None
    if is_main:
        train_log = _CSVLog(out_dir / TRAIN_LOG, keep_until=start if resume else None)
        val_log = _CSVLog(out_dir / VAL_LOG, keep_until=start if resume else None)
        try:  # TensorBoard when installed
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start)
        except Exception:
            writer = None

    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm
        what = f"{task} codec, {strategy}" if task else "MSE codec"
        shown = f"{len(lmbda)} rates" if rates else f"λ={lmbda:g}"
        bar = tqdm(total=steps, initial=start, unit="step",
                   desc=f"train {what}, {shown} ({preset.name})")
    # In a notebook the bar is a widget and the validations are summed up in one line at
    # the end (a chapter page shows the summary, not a log); in a terminal each is a line.
    last_validation: List[str] = []
    t_start = time.time()

    def save_checkpoint(step_done: int) -> None:
        rngs = _all_gather_object(_rng_state(train_ds), distributed)
        if is_main:
            atomic_save({"config": cfg, "step": step_done, "model": net.state_dict(),
                         "main_opt": main_opt.state_dict(), "aux_opt": aux_opt.state_dict(),
                         "main_sched": main_sched.state_dict(), "aux_sched": aux_sched.state_dict(),
                         "scaler": scaler.state_dict(), "strategy": weighting.state_dict(),
                         "rng": rngs}, ckpt_path)

    def run_validation(step_done: int) -> None:
        if is_main:
            with _isolated_rng():
                net.update(force=True)
                # a variable-rate codec is validated at every rate point: one row each
                for r in (range(rates) if rates else [None]):
                    view = net if r is None else at_rate(net, r)
                    metrics = validate_codec(view, val_ds, preset.train_val_images, frozen,
                                             task, device)
                    row = {"step": step_done, **({} if r is None else {"rate_index": r}),
                           **metrics}
                    val_log.write(row)
                    if writer is not None:
                        suffix = "" if r is None else f"_r{r}"
                        for k, v in metrics.items():
                            writer.add_scalar(f"val{suffix}/{k}", v, step_done)
            if bar is not None:
                said = f"step {step_done}: " + _describe_terms(
                    {k: v for k, v in metrics.items() if k in ("bpp", "bpp_estimate", "psnr", "task_score")})
                if _bar_is_a_widget(bar):
                    last_validation[:] = [said]
                else:
                    bar.write(said)
        if distributed:
            import torch.distributed as dist
            dist.barrier()

    # ---- the loop ----------------------------------------------------------------------
    stream = batches.from_step(start)
    t_last = time.time()
    step = start
    try:
        while step < steps:
            x, targets = next(stream)
            x = x.to(device, non_blocking=True)
            r = rate_at(step, rates) if rates else None  # variable rate: rates take turns
            if frozen is not None:
                targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()}
                           for t in targets]
            main_opt.zero_grad(set_to_none=True)
            aux_opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                out = run_codec(model, x, rate=r)
                terms = losses.loss_terms(out, x, frozen, targets)
            values = {k: float(v.detach()) for k, v in terms.items()}
            values = _all_mean(values, distributed, device)
            w = weighting.weights(step, values)
            total_value = sum(w[k] * values[k] for k in losses.TERMS if w[k] != 0)
            if not math.isfinite(total_value):
                raise TrainingDiverged(
                    f"the loss became {total_value} at step {step + 1} ({_describe_terms(values)}; "
                    f"weights {_describe_terms(w)}). ")
            loss = losses.total_loss(terms, w)
            scaler.scale(loss).backward()
            scaler.unscale_(main_opt)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(main_params, preset.clip_max_norm))
            if not use_amp and not math.isfinite(grad_norm):
                raise TrainingDiverged(f"the gradient norm became {grad_norm} at step {step + 1} "
                                       f"(loss terms {_describe_terms(values)}). ")
            scaler.step(main_opt)  # with AMP an inf gradient skips the step and lowers the scale
            scaler.update()
            aux_loss = net.aux_loss()
            aux_loss.backward()
            if distributed:
                import torch.distributed as dist
                for p in aux_params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            aux_opt.step()
            lr = main_opt.param_groups[0]["lr"]
            main_sched.step()
            aux_sched.step()
            step += 1

            now = time.time()
            row = {"step": step, "seconds": now - t_last, "lr": lr, "loss": total_value,
                   "rate": values["rate"], "mse": values["mse"], "task": values["task"],
                   "w_rate": w["rate"], "w_mse": w["mse"], "w_task": w["task"],
                   "psnr": losses.psnr_from_mse(values["mse"]),
                   "aux_loss": float(aux_loss.detach()), "grad_norm": grad_norm}
            if rates:
                row["rate_index"] = r
            row.update({k: v for k, v in values.items() if k.startswith("task/")})
            t_last = now
            if is_main:
                train_log.write(row)
                if writer is not None:
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{total_value:.3g}", "bpp": f"{values['rate']:.3f}",
                        "psnr": f"{row['psnr']:.1f}"}
                if task is not None:
                    post["task"] = f"{values['task']:.3f}"
                post.update({f"w_{k}": f"{v:.3g}" for k, v in w.items()})
                bar.set_postfix(post, refresh=False)
            if step % preset.checkpoint_every == 0 or step == steps:
                save_checkpoint(step)
            if step % val_every == 0 or step == steps:
                run_validation(step)
            if on_step is not None:
                on_step(step, row)
    except TrainingDiverged as e:
        last = (f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file()
                else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{e}Training stopped; {last}. Try a lower learning rate "
                               f"(preset lr={preset.lr}) or smaller loss weights, then resume.") from None
    finally:
        if bar is not None:
            bar.close()
        for log in (train_log, val_log):
            if log is not None:
                log.close()
        if writer is not None:
            writer.close()
    if bar is not None and last_validation:
        print(f"[icmlib] trained {bar.desc}: {steps - start} steps in "
              f"{_duration(time.time() - t_start)}; last validation, {last_validation[0]}")

    # ---- the trained codec ----------------------------------------------------------------
    net.update(force=True)
    net.eval()
    meta = {"preset": preset.name, "task": task, "strategy": strategy, "rate": lmbda,
            "rate_index": rate_index, "steps": steps, "seed": seed, "command": command,
            "weighting": weighting.describe(), "init_from": cfg["init_from"],
            "world_size": world, "device": str(device), "train_version": TRAIN_VERSION}
    if is_main:
        save_codec(net, out_dir / CODEC_NAME, **meta)
    result = codec_checkpoint(net, **meta)
    result["logs"] = {"train": read_log(out_dir / TRAIN_LOG), "val": read_log(out_dir / VAL_LOG)}
    result["run_dir"] = str(out_dir)
    return result


# --------------------------------------------------------------------------------------
# Train-or-load
# --------------------------------------------------------------------------------------

def codec_parent(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                 rate_index: Union[int, float, str] = 0
                 ) -> Optional[Tuple[None, str, Union[int, float, str]]]:
    """The codec this one is fine-tuned from, as ``(task, strategy, rate)``, or ``None``.

    The recipe (the preset's fields): an ICM codec starts from the MSE codec at its own
    rate (``icm_init_from_mse``; for a variable-rate ICM codec, the variable-rate MSE
    codec); an MSE codec at a rate other than ``codec_base_rate`` -- or the variable-rate
    MSE codec (rate ``"all"``) -- starts from the one-rate MSE codec at the base rate; the
    base MSE codec (or every MSE codec when ``codec_base_rate = -1``) starts from random
    weights.
    """
    preset = get_preset(preset)
    index, lmbda = resolve_rate(preset, rate_index)
    rate = lmbda if index is None else index
    if task is not None:
        return (None, "mse", rate) if preset.icm_init_from_mse else None
    base = preset.codec_base_rate
    if base < 0 or index == base:
        return None
    if base >= len(preset.rd_lambdas):
        raise ValueError(f"codec_base_rate={base} but preset {preset.name!r} has "
                         f"{len(preset.rd_lambdas)} rate points")
    return (None, "mse", base)


def default_steps(preset: Preset, task: Optional[str], parent) -> int:
    """Training steps of a codec made by the recipe: ICM, MSE fine-tune, or from scratch."""
    if task is not None:
        return int(preset.icm_steps)
    return int(preset.codec_finetune_steps if parent is not None else preset.codec_steps)


def recipe_rate(preset: Preset, rate_index: Union[int, float, str]) -> Union[int, float, str]:
    """Which codec serves a request for ``rate_index``: on a ``variable_rate`` preset, one
    codec (rate ``"all"``) serves every rate point; an explicit λ is always a codec of its own."""
    if preset.variable_rate and isinstance(rate_index, (int, np.integer)) and not isinstance(
            rate_index, bool):
        return ALL_RATES
    return rate_index


def codec_config(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                 strategy: str = "mse", rate_index: Union[int, float, str] = 0,
                 steps: Optional[int] = None) -> Dict[str, Any]:
    """Every setting that determines the codec ``codec_for`` returns: its cache key.

    Includes the task network's own configuration (a retrained task network gives other
    codecs) and the configuration of the codec it is fine-tuned from (:func:`codec_parent`).
    """
    preset = get_preset(preset)
    return _codec_config(preset, task, strategy, recipe_rate(preset, rate_index), steps)


def _codec_config(preset: Preset, task, strategy, rate_index, steps) -> Dict[str, Any]:
    from icmlib.data import world_config

    rate_index, lmbda = resolve_rate(preset, rate_index)
    parent = codec_parent(preset, task, lmbda if rate_index is None else rate_index)
    steps = int(steps if steps is not None else default_steps(preset, task, parent))
    init = None if parent is None else _codec_config(preset, *parent, None)
    cfg = _run_config(preset, task, strategy, rate_index, lmbda, steps, preset.train_seed, init,
                      _world_size())
    if task is not None:
        from icmlib.tasks import task_config
        cfg["task_network"] = task_config(task, preset)
    if preset.dataset == "synthetic":
        cfg["world_train"] = world_config(preset, "train")
    return cfg


def codec_run(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
              strategy: str = "mse", rate_index: Union[int, float, str] = 0, *,
              progress: bool = True, force: bool = False,
              steps: Optional[int] = None) -> Dict[str, Any]:
    """Train-or-load the codec's checkpoint dict, logs included (see :func:`train_codec`).

    The run folder is ``$ICM_CACHE/runs/codec/<key>``: an interrupted training resumes
    from its last checkpoint the next time, and its CSV logs stay there. A codec that is
    fine-tuned (:func:`codec_parent`) has its parent trained or loaded first. On a
    ``variable_rate`` preset a rate index gives the one variable-rate codec
    (:func:`recipe_rate`).
    """
    preset = get_preset(preset)
    return _codec_run(preset, task, strategy, recipe_rate(preset, rate_index), progress,
                      force, steps)


def _codec_run(preset: Preset, task, strategy, rate_index, progress, force, steps):
    cfg = _codec_config(preset, task, strategy, rate_index, steps)
    run_dir = cache_dir("runs", "codec", config_key(cfg))

    def train():
        init = None
        parent = codec_parent(preset, task, rate_index)
        if parent is not None:
            init = _codec_run(preset, *parent, progress, False, None)
            init = {k: init[k] for k in ("format", "config", "state_dict", "meta")}
        return train_codec(preset, task, strategy, rate_index, steps=cfg["steps"],
                           out_dir=run_dir, resume=not force, progress=progress, init_from=init,
                           command=f"icmlib.training.codec.codec_for(preset={preset.name!r}, task={task!r}, "
                                   f"strategy={strategy!r}, rate_index={rate_index!r})")

    return train_or_load("codec", cfg, train, force=force, verbose=progress)


def logs_at_rate(logs: Mapping[str, List[Dict[str, float]]], rate: int) -> Dict[str, list]:
    """The rows of a variable-rate codec's logs that belong to rate point ``rate``."""
    return {name: [row for row in rows if row.get("rate_index", rate) == rate]
            for name, rows in logs.items()}


def codec_for(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
              strategy: str = "mse", rate_index: Union[int, float] = 0, *,
              progress: bool = True, force: bool = False) -> nn.Module:
    """The trained codec (eval mode, CDF tables built), trained now or loaded from the cache.

    ``task=None, strategy="mse"`` is the human-vision baseline; with a task, ``"fixed"``,
    ``"dynamic"`` or ``"auto"`` gives an ICM codec. ``net.meta`` says how it was made and
    ``net.logs`` holds its training and validation logs. On a ``variable_rate`` preset it
    is the variable-rate codec's view at ``rate_index`` (:class:`icmlib.codec.model.AtRate`),
    which codes like a one-rate codec.
    """
    ckpt = codec_run(preset, task, strategy, rate_index, progress=progress, force=force)
    return codec_at_rate(ckpt, rate_index)


def codec_at_rate(ckpt: Mapping[str, Any], rate_index) -> nn.Module:
    """The codec of a checkpoint dict, as a one-rate codec at ``rate_index`` (the view of a
    variable-rate codec, or the codec itself), with its logs (``net.logs``) at that rate."""
    net = load_codec(dict(ckpt))
    logs = ckpt.get("logs", {})
    if getattr(net, "rates", 0):
        net = at_rate(net, int(rate_index))
        logs = logs_at_rate(logs, int(rate_index))
    net.logs = logs
    return net
