"""The training batches of each epoch, drawn ahead of the step: by one background thread, or by worker processes.

On a CPU one thread cuts views faster than the model steps. On a GPU it does not: an H200 steps the `small` preset
through 2,500-8,600 pairs/s while one host thread cuts about 800 (bench/README.md, "Training on a GPU"), so there the
batches are drawn by worker processes (``torch.utils.data.DataLoader``: it hands the waveforms over through shared
memory and pins them in a thread of its own; a well-kept loader rather than a hand-written process pool). Every
batch depends only on (seed, epoch, batch number) (``ViewSource.batch``), so the number of workers changes the speed
and never the views.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from workflow_lib.common.background import prefetch
from workflow_lib.training.data import ViewBatch, ViewSource


def epoch_key(seed: int, epoch: int) -> list[int]:
    """The generator key of an epoch's shuffle; batch ``i`` of it draws its views with ``epoch_key + [i]``."""
    return [seed, 1, epoch]


def usable_cpus() -> int:
    """CPUs this process may run on: a SLURM job's allocation or a container's cpuset, not the whole node."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def view_workers(setting: int | str, device: torch.device) -> int:
    """Worker processes for ``train.view_workers``: ``auto`` is none on a CPU (the cores train) and all usable CPUs
    but two (at most 16) on a GPU."""
    if setting == "auto":
        return 0 if device.type == "cpu" else max(0, min(16, usable_cpus() - 2))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ValueError(f"train.view_workers must be auto or a whole number >= 0, got {setting!r}")
    return setting


class _EpochBatches(Dataset):
    """Item ``(epoch, i)``: batch ``i`` of ``epoch`` (a worker keeps the last epoch's order)."""

    def __init__(self, source: ViewSource, seed: int, batch_pairs: int):
        self.source, self.seed, self.batch_pairs = source, seed, batch_pairs
        self._epoch, self._rows = None, []

    def rows(self, epoch: int) -> list:
        if self._epoch != epoch:
            self._rows, self._epoch = self.source.epoch_order(epoch_key(self.seed, epoch), self.batch_pairs), epoch
        return self._rows

    def draw(self, epoch: int, i: int) -> ViewBatch:
        return self.source.batch(epoch_key(self.seed, epoch) + [i], self.rows(epoch)[i])

    def __getitem__(self, key: tuple[int, int]) -> ViewBatch:
        return self.draw(*key).shareable()

    def __len__(self) -> int:
        return len(self.source) // self.batch_pairs


class _Keys(Sampler):
    """The (epoch, batch) keys the loader draws next; set before each epoch (the workers outlive epochs)."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class BatchStream:
    """Yields the batches of an epoch in order, from batch ``start`` (a resumed run), drawn ``workers`` processes
    wide (0: the prefetch thread). Close it (or use it as a context manager) to stop the workers."""

    def __init__(self, source: ViewSource, seed: int, batch_pairs: int, workers: int = 0, pin: bool = False):
        self.batches = _EpochBatches(source, seed, batch_pairs)
        self._keys = _Keys()
        # Forked: the workers inherit the source and its memory-mapped banks (pickled, a bank would be copied whole).
        self._loader = DataLoader(self.batches, batch_size=None, sampler=self._keys, num_workers=workers,
                                  persistent_workers=True, prefetch_factor=2, pin_memory=pin,
                                  multiprocessing_context="fork") if workers else None

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.batches)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[ViewBatch]:
        keys = [(epoch, i) for i in range(start, len(self.batches))]
        if self._loader is None:
            return prefetch(self.batches.draw(e, i) for e, i in keys)
        self._keys.keys = keys
        return iter(self._loader)

    def close(self) -> None:
        """Stop the workers (the loader's iterator shuts them down when it is released)."""
        self._loader = None

    def __enter__(self) -> "BatchStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
