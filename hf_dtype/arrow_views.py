"""Zero-copy numpy views of a chunked Arrow column, to gather rows from many chunks in one numpy step.

A memory-mapped dataset is one file of many record batches: every chunk's buffers are slices of
the same memory map. Each buffer is therefore seen through one numpy view of the memory block it
lies in (its root ``pa.Buffer``), at a known element offset, so rows from any chunks are gathered
with one fancy index and nothing is copied or read ahead. Chunks that live in separate blocks (an
in-memory table, ``concatenate_datasets`` of several files) get one view per block; a gather then
loops over the blocks a batch touches, not over chunks or rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import as_strided

from .casting import is_list_type

__all__ = ["ArrowColumn", "ChunkLayout", "FlatBuffers", "column_kind"]


def _root(buffer: pa.Buffer) -> pa.Buffer:
    while buffer.parent is not None:
        buffer = buffer.parent
    return buffer


class FlatBuffers:
    """One buffer per chunk, seen as numpy views of the memory blocks they lie in.

    Args:
        buffers: the data buffer of each chunk (``None`` for an empty chunk).
        firsts: the index, within its buffer, of each chunk's first element (the Arrow offset).
        dtype: the element type; ``bool`` buffers are Arrow bitmaps, addressed in bits.

    ``base[c]`` is the position of chunk ``c``'s element 0 in view ``group[c]``.
    """

    def __init__(self, buffers: list[pa.Buffer | None], firsts: list[int], dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.bits = self.dtype == np.bool_
        self.views: list[np.ndarray] = []
        self.base = np.zeros(len(buffers), dtype=np.int64)
        self.group = np.zeros(len(buffers), dtype=np.int64)
        blocks: dict[tuple[int, int], int] = {}
        size = self.dtype.itemsize
        for chunk, (buffer, first) in enumerate(zip(buffers, firsts, strict=True)):
            if buffer is None or buffer.size == 0:
                continue
            root = _root(buffer)
            delta = buffer.address - root.address
            if not self.bits and delta % size:
                root, delta = buffer, 0  # a misaligned slice gets a view of its own
            key = (root.address, root.size)
            if key not in blocks:
                blocks[key] = len(self.views)
                view_dtype = np.uint8 if self.bits else self.dtype
                self.views.append(np.frombuffer(root, dtype=view_dtype, count=root.size // np.dtype(view_dtype).itemsize))
            self.group[chunk] = blocks[key]
            self.base[chunk] = delta * 8 + first if self.bits else delta // size + first
        if not self.views:
            self.views.append(np.zeros(0, dtype=np.uint8 if self.bits else self.dtype))

    def _take_one(self, view: np.ndarray, positions: np.ndarray) -> np.ndarray:
        if self.bits:
            return ((view[positions >> 3] >> (positions & 7).astype(np.uint8)) & 1).astype(np.bool_)
        return view[positions]

    def take(self, positions: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """The elements at ``positions``; ``groups`` (same shape) names each one's view when there are several."""
        if len(self.views) == 1:
            return self._take_one(self.views[0], positions)
        # One stable sort of the groups, then one gather per group on its slice of the order: no np.unique and
        # no full-size boolean masks per group.
        flat_positions, flat_groups = positions.ravel(), np.asarray(groups).ravel()
        counts = np.bincount(flat_groups, minlength=len(self.views))
        present = np.flatnonzero(counts)
        if len(present) == 1:
            return self._take_one(self.views[present[0]], positions)
        order = np.argsort(flat_groups, kind="stable")
        out = np.empty(flat_positions.shape, dtype=self.dtype)
        start = 0
        for group in present.tolist():
            chosen = order[start:start + counts[group]]
            out[chosen] = self._take_one(self.views[group], flat_positions[chosen])
            start += counts[group]
        return out.reshape(positions.shape)


def _numeric_dtype(arrow_type: pa.DataType) -> np.dtype | None:
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return np.dtype(arrow_type.to_pandas_dtype())
    return None


def column_kind(arrow_type: pa.DataType) -> str | None:
    """``"scalar"`` or ``"list"`` for a numeric column or a list of numbers, ``"nested"`` for lists of lists, else None."""
    if is_list_type(arrow_type):
        if is_list_type(arrow_type.value_type):
            return "nested"
        return "list" if _numeric_dtype(arrow_type.value_type) is not None else None
    return "scalar" if _numeric_dtype(arrow_type) is not None else None


class ChunkLayout:
    """Where each chunk of a column starts, to find a row position's chunk; shared by columns chunked alike."""

    def __init__(self, lengths: list[int]) -> None:
        self.starts = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.starts[1:])
        self._ends = self.starts[1:]

    def same(self, lengths: list[int]) -> bool:
        return len(lengths) + 1 == len(self.starts) and bool((np.diff(self.starts) == lengths).all())

    def locate(self, rows: np.ndarray) -> np.ndarray | None:
        """The chunk of each row position; None when there is only one chunk."""
        if len(self._ends) <= 1:
            return None
        return self._ends.searchsorted(rows, side="right")


