"""From storage dtype to compute dtype: the one conversion, for numpy arrays and torch tensors.

``to_compute`` serves values read from a dataset (the formatter, ``DtypeTransform``, batches widened
on the CPU). Whatever it returns is memory the caller owns: values that alias the dataset (a view of
an Arrow buffer, perhaps a read-only memory map) are copied once, in the same step as the cast, as
``datasets``' own formatters copy read-only arrays. ``widen_batch`` is ``plan.widen``: it runs after
``accelerate`` has moved a compact batch to the device, so the bytes that cross the bus are the
storage bytes. A compute dtype narrower than the storage dtype is range-checked on the way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .dtypes import bfloat16_bits_to_float32, check_integers, dtype_name, integer_range, is_integer, to_torch

__all__ = ["BACKENDS", "check_backend", "narrows", "numpy_dtype", "to_compute", "to_dtype", "widen_batch", "widen_tensor"]

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
        import torch

        return torch.from_numpy(values if owned else values.copy()).view(torch.bfloat16)
    if bits:
        values, owned = bfloat16_bits_to_float32(values), True
    if narrows(dtype_name(values.dtype), target):
        check_integers(values, target, column=column, row_of=row_of, compute=not storage)
    values = values.astype(numpy_dtype(target), copy=not owned)
    if backend == "numpy":
        return values
    import torch

    tensor = torch.from_numpy(values)
    return tensor.to(torch.bfloat16) if target == "bfloat16" else tensor


def to_compute(values: np.ndarray, entry: Any, backend: str = "torch", **options: Any) -> Any:
    """``values``, read in ``entry``'s storage dtype, in its compute dtype (see ``to_dtype`` for the options)."""
    bits = entry.storage == "bfloat16" and values.dtype == np.uint16
    return to_dtype(values, entry.served_dtype, backend, bits=bits, **options)


def widen_tensor(tensor: Any, entry: Any, *, non_blocking: bool = False, column: str = "?") -> Any:
    """A torch ``tensor`` (in storage dtype, on any device) in its compute dtype; bfloat16 bits are viewed, not copied."""
    import torch

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
