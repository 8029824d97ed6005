"""Padded batches, vectorized: the one kernel behind ``dataloader`` (rows gathered from Arrow) and ``PaddingCollator`` (rows given).

Per column one step: lengths → mask → gather → fill, with numpy, whatever the batch size, and
memory in proportion to the batch. A batch comes out in the storage dtypes (``widen="device"``:
uint16 ids, int8 labels, bool masks, so fewer bytes cross to the device; ``plan.widen(batch)``
there) or in the compute dtypes (``widen="cpu"``, equal to ``plan.widen`` of the device batch).
Derived columns are rebuilt from their source column's row lengths; ``label`` / ``label_ids``
become ``labels``, as ``DataCollatorWithPadding`` renames them, so the model computes its loss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from .convert import narrows, numpy_dtype, to_compute, to_dtype
from .dtypes import dtype_name, float32_to_bfloat16_bits, integer_range
from .plan import LABEL_ALIASES, ColumnDtype, DtypePlan

if TYPE_CHECKING:
    from .layouts import Padded

__all__ = [
    "PADDING_SIDES", "WIDEN_MODES", "Batch", "RowNames", "Rows", "Spec", "assemble", "column_spec", "length_mask", "pad_rows", "served",
]

PADDING_SIDES = ("right", "left")
WIDEN_MODES = ("device", "cpu")


class Batch(dict):
    """A batch: a dict of tensors that knows its plan, so ``batch.to(device)`` moves it and widens it there.

    ``to`` changes the batch in place and returns it, as ``transformers``' ``BatchEncoding.to`` does
    (``accelerate``'s ``complete_nlp_example`` calls ``batch.to(device)`` without using the result),
    and ``accelerate``'s device placement calls it too: the storage bytes cross to the device, and
    the model gets its compute dtypes there.
    """

    def __init__(self, *args: Any, plan: DtypePlan | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan

    def to(self, device: Any, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device`` and widen the planned ones to their compute dtypes there."""
        moved = {name: value.to(device, non_blocking=non_blocking) if torch.is_tensor(value) else value for name, value in self.items()}
        self.update(moved if self.plan is None else self.plan.widen(moved, non_blocking=non_blocking))
        return self

    def __reduce__(self) -> tuple:
        return (_rebuild_batch, (dict(self), self.plan))


def _rebuild_batch(items: dict[str, Any], plan: DtypePlan | None) -> Batch:
    return Batch(items, plan=plan)


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
             *, width: int, pad: int | float, dtype: np.dtype, mask: np.ndarray, padding_side: str = "right",
             groups: np.ndarray | None = None, windows: np.ndarray | None = None, pad_cells: np.ndarray | None = None) -> np.ndarray:
    """Rows ``values[starts[i] : starts[i] + lengths[i]]`` in a new ``(rows, width)`` array filled with ``pad``.

    ``lengths`` are at most ``width`` and ``mask`` is their ``length_mask`` (``pad_cells`` its negation,
    where the caller has it). ``values`` is a flat array, or a function ``take(positions, groups)``
    for values that are not one array (bit-packed Arrow booleans, buffers in several memory blocks;
    ``groups`` names the block of each row). ``windows`` (``ArrowColumn.windows``) gathers whole rows at once.
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
    if out is None and isinstance(values, np.ndarray):  # every cell gathered (pad cells clipped into range), then padded
        out = values.take(origin[:, None] + _columns(width), mode="clip")
    if out is None:
        out = np.full((len(lengths), width), pad, dtype=dtype)
        out[mask] = values((origin[:, None] + _columns(width))[mask],
                           None if groups is None else np.broadcast_to(groups[:, None], mask.shape)[mask])
        return out
    out = out.astype(dtype, copy=False)
    np.copyto(out, pad, where=pad_cells)
    return out


class RowNames:
    """How a range error names a row of a batch (``"3 of the batch"``, ``"3 (block 17)"``), made only when one is needed."""

    def __init__(self, template: str, keys: Sequence[Any] | None = None) -> None:
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


class Spec(NamedTuple):
    """How one column of a batch is padded and served."""

    entry: ColumnDtype
    pad: np.ndarray  # a 0-d array of ``work`` (numpy fills from it faster than from a scalar)
    work: np.dtype  # the dtype it is padded in
    stored: bool  # the padded array is already in the storage dtype (``widen="device"`` serves it as is)
    compute: np.dtype | None  # ``widen="cpu"`` serves ``astype(compute)`` (None: through ``to_compute``, which checks)


@functools.cache
def column_spec(entry: ColumnDtype | None, dtype: np.dtype) -> Spec:
    """The spec of a column read in ``dtype``: padded in that dtype where it holds the pad; an unplanned column is served
    as ``torch.tensor`` would serve it."""
    entry = entry or ColumnDtype(storage=dtype_name(dtype))
    pad = entry.pad_value
    if entry.storage == "bfloat16" and dtype == np.uint16:
        return Spec(entry, float32_to_bfloat16_bits(np.array([pad], dtype=np.float32)).reshape(()), dtype, False, None)
    low, high = integer_range(dtype_name(dtype)) if dtype.kind != "f" else (-np.inf, np.inf)
    fits = dtype.kind == "f" or (float(pad).is_integer() and low <= pad <= high)
    work = dtype if fits else np.dtype(np.float64 if isinstance(pad, float) else np.int64)
    plain = entry.served_dtype != "bfloat16" and not narrows(dtype_name(work), entry.served_dtype)
    return Spec(entry, np.asarray(pad).astype(work), work, dtype_name(work) == entry.storage,
                 numpy_dtype(entry.served_dtype) if plain else None)


def served(values: np.ndarray, spec: Spec, widen: str, column: str, rows: Sequence[int] | RowNames) -> torch.Tensor:
    """A padded column as a tensor in its compute dtype (``widen="cpu"``) or its storage dtype (bfloat16 bits viewed);
    ``rows`` name the batch's rows in a range error."""
    entry = spec.entry
    if widen == "cpu" and spec.compute is not None:
        return torch.from_numpy(values.astype(spec.compute, copy=False))
    if widen == "device" and spec.stored:
        return torch.from_numpy(values)
    if widen == "device" and entry.storage == "bfloat16" and values.dtype == np.uint16:
        return torch.from_numpy(values).view(torch.bfloat16)
    width = values.shape[1] if values.ndim == 2 else 1
    options = dict(owned=True, column=column, row_of=lambda i: rows[i // width])
    if widen == "cpu":
        return to_compute(values, entry, "torch", **options)
    return to_dtype(values, entry.storage or "bool", "torch", storage=True, **options)


def assemble(columns: Mapping[str, Rows], plan: DtypePlan, names: Sequence[str], options: Padded,
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
            mask = lengths_of[entry.lengths_from][2]
            dtype = np.dtype(bool) if options.widen == "device" else numpy_dtype(entry.served_dtype)
            values = mask.astype(dtype) if entry.derived == "ones" else np.zeros(mask.shape, dtype=dtype)
            tensor = torch.from_numpy(values)
            batch[name] = tensor.to(torch.bfloat16) if options.widen == "cpu" and entry.served_dtype == "bfloat16" else tensor
    if "labels" not in batch:
        for alias in LABEL_ALIASES:
            if alias in batch:
                batch["labels"] = batch.pop(alias)
                break
    return batch
