"""Serving in compute dtypes, per column: the ``"hf_dtype"`` formatter, ``DtypeTransform`` and ``PaddingCollator``.

``ds.with_format("hf_dtype", plan=plan, backend="torch")`` reads each planned column straight from
its Arrow buffers and hands it out in the plan's compute dtype (``datasets``' own ``dtype=`` is one
dtype for all columns); derived columns are rebuilt from row lengths, and columns outside the plan
are served as ``datasets`` serves them, except uint64 values at or above 2**63, which it wraps to
negative int64: numpy serves them as exact uint64, torch refuses them by column, row and value.
``DtypeTransform`` does the same for ``set_transform``, which hands it Python lists, and is the
explicit-plan route for streams. ``PaddingCollator`` is the ``Padded`` layout applied to rows given
(lists, arrays or tensors), a vectorized drop-in for the transformers padding collators. Every value
served is memory the caller owns (``convert.to_compute``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets.formatting import NumpyFormatter
from datasets.formatting.formatting import TensorFormatter

from ._compat import register_formatter
from .batching import WIDEN_MODES
from .convert import derived_values
from .dtypes import LossyCastError, check_backend, integer_range, is_float, to_compute, to_dtype
from .layouts import Padded
from .plan import ColumnDtype, DtypePlan
from .ragged import RowNames, arrow_leaf_dtype, flatten_leaf, is_list_type, leaf_row, list_depth, offsets_of, rows_of_values
from .recording import require_plan

__all__ = ["DtypeTransform", "HfDtypeFormatter", "PaddingCollator", "pad_batch"]


def _nest(values: Any, levels: Sequence[np.ndarray]) -> Any:
    """Rows of ``values`` along ``levels`` (offsets from 0, outermost first): stacked if uniform, else a list."""
    if not levels:
        return values
    shape = [len(levels[0]) - 1]
    for offsets in levels:
        lengths = np.diff(offsets)
        if len(lengths) == 0 or not (lengths == lengths[0]).all():
            break
        shape.append(int(lengths[0]))
    else:
        return values.reshape(shape)
    outer, inner = levels[0].tolist(), levels[1:]
    if not inner:
        return [values[start:stop] for start, stop in itertools.pairwise(outer)]
    rows = []
    for start, stop in itertools.pairwise(outer):
        row_levels = [inner[0][start:stop + 1]]
        for deeper in inner[1:]:
            row_levels.append(deeper[row_levels[-1][0]:row_levels[-1][-1] + 1])
        rows.append(_nest(values[row_levels[-1][0]:row_levels[-1][-1]], [level - level[0] for level in row_levels]))
    return rows


_INT64_MAX = integer_range("int64")[1]


@functools.cache
def _holds_uint64(arrow_type: pa.DataType) -> bool:
    """Whether values of ``arrow_type`` (lists and structs looked into) are uint64, which ``datasets`` serves as int64."""
    return pa.types.is_uint64(arrow_type) or any(_holds_uint64(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def _first_beyond_int64(array: pa.Array) -> tuple[int, int] | None:
    """The row and value of the first uint64 value at or above 2**63 in ``array`` (lists and structs searched), or None."""
    if pa.types.is_uint64(array.type):
        row = pc.index(pc.greater(array, pa.scalar(_INT64_MAX, pa.uint64())), True).as_py()
        return None if row < 0 else (row, array[row].as_py())
    if is_list_type(array.type):
        leaf, levels = flatten_leaf(array)
        found = _first_beyond_int64(leaf)
        return None if found is None else (leaf_row(found[0], levels), found[1])
    if pa.types.is_struct(array.type):
        return min(filter(None, map(_first_beyond_int64, array.flatten())), default=None)
    return None


def _without_nulls(array: pa.Array) -> bool:
    """Whether no row of ``array`` and no value in its lists is null."""
    while not array.null_count and is_list_type(array.type):
        array = array.flatten()
    return not array.null_count


def _beyond_int64(name: str, column: pa.ChunkedArray, backend: str) -> np.ndarray | list | None:
    """A column outside the plan holding uint64 values at or above 2**63, which ``datasets`` would serve wrapped to negative
    int64: served as exact uint64 by numpy (numbers and lists of them, without nulls), else refused, saying what to do (torch
    computes in no unsigned 64-bit dtype). None when it has no such value: ``datasets`` serves it."""
    if not _holds_uint64(column.type):
        return None
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    found = _first_beyond_int64(array)
    if found is None:
        return None
    plain = arrow_leaf_dtype(array.type) == "uint64" and _without_nulls(array)  # numbers or lists of them: numpy holds them
    if backend == "numpy" and plain:
        leaf, levels = flatten_leaf(array)
        return _nest(to_dtype(leaf.to_numpy(zero_copy_only=False), "uint64", "numpy"), levels)
    row, value = found
    if plain:  # and backend == "torch"
        fixes = ("serve it with backend='numpy' (exact uint64), plan it with compute 'uint64' (a torch.uint64 tensor, which few "
                 "torch ops support)")
    else:
        fixes = "fill its nulls and take it out of any struct (numpy then serves it as exact uint64)"
    raise LossyCastError(f"Column {name!r}, row {row}: value {value} is beyond int64, so datasets' own formats would serve it wrapped "
                         f"(as {value - 2**64}) or rounded to a float; {fixes}, or store it otherwise (e.g. as a string).")


def _refuse_nulls(name: str, column: pa.ChunkedArray, leaf: pa.Array, levels: list[np.ndarray], entry: ColumnDtype) -> None:
    """A planned integer or bool column holds no null: read as numpy it would be a NaN, then served as int64's smallest value."""
    if is_float(entry.storage) or is_float(entry.served_dtype) or not (column.null_count or leaf.null_count):
        return  # a float serves a null as NaN, as datasets does
    row = pc.index(pc.is_null(column), True).as_py() if column.null_count else leaf_row(pc.index(pc.is_null(leaf), True).as_py(), levels)
    raise LossyCastError(f"Column {name!r}, row {row}: a null, which {entry.served_dtype} cannot hold; fill the nulls (e.g. with "
                         f"ds.map) or leave the column out of the plan (datasets serves a null number as float NaN, a null row as None).")


