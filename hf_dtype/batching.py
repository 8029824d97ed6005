"""Padded batches, vectorized: the one kernel behind ``dataloader`` (rows gathered from Arrow) and ``PaddingCollator`` (rows given).

Per column one step: lengths → mask → gather → fill, with numpy, whatever the batch size, and
memory in proportion to the batch. A batch comes out in the storage dtypes (``widen="device"``:
uint16 ids, int8 labels, bool masks, so fewer bytes cross to the device; ``plan.widen(batch)``
there) or in the compute dtypes (``widen="cpu"``, equal to ``plan.widen`` of the device batch).
Derived columns are rebuilt from their source column's row lengths; ``label`` / ``label_ids``
become ``labels``, as ``DataCollatorWithPadding`` renames them, so the model computes its loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from .convert import column_spec, derived_values, served
from .plan import LABEL_ALIASES, DtypePlan
from .ragged import RowNames, Rows

__all__ = ["PADDING_SIDES", "WIDEN_MODES", "PadShape", "assemble", "length_mask", "pad_rows"]

PADDING_SIDES = ("right", "left")
WIDEN_MODES = ("device", "cpu")


_COLUMNS = np.arange(4096)


def _columns(width: int) -> np.ndarray:
    """``np.arange(width)``, a slice of a cached array."""
    global _COLUMNS
    if width > len(_COLUMNS):
        _COLUMNS = np.arange(max(width, 2 * len(_COLUMNS)))
    return _COLUMNS[:width]


def length_mask(lengths: np.ndarray, width: int, padding_side: str = "right") -> np.ndarray:
    """A ``(rows, width)`` bool array, True where a row has a value and False where it is padded."""
    columns = _columns(width)
    if padding_side == "left":
        return columns >= (width - lengths)[:, None]
    return columns < lengths[:, None]


def pad_rows(values: np.ndarray | Callable[[np.ndarray, np.ndarray | None], np.ndarray], starts: np.ndarray, lengths: np.ndarray,
             *, width: int, pad: int | float | np.ndarray, dtype: np.dtype, mask: np.ndarray, padding_side: str = "right",
             groups: np.ndarray | None = None, windows: np.ndarray | None = None, pad_cells: np.ndarray | None = None) -> np.ndarray:
    """Rows ``values[starts[i] : starts[i] + lengths[i]]`` in a new ``(rows, width)`` array filled with ``pad``.

    ``lengths`` are at most ``width`` and ``mask`` is their ``length_mask`` (``pad_cells`` its negation,
    where the caller has it); ``pad`` is a number or a 0-d array. ``values`` is a flat array, or a function
    ``take(positions, groups)`` for values that are not one array (bit-packed Arrow booleans, buffers in
    several memory blocks; ``groups`` names the block of each row). ``windows`` (``ArrowColumn.windows``)
    gathers whole rows at once.
    """
    if not len(lengths) or not width:
        return np.full((len(lengths), width), pad, dtype=dtype)
    pad_cells = ~mask if pad_cells is None else pad_cells
    origin = starts if padding_side == "right" else starts - (width - lengths)
    out = None
    if windows is not None and padding_side == "right":  # a negative (left) origin would wrap around: not here
        try:
            out = windows[origin, :width]
        except IndexError:  # a row within ``width`` of the end of the buffer
            out = None
    if out is None:
        if isinstance(values, np.ndarray):  # every cell gathered (pad cells clipped into range), then padded
            out = values.take(origin[:, None] + _columns(width), mode="clip")
        else:
            out = np.full((len(lengths), width), pad, dtype=dtype)
            out[mask] = values((origin[:, None] + _columns(width))[mask],
                               None if groups is None else np.broadcast_to(groups[:, None], mask.shape)[mask])
            return out
    out = out.astype(dtype, copy=False)
    np.copyto(out, pad, where=pad_cells)
    return out


class PadShape(Protocol):
    """What the kernel reads of a bound ``hd.Padded`` layout."""

    max_length: int | None
    padding_side: str
    widen: str

    def width(self, lengths: np.ndarray) -> int: ...


def assemble(columns: Mapping[str, Rows], plan: DtypePlan, names: Sequence[str], options: PadShape,
             rows: Sequence[int] | RowNames) -> dict[str, torch.Tensor]:
    """The padded batch of ``names`` (stored columns in ``columns``, derived ones rebuilt), per ``plan`` and the bound
    ``Padded`` layout ``options`` (its widths and side, and ``widen``).

    List columns whose rows have the same lengths (``input_ids`` and ``labels``) share one mask; ``rows``
    name the batch's rows (dataset row numbers) in range errors.
    """
    shapes: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []  # (lengths, width, mask, ~mask) of list columns so far
    lengths_of: dict[str, tuple[np.ndarray, int, np.ndarray, np.ndarray]] = {}
    out: dict[str, Any] = {}
    for name, column in columns.items():
        spec = column_spec(plan.columns.get(name), column.dtype)
        if column.starts is None:
            out[name] = served(column.values, spec, options.widen, name, rows)
            continue
        lengths = column.lengths
        assert lengths is not None  # a list column has lengths with its starts
        if options.max_length is not None and len(lengths) and lengths.max() > options.max_length:
            longest = int(lengths.argmax())
            raise ValueError(f"Row {rows[longest]} has {int(lengths[longest])} values in {name!r}, more than max_length="
                             f"{options.max_length}: max_length pads every batch to that width and truncates nothing (as the "
                             "transformers collators' padding='max_length'); truncate when tokenizing "
                             "(tokenizer(..., truncation=True, max_length=...)) or raise max_length.")
        for shape in shapes:
            if shape[0] is lengths or (shape[0] == lengths).all():
                break
        else:
            width = options.width(lengths)
            mask = length_mask(lengths, width, options.padding_side)
            shape = (lengths, width, mask, ~mask)
            shapes.append(shape)
        lengths_of[name] = shape
        padded = pad_rows(column.values, column.starts, lengths, width=shape[1], pad=spec.pad, dtype=spec.work, mask=shape[2],
                          padding_side=options.padding_side, groups=column.groups, pad_cells=shape[3],
                          windows=None if column.windows is None else column.windows(shape[1]))
        out[name] = served(padded, spec, options.widen, name, rows)
    batch = {}
    for name in names:
        if name in out:
            batch[name] = out[name]
            continue
        entry = plan.columns.get(name)
        if entry is not None and entry.derived is not None and entry.lengths_from in lengths_of:
            batch[name] = derived_values(entry, lengths_of[entry.lengths_from][2], stored=options.widen == "device")
    if "labels" not in batch:
        for alias in LABEL_ALIASES:
            if alias in batch:
                batch["labels"] = batch.pop(alias)
                break
    return batch
