"""Random state: what a resumed run must restore to draw the same numbers as before.

A run draws from torch (CPU and CUDA), numpy, Python's ``random`` and, for random crops,
the dataset's own numpy ``Generator`` (``dataset._rng``, read by duck typing so this
module needs no dataset class). A checkpoint saves all of them; :func:`isolated_rng`
lets validation run in the middle of training without consuming any of them, so a run
validated every 10 steps trains exactly like one validated every 100.
"""
from __future__ import annotations

import contextlib
import random
from typing import Any, Dict, Mapping

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "isolated_rng"]


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def rng_state(dataset=None) -> Dict[str, Any]:
    """Every random state of this process (and of ``dataset``'s crop stream, if it has one)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if _cuda_in_use():
        state["cuda"] = torch.cuda.get_rng_state_all()
    rng = getattr(dataset, "_rng", None)
    if rng is not None:
        state["dataset"] = {"bit_generator": rng.bit_generator.state,
                            "worker": getattr(dataset, "_rng_worker", None)}
    return state


def set_rng_state(state: Mapping[str, Any], dataset=None) -> None:
    """Restore what :func:`rng_state` returned (the dataset's stream into ``dataset``)."""
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
def isolated_rng():
    """Run a block (validation) without consuming any global random state."""
    np_state, py_state = np.random.get_state(), random.getstate()
    devices = [torch.cuda.current_device()] if _cuda_in_use() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
