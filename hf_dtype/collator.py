"""``PaddingCollator``: the padding kernel of ``batching`` for a row-wise ``DataLoader`` (rows given as lists, arrays or tensors).

A vectorized drop-in for ``DataCollatorWithPadding`` / ``DataCollatorForTokenClassification``: the
rows' values are laid end to end once, then padded per column as ``hd.dataloader`` pads.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .batching import WIDEN_MODES, RowNames, Rows
from .dtypes import to_torch
from .layouts import Padded
from .plan import DtypePlan, as_plan

__all__ = ["PaddingCollator", "pad_batch"]


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):  # numpy has no bfloat16; float32 holds it exactly
        value = value.detach().cpu()
        return (value.float() if value.dtype == to_torch("bfloat16") else value).numpy()
    return np.asarray(value)


def _rows_of(name: str, values: list[Any]) -> Rows:
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
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return Rows(flat, flat.dtype, starts, lengths)


def pad_batch(rows: Sequence[Mapping[str, Any]], plan: DtypePlan | Mapping, *, pad_to_multiple_of: int | None = None,
              max_length: int | None = None, padding_side: str = "right", widen: str = "cpu") -> dict[str, Any]:
    """Pad ``rows`` (dicts of lists, numpy arrays or tensors) into one batch of tensors, per the plan.

    List values are padded to the longest row (rounded up to ``pad_to_multiple_of``, or to
    ``max_length``) with their column's pad value; numbers become a 1-D tensor; derived columns missing
    from the rows are rebuilt from their source's row lengths; text stays a list. ``widen="cpu"`` gives
    the compute dtypes, ``"device"`` the storage dtypes (range-checked). ``label`` / ``label_ids`` become ``labels``.
    """
    return PaddingCollator(plan, pad_to_multiple_of=pad_to_multiple_of, max_length=max_length, padding_side=padding_side,
                           widen=widen)(rows)


class PaddingCollator:
    """A ``collate_fn`` for a row-wise ``DataLoader``: the ``Padded`` layout applied to rows given, a vectorized drop-in for
    ``DataCollatorWithPadding`` and ``DataCollatorForTokenClassification``, padding each column with its plan's pad value.

    Args:
        plan: the dtype plan (pad values, compute and storage dtypes, derived columns).
        pad_to_multiple_of, max_length, padding_side: as in ``hd.Padded`` (and the transformers collators).
        widen: ``"cpu"`` (default) for compute dtypes, ``"device"`` for storage dtypes.
    """

    def __init__(self, plan: DtypePlan | Mapping, *, pad_to_multiple_of: int | None = None, max_length: int | None = None,
                 padding_side: str = "right", widen: str = "cpu") -> None:
        if plan is None:
            raise ValueError("PaddingCollator needs a plan: a DtypePlan or its dict form (hd.plan_of(ds) reads a recorded one).")
        if widen not in WIDEN_MODES:
            raise ValueError(f"widen must be one of {WIDEN_MODES} ('device': storage dtypes, 'cpu': compute dtypes); got {widen!r}.")
        self.plan = as_plan(plan)
        self.layout = Padded(pad_to_multiple_of, max_length, padding_side)
        self.widen = widen

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            return {}
        names = list(rows[0])
        missing = next(((i, name) for i, row in enumerate(rows) for name in names if name not in row), None)
        if missing is not None:
            raise ValueError(f"Row {missing[0]} has no {missing[1]!r}; every row needs the keys of the first row {names}.")
        columns, text = {}, {}
        for name in names:
            values = [row[name] for row in rows]
            first = values[0]
            if isinstance(first, (str, bytes)) or (isinstance(first, (list, tuple)) and first and isinstance(first[0], str)):
                text[name] = values
            else:
                columns[name] = _rows_of(name, values)
        plan = self.plan.resolve([name for name, column in columns.items() if column.starts is not None])
        names = [*names, *(name for name in plan.derived if name not in names)]
        layout = self.layout.bind_rows(plan, columns, names, self.widen)
        return {**layout(columns, RowNames("{i} of the batch")), **text}

    def __repr__(self) -> str:
        return f"PaddingCollator({self.plan!r}, {self.layout!r}, widen={self.widen!r})"
