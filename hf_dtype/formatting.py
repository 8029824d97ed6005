"""Serving in compute dtypes, per column: the ``"hf_dtype"`` formatter and ``DtypeTransform``.

``ds.with_format("hf_dtype", plan=plan, backend="torch")`` reads each planned column straight from
its Arrow buffers and hands it out in the plan's compute dtype (``datasets``' own ``dtype=`` is one
dtype for all columns); bfloat16 is a zero-copy view of the stored bits and derived columns are
rebuilt from row lengths. Columns outside the plan are served as ``datasets`` serves them.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from datasets.formatting import NumpyFormatter, _register_formatter
from datasets.formatting.formatting import TensorFormatter

from .casting import flatten_leaf
from .dtypes import is_float, to_torch
from .nesting import nest
from .plan import DERIVED_KINDS, ColumnDtype, DtypePlan
from .recording import plan_of_features
from .widening import numpy_compute_dtype, numpy_to_compute, to_tensor

__all__ = ["HfDtypeFormatter", "DtypeTransform", "BACKENDS"]

BACKENDS = ("torch", "numpy")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}.")
    return backend


def _as_plan(plan: DtypePlan | Mapping | None) -> DtypePlan | None:
    return plan if plan is None or isinstance(plan, DtypePlan) else DtypePlan.from_dict(plan)


class _Server:
    """Turns flat storage values into compute-dtype arrays or tensors, and rebuilds derived columns."""

    def __init__(self, plan: DtypePlan, backend: str) -> None:
        self.plan = plan
        self.backend = _check_backend(backend)

    def convert(self, values: np.ndarray, entry: ColumnDtype) -> Any:
        if self.backend == "numpy":
            return numpy_to_compute(values, entry)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only Arrow memory, served without a copy
            return to_tensor(values, entry)

    def derived(self, entry: ColumnDtype, lengths: np.ndarray) -> Any:
        """A constant column rebuilt, in its compute dtype, for rows of the given lengths."""
        total, value = int(lengths.sum()), DERIVED_KINDS[entry.derived]
        if self.backend == "torch":
            import torch

            flat = torch.full((total,), value, dtype=to_torch(entry.served_dtype))
        else:
            flat = np.full(total, value, dtype=numpy_compute_dtype(entry.served_dtype))
        return nest(flat, [np.concatenate([[0], np.cumsum(lengths)])])

    def add_derived(self, out: dict[str, Any], lengths_of: Callable[[str], np.ndarray | None]) -> None:
        lengths: dict[str, np.ndarray | None] = {}
        for name, entry in self.plan.derived.items():
            if name in out:
                continue
            if entry.lengths_from not in lengths:
                lengths[entry.lengths_from] = lengths_of(entry.lengths_from)
            if lengths[entry.lengths_from] is not None:
                out[name] = self.derived(entry, lengths[entry.lengths_from])


class HfDtypeFormatter(TensorFormatter[Mapping, Any, Mapping]):
    """The ``"hf_dtype"`` format: ``ds.with_format("hf_dtype", plan=None, backend="torch")``.

    ``plan`` defaults to the one ``compact`` recorded in the dataset; ``backend`` is ``"torch"``
    or ``"numpy"`` (numpy has no bfloat16, so bfloat16 columns come out as exact float32).
    """

    def __init__(self, features=None, token_per_repo_id=None, plan: DtypePlan | Mapping | None = None,
                 backend: str = "torch", **kwargs) -> None:
        super().__init__(features=features, token_per_repo_id=token_per_repo_id)
        plan = _as_plan(plan) or plan_of_features(features)
        if plan is None:
            raise ValueError("The dataset carries no dtype plan: pass plan= to with_format, or compact the dataset first.")
        self.server = _Server(plan, backend)
        if backend == "torch":
            from datasets.formatting.torch_formatter import TorchFormatter

            self.fallback = TorchFormatter(features=features, token_per_repo_id=token_per_repo_id, **kwargs)
        else:
            self.fallback = NumpyFormatter(features=features, token_per_repo_id=token_per_repo_id, **kwargs)

    def _planned(self, column: pa.ChunkedArray, entry: ColumnDtype) -> Any:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        leaf, levels = flatten_leaf(array)
        return nest(self.server.convert(leaf.to_numpy(zero_copy_only=False), entry), levels)

    def format_batch(self, pa_table: pa.Table) -> Mapping:
        plan = self.server.plan.stored
        rest = [name for name in pa_table.column_names if name not in plan]
        served = self.fallback.format_batch(pa_table.select(rest)) if rest else {}
        out = {}
        for name in pa_table.column_names:
            out[name] = self._planned(pa_table.column(name), plan[name]) if name in plan else served[name]

        def lengths_of(source: str) -> np.ndarray | None:
            if source not in pa_table.column_names:
                return None
            offsets = flatten_leaf(pa_table.column(source).combine_chunks())[1][0]
            return offsets[1:] - offsets[:-1]

        self.server.add_derived(out, lengths_of)
        return out

    def format_row(self, pa_table: pa.Table) -> Mapping:
        return {name: value[0] for name, value in self.format_batch(pa_table).items()}

    def format_column(self, pa_table: pa.Table) -> Any:
        return self.format_batch(pa_table)[pa_table.column_names[0]]


_register_formatter(HfDtypeFormatter, "hf_dtype", aliases=["hf-dtype"])


class DtypeTransform:
    """A ``set_transform`` / ``with_transform`` callable that serves planned columns in compute dtypes.

    Args:
        plan: the plan; its derived columns are rebuilt from the lengths of their source column.
        backend: ``"torch"`` or ``"numpy"``.
        before: the user's own transform, run first on the Python batch (e.g. on-the-fly tokenization).
    """

    def __init__(self, plan: DtypePlan | Mapping, backend: str = "torch",
                 before: Callable[[dict], dict] | None = None) -> None:
        self.server = _Server(_as_plan(plan), backend)
        self.before = before

    @staticmethod
    def _flatten(rows: list) -> tuple[list, list[np.ndarray]]:
        levels = []
        while rows and isinstance(rows[0], (list, tuple, np.ndarray)):
            levels.append(np.concatenate([[0], np.cumsum([len(row) for row in rows])]))
            rows = list(itertools.chain.from_iterable(rows))
        return rows, levels

    def _column(self, rows: list, entry: ColumnDtype) -> Any:
        flat, levels = self._flatten(rows)
        if entry.storage == "bfloat16" and flat and not isinstance(flat[0], float):
            values = np.asarray(flat, dtype=np.uint16)
        else:
            values = np.asarray(flat, dtype=np.float64 if is_float(entry.storage) or is_float(entry.served_dtype) else np.int64)
        return nest(self.server.convert(values, entry), levels)

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.before is not None:
            batch = self.before(batch)
        out = dict(batch)
        for name, entry in self.server.plan.stored.items():
            if name in batch:
                out[name] = self._column(batch[name], entry)

        def lengths_of(source: str) -> np.ndarray | None:
            return np.array([len(row) for row in batch[source]], dtype=np.int64) if source in batch else None

        self.server.add_derived(out, lengths_of)
        return out
