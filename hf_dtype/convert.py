"""From storage dtype to compute dtype: the one conversion, for numpy arrays and torch tensors, and the batches it makes.

``to_compute`` serves values read from a dataset (the formatter, ``DtypeTransform``, batches widened
on the CPU); ``served`` turns a batch's column (padded, blocks, flat) into a tensor in storage or
compute dtypes; ``derived_values`` rebuilds a constant column from where its source has values;
``Batch.to`` moves a batch and widens it there. Whatever it returns is memory the caller owns: values that alias the dataset (a view of
an Arrow buffer, perhaps a read-only memory map) are copied once, in the same step as the cast, as
``datasets``' own formatters copy read-only arrays. ``widen_batch`` is ``plan.widen``: it runs after
``accelerate`` has moved a compact batch to the device, so the bytes that cross the bus are the
storage bytes. A compute dtype narrower than the storage dtype is range-checked on the way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .dtypes import (
    bfloat16_bits_to_float32,
    check_integers,
    dtype_name,
    float32_to_bfloat16_bits,
    integer_range,
    is_integer,
    to_torch,
)
from .plan import DERIVED_KINDS, ColumnDtype, DtypePlan
from .ragged import RowNames

__all__ = [
    "BACKENDS", "Batch", "Spec", "check_backend", "column_spec", "derived_values", "narrows", "numpy_dtype", "served", "to_compute",
    "to_dtype", "widen_batch", "widen_tensor",
]

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
    options: dict[str, Any] = dict(owned=True, column=column, row_of=lambda i: rows[i // width])
    if widen == "cpu":
        return to_compute(values, entry, "torch", **options)
    return to_dtype(values, entry.storage or "bool", "torch", storage=True, **options)


def derived_values(entry: ColumnDtype, present: np.ndarray, *, stored: bool, backend: str = "torch") -> Any:
    """A derived column rebuilt where its source has values (``present``, a bool array of any shape): its constant there,
    0 elsewhere; bool when ``stored`` (a storage batch), else its compute dtype."""
    assert entry.derived is not None  # only derived columns are rebuilt
    dtype = np.dtype(bool) if stored else numpy_dtype(entry.served_dtype)
    values = present.astype(dtype) if DERIVED_KINDS[entry.derived] else np.zeros(present.shape, dtype=dtype)
    if backend == "numpy":
        return values
    tensor = torch.from_numpy(values)
    return tensor.to(torch.bfloat16) if not stored and entry.served_dtype == "bfloat16" else tensor


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
