"""Where a run computes: its device and how many CPU threads torch may use.

Both are chosen per run and given back afterwards: training is often started from inside
a notebook or an evaluation that has its own thread setting, and a process-wide change
would leak into it.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

__all__ = ["training_device", "threads"]


def training_device(requested: str, local_rank: int = 0, what: str = "the run") -> torch.device:
    """``cuda:<local_rank>`` (made current) when ``requested`` is ``"cuda"`` and CUDA is
    there; the CPU otherwise, with a warning when CUDA was asked for."""
    if requested == "cuda" and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    if requested == "cuda":
        warnings.warn(f"{what} asks for CUDA, which is not available: training on the CPU "
                      f"(slowly)")
    return torch.device("cpu")


@contextlib.contextmanager
def threads(n: int):
    """Use ``n`` torch CPU threads inside the block (0: leave the setting alone)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0:
            torch.set_num_threads(before)
