"""Dtype names, ranges and forms (numpy / Arrow / torch), the bfloat16 codec, the one "does it fit" check and the one cast.

One canonical name per dtype (``"uint16"``, ``"bfloat16"``, ...). Arrow has no bfloat16, so a
bfloat16 column is stored as the uint16 bit pattern of each value and recognised by its plan entry.

``to_dtype`` / ``to_compute`` serve values read from a dataset (the formatter, ``DtypeTransform``,
batches widened on the CPU), and ``widen_batch`` is ``plan.widen`` (tensors on any device). Whatever
they return is memory the caller owns: values that alias the dataset (a view of an Arrow buffer,
perhaps a read-only memory map) are copied once, in the same step as the cast, as ``datasets``' own
formatters copy read-only arrays. A compute dtype narrower than the storage dtype is range-checked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch

__all__ = [
    "BACKENDS",
    "DTYPE_NAMES",
    "LossyCastError",
    "bfloat16_bits_to_float32",
    "canonical_dtype",
    "check_backend",
    "check_integers",
    "dtype_name",
    "float32_to_bfloat16_bits",
    "integer_range",
    "is_float",
    "is_integer",
    "narrow_float",
    "narrows",
    "numpy_dtype",
    "smallest_integer_dtype",
    "to_arrow",
    "to_compute",
    "to_dtype",
    "to_numpy",
    "to_torch",
    "widen_batch",
    "widen_tensor",
]

INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPE_NAMES = ("bool", *INTEGER_DTYPES, *FLOAT_DTYPES)

_ALIASES = {
    "boolean": "bool", "byte": "int8", "short": "int16", "int": "int32", "long": "int64",
    "half": "float16", "fp16": "float16", "f16": "float16", "halffloat": "float16", "bf16": "bfloat16",
    "float": "float32", "fp32": "float32", "f32": "float32", "double": "float64", "fp64": "float64", "f64": "float64",
}


class LossyCastError(ValueError):
    """A value does not survive the cast to a column's planned dtype; the message names column, row and value."""


def canonical_dtype(dtype: Any) -> str:
    """The canonical name of ``dtype``: a string, numpy dtype or type, torch dtype or Arrow type."""
    if isinstance(dtype, str):
        name = dtype.strip().lower().removeprefix("torch.").removeprefix("np.").removeprefix("numpy.")
    elif isinstance(dtype, pa.DataType):
        name = str(dtype)
    elif type(dtype).__module__ == "torch" and type(dtype).__name__ == "dtype":
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    name = _ALIASES.get(name, name)
    if name not in DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_NAMES)} (or an alias such as 'fp16', 'bf16').")
    return name


@functools.cache
def dtype_name(dtype: np.dtype) -> str:
    """The canonical name of numpy dtype ``dtype`` (cached: ``np.dtype.name`` is slow on a hot path)."""
    return canonical_dtype(dtype)


def is_integer(name: str | None) -> bool:
    return name in INTEGER_DTYPES


def is_float(name: str | None) -> bool:
    return name in FLOAT_DTYPES


@functools.cache
def integer_range(name: str) -> tuple[int, int]:
    """The smallest and largest value that the integer or bool dtype ``name`` holds."""
    if name == "bool":
        return 0, 1
    info = np.iinfo(name)
    return int(info.min), int(info.max)


def smallest_integer_dtype(low: int, high: int) -> str:
    """The narrowest integer dtype that holds every value in ``[low, high]``; unsigned when ``low >= 0``."""
    candidates = ("uint8", "uint16", "uint32", "uint64") if low >= 0 else ("int8", "int16", "int32", "int64")
    for name in candidates:
        lo, hi = integer_range(name)
        if lo <= low and high <= hi:
            return name
    raise OverflowError(f"No integer dtype holds the range [{low}, {high}].")


def to_numpy(name: str) -> np.dtype:
    """The numpy dtype that holds ``name``; bfloat16 is held as its uint16 bit pattern."""
    return np.dtype("uint16" if name == "bfloat16" else name)


def to_arrow(name: str) -> pa.DataType:
    """The Arrow type that stores ``name``; bfloat16 is stored as its uint16 bit pattern."""
    if name == "float16":
        return pa.float16()
    return pa.from_numpy_dtype(to_numpy(name))


def to_torch(name: str) -> torch.dtype:
    """The torch dtype named ``name``."""
    return getattr(torch, name)


