"""Checked casts of Arrow columns to storage dtypes, nested lists included: lossless or loud.

Every cast is checked before its result is used: integer ranges, ``NaN`` / ``inf`` / fractions into
integers, integers into floats (exact or an error), float overflow to ``inf`` on narrowing and,
where asked, float exactness. A failure raises a ``LossyCastError`` that names the column, the
value, its row, and what would hold it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .arrow import flatten_leaf, leaf_row
from .dtypes import LossyCastError, bfloat16_bits_to_float32, check_integers, is_float, narrow_float, to_arrow

__all__ = ["cast_array"]

_NULLS = "a planned column needs every value present (fill or drop nulls first)"


class _Rows:
    """Names the dataset row of a leaf value, for error messages."""

    def __init__(self, column: str, rows: Sequence[int], levels: list[np.ndarray]) -> None:
        self.column, self.rows, self.levels = column, rows, levels

    def __call__(self, leaf_index: int) -> int:
        return self.rows[leaf_row(leaf_index, self.levels)]

    def fail(self, leaf_index: int, message: str) -> None:
        raise LossyCastError(f"Column {self.column!r}, row {self(leaf_index)}: {message}")


def _check_present(array: pa.Array, leaf: pa.Array, where: _Rows) -> None:
    """Reject nulls and non-numeric leaves: a dtype plan has nothing to say about them."""
    if array.null_count:
        row = where.rows[int(np.argmax(~np.asarray(array.is_valid())))]
        raise LossyCastError(f"Column {where.column!r}, row {row}: the row is null; {_NULLS}.")
    if leaf.null_count:
        where.fail(int(np.argmax(~np.asarray(leaf.is_valid()))), f"a null value; {_NULLS}.")
    if not (pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type) or pa.types.is_boolean(leaf.type)):
        raise LossyCastError(f"Column {where.column!r} holds {leaf.type} values; a planned column must hold numbers (or lists of them).")


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


def _to_float(values: np.ndarray, target: str, exact: bool, where: _Rows) -> np.ndarray:
    stored, back = narrow_float(values, target)
    if values.dtype.kind != "f":  # integers into floats: every one must be exact
        bad = _first(back != values)
        if bad is not None:
            where.fail(bad, f"integer {values[bad]} is not exact in {target} (it becomes {back[bad]:.0f}); use a wider dtype.")
        return stored
    source = values.astype(np.float64)
    bad = _first(np.isinf(back) & np.isfinite(source))
    if bad is not None:
        wider = "float32" if target in ("float16", "bfloat16") else "float64"
        where.fail(bad, f"value {values[bad]} overflows {target} to inf; {wider} holds it.")
    if exact:
        differs = ~((back == source) | (np.isnan(back) & np.isnan(source)))
        if differs.any():
            with np.errstate(invalid="ignore"):
                error = np.where(differs, np.abs(back - source), 0.0)
            i = int(np.argmax(error))
            where.fail(i, f"{target} is not exact: value {values[i]} becomes {back[i]} (largest error {error[i]:.6g}).")
    return stored


def _to_integer(values: np.ndarray, target: str, pad: int | float | None, where: _Rows) -> np.ndarray:
    if values.dtype.kind == "f":
        bad = _first(~np.isfinite(values))
        if bad is not None:
            where.fail(bad, f"{values[bad]} cannot be stored in integer dtype {target}; fill or drop non-finite values first.")
        bad = _first(values != np.round(values))
        if bad is not None:
            where.fail(bad, f"{values[bad]} has a fraction, so integer dtype {target} cannot hold it; use a float dtype.")
    check_integers(values, target, column=where.column, row_of=where, pad=None if pad is None else int(pad))
    return values.astype(target)


def cast_array(
    array: pa.Array | pa.ChunkedArray,
    target: str,
    *,
    column: str,
    source_bfloat16: bool = False,
    pad: int | float | None = None,
    exact: bool = False,
    rows: Sequence[int] | None = None,
) -> pa.Array:
    """``array`` cast to storage dtype ``target`` (lists kept), or a ``LossyCastError``.

    ``rows`` are the dataset row numbers of ``array``'s rows, for the error message; ``source_bfloat16``
    says the array holds bfloat16 bit patterns.
    """
    leaf, levels = flatten_leaf(array)
    where = _Rows(column, range(len(leaf) if not levels else len(levels[0]) - 1) if rows is None else rows, levels)
    _check_present(array, leaf, where)
    values = leaf.to_numpy(zero_copy_only=False)
    if source_bfloat16:
        values = bfloat16_bits_to_float32(values)
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if is_float(target):
        new_leaf = pa.array(_to_float(values, target, exact, where), type=to_arrow(target))
    elif values.dtype.kind in "iu" and target != "bool":
        check_integers(values, target, column=column, row_of=where, pad=None if pad is None else int(pad))
        new_leaf = pc.cast(leaf, to_arrow(target), safe=False)
    else:
        new_leaf = pa.array(_to_integer(values, target, pad, where), type=to_arrow(target))
    for offsets in reversed(levels):
        new_leaf = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), new_leaf)
    return new_leaf
