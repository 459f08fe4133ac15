"""Data-parallel training (DDP): which process this is, and the few collective operations
a training loop needs.

A run launched by ``torchrun --nproc_per_node N ...`` (or any launcher that sets
``RANK``/``WORLD_SIZE``/``MASTER_ADDR``) has N processes. Each trains on its own shard of
the data; gradients are averaged by ``DistributedDataParallel``; rank 0 alone logs,
validates and writes checkpoints. Every helper here is a no-op in a one-process run, so a
loop is written once for both.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, NamedTuple, Sequence

import torch
import torch.nn as nn

__all__ = ["Processes", "processes", "world_size", "all_mean", "all_gather_object",
           "average_gradients", "barrier", "data_parallel"]


class Processes(NamedTuple):
    """Where this process stands in the run."""
    distributed: bool
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, validates and saves."""
        return self.rank == 0


def processes() -> Processes:
    """This process's place in the run, initialising the process group when a launcher
    (torchrun) has set the environment and nobody has initialised it yet."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Processes(dist.get_world_size() > 1, dist.get_rank(), dist.get_world_size(),
                         int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        return Processes(True, dist.get_rank(), dist.get_world_size(),
                         int(os.environ.get("LOCAL_RANK", 0)))
    return Processes(False, 0, 1, 0)


def world_size() -> int:
    """Processes of this (torchrun) run, from the environment: no process group is started
    (a cache key can be computed before training begins)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def all_mean(values: Dict[str, float], distributed: bool, device) -> Dict[str, float]:
    """The mean of each value over the processes, so that every rank takes the same
    decisions from it (e.g. a loss-weighting strategy's weights)."""
    if not distributed:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_object(obj, distributed: bool) -> List:
    """``obj`` of every rank, in rank order (``[obj]`` in a one-process run)."""
    if not distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params: Iterable[torch.Tensor], distributed: bool) -> None:
    """Average the gradients of parameters that DDP does not handle (e.g. those of a
    second optimizer, see :func:`data_parallel`'s ``ignore``)."""
    if not distributed:
        return
    import torch.distributed as dist

    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def barrier(distributed: bool) -> None:
    """Wait for every rank (e.g. while rank 0 validates)."""
    if distributed:
        import torch.distributed as dist
        dist.barrier()


def data_parallel(net: nn.Module, device: torch.device, ignore: Sequence[str] = ()) -> nn.Module:
    """``net`` wrapped in ``DistributedDataParallel``; the parameters named in ``ignore``
    get no gradient from the main loss, so DDP must not wait for them (average theirs by
    hand with :func:`average_gradients`)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(net, list(ignore))
    return DDP(net, device_ids=[device.index] if device.type == "cuda" else None,
               broadcast_buffers=False)
