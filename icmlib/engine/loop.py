"""The one training loop: a ``train_step`` the caller supplies, then callbacks, step after step.

Codecs, task networks and segmenters train differently (two optimizers and a weighting
strategy, a warm-up schedule, early stopping), but the loop around their steps is the
same, so it is written once, here, in TensorFlow Compression's shape::

    row = train_step(step)           # one optimisation step; returns what to log
    run.step += 1
    for callback in callbacks:       # report, save a checkpoint, validate, stop early...
        callback(run.step, row)

A callback sees the number of steps done and the row the step returned (it may add to
it: a validation's metrics). Its order is the caller's: a checkpoint is written after the
step's log row, so the rows a resumed run keeps are never fewer than its checkpoint's
step. Setting ``run.stopped`` ends the run after the current step (early stopping).
Everything a resumed run must restore lives in the :class:`~icmlib.engine.state.RunState`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, Optional

from icmlib.engine.state import RunState

__all__ = ["train_loop", "every", "TrainingDiverged", "check_finite"]

Row = Dict[str, Any]
TrainStep = Callable[[int], Row]
Callback = Callable[[int, Row], None]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


def check_finite(value: float, what: str, step: int, detail: str = "") -> None:
    """Raise :class:`TrainingDiverged` if ``value`` (``what``, at 0-based ``step``) is NaN
    or infinite; checked *before* the optimizer step, so no checkpoint holds its effect."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"the {what} became {value} at step {step + 1}{detail}. ")


def every(period: int, callback: Callback, last: Optional[int] = None) -> Callback:
    """``callback`` every ``period`` steps and at step ``last`` (the run's end); a
    ``period`` of 0 or less calls it at ``last`` only."""
    def maybe(step: int, row: Row) -> None:
        if (period > 0 and step % period == 0) or step == last:
            callback(step, row)
    return maybe


def train_loop(train_step: TrainStep, run: RunState, steps: int,
               callbacks: Iterable[Callback] = ()) -> RunState:
    """Call ``train_step(step)`` (``step`` = steps done before it, 0-based) until ``run.step``
    reaches ``steps`` or a callback sets ``run.stopped``; after each step, the callbacks in
    order. Starts at ``run.step``: a resumed run continues where its checkpoint stopped."""
    callbacks = list(callbacks)
    while run.step < steps and not run.stopped:
        row = train_step(run.step)
        run.step += 1
        for callback in callbacks:
            callback(run.step, row)
    return run