class ArrowColumn:
    """A numeric column, or a column of lists of numbers, of a chunked Arrow table, read by row positions.

    Rows are first located (``layout.locate``), once per batch for all columns that share a layout;
    ``spans`` and ``scalars`` then take the row positions and their chunks (None for one chunk).
    """

    def __init__(self, name: str, column: pa.ChunkedArray, layout: ChunkLayout | None = None) -> None:
        kind = column_kind(column.type)
        if kind == "nested":
            raise ValueError(f"Column {name!r} holds lists of lists ({column.type}); only one level of lists can be padded into a batch.")
        if kind is None:
            raise ValueError(f"Column {name!r} holds {column.type} values; only numbers and lists of numbers can be batched.")
        chunks = column.chunks or [pa.array([], type=column.type)]
        lengths = [len(chunk) for chunk in chunks]
        self.name = name
        self.layout = layout if layout is not None and layout.same(lengths) else ChunkLayout(lengths)
        self.is_list = kind == "list"
        self.fixed_size = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        leaves = [chunk.values if self.is_list else chunk for chunk in chunks]
        self._check_no_nulls(chunks, leaves)
        self.dtype = _numeric_dtype(column.type.value_type if self.is_list else column.type)
        self.values = FlatBuffers([leaf.buffers()[1] for leaf in leaves], [leaf.offset for leaf in leaves], self.dtype)
        first_rows = self.layout.starts[:-1]
        row_offsets = np.array([chunk.offset for chunk in chunks], dtype=np.int64)
        self.offsets = None
        self._pairs = None  # (first, stop) offsets of every row, as one strided view, when there is one offsets view
        if self.is_list and self.fixed_size is None:
            offset_type = np.int64 if pa.types.is_large_list(column.type) else np.int32
            self.offsets = FlatBuffers([chunk.buffers()[1] for chunk in chunks], row_offsets.tolist(), offset_type)
            shift = self.offsets.base - first_rows
            if len(self.offsets.views) == 1 and len(self.offsets.views[0]) > 1:
                view = self.offsets.views[0]
                self._pairs = as_strided(view, shape=(len(view) - 1, 2), strides=(view.strides[0],) * 2, writeable=False)
        else:
            shift = (self.values.base if not self.is_list else row_offsets) - first_rows
        # Per chunk c: row position r is entry r + shift[c] of its offsets (or values, or fixed-size rows),
        # and its values start at base[c] + that row's first offset. One gather of both per batch.
        self._shift_base = np.stack([shift, self.values.base], axis=1)
        self._one_chunk = tuple(self._shift_base[0].tolist())  # used when there is a single chunk

    def _check_no_nulls(self, chunks: list[pa.Array], leaves: list[pa.Array]) -> None:
        for kind, arrays in (("row", chunks), ("value", leaves)):
            if any(array.null_count for array in arrays):
                raise ValueError(f"Column {self.name!r} has a null {kind}; fill or drop nulls before batching.")

    def _locate(self, rows: np.ndarray, chunk: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | int]:
        """Each row's entry index (see ``_shift_base``) and its chunk's values base."""
        if chunk is None:
            shift, base = self._one_chunk
            return (rows + shift if shift else rows), base
        shift_base = self._shift_base[chunk]
        return rows + shift_base[:, 0], shift_base[:, 1]

    def spans(self, rows: np.ndarray, chunk: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """For list rows: where each row's values start (in its view), how many there are, and which view holds
        them (None when there is one view)."""
        at, base = self._locate(rows, chunk)
        groups = None if len(self.values.views) == 1 else self.values.group[chunk]
        if self.fixed_size is not None:
            return base + at * self.fixed_size, np.full(len(rows), self.fixed_size, dtype=np.int64), groups
        if self._pairs is not None:
            pairs = self._pairs[at]
            first, stop = pairs[:, 0], pairs[:, 1]
        else:
            where = self.offsets.group[chunk]
            first, stop = self.offsets.take(at, where), self.offsets.take(at + 1, where)
        return (first + base if chunk is not None or base else first), stop - first, groups

    def scalars(self, rows: np.ndarray, chunk: np.ndarray | None) -> np.ndarray:
        """For a scalar column: the value of each row."""
        at, _ = self._locate(rows, chunk)
        return self.values.take(at, None if chunk is None else self.values.group[chunk])

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """For a scalar column: the values at row ``positions``."""
        return self.scalars(positions, self.layout.locate(positions))

    def twin_shift(self, other: ArrowColumn) -> np.ndarray | None:
        """Per chunk, how far this column's values lie from ``other``'s, when every row has the same length in
        both (``input_ids`` and ``labels``): then a row's start here is its start in ``other`` plus this shift,
        and a batch reads the offsets once. None when they are not such twins. Reads both offsets once."""
        if (other.layout is not self.layout or self._pairs is None or other._pairs is None
                or len(self.values.views) > 1 or len(other.values.views) > 1):
            return None
        shift = np.zeros(len(self._shift_base), dtype=np.int64)
        for chunk, rows in enumerate(np.diff(self.layout.starts).tolist()):
            if not rows:
                continue
            mine = self.offsets.views[0][self.offsets.base[chunk]:self.offsets.base[chunk] + rows + 1]
            theirs = other.offsets.views[0][other.offsets.base[chunk]:other.offsets.base[chunk] + rows + 1]
            if not np.array_equal(mine - mine[0], theirs - theirs[0]):
                return None
            shift[chunk] = (self.values.base[chunk] + mine[0]) - (other.values.base[chunk] + theirs[0])
        return shift
