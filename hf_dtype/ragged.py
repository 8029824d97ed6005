"""Ragged rows, from Arrow or from Python: list levels, offsets, lengths, starts, and zero-copy views to gather rows from.

A memory-mapped dataset is one file of many record batches, so every chunk's buffers are slices of
one memory map. ``ArrowColumn`` sees each buffer through one numpy view of the memory block it lies
in (its root ``pa.Buffer``), so rows from any chunks are gathered with one fancy index and nothing
is copied or read ahead. Chunks that live in separate blocks (an in-memory table, several files)
get one view per block. Views are read-only and never leave the library: a gather copies.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import torch
from numpy.lib.stride_tricks import as_strided

from .dtypes import canonical_dtype, to_torch

__all__ = [
    "ArrowColumn", "RowNames", "Rows", "arrow_leaf_dtype", "flatten_leaf", "is_list_type", "leaf_row", "offsets_of", "positions_in_rows",
    "row_lengths", "rows_of_table", "rows_of_values",
]


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """Where each of rows of ``lengths`` starts when they are laid end to end, and where the last one stops (``len + 1`` int64)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def positions_in_rows(lengths: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """For every value of rows of ``lengths`` laid end to end, its place in its row: ``0, 1, .., n-1`` per row."""
    offsets = offsets_of(lengths) if offsets is None else offsets
    return np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)


def is_list_type(arrow_type: pa.DataType) -> bool:
    """Whether ``arrow_type`` is a list, large list or fixed-size list."""
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)


def arrow_leaf_dtype(arrow_type: pa.DataType) -> str | None:
    """The canonical name of the numeric leaf of ``arrow_type`` (lists unwrapped), or None if it is not numeric."""
    while is_list_type(arrow_type):
        arrow_type = arrow_type.value_type
    return canonical_dtype(arrow_type) if _is_numeric(arrow_type) else None


def list_depth(arrow_type: pa.DataType) -> int:
    """How many list levels wrap the leaf of ``arrow_type``."""
    depth = 0
    while is_list_type(arrow_type):
        arrow_type, depth = arrow_type.value_type, depth + 1
    return depth


def flatten_leaf(array: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, list[np.ndarray]]:
    """The leaf values of ``array`` (a zero-copy slice) and, per list level from the outside in, offsets from 0."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    levels = []
    while is_list_type(array.type):
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
            levels.append(np.arange(len(array) + 1, dtype=np.int64) * size)
            array = array.values.slice(array.offset * size, len(array) * size)
        else:
            offsets = array.offsets.to_numpy()
            levels.append(offsets - offsets[0])
            array = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return array, levels


def leaf_row(leaf_index: int, levels: Sequence[np.ndarray]) -> int:
    """The row that holds leaf value number ``leaf_index``."""
    index = leaf_index
    for offsets in reversed(levels):
        index = int(np.searchsorted(offsets, index, side="right")) - 1
    return index


def row_lengths(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The length of each row of a list column (1 for a column of numbers)."""
    _, levels = flatten_leaf(array)
    return np.diff(levels[0]) if levels else np.ones(len(array), dtype=np.int64)


def _root(buffer: pa.Buffer) -> pa.Buffer:
    while buffer.parent is not None:
        buffer = buffer.parent
    return buffer


