"""``dataloader``: a ``torch.utils.data.DataLoader`` of padded batches gathered straight from the Arrow buffers.

Its shape is the one ``accelerate`` shards in one process and in many (accelerate issue 2392): a
``BatchSampler`` (``EpochBatchSampler``) over an ``EpochSampler`` picks the row indices,
``BatchFetcher.__getitems__`` makes the whole padded batch from them, and the ``collate_fn``
passes it through.

Order: ``shuffle=True`` draws a permutation from a ``torch.Generator`` seeded with ``seed + epoch``,
so a seed and an epoch give the same order on every process. Each pass advances the epoch by one;
``set_epoch(n)`` moves it to ``n`` but never back, because ``accelerate``'s prepared loader calls
``set_epoch`` with its own count of passes, which restarts at 0 in a resumed run. The loader's
``state_dict`` holds the epoch, so ``accelerator.register_for_checkpointing(loader)`` makes
``save_state`` / ``load_state`` resume in the same order. Iterating never draws from torch's
global random generator (the loader has its own), so dropout is the same whether a run was resumed or not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import Dataset
from torch.utils.data import BatchSampler, DataLoader, Sampler

from .arrow import ArrowColumn, arrow_leaf_dtype, list_depth
from .batching import PadOptions, Rows, assemble
from .formatting import NO_PLAN
from .plan import ColumnDtype, DtypePlan, as_plan
from .recording import plan_of

__all__ = ["BatchFetcher", "EpochBatchSampler", "EpochSampler", "PaddedDataLoader", "dataloader"]

_SET_BY_DATALOADER = ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last", "dataset")


def batch_plan(dataset: Dataset, plan: DtypePlan, columns: Sequence[str] | str | None) -> tuple[DtypePlan, list[str]]:
    """The plan a loader serves (unplanned requested columns added as stored) and the columns it batches, checked.

    By default every planned column that the dataset holds, and every derived column whose source
    it holds, is batched; columns outside the plan are left out.
    """
    schema = dataset.data.table.schema
    depth = {field.name: list_depth(field.type) for field in schema if arrow_leaf_dtype(field.type) is not None}
    plan = plan.resolve([name for name, d in depth.items() if d == 1])
    derived = {name: entry for name, entry in plan.derived.items() if name not in schema.names}
    if columns is None:
        chosen = [name for name in plan if name in schema.names or (name in derived and derived[name].lengths_from in schema.names)]
    else:
        chosen = [columns] if isinstance(columns, str) else list(columns)
        unknown = [name for name in chosen if name not in schema.names and name not in derived]
        if unknown:
            raise ValueError(f"Unknown column(s) {unknown}: expected columns of the dataset {schema.names} "
                             f"or derived columns of the plan {sorted(derived)}.")
    entries = dict(plan.columns)
    for name in chosen:
        if name in derived:
            source = derived[name].lengths_from
            if depth.get(source) != 1:
                what = "which the dataset does not have" if source not in schema.names else "which is not a list column"
                raise ValueError(f"Derived column {name!r} takes its row lengths from {source!r}, {what}.")
        elif depth.get(name) not in (0, 1):
            what = "lists of lists" if name in depth else f"{schema.field(name).type} values"
            hint = "" if columns is not None else "; leave it out with columns=[...]"
            raise ValueError(f"Column {name!r} holds {what}; only numbers and lists of numbers can be batched{hint}.")
        elif name not in entries:
            entries[name] = ColumnDtype(storage=arrow_leaf_dtype(schema.field(name).type))
    return DtypePlan(entries), chosen


class _Read(NamedTuple):
    """How a fetcher reads one column: its view, its chunk layout's number, and the twin whose rows it shares, shifted."""

    column: ArrowColumn
    layout: int
    twin: str | None = None
    shift: np.ndarray | None = None