class _Server:
    """Serves flat storage values in compute dtypes, nested as the rows were, and rebuilds derived columns."""

    def __init__(self, plan: DtypePlan, backend: str) -> None:
        self.plan = plan
        self.backend = check_backend(backend)

    def column(self, name: str, values: np.ndarray, levels: list[np.ndarray], *, owned: bool) -> Any:
        def row_of(leaf_index: int) -> int:
            return leaf_row(leaf_index, levels)

        return _nest(to_compute(values, self.plan[name], self.backend, owned=owned, column=name, row_of=row_of), levels)

    def add_derived(self, out: dict[str, Any], lengths_of: Callable[[str], np.ndarray | None]) -> None:
        """Rebuild each derived column whose source column is at hand, unless ``out`` has it already."""
        for name, entry in self.plan.derived.items():
            source = entry.lengths_from  # None: the plan found no source column to resolve it with
            lengths = None if name in out or source is None else lengths_of(source)
            if lengths is None:
                continue
            flat = derived_values(entry, np.ones(int(lengths.sum()), dtype=bool), stored=False, backend=self.backend)
            out[name] = _nest(flat, [offsets_of(lengths)])


class HfDtypeFormatter(TensorFormatter[Mapping, Any, Mapping]):
    """The ``"hf_dtype"`` format: ``ds.with_format("hf_dtype", plan=None, backend="torch")``.

    ``plan`` defaults to the one ``compact`` recorded in the dataset; ``backend`` is ``"torch"`` or
    ``"numpy"`` (numpy has no bfloat16, so bfloat16 columns come out as exact float32).
    """

    def __init__(self, features=None, token_per_repo_id=None, plan: DtypePlan | Mapping | None = None,
                 backend: str = "torch", **kwargs) -> None:
        super().__init__(features=features, token_per_repo_id=token_per_repo_id)
        plan = require_plan(plan, features, "with_format")
        if plan.derived:
            schema = features.arrow_schema if features else pa.schema([])
            plan = plan.resolve([field.name for field in schema if list_depth(field.type) == 1], check=True, present=schema.names)
        self.server = _Server(plan, backend)
        if backend == "torch":
            from datasets.formatting.torch_formatter import TorchFormatter

            self.fallback = TorchFormatter(features=features, token_per_repo_id=token_per_repo_id, **kwargs)
        else:
            self.fallback = NumpyFormatter(features=features, token_per_repo_id=token_per_repo_id, **kwargs)

    def format_batch(self, pa_table: pa.Table) -> Mapping:
        stored = self.server.plan.stored
        rest = [name for name in pa_table.column_names if name not in stored]
        served = {name: exact for name in rest if (exact := _beyond_int64(name, pa_table.column(name), self.server.backend)) is not None}
        rest = [name for name in rest if name not in served]
        served |= self.fallback.format_batch(pa_table.select(rest)) if rest else {}
        out = {}
        for name in pa_table.column_names:
            if name in stored:
                leaf, levels = flatten_leaf(pa_table.column(name))
                _refuse_nulls(name, pa_table.column(name), leaf, levels, stored[name])
                out[name] = self.server.column(name, leaf.to_numpy(zero_copy_only=False), levels, owned=False)
            else:
                out[name] = served[name]

        def lengths_of(source: str) -> np.ndarray | None:
            return np.diff(flatten_leaf(pa_table.column(source))[1][0]) if source in pa_table.column_names else None

        self.server.add_derived(out, lengths_of)
        return out

    def format_row(self, pa_table: pa.Table) -> Mapping:
        return {name: value[0] for name, value in self.format_batch(pa_table).items()}

    def format_column(self, pa_table: pa.Table) -> Any:
        return self.format_batch(pa_table)[pa_table.column_names[0]]


