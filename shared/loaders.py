"""Data loaders that know about torch.distributed and resume: epoch-seeded order, shards,
and the batches of an epoch from any position."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from shared.errors import InputError

# --------------------------------------------------------------------------------------
# Loaders


def _distributed_world() -> tuple[int, int] | None:
    """(rank, world size) when torch.distributed runs with more than one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    distribute: bool = True,
) -> DataLoader:
    """A DataLoader that shards across processes under torch.distributed.

    With world size > 1 each rank gets its share through a ``DistributedSampler``
    (seeded, so every rank agrees on the order); otherwise shuffling uses a seeded
    generator, so a run is reproducible. Call :func:`set_loader_epoch` at the start of
    each epoch to reshuffle.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "drop_last": drop_last,
        "pin_memory": pin_memory,
        # no persistent workers: they would keep a stale copy of PhotoCrops.epoch
    }
    from torch.utils.data.distributed import DistributedSampler

    # A DistributedSampler even in one process: its order is a pure function of
    # (seed, epoch), which is what lets a resumed run see the same batches.
    # distribute=False: the caller already took this rank's share (see `shard`).
    rank, size = (_distributed_world() if distribute else None) or (0, 1)
    sampler = DistributedSampler(
        dataset, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    # Its own generator: creating an iterator draws a worker seed, which must not consume
    # the global RNG (a resumed run would otherwise draw it at a different point).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, sampler=sampler, generator=generator, **common)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler (DistributedSampler) and the dataset (PhotoCrops) the epoch."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # type: ignore[union-attr]


def shard(dataset: Dataset) -> Dataset:
    """This rank's share of `dataset` without padding (rank, rank + world, ...): for
    statistics and evaluation, where DistributedSampler's repeated samples would bias sums."""
    world = _distributed_world()
    if world is None:
        return dataset
    from torch.utils.data import Subset

    rank, size = world
    return Subset(dataset, range(rank, len(dataset), size))  # type: ignore[arg-type]


def resolve_workers(requested: int, spec: str) -> int:
    """Loader workers for `--num-workers -1` (auto): none for in-memory built-in sets (workers
    only add start-up cost there), else up to 8, leaving a core for the main process."""
    if requested >= 0:
        return requested
    if spec.startswith("builtin:"):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def epoch_batches(loader: DataLoader, epoch: int, start_batch: int = 0) -> DataLoader:
    """The batches of `epoch` from `start_batch` on, without loading (or augmenting, which
    draws random numbers) the skipped ones: a resumed run continues exactly where it
    stopped."""
    set_loader_epoch(loader, epoch)
    if start_batch == 0:
        return loader
    indices = list(loader.sampler)[start_batch * (loader.batch_size or 1) :]  # type: ignore[arg-type]
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=indices,
        num_workers=loader.num_workers, drop_last=loader.drop_last,
        pin_memory=loader.pin_memory, collate_fn=loader.collate_fn,
        generator=torch.Generator().manual_seed(epoch),
    )  # fmt: skip