class BatchFetcher:
    """The map-style dataset of a loader: ``__getitems__(indices)`` returns the whole padded batch.

    It holds the ``datasets.Dataset`` (which pickles by file path when memory-mapped) and builds its
    numpy views of the Arrow buffers lazily in each process, so it goes to spawned workers as is.
    """

    def __init__(self, dataset: Dataset, plan: DtypePlan, columns: list[str], options: PadOptions) -> None:
        self.dataset = dataset
        self.plan = plan
        self.columns = columns
        self.options = options
        self._views: dict[str, _Read] | None = None
        self._mapping: ArrowColumn | None = None  # the indices mapping of shuffle / select / filter, if any

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_views": None, "_mapping": None}

    def __len__(self) -> int:
        return len(self.dataset)

    def _build(self) -> dict[str, tuple[ArrowColumn, int]]:
        table = self.dataset.data.table
        sources = [self.plan[name].lengths_from for name in self.columns if name not in table.column_names]
        views: dict[str, _Read] = {}
        for name in dict.fromkeys([*(name for name in self.columns if name in table.column_names), *sources]):
            column = ArrowColumn(name, table.column(name))
            layout = next((read.layout for read in views.values() if np.array_equal(read.column.starts, column.starts)), len(views))
            twin = next(((leader, shift) for leader, read in views.items() if read.twin is None and read.column.is_list
                         and column.is_list and (shift := column.shift_from(read.column)) is not None), (None, None))
            views[name] = _Read(column, layout, *twin)
        if self.dataset._indices is not None:
            self._mapping = ArrowColumn("indices", self.dataset._indices.table.column(0))
        self._size = len(self.dataset)
        return views

    def batch(self, indices: Sequence[int], options: PadOptions | None = None) -> dict[str, torch.Tensor]:
        """The padded batch of dataset rows ``indices``."""
        if self._views is None:
            self._views = self._build()
        size = self._size
        if len(indices) and (min(indices) < 0 or max(indices) >= size):
            bad = next(int(i) for i in indices if not 0 <= i < size)
            raise IndexError(f"Row {bad} is out of range for a dataset of {size} rows.")
        rows = np.asarray(indices, dtype=np.int64)
        if self._mapping is not None:
            rows = self._mapping.scalars(rows, self._mapping.locate(rows)).astype(np.int64)
        chunks: dict[int, np.ndarray | None] = {}
        columns: dict[str, Rows] = {}
        for name, read in self._views.items():
            column = read.column
            if read.layout not in chunks:
                chunks[read.layout] = column.locate(rows)
            chunk = chunks[read.layout]
            if not column.is_list:
                columns[name] = Rows(column.scalars(rows, chunk), column.dtype)
                continue
            if read.twin is not None:  # the rows of its twin, shifted: same lengths, one offsets read for both
                twin = columns[read.twin]
                starts = twin.starts + (read.shift[0] if chunk is None else read.shift[chunk])
                lengths, groups = twin.lengths, twin.groups
            else:
                starts, lengths, groups = column.spans(rows, chunk)
            one_view = len(column.values.views) == 1 and not column.values.bits
            columns[name] = Rows(column.values.views[0] if one_view else column.values.take, column.dtype, starts, lengths, groups,
                                 column.windows if one_view else None)
        return assemble(columns, self.plan, self.columns, options or self.options, indices)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return self.batch(indices)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """Row ``index``, unpadded: a batch of one, without its batch dimension."""
        options = dataclasses.replace(self.options, pad_to_multiple_of=None)
        return {name: value[0] for name, value in self.batch([index], options).items()}


