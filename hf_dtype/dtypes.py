"""Dtype names and their numpy / Arrow / torch forms, integer ranges, and the bfloat16 bit codec.

One canonical name per dtype (``"uint16"``, ``"bfloat16"``, ...). Arrow has no bfloat16, so a
bfloat16 column is stored as the uint16 bit pattern of each value and recognised by its plan entry.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "DTYPE_NAMES",
    "canonical_dtype",
    "is_integer",
    "is_float",
    "integer_range",
    "smallest_integer_dtype",
    "to_numpy",
    "to_arrow",
    "to_torch",
    "arrow_leaf_dtype",
    "float32_to_bfloat16_bits",
    "bfloat16_bits_to_float32",
]

INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
DTYPE_NAMES = ("bool", *INTEGER_DTYPES, *FLOAT_DTYPES)

_ALIASES = {
    "boolean": "bool",
    "byte": "int8",
    "short": "int16",
    "int": "int32",
    "long": "int64",
    "half": "float16",
    "fp16": "float16",
    "f16": "float16",
    "bf16": "bfloat16",
    "float": "float32",
    "fp32": "float32",
    "f32": "float32",
    "double": "float64",
    "fp64": "float64",
    "f64": "float64",
    "halffloat": "float16",
}


def canonical_dtype(dtype: Any) -> str:
    """Return the canonical name of ``dtype``: a string, numpy dtype or type, torch dtype or Arrow type."""
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


def is_integer(name: str) -> bool:
    return name in INTEGER_DTYPES


def is_float(name: str) -> bool:
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
    if name == "bfloat16":
        return pa.uint16()
    if name == "float16":
        return pa.float16()
    return pa.from_numpy_dtype(np.dtype(name))


def to_torch(name: str):
    """The torch dtype named ``name``."""
    import torch

    return getattr(torch, name)


def arrow_leaf_dtype(arrow_type: pa.DataType) -> str | None:
    """The canonical name of the numeric leaf of ``arrow_type`` (lists unwrapped), or None if not numeric."""
    while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    if pa.types.is_boolean(arrow_type) or pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        return canonical_dtype(arrow_type)
    return None


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
