"""The run state: everything a killed training needs to continue exactly where it stopped.

A run's state is its step, the state of each of its *parts* (the model, the optimizers,
the schedulers, a gradient scaler, a loss-weighting strategy: anything with
``state_dict()``/``load_state_dict()``) and every random state of every process. Saved
together, atomically, every so many steps, they make ``resume`` reproduce the
uninterrupted run (on CPU; on GPU up to cuDNN's nondeterminism).

A checkpoint file also holds the configuration of the run that wrote it: resuming with
other settings is refused with the settings that differ, rather than silently mixing
two runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch

from icmlib.cache import atomic_save
from icmlib.engine.distributed import Processes, all_gather_object
from icmlib.engine.rng import rng_state, set_rng_state

__all__ = ["RunState", "save_checkpoint", "load_checkpoint"]

_ONE_PROCESS = Processes(False, 0, 1, 0)


class RunState:
    """The step, the named parts and the random states of a run.

    ``parts`` is an ordered mapping ``name -> object with state_dict()``; their states are
    saved under those names, and loaded back in that order. ``dataset`` is the training
    set whose own random stream (crops, flips) is saved with the rest. In a distributed
    run :meth:`state_dict` is a collective call: it gathers the random states of every
    rank (each rank draws its own crops), and :meth:`load_state_dict` gives each rank its own.
    """

    def __init__(self, parts: Mapping[str, Any], *, dataset=None,
                 procs: Processes = _ONE_PROCESS, step: int = 0):
        self.parts = dict(parts)
        self.dataset = dataset
        self.procs = procs
        self.step = int(step)
        self.stopped = False  # set by a callback to end the loop after this step

    def state_dict(self) -> Dict[str, Any]:
        rngs = all_gather_object(rng_state(self.dataset), self.procs.distributed)
        return {"step": self.step, **{name: part.state_dict() for name, part in self.parts.items()},
                "rng": rngs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["rng"]) != self.procs.world:
            raise ValueError(f"it was written by a run with {len(state['rng'])} process(es), "
                             f"this one has {self.procs.world}; resume with the same number "
                             f"of processes")
        for name, part in self.parts.items():
            part.load_state_dict(state[name])
        self.step = int(state["step"])
        set_rng_state(state["rng"][self.procs.rank], self.dataset)


def save_checkpoint(path: Path, run: RunState, config: Mapping[str, Any]) -> None:
    """Write ``{"config", **run.state_dict()}`` atomically (rank 0 writes; every rank must
    call it, since gathering the random states is collective)."""
    state = run.state_dict()
    if run.procs.is_main:
        atomic_save({"config": config, **state}, path)


def load_checkpoint(path: Path, run: RunState, config: Mapping[str, Any]) -> bool:
    """Load the checkpoint at ``path`` into ``run`` if there is one; ``False`` if not.

    Raises ``ValueError`` naming the settings that differ when the checkpoint was written
    by a run with another configuration (or another number of processes)."""
    path = Path(path)
    if not path.is_file():
        return False
    state = torch.load(path, map_location="cpu", weights_only=False)
    old: Optional[Mapping[str, Any]] = state.get("config")
    if old != config:
        old = old or {}
        diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
        raise ValueError(f"cannot resume from {path}: it was trained with other settings "
                         f"({', '.join(f'{k}: {old.get(k)!r} -> {config.get(k)!r}' for k in diff)}). "
                         f"Use another --out folder, or resume=False to start over.")
    try:
        run.load_state_dict(state)
    except ValueError as e:
        raise ValueError(f"cannot resume from {path}: {e}") from None
    return True