class _Views:
    """The data buffer of each chunk, seen through one numpy view per memory block; ``bool`` buffers are bitmaps.

    ``base[c]`` is the position of chunk ``c``'s element 0 in view ``group[c]``.
    """

    def __init__(self, buffers: list[pa.Buffer | None], firsts: list[int], dtype: npt.DTypeLike) -> None:
        self.dtype = np.dtype(dtype)
        self.bits = self.dtype == np.bool_
        self.views: list[np.ndarray] = []
        self.base = np.zeros(len(buffers), dtype=np.int64)
        self.group = np.zeros(len(buffers), dtype=np.int64)
        view_dtype = np.dtype(np.uint8) if self.bits else self.dtype
        blocks: dict[tuple[int, int], int] = {}
        for chunk, (buffer, first) in enumerate(zip(buffers, firsts, strict=True)):
            if buffer is None or buffer.size == 0:
                continue
            root = _root(buffer)
            delta = buffer.address - root.address
            if not self.bits and delta % self.dtype.itemsize:
                root, delta = buffer, 0  # a misaligned slice gets a view of its own
            key = (root.address, root.size)
            if key not in blocks:
                blocks[key] = len(self.views)
                self.views.append(np.frombuffer(root, dtype=view_dtype, count=root.size // view_dtype.itemsize))
            self.group[chunk] = blocks[key]
            self.base[chunk] = delta * 8 + first if self.bits else delta // self.dtype.itemsize + first
        if not self.views:
            self.views.append(np.zeros(0, dtype=view_dtype))

    def _take(self, view: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.bits:
            return ((view[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1).astype(np.bool_)
        return view[positions]

    def take(self, positions: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """A copy of the elements at ``positions``; ``groups`` (same shape) names each one's view when there are several."""
        if len(self.views) == 1 or groups is None:
            return self._take(self.views[0], positions)
        # One stable sort by view, then one gather per view on its slice of the order: no np.unique, no mask per view.
        flat_positions, flat_groups = positions.ravel(), np.asarray(groups).ravel()
        counts = np.bincount(flat_groups, minlength=len(self.views))
        present = np.flatnonzero(counts)
        if len(present) == 1:
            return self._take(self.views[present[0]], positions)
        order = np.argsort(flat_groups, kind="stable")
        out = np.empty(flat_positions.shape, dtype=self.dtype)
        start = 0
        for group in present.tolist():
            chosen = order[start:start + counts[group]]
            out[chosen] = self._take(self.views[group], flat_positions[chosen])
            start += counts[group]
        return out.reshape(positions.shape)


class ArrowColumn:
    """A numeric column, or a column of lists of numbers, of a chunked Arrow table, read by row positions."""

    def __init__(self, name: str, column: pa.ChunkedArray) -> None:
        depth = list_depth(column.type)
        if depth > 1:
            raise ValueError(f"Column {name!r} holds lists of lists ({column.type}); only one level of lists can be batched.")
        if arrow_leaf_dtype(column.type) is None:
            raise ValueError(f"Column {name!r} holds {column.type} values; only numbers and lists of numbers can be batched.")
        chunks = column.chunks or [pa.array([], type=column.type)]
        self.name = name
        self.is_list = depth == 1
        self.fixed_size = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        leaves = [chunk.values if self.is_list else chunk for chunk in chunks]
        for kind, arrays in (("row", chunks), ("value", leaves)):
            if any(array.null_count for array in arrays):
                raise ValueError(f"Column {name!r} has a null {kind}; fill or drop nulls before batching.")
        self.dtype = np.dtype(leaves[0].type.to_pandas_dtype())
        self.values = _Views([leaf.buffers()[1] for leaf in leaves], [leaf.offset for leaf in leaves], self.dtype)
        self.starts = offsets_of(np.array([len(chunk) for chunk in chunks], dtype=np.int64))
        row_offsets = np.array([chunk.offset for chunk in chunks], dtype=np.int64)
        self.offsets: _Views | None = None
        self._pairs: np.ndarray | None = None  # every row's (first, stop) offsets as one strided view, when the offsets are one view
        self._windows: np.ndarray | None = None  # runs of consecutive values as one strided view, see ``windows``
        self._window = 0
        if self.is_list and self.fixed_size is None:
            offset_type = np.int64 if pa.types.is_large_list(column.type) else np.int32
            self.offsets = _Views([chunk.buffers()[1] for chunk in chunks], row_offsets.tolist(), offset_type)
            self.shift = self.offsets.base - self.starts[:-1]
            view = self.offsets.views[0]
            if len(self.offsets.views) == 1 and len(view) > 1:
                self._pairs = as_strided(view, shape=(len(view) - 1, 2), strides=(view.strides[0],) * 2, writeable=False)
        else:
            self.shift = (self.values.base if not self.is_list else row_offsets) - self.starts[:-1]
        # Per chunk c: row position r is entry r + shift[c] of its offsets (or of its values, or of its fixed-size
        # rows), and its values start at values.base[c] plus that row's first offset.

    def locate(self, rows: np.ndarray) -> np.ndarray | None:
        """The chunk of each row position; None when there is only one chunk."""
        return None if len(self.starts) <= 2 else self.starts[1:-1].searchsorted(rows, side="right")

    def _at(self, rows: np.ndarray, chunk: np.ndarray | None) -> np.ndarray:
        return rows + (self.shift[0] if chunk is None else self.shift[chunk])

    def spans(self, rows: np.ndarray, chunk: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """For list rows: where each row's values start in its view, how many there are, and which view (None: one)."""
        at = self._at(rows, chunk)
        base = self.values.base[0] if chunk is None else self.values.base[chunk]
        groups = None if len(self.values.views) == 1 else self.values.group[0 if chunk is None else chunk]
        if self.fixed_size is not None:
            return base + at * self.fixed_size, np.full(len(rows), self.fixed_size, dtype=np.int64), groups
        if self._pairs is not None:
            pairs = self._pairs[at]
            first, stop = pairs[:, 0], pairs[:, 1]
        else:
            offsets = self.offsets
            assert offsets is not None  # a list column of variable-size rows has offsets
            where = offsets.group[chunk]
            first, stop = offsets.take(at, where).astype(np.int64), offsets.take(at + 1, where)
        return first + base, stop - first, groups

    def shift_from(self, other: ArrowColumn) -> np.ndarray | None:
        """Per chunk, how far this column's values lie from ``other``'s when every row has the same length in both
        (``input_ids`` and ``labels``): a batch then reads the offsets once. None when they differ. Reads both once."""
        if self._pairs is None or other._pairs is None or len(self.values.views) > 1 or len(other.values.views) > 1 \
                or not np.array_equal(self.starts, other.starts):
            return None
        mine, theirs = self.offsets, other.offsets
        assert mine is not None and theirs is not None  # pairs are made from offsets
        shift = np.zeros(len(self.starts) - 1, dtype=np.int64)
        for chunk, rows in enumerate(np.diff(self.starts).tolist()):
            a, b = mine.views[0][mine.base[chunk]:][:rows + 1], theirs.views[0][theirs.base[chunk]:][:rows + 1]
            if rows and not np.array_equal(a - a[0], b - b[0]):
                return None
            if rows:
                shift[chunk] = (self.values.base[chunk] + a[0]) - (other.values.base[chunk] + b[0])
        return shift

    def windows(self, width: int) -> np.ndarray | None:
        """Every run of ``width`` or more consecutive values as rows of one read-only strided view (no copy), so a batch
        of padded rows is one gather of rows; None where the values are bits or lie in several views."""
        if width > self._window:
            view = self.values.views[0]
            self._window = max(width, 64, 2 * self._window)
            fits = len(self.values.views) == 1 and not self.values.bits and self._window <= len(view)
            self._windows = as_strided(view, shape=(len(view) - self._window + 1, self._window), strides=(view.strides[0],) * 2,
                                       writeable=False) if fits else None
        return self._windows

    def scalars(self, rows: np.ndarray, chunk: np.ndarray | None) -> np.ndarray:
        """For a column of numbers: a copy of the value of each row."""
        groups = None if len(self.values.views) == 1 else self.values.group[0 if chunk is None else chunk]
        return self.values.take(self._at(rows, chunk), groups)


class RowNames:
    """How a range error names a row of a batch (``"3 of the batch"``, ``"3 (block 17)"``), made only when one is needed."""

    def __init__(self, template: str, keys: Sequence[Any] | np.ndarray | None = None) -> None:
        self.template, self.keys = template, keys

    def __getitem__(self, i: int) -> str:
        return self.template.format(i=i, key=None if self.keys is None else self.keys[i])


@dataclass
class Rows:
    """One column of a batch before padding: a flat source and each row's place in it, or one number per row.

    ``values`` is a flat array or a ``take(positions, groups)`` function; ``starts`` is None for a
    column of numbers (``values`` is then the batch). ``dtype`` is the dtype of the values.
    """

    values: Any
    dtype: np.dtype
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None
    groups: np.ndarray | None = None
    windows: Callable[[int], np.ndarray | None] | None = None


def rows_of_table(table: pa.Table, names: Sequence[str]) -> dict[str, Rows]:
    """The columns ``names`` of a record batch as ``Rows``: list values are read-only views of its buffers (the layouts
    gather from them), numbers a copy (a batch of numbers is served as it is)."""
    columns = {}
    for name in names:
        leaf, levels = flatten_leaf(table.column(name))
        values = leaf.to_numpy(zero_copy_only=False)
        if not levels:
            columns[name] = Rows(np.array(values), values.dtype)
        else:
            offsets = levels[0].astype(np.int64)
            columns[name] = Rows(values, values.dtype, offsets[:-1], np.diff(offsets))
    return columns


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):  # numpy has no bfloat16; float32 holds it exactly
        value = value.detach().cpu()
        return (value.float() if value.dtype == to_torch("bfloat16") else value).numpy()
    return np.asarray(value)


def rows_of_values(name: str, values: list[Any]) -> Rows:
    """A column of given rows as ``Rows``: the values end to end and each row's length (numbers: one per row)."""
    nested = ValueError(f"Column {name!r}: rows must all be numbers or all be flat lists of numbers (lists of lists cannot be padded).")
    if all(type(value) is list for value in values):  # the common case, without one numpy array per row
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        try:
            flat = np.array(list(itertools.chain.from_iterable(values)))
        except ValueError:
            raise nested from None
        if flat.ndim != 1:
            raise nested
        flat = flat if flat.size else flat.astype(np.int64)
    else:
        arrays = [_as_numpy(value) for value in values]
        depths = {array.ndim for array in arrays}
        if len(depths) > 1 or max(depths) > 1:
            raise nested
        if depths == {0}:
            flat, lengths = np.stack(arrays), None
        else:
            lengths = np.fromiter((len(array) for array in arrays), dtype=np.int64, count=len(arrays))
            filled = [array for array in arrays if array.size]
            flat = np.concatenate(filled) if filled else np.zeros(0, dtype=np.int64)
    if flat.dtype.kind not in "biuf":
        raise ValueError(f"Column {name!r} holds {flat.dtype} values; only numbers and lists of numbers can be padded.")
    if lengths is None:
        return Rows(flat, flat.dtype)
    return Rows(flat, flat.dtype, offsets_of(lengths)[:-1], lengths)