def float32_to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns of ``values`` as uint16, rounded to nearest even (as ``torch`` rounds)."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    rounded = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)  # keep NaN a quiet NaN
    return rounded


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bit patterns (exact: every bfloat16 is a float32)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def narrow_float(values: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray]:
    """``values`` rounded to float dtype ``target`` as stored (bfloat16: bits), and those values back as float64.

    Values beyond ``target``'s range come back as ``inf``, including those that round up to it near
    the top of the range: the caller compares, so overflow is found by the same rounding that stores.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        if target == "bfloat16":
            stored = float32_to_bfloat16_bits(np.asarray(values).astype(np.float32))
            return stored, bfloat16_bits_to_float32(stored).astype(np.float64)
        stored = np.asarray(values).astype(target)
        return stored, stored.astype(np.float64)


def _extremes(values: Any) -> tuple[int, int]:
    """The smallest and largest value of a non-empty integer or bool array or tensor, as Python ints."""
    if not isinstance(values, np.ndarray):  # a torch tensor
        if values.dtype.is_floating_point or str(values.dtype) in ("torch.uint16", "torch.uint32", "torch.uint64"):
            values = values.cpu().numpy()  # torch has no min/max for its unsigned dtypes
        else:
            return int(values.min()), int(values.max())
    return int(values.min()), int(values.max())


def check_integers(values: Any, target: str, *, column: str, row_of: Callable[[int], int | str] | None = None,
                   pad: int | None = None, compute: bool = False) -> None:
    """Raise :class:`LossyCastError` when an integer of ``values`` (numpy or torch) lies outside ``target``'s range.

    The message names the column, the row (``row_of`` maps a flat position to it), the value, the
    range, and the narrowest dtype that holds every value (and ``pad``) where there is one: for a
    ``compute`` dtype a signed one, since torch computes in signed integers.
    """
    size = values.numel() if hasattr(values, "numel") else values.size
    if not size:
        return
    low, high = integer_range(target)
    smallest, largest = _extremes(values)
    if low <= smallest and largest <= high:
        return
    flat = values.reshape(-1) if isinstance(values, np.ndarray) else values.cpu().numpy().reshape(-1)
    where = int(np.argmax((flat < low) | (flat > high)))  # the first value out of range, in row order
    bad = int(flat[where])
    row = f", row {row_of(where)}" if row_of is not None else ""
    extremes = [smallest, largest] + ([int(pad)] if pad is not None else []) + ([-1] if compute else [])
    try:
        hint = f"{smallest_integer_dtype(min(extremes), max(extremes))} holds every value of this batch"
    except OverflowError:
        hint = "no compute dtype of torch holds it" if compute else "no integer dtype holds it"
        if compute and smallest >= 0 and largest <= integer_range("uint64")[1]:
            hint = "no signed dtype holds it: compute 'uint64' serves it exactly (numpy uint64, or torch.uint64, which few ops support)"
    signed = " (-100 and other negative values need a signed dtype)" if bad < 0 <= low else ""
    raise LossyCastError(f"Column {column!r}{row}: value {bad} does not fit {target}, which holds [{low}, {high}]{signed}; {hint}.")


BACKENDS = ("torch", "numpy")


@functools.cache
def narrows(storage: str | None, compute: str) -> bool:
    """Whether compute dtype ``compute`` holds fewer integers than ``storage`` (then values are range-checked)."""
    if not (is_integer(storage) or storage == "bool") or not is_integer(compute):
        return False
    low, high = integer_range(storage)
    target_low, target_high = integer_range(compute)
    return low < target_low or high > target_high


def numpy_dtype(compute: str) -> np.dtype:
    """The numpy dtype that serves compute dtype ``compute``: numpy has no bfloat16, so float32 (exact)."""
    return np.dtype("float32" if compute == "bfloat16" else compute)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}.")
    return backend


def to_dtype(values: np.ndarray, target: str, backend: str = "torch", *, bits: bool = False, owned: bool = False,
             column: str = "?", row_of: Callable[[int], int | str] | None = None, storage: bool = False) -> Any:
    """``values`` in dtype ``target``, as a numpy array or a torch tensor; ``bits``: they are bfloat16 bit patterns.

    ``owned`` says the caller made ``values`` itself (a padded batch); otherwise they may alias the
    dataset and are copied where the cast would not already make new memory. A target that holds
    fewer integers than ``values``' dtype is range-checked first (``storage``: the target is a storage
    dtype, which the error's hint then names; else a compute dtype).
    """
    if bits and target == "bfloat16" and backend == "torch":
        return torch.from_numpy(values if owned else values.copy()).view(torch.bfloat16)
    if bits:
        values, owned = bfloat16_bits_to_float32(values), True
    if narrows(dtype_name(values.dtype), target):
        check_integers(values, target, column=column, row_of=row_of, compute=not storage)
    values = values.astype(numpy_dtype(target), copy=not owned)
    if backend == "numpy":
        return values
    tensor = torch.from_numpy(values)
    return tensor.to(torch.bfloat16) if target == "bfloat16" else tensor


def to_compute(values: np.ndarray, entry: Any, backend: str = "torch", **options: Any) -> Any:
    """``values``, read in ``entry``'s storage dtype, in its compute dtype (see ``to_dtype`` for the options)."""
    bits = entry.storage == "bfloat16" and values.dtype == np.uint16
    return to_dtype(values, entry.served_dtype, backend, bits=bits, **options)


def widen_tensor(tensor: Any, entry: Any, *, non_blocking: bool = False, column: str = "?") -> Any:
    """A torch ``tensor`` (in storage dtype, on any device) in its compute dtype; bfloat16 bits are viewed, not copied."""
    if entry.storage == "bfloat16" and tensor.dtype in (torch.uint16, torch.int16):
        tensor = tensor.view(torch.bfloat16)
    target = to_torch(entry.served_dtype)
    if tensor.dtype == target:
        return tensor
    if narrows(str(tensor.dtype).removeprefix("torch."), entry.served_dtype):
        width = tensor.shape[-1] if tensor.ndim > 1 else 1
        check_integers(tensor, entry.served_dtype, column=column, row_of=lambda i: f"{i // width} of the batch", compute=True)
    return tensor.to(target, non_blocking=non_blocking)


def widen_batch(plan: Any, batch: Mapping[str, Any], *, non_blocking: bool = False) -> dict[str, Any]:
    """A copy of ``batch`` with every planned tensor or array in its compute dtype; other keys pass through."""
    out = dict(batch)
    for name, value in batch.items():
        entry = plan.entry_for(name)
        if entry is None:
            continue
        if isinstance(value, np.ndarray):
            out[name] = to_compute(value, entry, "numpy", owned=True, column=name)
        elif hasattr(value, "dtype") and hasattr(value, "to"):
            out[name] = widen_tensor(value, entry, non_blocking=non_blocking, column=name)
    return out