class EpochSampler(Sampler[int]):
    """Row indices ``0..size-1``, in order or in the permutation of ``seed + epoch``; each pass advances the epoch."""

    def __init__(self, size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0  # the epoch of the next pass
        self.current: int | None = None  # the epoch of the pass under way (its batches not all handed out yet)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``, unless the loader has already gone past it (it never goes back)."""
        self.epoch = max(int(epoch), self.epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch``; int32 where it fits, so a large epoch's order takes half the memory."""
        dtype = torch.int32 if self.size <= np.iinfo(np.int32).max else torch.int64
        if not self.shuffle:
            return torch.arange(self.size, dtype=dtype).numpy()
        return torch.randperm(self.size, dtype=dtype, generator=torch.Generator().manual_seed(self.seed + epoch)).numpy()

    def start_pass(self) -> np.ndarray:
        """The order of the pass that starts now; the epoch then advances by one."""
        self.current, self.epoch = self.epoch, self.epoch + 1
        return self.order(self.current)

    def batches(self, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
        """The batches of the pass that starts now; the pass counts as done once its last batch is handed out."""
        order = self.start_pass()
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        starts = range(0, stop, batch_size)
        for i, start in enumerate(starts):
            if i == len(starts) - 1:
                self.current = None
            yield order[start:start + batch_size]
        self.current = None

    def __iter__(self) -> Iterator[int]:
        for block in self.batches(1 << 16, drop_last=False):
            yield from block.tolist()

    def __len__(self) -> int:
        return self.size


class EpochBatchSampler(BatchSampler):
    """A ``BatchSampler`` over an ``EpochSampler`` that slices the epoch's order into batches (no per-index Python loop).

    It yields what ``BatchSampler(sampler, batch_size, drop_last)`` yields, and is one for
    ``accelerate``, which shards it with ``BatchSamplerShard`` and reaches ``sampler.set_epoch``.
    """

    sampler: EpochSampler

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler.batches(self.batch_size, self.drop_last):
            yield batch.tolist()


def _accelerate_loader_over(batch_sampler: BatchSampler) -> Any:
    """The ``accelerate`` loader iterating over ``batch_sampler`` right now, if any (it may wrap it in shards and skips)."""
    from accelerate.state import GradientState

    for loader in GradientState().dataloader_references:
        sampler = getattr(loader, "batch_sampler", None)
        while sampler is not None:
            if sampler is batch_sampler:
                return loader
            sampler = getattr(sampler, "batch_sampler", None)
    return None


class PaddedDataLoader(DataLoader):
    """A ``DataLoader`` of padded batches with ``set_epoch``, a resumable ``state_dict`` and the ``plan`` it serves."""

    def set_epoch(self, epoch: int) -> None:
        """Use the row order of ``epoch`` (the permutation of ``seed + epoch``) for the next pass."""
        self.batch_sampler.sampler.set_epoch(epoch)

    @property
    def plan(self) -> DtypePlan:
        """The plan of the served columns; ``plan.widen(batch)`` gives the compute dtypes."""
        return self.dataset.plan

    def state_dict(self) -> dict[str, int]:
        """The epoch a resumed run starts in: the one under way, or the next when none is."""
        sampler = self.batch_sampler.sampler
        active = _accelerate_loader_over(self.batch_sampler)  # workers may have drained the sampler before the pass ends
        under_way = (not active.end_of_dataloader) if active is not None else sampler.current is not None
        return {"epoch": sampler.epoch - 1 if under_way else sampler.epoch, "seed": sampler.seed, "rows": sampler.size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at the epoch of ``state`` (from ``state_dict``, e.g. through ``accelerator.load_state``)."""
        sampler = self.batch_sampler.sampler
        if (state.get("seed"), state.get("rows")) != (sampler.seed, sampler.size):
            raise ValueError(f"The saved loader state is of seed {state.get('seed')} over {state.get('rows')} rows; this loader has "
                             f"seed {sampler.seed} over {sampler.size} rows, so it cannot resume in the same order.")
        sampler.epoch, sampler.current = int(state["epoch"]), None


def _check_int(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (positive and value <= 0):
        raise ValueError(f"{name} must be {'a positive integer' if positive else 'an integer'}; got {value!r}.")


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
            ``persistent_workers``, ``prefetch_factor``, ``worker_init_fn``, ``generator``, ...).

    Returns:
        A ``PaddedDataLoader``; each batch is a dict of tensors, sequences ``(batch, width)`` and
        numbers ``(batch,)``, with ``label`` / ``label_ids`` renamed ``labels``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataloader takes a datasets.Dataset (one split); got {type(dataset).__name__}.")
    _check_int("batch_size", batch_size, positive=True)
    _check_int("seed", seed, positive=False)
    taken = sorted(set(dataloader_kwargs) & set(_SET_BY_DATALOADER))
    if taken:
        raise TypeError(f"dataloader sets {taken} itself; pass batch_size=, shuffle=, drop_last= as its own arguments.")
    options = PadOptions(pad_to_multiple_of, max_length, padding_side, widen)
    plan = as_plan(plan) or plan_of(dataset)
    if plan is None:
        raise ValueError(NO_PLAN.replace("Dataset.with_format", "dataloader"))
    served_plan, served_columns = batch_plan(dataset, plan, columns)
    dataloader_kwargs.setdefault("generator", torch.Generator().manual_seed(int(seed)))
    return PaddedDataLoader(
        BatchFetcher(dataset, served_plan, served_columns, options),
        batch_sampler=EpochBatchSampler(EpochSampler(len(dataset), shuffle=bool(shuffle), seed=int(seed)), batch_size, drop_last),
        collate_fn=_passthrough,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **dataloader_kwargs,
    )


def _passthrough(batch: dict[str, Any]) -> dict[str, Any]:
    """The ``collate_fn`` of a loader whose dataset already returns whole padded batches."""
    return batch
