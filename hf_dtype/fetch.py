"""The map-style side of ``hd.dataloader``: the order of rows or blocks, and batches read straight from the Arrow buffers.

``EpochSampler`` gives each epoch's order (in order, the permutation of ``seed + epoch``, or grouped
by length as ``transformers``' ``get_length_grouped_indices``) and keeps the epoch a resumed run
starts in; ``EpochBatchSampler`` slices it into batches and deals them out to the processes as
``accelerate``'s ``BatchSamplerShard`` does.

``BatchFetcher.__getitems__(rows)`` reads each column's rows (``Rows``: where each row's values lie
in a zero-copy view of the buffers, indices mappings of ``shuffle`` / ``select`` / ``filter``
followed) and hands them to a layout: padded (``batching.assemble``) or flat
(``packing.flatten_rows``). ``BlockFetcher.__getitems__(blocks)`` cuts token blocks from every row
laid end to end (``packing.cut_blocks``). Both hold the ``datasets.Dataset`` (which pickles by file
path when memory-mapped) and build their numpy views lazily in each process, so they go to spawned
workers as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from accelerate.data_loader import BatchSamplerShard
from datasets import Dataset
from torch.utils.data import BatchSampler, Sampler

from ._compat import accelerate_loaders, indices_mapping, process_rank
from .layouts import Blocks, Layout, Padded
from .masking import MaskedLM
from .packing import BlockIndex
from .plan import DtypePlan
from .ragged import ArrowColumn, Rows, row_lengths

__all__ = ["BatchFetcher", "BlockFetcher", "EpochBatchSampler", "EpochSampler", "length_grouped"]


class _Read(NamedTuple):
    """How one column is read: its view, its chunk layout's number, and the twin whose rows it shares, shifted."""

    column: ArrowColumn
    layout: int
    twin: str | None = None
    shift: np.ndarray | None = None


class _Reader:
    """Reads the rows of some columns of a dataset from its Arrow buffers, as ``Rows``; built lazily in each process."""

    def __init__(self, dataset: Dataset, names: Sequence[str]) -> None:
        table = dataset.data.table
        self.size = len(dataset)
        self.views: dict[str, _Read] = {}
        for name in dict.fromkeys(names):
            column = ArrowColumn(name, table.column(name))
            layout = next((read.layout for read in self.views.values() if np.array_equal(read.column.starts, column.starts)),
                          len(self.views))
            twin = next(((leader, shift) for leader, read in self.views.items() if read.twin is None and read.column.is_list
                         and column.is_list and (shift := column.shift_from(read.column)) is not None), (None, None))
            self.views[name] = _Read(column, layout, *twin)
        indices = indices_mapping(dataset)
        self.mapping = ArrowColumn("indices", indices.table.column(0)) if indices is not None else None

    def read(self, indices: Sequence[int] | np.ndarray) -> dict[str, Rows]:
        """The rows ``indices`` (positions in the dataset as it is seen) of every column."""
        low, high = (indices.min(), indices.max()) if isinstance(indices, np.ndarray) and len(indices) else \
            (min(indices), max(indices)) if len(indices) else (0, 0)  # Python's min and max: fastest on a short list
        if low < 0 or high >= self.size:
            bad = next(int(i) for i in indices if not 0 <= i < self.size)
            raise IndexError(f"Row {bad} is out of range for a dataset of {self.size} rows.")
        rows = np.asarray(indices, dtype=np.int64)
        if self.mapping is not None:
            rows = self.mapping.scalars(rows, self.mapping.locate(rows)).astype(np.int64)
        chunks: dict[int, np.ndarray | None] = {}
        columns: dict[str, Rows] = {}
        for name, read in self.views.items():
            column = read.column
            if read.layout not in chunks:
                chunks[read.layout] = column.locate(rows)
            chunk = chunks[read.layout]
            if not column.is_list:
                columns[name] = Rows(column.scalars(rows, chunk), column.dtype)
                continue
            if read.twin is not None:  # the rows of its twin, shifted: same lengths, one offsets read for both
                twin, shift = columns[read.twin], read.shift
                assert twin.starts is not None and shift is not None  # a twin is a list column, found with its shift
                starts = twin.starts + (shift[0] if chunk is None else shift[chunk])
                lengths, groups = twin.lengths, twin.groups
            else:
                starts, lengths, groups = column.spans(rows, chunk)
            one_view = len(column.values.views) == 1 and not column.values.bits
            columns[name] = Rows(column.values.views[0] if one_view else column.values.take, column.dtype, starts, lengths, groups,
                                 column.windows if one_view else None)
        return columns


