"""Training one codec: the MSE (human-vision) baseline and ICM codecs for a frozen task.

:func:`train_codec` trains one codec at one rate point with one loss-weighting strategy,
on the one loop of :mod:`icmlib.engine`; what is the codec's own is its train step
(:class:`CodecTraining`), which follows CompressAI's ``examples/train.py``:

* **two optimizers** — Adam on the transforms and entropy-model parameters (the *main*
  loss, eq. 3), and a second Adam on the ``EntropyBottleneck``'s ``quantiles`` only,
  driven by ``net.aux_loss()`` (:func:`icmlib.training.start.configure_optimizers`).
* **gradient clipping** of the main parameters (``preset.clip_max_norm``).
* ``net.update()`` before any real coding (validation, the final checkpoint): it builds
  the CDF tables the rANS coder uses.

Around it:

* **data** — random ``preset.crop_size`` crops (and flips) from
  ``dataset_for(preset, "train", train=True)``; targets are cropped with the image, so
  the task loss sees the objects where they are in the crop (:mod:`icmlib.training.batches`).
* **losses / weights** — ``icmlib.codec.losses.loss_terms`` and a strategy from
  ``icmlib.training.weighting``; every term and weight goes to ``train_log.csv`` every step.
* **validation** every ``preset.val_every`` steps (``icm_val_every`` for ICM codecs) on
  ``preset.train_val_images`` val images (:mod:`icmlib.training.validation`) → ``val_log.csv``.
* **checkpoints** every ``preset.checkpoint_every`` steps, written atomically, holding
  the model, both optimizers, the schedulers, the AMP scaler, the weighting strategy's
  state, the step and every random state (:class:`icmlib.engine.RunState`) —
  ``resume=True`` continues from the last one and reproduces the uninterrupted run
  exactly (on CPU; on GPU up to cuDNN nondeterminism).
* **divergence** — a non-finite loss or gradient stops the run with
  :class:`TrainingDiverged`; the last checkpoint (written only from finite steps) stays.
* **mixed precision** on CUDA (``torch.autocast`` + ``GradScaler``; ``preset.amp``).
* **DDP** — launched with ``torchrun --nproc_per_node N -m icmlib.cli train ...`` (or
  any launcher that sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``), the model is wrapped
  in ``DistributedDataParallel``, each rank reads its own shard of every epoch with its
  own crop stream, and rank 0 alone logs, validates and writes checkpoints. The loss
  values the weighting strategy sees are averaged over the ranks, so every rank uses the
  same weights.

``init_from`` starts from an existing codec instead of random weights; the recipe that
says which (:mod:`icmlib.training.recipe`) is followed by ``codec_for``
(:mod:`icmlib.training.run`). A codec for a task network and a dataset of your own
runs the same step and loop through :func:`run_training` (:mod:`icmlib.training.own`).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch

from icmlib.cache import cache_dir, config_key, shown_path
from icmlib.codec import losses
from icmlib.codec import at_rate, codec_checkpoint, run_codec, save_codec
from icmlib.engine import (Processes, Reporter, RunState, TrainingDiverged, all_mean,
                           average_gradients, barrier, check_finite, data_parallel, every,
                           isolated_rng, load_checkpoint, processes, read_log, save_checkpoint,
                           threads, train_loop, training_device)
from icmlib.presets import Preset, get_preset
from icmlib.training.batches import Batches, crop_and_batch
from icmlib.training.recipe import (SYNTHESIS_QUANTIZERS, TRAIN_VERSION, feature_weight,
                                   resolve_rate, run_config, synthesis_quantizer)
from icmlib.training.start import build_codec, configure_optimizers, init_identity, lr_milestones
from icmlib.training.validation import validate_codec
from icmlib.training.weighting import STRATEGIES, make_strategy, rate_at

CHECKPOINT_NAME = "checkpoint.pt"
CODEC_NAME = "codec.pt"
TRAIN_LOG = "train_log.csv"
VAL_LOG = "val_log.csv"

__all__ = ["train_codec", "run_training", "CodecTraining", "TrainingDiverged", "CHECKPOINT_NAME",
           "CODEC_NAME", "TRAIN_LOG", "VAL_LOG"]


def train_codec(preset: Union[Preset, str, None] = None, task: Optional[str] = None,
                strategy: str = "mse", rate_index: Union[int, float, str] = 0, *,
                steps: Optional[int] = None, out_dir: Union[str, Path, None] = None,
                resume: bool = False, progress: bool = True, init_from=None,
                seed: Optional[int] = None, command: Optional[str] = None,
                on_step: Optional[Callable[[int, Dict[str, float]], None]] = None,
                synthesis_quantizer: Optional[str] = None) -> Dict[str, Any]:
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
        synthesis_quantizer: what the synthesis sees while training, ``"noise"`` or
            ``"ste"`` (``ICMCodec.synthesis_quantizer``); default: an ICM codec the
            preset's ``icm_synthesis_quantizer``, an MSE codec ``"noise"``.

    Returns ``codec_checkpoint(net, **meta)`` with ``"logs": {"train": [...], "val":
    [...]}`` and ``"run_dir"`` added; ``icmlib.codec.model.load_codec`` reads it.
    Raises :class:`TrainingDiverged` on NaN/inf.
    """
    preset = get_preset(preset)
    # training may be triggered lazily from inside a caller's torch.no_grad() (e.g. a
    # LearnedCodec loading its networks during evaluation): gradients must be on here
    with threads(preset.train_threads), torch.enable_grad():
        return _train_codec(preset, task, strategy, rate_index, steps, out_dir, resume,
                            progress, init_from, seed, command, on_step, synthesis_quantizer)