register_formatter(HfDtypeFormatter, "hf_dtype", aliases=["hf-dtype"])


def _flatten_python(rows: list) -> tuple[list, list[np.ndarray]]:
    levels = []
    while rows and isinstance(rows[0], (list, tuple, np.ndarray)):
        levels.append(offsets_of(np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))))
        rows = list(itertools.chain.from_iterable(rows))
    return rows, levels


class DtypeTransform:
    """A ``set_transform`` / ``with_transform`` callable that serves planned columns in compute dtypes.

    On a stream, ``stream.map(DtypeTransform(plan), batched=True)`` is how it gets an explicit plan
    (``IterableDataset.with_format`` takes no format arguments).

    Args:
        plan: the plan; its derived columns are rebuilt from the lengths of their source column.
        backend: ``"torch"`` or ``"numpy"``.
        before: the user's own transform, run first on the Python batch (e.g. on-the-fly tokenization).
    """

    def __init__(self, plan: DtypePlan | Mapping, backend: str = "torch", before: Callable[[dict], dict] | None = None) -> None:
        self.plan = require_plan(plan, None, "DtypeTransform")
        self.backend = check_backend(backend)
        self.before = before

    @staticmethod
    def _values(flat: list, entry: ColumnDtype, column: str, levels: list[np.ndarray]) -> np.ndarray:
        if entry.storage == "bfloat16" and flat and not isinstance(flat[0], float):
            return np.asarray(flat, dtype=np.uint16)  # bfloat16 bits, as a compact dataset stores them
        if is_float(entry.storage) or is_float(entry.served_dtype):
            return np.asarray(flat, dtype=np.float64)
        for dtype in (np.int64, np.uint64):  # uint64 for values at or above 2**63, range-checked against the compute dtype next
            try:
                return np.asarray(flat, dtype=dtype)
            except OverflowError:
                continue
        low, high = integer_range("int64")
        where = next(i for i, value in enumerate(flat) if not low <= value <= high)
        raise LossyCastError(f"Column {column!r}, row {leaf_row(where, levels)}: value {flat[where]} does not fit int64, and no "
                             f"integer dtype holds every value of the batch (it mixes negative values with values beyond int64, "
                             f"or goes beyond uint64).")

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        if self.before is not None:
            batch = self.before(batch)
        out = dict(batch)
        sequences = [name for name, rows in batch.items() if len(rows) and isinstance(rows[0], (list, tuple, np.ndarray))]
        server = _Server(self.plan.resolve(sequences) if self.plan.derived else self.plan, self.backend)
        for name, entry in server.plan.stored.items():
            if name in batch:
                flat, levels = _flatten_python(batch[name])
                out[name] = server.column(name, self._values(flat, entry, name, levels), levels, owned=True)

        def lengths_of(source: str) -> np.ndarray | None:
            return np.array([len(row) for row in batch[source]], dtype=np.int64) if source in batch else None

        server.add_derived(out, lengths_of)
        return out


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
        if widen not in WIDEN_MODES:
            raise ValueError(f"widen must be one of {WIDEN_MODES} ('device': storage dtypes, 'cpu': compute dtypes); got {widen!r}.")
        self.plan = require_plan(plan, None, "PaddingCollator")
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
                columns[name] = rows_of_values(name, values)
        plan = self.plan.resolve([name for name, column in columns.items() if column.starts is not None])
        names = [*names, *(name for name in plan.derived if name not in names)]
        layout = self.layout.bind_rows(plan, columns, names, self.widen)
        return {**layout(columns, RowNames("{i} of the batch")), **text}

    def __repr__(self) -> str:
        return f"PaddingCollator({self.plan!r}, {self.layout!r}, widen={self.widen!r})"