class BatchFetcher:
    """Batches of rows: ``__getitems__(indices)`` returns the whole batch, laid out by ``layout``.

    Args:
        dataset: the dataset, read in place.
        layout: a bound ``Padded`` or ``Flat`` layout; its ``plan`` is the plan of the batches, its ``read`` the columns read.
    """

    def __init__(self, dataset: Dataset, layout: Layout) -> None:
        self.dataset = dataset
        self.read = list(layout.read)
        self.layout = layout
        self._reader: _Reader | None = None

    @property
    def plan(self) -> DtypePlan:
        return self.layout.plan

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    def __len__(self) -> int:
        return len(self.dataset)

    def row_lengths(self, name: str) -> np.ndarray:
        """The length of every row of list column ``name``, in the order the dataset shows its rows."""
        lengths = row_lengths(self.dataset.data.table.column(name))
        indices = indices_mapping(self.dataset)
        return lengths if indices is None else lengths[indices.column(0).to_numpy()]

    def batch(self, indices: Sequence[int], layout: Callable[..., dict] | None = None) -> dict[str, Any]:
        if self._reader is None:
            self._reader = _Reader(self.dataset, self.read)
        return (layout or self.layout)(self._reader.read(indices), indices)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.batch(indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Row ``index`` as a batch of one without its batch dimension (and without rounding its width up)."""
        layout = self.layout
        if isinstance(layout, Padded):
            layout = copy.copy(layout)
            layout.pad_to_multiple_of = layout.max_length = None
        return {name: value[0] if torch.is_tensor(value) and value.ndim else value for name, value in self.batch([index], layout).items()}


class BlockFetcher:
    """Blocks of the rows laid end to end: ``__getitems__(blocks)`` returns the batch of those blocks.

    Args:
        dataset: the dataset, read in place, its rows in the order it is seen.
        layout: the bound ``Blocks`` layout (or ``MaskedLM`` over one).
    """

    def __init__(self, dataset: Dataset, layout: Blocks | MaskedLM) -> None:
        self.dataset = dataset
        self.layout = layout
        self._rows: tuple[BlockIndex, dict[str, Rows]] | None = None
        self.num_blocks = self._stream()[0].num_blocks

    @property
    def plan(self) -> DtypePlan:
        return self.layout.plan

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None}

    def _stream(self) -> tuple[BlockIndex, dict[str, Rows]]:
        """Every row of the stream, in order: where its values lie (per column) and where its tokens start in the stream."""
        if self._rows is None:
            layout = self.layout
            columns = _Reader(self.dataset, layout.read).read(np.arange(len(self.dataset)))
            lengths = columns[layout.token].lengths
            assert lengths is not None  # the layout checked that the token column holds lists
            label_lengths = None if layout.labels is None else columns[layout.labels].lengths
            if layout.labels is not None and (label_lengths is None or not np.array_equal(label_lengths, lengths)):
                raise ValueError(f"Column {layout.labels!r} has rows of other lengths than {layout.token!r}; blocks need one label "
                                 "per token.")
            self._rows = layout.index(lengths), columns
        return self._rows

    def __len__(self) -> int:
        return self.num_blocks

    def __getitems__(self, blocks: Sequence[int]) -> dict[str, torch.Tensor]:
        index, columns = self._stream()
        if len(blocks) and (min(blocks) < 0 or max(blocks) >= index.num_blocks):
            bad = next(int(b) for b in blocks if not 0 <= b < index.num_blocks)
            raise IndexError(f"Block {bad} is out of range: the stream holds {index.num_blocks} blocks of {index.block_size} tokens.")
        return self.layout.cut(index, np.asarray(blocks, dtype=np.int64), columns, getattr(blocks, "epoch", 0))

    def __getitem__(self, block: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.__getitems__([block]).items()}


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
