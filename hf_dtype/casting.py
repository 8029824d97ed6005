"""Checked casts of Arrow columns, nested lists included: lossless or loud.

Every cast is checked before its result is used: integer ranges, ``NaN`` / ``inf`` / fractions into
integers, float overflow to ``inf`` on narrowing and, where asked, float exactness. A failure
raises a :class:`LossyCastError` that names the column, the value, its row, and what would hold it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .dtypes import (
    bfloat16_bits_to_float32,
    float32_to_bfloat16_bits,
    integer_range,
    is_float,
    smallest_integer_dtype,
    to_arrow,
)

__all__ = ["LossyCastError", "cast_array", "flatten_leaf", "is_list_type", "leaf_row", "with_leaf_type", "row_lengths"]


class LossyCastError(ValueError):
    """A value does not survive the cast to a column's planned dtype."""


def is_list_type(arrow_type: pa.DataType) -> bool:
    """Whether ``arrow_type`` is a list, large list or fixed-size list."""
    return pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type)


def with_leaf_type(arrow_type: pa.DataType, leaf: pa.DataType) -> pa.DataType:
    """``arrow_type`` with its innermost value type replaced by ``leaf``, list kinds kept."""
    if pa.types.is_list(arrow_type):
        return pa.list_(with_leaf_type(arrow_type.value_type, leaf))
    if pa.types.is_large_list(arrow_type):
        return pa.large_list(with_leaf_type(arrow_type.value_type, leaf))
    if pa.types.is_fixed_size_list(arrow_type):
        return pa.list_(with_leaf_type(arrow_type.value_type, leaf), arrow_type.list_size)
    return leaf


def flatten_leaf(array: pa.Array) -> tuple[pa.Array, list[np.ndarray]]:
    """The leaf values of ``array`` (a zero-copy slice) and, per list level from the outside in, offsets from 0."""
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


def row_lengths(array: pa.Array) -> np.ndarray:
    """The length of each row of a list column."""
    _, levels = flatten_leaf(array)
    return np.diff(levels[0]) if levels else np.ones(len(array), dtype=np.int64)


def _fail(column: str, rows: Sequence[int], levels: list[np.ndarray], leaf_index: int, message: str) -> None:
    row = rows[leaf_row(leaf_index, levels)]
    raise LossyCastError(f"Column {column!r}, row {row}: {message}")


def _check_integer_target(column, values: np.ndarray, source_float: bool, target: str, pad, rows, levels) -> None:
    if source_float:
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            _fail(column, rows, levels, i, f"{values[i]} cannot be stored in integer dtype {target}; fill or drop non-finite values first.")
        bad = values != np.round(values)
        if bad.any():
            i = int(np.argmax(bad))
            _fail(column, rows, levels, i, f"{values[i]} has a fraction, so integer dtype {target} cannot hold it; use a float dtype.")
    if values.size == 0:
        return
    low, high = integer_range(target)
    smallest, largest = values.min(), values.max()
    if smallest >= low and largest <= high:
        return
    bad = (values < low) | (values > high)
    i = int(np.argmax(bad))
    extremes = [int(smallest), int(largest)] + ([int(pad)] if pad is not None else [])
    try:
        holder = smallest_integer_dtype(min(extremes), max(extremes))
        hint = f"{holder} holds every value of this batch"
    except OverflowError:
        hint = "no integer dtype holds it"
    signed = " (-100 and other negative values need a signed dtype)" if values[i] < 0 <= low else ""
    _fail(column, rows, levels, i, f"value {values[i]} does not fit {target}, which holds [{low}, {high}]{signed}; {hint}.")


def _narrow_float(values: np.ndarray, target: str) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow to inf is reported by the caller, with its row
        if target == "bfloat16":
            return float32_to_bfloat16_bits(values.astype(np.float32))
        return values.astype(target)


