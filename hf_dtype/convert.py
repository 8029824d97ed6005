"""From stored columns to served batches: padded in the storage dtype, served in storage or compute dtypes.

``served`` turns a batch's column (padded, blocks, flat) into a tensor in storage or compute dtypes;
``derived_values`` rebuilds a constant column from where its source has values; ``Batch.to`` moves a
batch and widens it there (``plan.widen``, after ``accelerate`` has moved the compact batch, so the
bytes that cross the bus are the storage bytes). The casts themselves are ``dtypes.to_dtype`` and
``dtypes.widen_tensor``, the one conversion.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from .dtypes import dtype_name, float32_to_bfloat16_bits, integer_range, narrows, numpy_dtype, to_compute, to_dtype
from .plan import ColumnDtype, DtypePlan
from .ragged import RowNames

__all__ = ["Batch", "Spec", "column_spec", "derived_values", "served"]


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
    dtype = np.dtype(bool) if stored else numpy_dtype(entry.served_dtype)
    values = present.astype(dtype) if entry.derived_value else np.zeros(present.shape, dtype=dtype)
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