def _check_arguments(task: Optional[str], strategy: str) -> None:
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


def _train_codec(preset: Preset, task, strategy, rate_index, steps, out_dir, resume, progress,
                 init_from, seed, command, on_step, quantizer=None) -> Dict[str, Any]:
    _check_arguments(task, strategy)
    if quantizer is None:
        quantizer = synthesis_quantizer(preset) if task is not None else "noise"
    elif quantizer not in SYNTHESIS_QUANTIZERS:
        raise ValueError(f"synthesis_quantizer must be one of {SYNTHESIS_QUANTIZERS}, "
                         f"got {quantizer!r}")
    rate_index, lmbda = resolve_rate(preset, rate_index)
    if steps is None:
        if task is None and preset.codec_zoo:
            raise ValueError(f"preset {preset.name!r} trains no MSE codec: each is CompressAI's "
                             f"{preset.codec_zoo} at the λ of its rate point (codec_zoo); get "
                             f"one with icmlib.training.codec_for({preset.name!r}, rate_index=i), "
                             f"or give the steps to train one of this architecture here")
        steps = preset.icm_steps if task else preset.codec_steps
    steps = _check_steps(steps)
    seed = preset.train_seed if seed is None else int(seed)

    procs = processes()
    device = training_device(preset.device, procs.local_rank, f"preset {preset.name!r}")
    # the key records the quantizer this run uses, given here or by the preset
    keyed = preset.replace(icm_synthesis_quantizer=quantizer) if task is not None else preset
    cfg = run_config(keyed, task, strategy, rate_index, lmbda, steps, seed,
                     init_identity(init_from), procs.world)
    if task is None and quantizer != "noise":
        cfg["synthesis_quantizer"] = quantizer
    out_dir = Path(out_dir) if out_dir is not None else cache_dir("runs", "codec", config_key(cfg))
    trainer = CodecTraining(preset, task, strategy, lmbda, steps, seed, init_from, device,
                            procs, progress, synthesis_quantizer=quantizer)
    # ICM runs validate more often: their curves over training are the weighting comparison
    val_every = max(1, preset.icm_val_every if task is not None else preset.val_every)
    return run_training(trainer, cfg, out_dir, val_every=val_every, resume=resume,
                        progress=progress, command=command, on_step=on_step)


