"""``dataloader``: a ``torch.utils.data.DataLoader`` of padded batches gathered straight from the Arrow buffers.

Its shape is the one ``accelerate`` shards in one process and in many (accelerate issue 2392): a
``BatchSampler`` (``EpochBatchSampler``) over an ``EpochSampler`` picks the row indices,
``BatchFetcher.__getitems__`` makes the whole padded batch from them, and the ``collate_fn``
passes it through.

Order: ``shuffle=True`` draws a permutation from a ``torch.Generator`` seeded with ``seed + epoch``,
so a seed and an epoch always give the same order, on every process. The epoch advances by one each
time the loader is iterated, and ``loader.set_epoch(epoch)`` sets it (as ``accelerate``'s prepared
loader does at each pass, with its own count of passes, so resuming at an epoch reshuffles as before).

Under ``accelerator.prepare`` every process draws the same permutation and takes every
``num_processes``-th batch of it. With ``even_batches=True`` (accelerate's default) the last
batches are completed with rows from the start of the epoch, so every process gets as many full
batches; ``accelerator.gather_for_metrics`` drops those repeated rows again. With ``drop_last=True``
the incomplete tail is dropped instead. The sampler is not a ``RandomSampler``, so
``use_seedable_sampler`` / ``data_seed`` do not replace it: pass ``seed=`` here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import BatchSampler, DataLoader, Sampler

from .batching import BatchFetcher, as_plan, resolve_batch_plan
from .padding import PadOptions
from .plan import DtypePlan

__all__ = ["EpochBatchSampler", "EpochSampler", "PaddedDataLoader", "collate_padded", "dataloader"]

_BLOCK = 1 << 16  # rows turned into Python ints at a time: a large dataset's order stays an int64 array
_SET_BY_DATALOADER = ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last", "dataset")


class EpochSampler(Sampler[int]):
    """Row indices ``0..size-1``, in order or in the permutation of ``seed + epoch``; the epoch advances per pass."""

    def __init__(self, size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch``."""
        dtype = np.int32 if self.size <= np.iinfo(np.int32).max else np.int64  # 4 bytes a row: a large epoch's order is half as big
        if not self.shuffle:
            return np.arange(self.size, dtype=dtype)
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, dtype=getattr(torch, dtype.__name__), generator=generator).numpy()

    def next_order(self) -> np.ndarray:
        """The order of the current epoch; the epoch then advances by one."""
        order = self.order(self.epoch)
        self.epoch += 1
        return order

    def __iter__(self) -> Iterator[int]:
        order = self.next_order()
        return (index for start in range(0, len(order), _BLOCK) for index in order[start:start + _BLOCK].tolist())

    def __len__(self) -> int:
        return self.size


class EpochBatchSampler(BatchSampler):
    """A ``BatchSampler`` over an ``EpochSampler`` that slices the epoch's order into batches (no per-index Python loop).

    It yields what ``BatchSampler(sampler, batch_size, drop_last)`` yields, and is one for
    ``accelerate``, which shards it with ``BatchSamplerShard`` and reaches ``sampler.set_epoch``.
    """

    sampler: EpochSampler

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.next_order()
        stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
        for start in range(0, stop, self.batch_size):
            yield order[start:start + self.batch_size].tolist()


def collate_padded(batch: dict[str, Any]) -> dict[str, Any]:
    """The ``collate_fn`` of a loader whose dataset already returns whole padded batches."""
    return batch


class PaddedDataLoader(DataLoader):
    """A ``DataLoader`` of padded batches with ``set_epoch`` and the ``plan`` it serves."""

    def set_epoch(self, epoch: int) -> None:
        """Use the row order of ``epoch`` (the permutation of ``seed + epoch``) for the next pass."""
        self.batch_sampler.sampler.set_epoch(epoch)

    @property
    def plan(self) -> DtypePlan:
        """The plan of the served columns; ``plan.widen(batch)`` gives the compute dtypes."""
        return self.dataset.plan


def _check_int(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (positive and value <= 0):
        expected = "a positive integer" if positive else "an integer"
        raise ValueError(f"{name} must be {expected}; got {value!r}.")


def dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
    widen: str = "device",
    plan: DtypePlan | Mapping | None = None,
    columns: Sequence[str] | str | None = None,
    **dataloader_kwargs: Any,
) -> PaddedDataLoader:
    """A ``DataLoader`` of padded batches of ``dataset``, gathered from its Arrow buffers, vectorized.

    Args:
        dataset: a ``datasets.Dataset``, usually compacted; ``shuffle`` / ``select`` / ``filter``
            views and memory-mapped, multi-file datasets are read in place, never copied.
        batch_size: rows per batch.
        shuffle, drop_last: as in ``DataLoader``; the order is the permutation of ``seed + epoch``.
        seed: the seed of the row order (the same on every process).
        num_workers, pin_memory: as in ``DataLoader``.
        pad_to_multiple_of: round each batch's padded width up to a multiple of this.
        max_length: keep at most the first ``max_length`` values of each row.
        padding_side: ``"right"`` or ``"left"``.
        widen: ``"device"`` serves the storage dtypes (call ``plan.widen(batch)`` after moving the
            batch to the device), ``"cpu"`` the compute dtypes.
        plan: the dtype plan; ``None`` reads the one ``compact`` recorded in ``dataset``.
        columns: the columns to batch; ``None`` batches every planned column that is present or
            derived. Unplanned numeric columns (e.g. a row id) may be named too.
        **dataloader_kwargs: passed on to ``DataLoader`` (``multiprocessing_context``,
            ``persistent_workers``, ``prefetch_factor``, ``worker_init_fn``, ``timeout``, ...).

    Returns:
        A ``PaddedDataLoader`` (a ``DataLoader`` with ``set_epoch`` and ``plan``); each batch is a
        dict of tensors, sequences ``(batch, width)`` and scalars ``(batch,)``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataloader takes a datasets.Dataset (one split); got {type(dataset).__name__}.")
    _check_int("batch_size", batch_size, positive=True)
    _check_int("seed", seed, positive=False)
    taken = sorted(set(dataloader_kwargs) & set(_SET_BY_DATALOADER))
    if taken:
        raise TypeError(f"dataloader sets {taken} itself; pass batch_size=, shuffle=, drop_last= as its own arguments.")
    options = PadOptions(pad_to_multiple_of, max_length, padding_side, widen)
    served_plan, served_columns = resolve_batch_plan(dataset, as_plan(plan, dataset), columns)
    fetcher = BatchFetcher(dataset, served_plan, served_columns, options)
    sampler = EpochSampler(len(dataset), shuffle=bool(shuffle), seed=int(seed))
    return PaddedDataLoader(
        fetcher,
        batch_sampler=EpochBatchSampler(sampler, batch_size, drop_last),
        collate_fn=collate_padded,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **dataloader_kwargs,
    )