def _widen_float(narrowed: np.ndarray, target: str) -> np.ndarray:
    return bfloat16_bits_to_float32(narrowed) if target == "bfloat16" else narrowed.astype(np.float64)


def _check_float_target(column, values: np.ndarray, narrowed: np.ndarray, target: str, exact: bool, rows, levels) -> None:
    back = _widen_float(narrowed, target)
    source = values.astype(np.float64)
    overflow = np.isinf(back) & np.isfinite(source)
    if overflow.any():
        i = int(np.argmax(overflow))
        wider = "float32" if target in ("float16", "bfloat16") else "float64"
        _fail(column, rows, levels, i, f"value {values[i]} overflows {target} to inf; {wider} holds it.")
    if not exact or source.size == 0:
        return
    mismatch = ~((back == source) | (np.isnan(back) & np.isnan(source)))
    if mismatch.any():
        with np.errstate(invalid="ignore"):
            error = np.where(mismatch, np.abs(back - source), 0.0)
        i = int(np.argmax(error))
        _fail(column, rows, levels, i, f"{target} is not exact: value {values[i]} becomes {back[i]} (largest error {error[i]:.6g}).")


_NULLS = "a planned column needs every value present (fill or drop nulls first)"


def _check_present(array: pa.Array, leaf: pa.Array, levels: list[np.ndarray], column: str, rows: Sequence[int]) -> None:
    """Reject nulls and non-numeric leaves: a dtype plan has nothing to say about them."""
    if array.null_count:
        row = rows[int(np.argmax(~np.asarray(array.is_valid())))]
        raise LossyCastError(f"Column {column!r}, row {row}: the row is null; {_NULLS}.")
    if leaf.null_count:
        _fail(column, rows, levels, int(np.argmax(~np.asarray(leaf.is_valid()))), f"a null value; {_NULLS}.")
    if not (pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type) or pa.types.is_boolean(leaf.type)):
        raise LossyCastError(f"Column {column!r} holds {leaf.type} values; a planned column must hold numbers (or lists of numbers).")


def cast_array(
    array: pa.Array,
    target: str,
    *,
    column: str,
    source_bfloat16: bool = False,
    pad: int | float | None = None,
    exact: bool = False,
    rows: Sequence[int] | None = None,
) -> pa.Array:
    """``array`` cast to storage dtype ``target`` (lists kept), or a :class:`LossyCastError`.

    ``rows`` are the dataset row numbers of ``array``'s rows, for the error message. Integers into
    floats must be exact; floats into narrower floats are checked for overflow, and for exactness
    when ``exact``. ``source_bfloat16`` says the array holds bfloat16 bit patterns.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    rows = range(len(array)) if rows is None else rows
    leaf, levels = flatten_leaf(array)
    _check_present(array, leaf, levels, column, rows)
    values = leaf.to_numpy(zero_copy_only=False)
    if source_bfloat16:
        values = bfloat16_bits_to_float32(values)
    source_float = values.dtype.kind == "f"
    if is_float(target):
        if not source_float:
            values = values.astype(np.int64) if values.dtype.kind == "b" else values
            narrowed = _narrow_float(values.astype(np.float64), target)
            back = _widen_float(narrowed, target)
            inexact = back != values
            if inexact.any():
                i = int(np.argmax(inexact))
                message = f"integer {values[i]} is not exact in {target} (it becomes {back[i]:.0f}); use a wider dtype."
                _fail(column, rows, levels, i, message)
        else:
            narrowed = _narrow_float(values, target)
            _check_float_target(column, values, narrowed, target, exact, rows, levels)
        new_leaf = pa.array(narrowed, type=to_arrow(target))
    else:
        _check_integer_target(column, values, source_float, target, pad, rows, levels)
        if source_float or target == "bool":
            new_leaf = pa.array(values.astype(target), type=to_arrow(target))
        else:
            new_leaf = pc.cast(leaf, to_arrow(target), safe=False)
    for offsets in reversed(levels):
        new_leaf = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), new_leaf)
    return new_leaf
