"""The order of ``hd.dataloader``'s map-style passes: rows in order, shuffled by ``seed + epoch`` or grouped by length.

``EpochSampler`` gives each epoch's order (in order, the permutation of ``seed + epoch``, or grouped
by length as ``transformers``' ``get_length_grouped_indices``) and keeps the epoch a resumed run
starts in; ``EpochBatchSampler`` slices it into batches and deals them out to the processes as
``accelerate``'s ``BatchSamplerShard`` does. Each batch carries its epoch (``EpochBatch``), by which
the masked-LM layout draws its masks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, Sampler

from ._compat import accelerate_loaders, process_rank

__all__ = ["EpochBatch", "EpochBatchSampler", "EpochSampler", "length_grouped"]


class EpochBatch(list):
    """The row (or block) indices of one batch, and the epoch of the pass they belong to (masked-LM layouts draw by it)."""

    def __init__(self, indices: list[int], epoch: int) -> None:
        super().__init__(indices)
        self.epoch = epoch


def length_grouped(order: np.ndarray, lengths: np.ndarray, batch_size: int,
                   batch_order: torch.Generator | None = None) -> np.ndarray:
    """``order`` with rows of similar ``lengths`` side by side: ``transformers``' ``get_length_grouped_indices`` on it.

    Cut into mega-batches of ``min(50, len // (4 * batch_size))`` batches (at least one), each sorted
    longest first (stable); the longest row then swaps into the first place, so that a batch too
    large for memory comes first. With ``batch_order``, a generator, the full batches after the first
    are then put in the order of a permutation drawn from it (a last, short batch stays last).
    """
    mega = max(1, min(len(order) // (batch_size * 4), 50)) * batch_size
    grouped = order[np.lexsort((-lengths[order], np.arange(len(order)) // mega))]
    if len(grouped):
        longest = int(np.argmax(lengths[grouped[::mega]])) * mega
        grouped[[0, longest]] = grouped[[longest, 0]]
    full = len(grouped) // batch_size
    if batch_order is not None and full > 2:
        batches = grouped[:full * batch_size].reshape(full, batch_size)
        dealt = np.concatenate([[0], 1 + torch.randperm(full - 1, generator=batch_order).numpy()])
        grouped[:full * batch_size] = batches[dealt].ravel()
    return grouped


class EpochSampler(Sampler[int]):
    """Row indices ``0..size-1``, in order or in the permutation of ``seed + epoch``; each pass advances the epoch.

    With ``lengths`` (one per row) and ``batch_size``, each order is then grouped by length (``length_grouped``), its
    batches put in a random order of the same epoch too with ``shuffle_batches`` (when shuffling).
    """

    def __init__(self, size: int, *, shuffle: bool = False, seed: int = 0, lengths: np.ndarray | None = None,
                 batch_size: int = 1, shuffle_batches: bool = False) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.lengths, self.batch_size, self.shuffle_batches = lengths, batch_size, shuffle_batches
        self.epoch = 0  # the epoch of the next pass
        self.current: int | None = None  # the epoch of the pass under way (its batches not all handed out yet)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``, unless the loader has already gone past it (it never goes back)."""
        self.epoch = max(int(epoch), self.epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch``; int32 where it fits, so a large epoch's order takes half the memory."""
        dtype = torch.int32 if self.size <= np.iinfo(np.int32).max else torch.int64
        generator = torch.Generator().manual_seed(self.seed + epoch)
        if not self.shuffle:
            order = torch.arange(self.size, dtype=dtype).numpy()
        else:
            order = torch.randperm(self.size, dtype=dtype, generator=generator).numpy()
        if self.lengths is None:
            return order
        return length_grouped(order, self.lengths, self.batch_size, generator if self.shuffle and self.shuffle_batches else None)

    def start_pass(self) -> np.ndarray:
        """The order of the pass that starts now; the epoch then advances by one."""
        self.current, self.epoch = self.epoch, self.epoch + 1
        return self.order(self.current)

    def batches(self, batch_size: int, drop_last: bool) -> Iterator[EpochBatch]:
        """The batches of the pass that starts now, each with its epoch; the pass counts as done once its last batch is out."""
        order = self.start_pass()
        epoch = self.current
        assert epoch is not None  # start_pass set it
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        starts = range(0, stop, batch_size)
        for i, start in enumerate(starts):
            if i == len(starts) - 1:
                self.current = None
            yield EpochBatch(order[start:start + batch_size].tolist(), epoch)
        self.current = None

    def __iter__(self) -> Iterator[int]:
        for block in self.batches(1 << 16, drop_last=False):
            yield from block

    def state_dict(self) -> dict[str, int]:
        """The epoch a resumed run starts in: the one under way, or the next when none is."""
        active = _accelerate_loader_over(self)  # workers may have drained the sampler before the pass ends
        under_way = (not active.end_of_dataloader) if active is not None else self.current is not None
        return {"epoch": self.epoch - 1 if under_way else self.epoch, "seed": self.seed, "rows": self.size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at the epoch of ``state`` (from ``state_dict``, e.g. through ``accelerator.load_state``)."""
        if (state.get("seed"), state.get("rows")) != (self.seed, self.size):
            raise ValueError(f"The saved loader state is of seed {state.get('seed')} over {state.get('rows')} rows; this loader has "
                             f"seed {self.seed} over {self.size} rows, so it cannot resume in the same order.")
        self.epoch, self.current = int(state["epoch"]), None

    def __len__(self) -> int:
        return self.size


class EpochBatchSampler(BatchSampler):
    """A ``BatchSampler`` over an ``EpochSampler`` that slices the epoch's order into batches (no per-index Python loop).

    In one process it yields what ``BatchSampler(sampler, batch_size, drop_last)`` yields; with
    several, each process's share of those batches as ``accelerate``'s ``BatchSamplerShard`` deals
    them (process ``r`` takes batches ``r, r + n, ...``; the last ones completed from the start of
    the epoch, so every process takes as many batches of the same size). The processes are looked
    up when a pass starts, so a loader made before ``Accelerator()`` is sharded too.
    """

    sampler: EpochSampler

    def set_epoch(self, epoch: int) -> None:
        """The sampler's ``set_epoch``, reached by ``Trainer`` through the ``SkipBatchSampler`` of ``skip_first_batches``."""
        self.sampler.set_epoch(epoch)

    def _all(self) -> Iterator[list[int]]:
        return self.sampler.batches(self.batch_size, self.drop_last)

    def _shard(self) -> BatchSampler | None:
        rank, world = process_rank()
        return None if world == 1 else BatchSamplerShard(_Batches(self), num_processes=world, process_index=rank)

    def __iter__(self) -> Iterator[list[int]]:
        shard = self._shard()
        yield from self._all() if shard is None else shard

    def __len__(self) -> int:
        shard = self._shard()
        return super().__len__() if shard is None else len(shard)


class _Batches(BatchSampler):
    """Every process's batches of an ``EpochBatchSampler``, for ``BatchSamplerShard`` to deal out."""

    def __init__(self, batches: EpochBatchSampler) -> None:
        super().__init__(batches.sampler, batches.batch_size, batches.drop_last)
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return self.batches._all()


def _accelerate_loader_over(sampler: EpochSampler) -> Any:
    """The ``accelerate`` loader iterating over ``sampler`` right now, if any (it wraps it in shards and skips)."""
    for loader in accelerate_loaders():
        inner = getattr(loader, "batch_sampler", None)
        while inner is not None and getattr(inner, "sampler", None) is not sampler:
            inner = getattr(inner, "batch_sampler", None)
        if inner is not None:
            return loader
    return None