def _check_steps(steps) -> int:
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def run_training(trainer: "CodecTraining", cfg: Mapping[str, Any], out_dir: Path, *,
                 val_every: int, resume: bool, progress: bool, command: Optional[str],
                 on_step=None, meta: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Run ``trainer`` for ``cfg["steps"]`` steps on the engine's loop, writing checkpoints,
    logs and the codec to ``out_dir``; return :func:`train_codec`'s result.

    ``cfg`` is the run's configuration (:func:`~icmlib.training.recipe.run_config`, plus
    whatever else names the run): a checkpoint resumes only under the same one.
    ``val_every=0`` never validates; ``meta`` is added to the codec's metadata.
    """
    preset, procs, steps = trainer.preset, trainer.procs, int(cfg["steps"])
    command = command or " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT_NAME

    run = trainer.run_state()
    _resume(run, ckpt_path, cfg, resume, progress and procs.is_main, steps)
    trainer.begin(run.step, Reporter(
        out_dir, {"train": TRAIN_LOG, "val": VAL_LOG}, resume_at=run.step if resume else None,
        total=steps, desc=trainer.description(), progress=progress, active=procs.is_main,
        unit="step"))
    callbacks = [trainer.report,
                 every(preset.checkpoint_every, lambda s, row: save_checkpoint(ckpt_path, run, cfg),
                       steps)]
    callbacks += [every(val_every, trainer.validate, steps)] if val_every else []
    callbacks += [on_step] if on_step else []
    try:
        train_loop(trainer.step, run, steps, callbacks)
    except TrainingDiverged as e:
        last = (f"the last good checkpoint is {ckpt_path}" if ckpt_path.is_file()
                else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{e}Training stopped; {last}. Try a lower learning rate "
                               f"(preset lr={preset.lr}) or smaller loss weights, then resume.") from None
    finally:
        trainer.reporter.close()
    trainer.reporter.summary("last validation")

    meta = {"preset": preset.name, "task": trainer.task, "strategy": trainer.strategy,
            "rate": trainer.lmbda, "rate_index": cfg["rate_index"], "steps": steps,
            "seed": cfg["seed"], "command": command, "weighting": trainer.weighting.describe(),
            "init_from": cfg["init_from"], "world_size": procs.world,
            "device": str(trainer.device), "train_version": TRAIN_VERSION, **(meta or {})}
    return _trained_codec(trainer.net, meta, out_dir, procs.is_main)


def _resume(run: RunState, ckpt_path: Path, cfg, resume: bool, say: bool, steps: int) -> None:
    if not resume:
        return
    if load_checkpoint(ckpt_path, run, cfg):
        if say:
            print(f"[icmlib] resuming {shown_path(ckpt_path.parent)} at step {run.step}/{steps}")
    elif say:
        print(f"[icmlib] no checkpoint in {shown_path(ckpt_path.parent)}: starting from step 0")


def _trained_codec(net, meta: Mapping[str, Any], out_dir: Path, is_main: bool) -> Dict[str, Any]:
    """The trained codec (CDF tables built, eval mode) saved and returned with its logs."""
    net.update(force=True)
    net.eval()
    if is_main:
        save_codec(net, out_dir / CODEC_NAME, **meta)
    result = codec_checkpoint(net, **meta)
    result["logs"] = {"train": read_log(out_dir / TRAIN_LOG), "val": read_log(out_dir / VAL_LOG)}
    result["run_dir"] = str(out_dir)
    return result


def _describe_terms(values: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())


class CodecTraining:
    """One codec's training run: its parts, its train step, its validation.

    Built in a fixed order (codec, task network, optimizers, schedulers, scaler,
    weighting strategy, data), since each may draw from the random state seeded first:
    the same order gives the same run.

    By default the task network is the preset's (``task_network(task, preset)``) and the
    data the preset's (``dataset_for``); ``frozen`` (a :class:`~icmlib.tasks.FrozenTask`)
    and ``data`` (``(train, val)`` datasets, ``train`` giving training views) replace
    them (:func:`icmlib.training.own.train_icm_codec`).
    """

    def __init__(self, preset: Preset, task, strategy: str, lmbda, steps: int, seed: int,
                 init_from, device: torch.device, procs: Processes, progress: bool, *,
                 frozen=None, data=None, synthesis_quantizer: str = "noise"):
        self.preset, self.task, self.strategy, self.lmbda = preset, task, strategy, lmbda
        self.device, self.procs = device, procs
        self.rates = len(lmbda) if isinstance(lmbda, list) else 0
        self.use_amp = bool(preset.amp) and device.type == "cuda"
        torch.manual_seed(seed)
        self.net = build_codec(preset, init_from, lmbda).to(device)
        self.net.synthesis_quantizer = synthesis_quantizer
        self.net.train()  # under autocast its entropy models still run in float32 (ICMCodec.forward)
        self.frozen = None if frozen is None else frozen.to(device)
        if task is not None and frozen is None:
            from icmlib.tasks import FrozenTask, task_network
            self.frozen = FrozenTask(task_network(task, preset, progress=progress and procs.is_main),
                                     task).to(device)
        self.main_opt, self.aux_opt = configure_optimizers(self.net, preset)
        milestones = lr_milestones(preset, steps)
        self.main_sched = torch.optim.lr_scheduler.MultiStepLR(self.main_opt, milestones, gamma=0.1)
        self.aux_sched = torch.optim.lr_scheduler.MultiStepLR(self.aux_opt, milestones, gamma=0.1)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.weighting = make_strategy(strategy, lmbda, steps, task is not None, preset)
        self._data(seed, data)

    def _data(self, seed: int, data=None) -> None:
        from icmlib.data import dataset_for

        preset, procs = self.preset, self.procs
        crop, batch_size = crop_and_batch(preset, self.task is not None)
        if data is not None:
            self.train_ds, self.val_ds = data[0], (data[1] if procs.is_main else None)
        else:
            self.train_ds = dataset_for(preset.replace(crop_size=crop), "train", train=True,
                                        seed=seed + procs.rank)
            self.val_ds = dataset_for(preset, "val", train=False) if procs.is_main else None
        self.batches = Batches(self.train_ds, batch_size, seed, procs.rank, procs.world,
                               preset.num_workers)

    def run_state(self) -> RunState:
        """What a checkpoint holds, under the names earlier checkpoints used."""
        return RunState({"model": self.net, "main_opt": self.main_opt, "aux_opt": self.aux_opt,
                         "main_sched": self.main_sched, "aux_sched": self.aux_sched,
                         "scaler": self.scaler, "strategy": self.weighting},
                        dataset=self.train_ds, procs=self.procs)

    def description(self) -> str:
        what = f"{self.task} codec, {self.strategy}" if self.task else "MSE codec"
        shown = f"{len(self.lmbda)} rates" if self.rates else f"λ={self.lmbda:g}"
        return f"train {what}, {shown} ({self.preset.name})"

    def begin(self, start: int, reporter: Reporter) -> None:
        """Ready to train from step ``start`` (after any resume): DDP, the batch stream."""
        self.reporter = reporter
        self.model = self.net
        if self.procs.distributed:
            # the quantiles get no gradient from the main loss (aux optimizer only): DDP must
            # not wait for them; their aux gradients are averaged by hand in the step
            self.model = data_parallel(self.net, self.device, ignore=[
                n for n, _ in self.net.named_parameters() if n.endswith(".quantiles")])
        self.aux_params = [p for g in self.aux_opt.param_groups for p in g["params"]]
        self.main_params = [p for g in self.main_opt.param_groups for p in g["params"]]
        self.stream = self.batches.from_step(start)
        self.t_last = time.time()

    def step(self, step: int) -> Dict[str, Any]:
        """One training step (``step`` counts from 0); returns the row the logs get."""
        x, targets = next(self.stream)
        x = x.to(self.device, non_blocking=True)
        r = rate_at(step, self.rates) if self.rates else None  # variable rate: rates take turns
        if self.frozen is not None:
            targets = [{k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in t.items()}
                       for t in targets]
        self.main_opt.zero_grad(set_to_none=True)
        self.aux_opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp):
            out = run_codec(self.model, x, rate=r)
            terms = losses.loss_terms(out, x, self.frozen, targets,
                                      feature_weight(self.preset, self.task))
        values = {k: float(v.detach()) for k, v in terms.items()}
        values = all_mean(values, self.procs.distributed, self.device)
        w = self.weighting.weights(step, values)
        total_value = sum(w[k] * values[k] for k in losses.TERMS if w[k] != 0)
        check_finite(total_value, "loss", step,
                     f" ({_describe_terms(values)}; weights {_describe_terms(w)})")
        grad_norm, aux_loss = self._optimise(losses.total_loss(terms, w), step, values)
        lr = self.main_opt.param_groups[0]["lr"]
        self.main_sched.step()
        self.aux_sched.step()
        return self._row(step + 1, lr, total_value, values, w, aux_loss, grad_norm, r)

    def _optimise(self, loss: torch.Tensor, step: int, values) -> tuple:
        """Backward, clip, both optimizers: the main loss, then the quantiles' aux loss."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.main_opt)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.main_params, self.preset.clip_max_norm))
        if not self.use_amp:
            check_finite(grad_norm, "gradient norm", step,
                         f" (loss terms {_describe_terms(values)})")
        self.scaler.step(self.main_opt)  # with AMP an inf gradient skips the step and lowers the scale
        self.scaler.update()
        aux_loss = self.net.aux_loss()
        aux_loss.backward()
        average_gradients(self.aux_params, self.procs.distributed)
        self.aux_opt.step()
        return grad_norm, float(aux_loss.detach())

    def _row(self, step, lr, total_value, values, w, aux_loss, grad_norm, r) -> Dict[str, Any]:
        now = time.time()
        row = {"step": step, "seconds": now - self.t_last, "lr": lr, "loss": total_value,
               "rate": values["rate"], "mse": values["mse"], "task": values["task"],
               "w_rate": w["rate"], "w_mse": w["mse"], "w_task": w["task"],
               "psnr": losses.psnr_from_mse(values["mse"]),
               "aux_loss": aux_loss, "grad_norm": grad_norm}
        if self.rates:
            row["rate_index"] = r
        row.update({k: v for k, v in values.items() if k.startswith("task/")})
        self.t_last = now
        return row

    def report(self, step: int, row: Mapping[str, Any]) -> None:
        """The step's row to ``train_log.csv`` and TensorBoard; the bar moves on."""
        self.reporter.log("train", row)
        self.reporter.scalars("train", row, step)
        if self.reporter.bar is not None:
            post = {"loss": f"{row['loss']:.3g}", "bpp": f"{row['rate']:.3f}",
                    "psnr": f"{row['psnr']:.1f}"}
            if self.task is not None:
                post["task"] = f"{row['task']:.3f}"
            post.update({k: f"{row[k]:.3g}" for k in ("w_rate", "w_mse", "w_task")})
            self.reporter.advance(post)

    def validate(self, step: int, row=None) -> None:
        """Code the val images for real (rank 0; a variable-rate codec at every rate point,
        one row each) without touching the training's random state."""
        if self.procs.is_main:
            with isolated_rng():
                self.net.update(force=True)
                for r in (range(self.rates) if self.rates else [None]):
                    view = self.net if r is None else at_rate(self.net, r)
                    metrics = validate_codec(view, self.val_ds, self.preset.train_val_images,
                                             self.frozen, self.task, self.device)
                    self.reporter.log("val", {"step": step, **({} if r is None else {"rate_index": r}),
                                              **metrics})
                    self.reporter.scalars("val" + ("" if r is None else f"_r{r}"), metrics, step)
            self.reporter.say(f"step {step}: " + _describe_terms(
                {k: v for k, v in metrics.items() if k in ("bpp", "bpp_estimate", "psnr", "task_score")}))
        barrier(self.procs.distributed)
