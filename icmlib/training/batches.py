"""Training batches that a resumed run gets again: batch ``s`` depends on ``s``, not on the
run's history.

A resumed run must see the batches the uninterrupted run would have seen from its
checkpoint's step on, so batches are addressed by step. Each epoch is a permutation drawn
from ``(seed, epoch)`` by ``DistributedSampler`` (one shard per process in a DDP run); the
crops and flips come from the dataset's own random stream, which the checkpoint saves.
"""
from __future__ import annotations

from typing import Tuple

import torch

from icmlib.presets import Preset

__all__ = ["Batches", "crop_and_batch"]


def crop_and_batch(preset: Preset, with_task: bool) -> Tuple[int, int]:
    """``(crop side, batch size)`` of a codec's training batches: ``preset.crop_size`` and
    ``batch_size``, or for an ICM codec ``icm_crop_size`` and ``icm_batch_size`` where set
    (whole images for the toy task networks, which resize every input to their own size)."""
    crop, batch_size = preset.crop_size, preset.batch_size
    if with_task:
        crop, batch_size = preset.icm_crop_size or crop, preset.icm_batch_size or batch_size
    return crop, batch_size


class Batches:
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
        """Endless ``(images [B,3,H,W], targets)`` from step ``step`` on."""
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
