"""From storage dtype to compute dtype: one kernel for numpy arrays and torch tensors, on any device.

``plan.widen(batch)`` runs after ``accelerate`` has moved a compact batch to the device, so the
bytes that cross the bus are the storage bytes and the widening happens where the model is.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from .dtypes import bfloat16_bits_to_float32, integer_range, is_integer, to_torch
from .plan import ColumnDtype, DtypePlan

__all__ = ["numpy_compute_dtype", "numpy_to_compute", "torch_to_compute", "to_tensor", "widen_batch"]


@functools.cache
def _narrows(entry: ColumnDtype) -> bool:
    """Whether the compute dtype holds fewer integers than the storage dtype (then values are checked)."""
    source, target = entry.storage, entry.served_dtype
    if source is None or source == "bfloat16" or not (is_integer(source) or source == "bool") or not is_integer(target):
        return False
    low, high = integer_range(source)
    target_low, target_high = integer_range(target)
    return low < target_low or high > target_high


def _check_fits(values, entry: ColumnDtype) -> None:
    if values.numel() if hasattr(values, "numel") else values.size:
        low, high = integer_range(entry.served_dtype)
        smallest, largest = int(values.min()), int(values.max())
        if smallest < low or largest > high:
            from .casting import LossyCastError

            bad = smallest if smallest < low else largest
            raise LossyCastError(f"Value {bad} does not fit compute dtype {entry.served_dtype}, which holds [{low}, {high}].")


def numpy_compute_dtype(name: str) -> str:
    """The numpy dtype that serves compute dtype ``name``: numpy has no bfloat16, so float32 (exact)."""
    return "float32" if name == "bfloat16" else name


def numpy_to_compute(values: np.ndarray, entry: ColumnDtype) -> np.ndarray:
    """``values`` (in storage dtype) in the compute dtype."""
    if _narrows(entry):
        _check_fits(values, entry)
    if entry.storage == "bfloat16" and values.dtype == np.uint16:
        values = bfloat16_bits_to_float32(values)
    return values.astype(numpy_compute_dtype(entry.served_dtype), copy=False)


def torch_to_compute(tensor, entry: ColumnDtype, *, non_blocking: bool = False):
    """``tensor`` (in storage dtype) in the compute dtype, on its own device; bfloat16 bits are a zero-copy view."""
    import torch

    if entry.storage == "bfloat16" and tensor.dtype in (torch.uint16, torch.int16):
        tensor = tensor.view(torch.bfloat16)
    target = _torch_target(entry)
    if tensor.dtype == target:
        return tensor
    if _narrows(entry):
        _check_fits(tensor, entry)
    return tensor.to(target, non_blocking=non_blocking)


@functools.cache
def _torch_target(entry: ColumnDtype):
    return to_torch(entry.served_dtype)


def to_tensor(values: np.ndarray, entry: ColumnDtype, *, widen: bool = True):
    """A torch tensor sharing ``values``' memory where the dtype allows, widened when ``widen``."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if not widen:
        return tensor.view(torch.bfloat16) if entry.storage == "bfloat16" and tensor.dtype == torch.uint16 else tensor
    return torch_to_compute(tensor, entry)


def widen_batch(plan: DtypePlan, batch: Mapping[str, Any], *, non_blocking: bool = False) -> dict[str, Any]:
    """A copy of ``batch`` with every planned column in its compute dtype; other keys pass through."""
    out = dict(batch)
    for name, value in batch.items():
        entry = plan.columns.get(name)
        if entry is None:
            continue
        if isinstance(value, np.ndarray):
            out[name] = numpy_to_compute(value, entry)
        elif hasattr(value, "dtype") and hasattr(value, "to"):
            out[name] = torch_to_compute(value, entry, non_blocking=non_blocking)
    return out
