"""Packed and padding-free batches, vectorized: token blocks cut from the rows laid end to end, and rows flattened.

- ``blocks``: the rows' tokens read as one stream in row order (a separator after each row if
  given), cut into consecutive blocks of ``block_size``, the remainder dropped: the blocks of
  ``run_clm.py``'s ``group_texts`` over a whole split, gathered at batch time instead of stored.
  With ``group_rows=1000``, the blocks ``run_clm.py`` itself makes: it runs ``group_texts`` per
  ``map`` batch of 1,000 rows, so each group of rows is cut on its own and drops its own remainder.
  ``document_positions`` adds ``position_ids`` that restart at 0 at every row start inside a block
  (and at the block start), so transformers keeps documents from attending to each other.
- ``flat``: a batch of rows as one row of all their tokens, what ``DataCollatorWithFlattening``
  makes: ``input_ids``, ``labels`` (-100 at each row's first position), ``position_ids`` and, for
  flash attention, ``cu_seq_lens_q/k`` and ``max_length_q/k``.

Transformers finds packed sequences from ``position_ids`` only when no attention mask and no cache
are passed: a model with ``use_cache`` on (most configs' default, in training too) attends across
rows. Turn it off (``model.config.use_cache = False``) for these batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .convert import column_spec, served
from .dtypes import dtype_name, integer_range, smallest_integer_dtype
from .plan import ColumnDtype, DtypePlan
from .ragged import RowNames, Rows, offsets_of, positions_in_rows

__all__ = ["BlockIndex", "check_separator", "cut_blocks", "flatten_rows", "packed_plan"]

def packed_plan(plan: DtypePlan, token: str, labels: str | None, *, positions: int | None) -> DtypePlan:
    """The entries of a packed batch: ``input_ids``, ``labels`` and ``position_ids`` (below ``positions``: blocks; None: flat).

    Labels made from the ids of blocks are the ids themselves, in their dtype; flat labels and the
    labels of token classification hold -100 as well, so their storage is signed.
    """
    if labels is None and positions is not None:
        entries = {"input_ids": plan[token], "labels": plan[token]}
    else:
        entries = {"input_ids": plan[token], "labels": plan[labels if labels is not None else token].for_labels()}
    storage = smallest_integer_dtype(0, positions) if positions is not None and positions < 2**16 else "int32"
    entries["position_ids"] = ColumnDtype(storage=storage, compute="int64")
    return DtypePlan(entries)


def _gather(rows: Rows, positions: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    if isinstance(rows.values, np.ndarray):
        return rows.values[positions]
    return rows.values(positions, groups)


def _tensors(arrays: Mapping[str, np.ndarray], plan: DtypePlan, widen: str, rows: Sequence[Any] | RowNames) -> dict[str, torch.Tensor]:
    """The packed arrays (in their plan's storage dtypes) as tensors in storage or compute dtypes."""
    return {name: served(values, column_spec(plan[name], values.dtype), widen, name, rows) for name, values in arrays.items()}


def flatten_rows(columns: Mapping[str, Rows], plan: DtypePlan, *, token: str, labels: str | None, widen: str,
                 flash_attn_kwargs: bool, rows: Sequence[Any] | RowNames) -> dict[str, Any]:
    """The rows of ``columns[token]`` (and ``columns[labels]``) as one padding-free row; empty rows are left out."""
    ids = columns[token]
    assert ids.lengths is not None and ids.starts is not None  # the layout checked that the token column holds lists
    keep = ids.lengths > 0
    if not keep.any():
        raise ValueError(f"Every row of this batch has an empty {token!r}: a flat batch needs at least one token.")
    lengths = ids.lengths[keep]
    bounds = offsets_of(lengths)
    within = positions_in_rows(lengths, bounds)
    groups = None if ids.groups is None else np.repeat(ids.groups[keep], lengths)
    values = _gather(ids, np.repeat(ids.starts[keep], lengths) + within, groups)
    if labels is not None:
        source = columns[labels]
        if source.lengths is None or not np.array_equal(source.lengths, ids.lengths):
            raise ValueError(f"Column {labels!r} has rows of other lengths than {token!r}; flat batches need one label per token.")
        assert source.starts is not None  # set with the lengths
        label_groups = None if source.groups is None else np.repeat(source.groups[keep], lengths)
        label_values = _gather(source, np.repeat(source.starts[keep], lengths) + within, label_groups)
    else:
        label_values = values
    label_values = label_values.astype(np.dtype(plan["labels"].storage))  # a copy: the ids stay as they are
    label_values[bounds[:-1]] = -100
    out: dict[str, Any] = _tensors({"input_ids": values[None], "labels": label_values[None],
                                    "position_ids": within.astype(np.dtype(plan["position_ids"].storage))[None]}, plan, widen, rows)
    if flash_attn_kwargs:
        out["cu_seq_lens_q"] = torch.from_numpy(bounds.astype(np.int32))
        out["cu_seq_lens_k"] = torch.from_numpy(bounds.astype(np.int32))
        out["max_length_q"] = out["max_length_k"] = int(lengths.max())
    return out


class BlockIndex:
    """Where the blocks of a token stream lie: the rows' tokens end to end, with a separator after each if given.

    Args:
        lengths: the number of tokens of each row, in the order the rows are read.
        block_size: tokens per block; the remainder of the stream is dropped.
        separator: a token id appended after each row, or None.
        group_rows: cut each run of this many rows on its own, dropping each one's remainder (None: one run).
    """

    def __init__(self, lengths: np.ndarray, block_size: int, separator: int | None, group_rows: int | None = None) -> None:
        self.lengths = lengths
        self.block_size = block_size
        self.separator = separator
        self.stream = offsets_of(lengths + (separator is not None))  # where each row starts in the stream
        self.group_starts = self.stream[:-1][::group_rows] if group_rows else self.stream[:1]  # where each group starts
        per_group = np.diff(np.append(self.group_starts, self.stream[-1])) // block_size
        self.first_blocks = offsets_of(per_group)[:-1]  # each group's first block
        self.num_blocks = int(per_group.sum())

    def block_starts(self, blocks: np.ndarray) -> np.ndarray:
        """Where each of ``blocks`` starts in the stream."""
        blocks = blocks.astype(np.int64)
        if len(self.group_starts) == 1:
            return blocks * self.block_size
        group = self.first_blocks.searchsorted(blocks, side="right") - 1
        return self.group_starts[group] + (blocks - self.first_blocks[group]) * self.block_size

    def locate(self, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each token of ``blocks`` (shape ``(len(blocks), block_size)``): its row, its place in the row, and the
        place in the block where its row (or the block) starts.

        Two binary searches a block (its first and last token's rows), then the rows that start inside
        each block are counted in: no search per token.
        """
        size = self.block_size
        starts = self.block_starts(blocks)
        first = self.stream.searchsorted(starts, side="right") - 1
        last = self.stream.searchsorted(starts + size - 1, side="right") - 1
        inside = last - first  # rows (empty ones too) that start inside each block, after its first token
        block_of = np.repeat(np.arange(len(blocks)), inside)
        rank = positions_in_rows(inside)
        at = self.stream[np.repeat(first + 1, inside) + rank] - starts[block_of]
        marks = np.bincount(block_of * size + at, minlength=len(blocks) * size).reshape(len(blocks), size)
        row = first[:, None] + np.cumsum(marks, axis=1)
        stream = starts[:, None] + np.arange(size)
        return row, stream - self.stream[row], np.maximum(self.stream[row] - starts[:, None], 0)


def cut_blocks(index: BlockIndex, blocks: np.ndarray, columns: Mapping[str, Rows], plan: DtypePlan, *, token: str,
               labels: str | None, widen: str, document_positions: bool) -> dict[str, torch.Tensor]:
    """Blocks ``blocks`` of the stream; ``columns`` hold every row of the stream (``starts``/``lengths`` per row, in order)."""
    row, offset, segment = index.locate(blocks)
    separator = offset >= index.lengths[row] if index.separator is not None else None
    if separator is not None:
        offset = np.minimum(offset, np.maximum(index.lengths[row] - 1, 0))

    def read(name: str) -> np.ndarray:
        source = columns[name]
        assert source.starts is not None  # the layout checked that the token and label columns hold lists
        return _gather(source, source.starts[row] + offset, None if source.groups is None else source.groups[row])

    values = read(token)
    if labels is not None:
        label_values = read(labels).astype(np.dtype(plan["labels"].storage))
    else:
        label_values = values.astype(np.dtype(plan["labels"].storage))  # a copy, so that ids and labels are separate
    if separator is not None:
        values[separator] = index.separator
        label_values[separator] = -100 if labels is not None else index.separator
    arrays = {"input_ids": values, "labels": label_values}
    if document_positions:
        arrays["position_ids"] = (np.arange(index.block_size) - segment).astype(np.dtype(plan["position_ids"].storage))
    return _tensors(arrays, plan, widen, RowNames("{i} (block {key})", blocks))


def check_separator(separator: int | None, entry: ColumnDtype, token: str) -> None:
    """A separator must be a token id that the token column's storage dtype holds."""
    if separator is None:
        return
    if isinstance(separator, bool) or not isinstance(separator, (int, np.integer)):
        raise ValueError(f"separator_id must be a token id (an integer) or None; got {separator!r}.")
    low, high = integer_range(entry.storage if entry.storage != "bool" else dtype_name(np.dtype(bool)))
    if not low <= separator <= high:
        raise ValueError(f"separator_id {separator} is not a token id of {token!r}, whose storage dtype {entry.storage} holds "
                         f"[{low}, {high}]; expected an id of the vocabulary.")
