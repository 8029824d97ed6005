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

__all__ = ["ArrowColumn", "FlatBuffers"]


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
        out = np.empty(positions.shape, dtype=self.dtype)
        for group in np.unique(groups):
            chosen = groups == group
            out[chosen] = self._take_one(self.views[group], positions[chosen])
        return out


def _is_list(arrow_type: pa.DataType) -> bool:
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def _numeric_dtype(arrow_type: pa.DataType) -> np.dtype | None:
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return np.dtype(arrow_type.to_pandas_dtype())
    return None


def column_kind(arrow_type: pa.DataType) -> str | None:
    """``"scalar"`` or ``"list"`` for a numeric column or a list of numbers, ``"nested"`` for lists of lists, else None."""
    if _is_list(arrow_type):
        if _is_list(arrow_type.value_type):
            return "nested"
        return "list" if _numeric_dtype(arrow_type.value_type) is not None else None
    return "scalar" if _numeric_dtype(arrow_type) is not None else None


class ArrowColumn:
    """A numeric column, or a column of lists of numbers, of a chunked Arrow table, read by row positions."""

    def __init__(self, name: str, column: pa.ChunkedArray) -> None:
        kind = column_kind(column.type)
        if kind == "nested":
            raise ValueError(f"Column {name!r} holds lists of lists ({column.type}); only one level of lists can be padded into a batch.")
        if kind is None:
            raise ValueError(f"Column {name!r} holds {column.type} values; only numbers and lists of numbers can be batched.")
        chunks = column.chunks
        self.name = name
        self.is_list = kind == "list"
        self.fixed_size = column.type.list_size if pa.types.is_fixed_size_list(column.type) else None
        self.starts = np.concatenate([[0], np.cumsum([len(chunk) for chunk in chunks], dtype=np.int64)]).astype(np.int64)
        leaves = [chunk.values if self.is_list else chunk for chunk in chunks]
        self._check_no_nulls(chunks, leaves)
        self.dtype = _numeric_dtype(leaves[0].type if leaves else (column.type.value_type if self.is_list else column.type))
        self.values = FlatBuffers([leaf.buffers()[1] for leaf in leaves], [leaf.offset for leaf in leaves], self.dtype)
        self.row_offset = np.array([chunk.offset for chunk in chunks], dtype=np.int64)
        self.offsets = None
        if self.is_list and self.fixed_size is None:
            offset_type = np.int64 if pa.types.is_large_list(column.type) else np.int32
            self.offsets = FlatBuffers([chunk.buffers()[1] for chunk in chunks], [chunk.offset for chunk in chunks], offset_type)

    def _check_no_nulls(self, chunks: list[pa.Array], leaves: list[pa.Array]) -> None:
        for kind, arrays in (("row", chunks), ("value", leaves)):
            if any(array.null_count for array in arrays):
                raise ValueError(f"Column {self.name!r} has a null {kind}; fill or drop nulls before batching.")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The chunk of each row position and the row's index inside that chunk."""
        if len(self.starts) == 2:
            return np.zeros(len(rows), dtype=np.int64), rows
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        return chunk, rows - self.starts[chunk]

    def spans(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For list rows: where each row's values start (in its view), how many there are, and which view holds them."""
        chunk, local = self.locate(rows)
        if self.fixed_size is not None:
            starts = self.values.base[chunk] + (self.row_offset[chunk] + local) * self.fixed_size
            lengths = np.full(len(rows), self.fixed_size, dtype=np.int64)
        else:
            at = self.offsets.base[chunk] + local
            groups = self.offsets.group[chunk]
            bounds = self.offsets.take(np.concatenate([at, at + 1]), np.concatenate([groups, groups])).astype(np.int64)
            lengths = bounds[len(rows):] - bounds[:len(rows)]
            starts = self.values.base[chunk] + bounds[:len(rows)]
        return starts, lengths, self.values.group[chunk]

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return self.spans(rows)[1]

    def scalars(self, rows: np.ndarray) -> np.ndarray:
        """For a scalar column: the value of each row."""
        chunk, local = self.locate(rows)
        return self.values.take(self.values.base[chunk] + local, self.values.group[chunk])
