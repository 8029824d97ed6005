"""The map-style side of ``hd.dataloader``: batches of rows or blocks read straight from the Arrow buffers.

``BatchFetcher.__getitems__(rows)`` reads each column's rows (``Rows``: where each row's values lie
in a zero-copy view of the buffers, indices mappings of ``shuffle`` / ``select`` / ``filter``
followed) and hands them to a layout: padded (``batching.assemble``) or flat
(``packing.flatten_rows``). ``BlockFetcher.__getitems__(blocks)`` cuts token blocks from every row
laid end to end (``packing.cut_blocks``). Both hold the ``datasets.Dataset`` (which pickles by file
path when memory-mapped) and build their numpy views lazily in each process, so they go to spawned
workers as they are. The order they are asked for in is ``sampling.py``'s.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from datasets import Dataset

from ._compat import indices_mapping
from .layouts import Blocks, Layout, Padded
from .masking import MaskedLM
from .packing import BlockIndex
from .plan import DtypePlan
from .ragged import ArrowColumn, Rows, row_lengths

__all__ = ["BatchFetcher", "BlockFetcher"]


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
