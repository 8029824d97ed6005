"""Padded batches, vectorized: straight from a dataset's Arrow buffers (``BatchFetcher``), or from rows (``pad_batch``).

Per column one step: offsets → lengths → gather → fill, with numpy, whatever the batch size. A
batch comes out in the storage dtypes (``widen="device"``: uint16 ids, int8 labels, bool masks, so
fewer bytes cross to the device; ``plan.widen(batch)`` there) or in the compute dtypes
(``widen="cpu"``, equal to ``plan.widen`` of the device batch). Derived columns are rebuilt from
their source column's row lengths.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .arrow_views import ArrowColumn, column_kind
from .casting import LossyCastError
from .dtypes import arrow_leaf_dtype, canonical_dtype, float32_to_bfloat16_bits, integer_range, is_integer, to_torch
from .padding import PadOptions, RowWindows, length_mask, pad_rows, padded_width, truncate
from .plan import ColumnDtype, DtypePlan
from .recording import plan_of
from .widening import numpy_to_compute, torch_to_compute

__all__ = ["BatchFetcher", "PaddingCollator", "as_plan", "pad_batch", "resolve_batch_plan"]


def as_plan(plan: DtypePlan | Mapping | None, dataset: Dataset | None = None) -> DtypePlan:
    """``plan`` as a ``DtypePlan``; None takes the plan recorded in ``dataset``."""
    if plan is None and dataset is not None:
        plan = plan_of(dataset)
        if plan is None:
            raise ValueError("The dataset carries no dtype plan: pass plan= (a DtypePlan or its dict form), or compact the dataset first.")
    if plan is None:
        raise ValueError("A plan is needed: a DtypePlan or its dict form.")
    return plan if isinstance(plan, DtypePlan) else DtypePlan.from_dict(plan)


def _pad_fits(pad: int | float, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    if isinstance(pad, float) and not pad.is_integer():
        return False
    low, high = integer_range(canonical_dtype(dtype))
    return low <= pad <= high


def _derived(entry: ColumnDtype, lengths: np.ndarray, width: int, padding_side: str) -> np.ndarray:
    """A derived column as bool: True where an all-ones row has a value; all False for zeros and for padding."""
    if entry.derived == "ones":
        return length_mask(lengths, width, padding_side)
    return np.zeros((len(lengths), width), dtype=bool)


# --- batches from the Arrow buffers -------------------------------------------------------------


def _fill_lengths_from(plan: DtypePlan, sequences: list[str], present: set[str]) -> dict[str, ColumnDtype]:
    """The plan's entries, each derived column without ``lengths_from`` taking it from ``input_ids`` or the first list column."""
    entries = dict(plan.columns)
    source = "input_ids" if "input_ids" in sequences else (sequences[0] if sequences else None)
    for name, entry in plan.derived.items():
        if entry.lengths_from is None and name not in present and source is not None:
            entries[name] = ColumnDtype(**{**entry.to_dict(), "lengths_from": source})
    return entries


def resolve_batch_plan(dataset: Dataset, plan: DtypePlan, columns: Sequence[str] | str | None) -> tuple[DtypePlan, list[str]]:
    """The plan a loader serves (unplanned requested columns added as stored) and the columns it batches, checked.

    By default every planned column that the dataset holds, and every derived column whose source
    it holds, is batched; non-numeric columns outside the plan are left out.
    """
    schema = dataset.data.table.schema
    present = set(schema.names)
    kinds = {name: column_kind(schema.field(name).type) for name in schema.names}
    entries = _fill_lengths_from(plan, [name for name in plan if kinds.get(name) == "list"], present)
    derived = {name: entry for name, entry in entries.items() if entry.derived is not None and name not in present}
    if columns is None:
        chosen = [name for name in entries if name in present or (name in derived and derived[name].lengths_from in present)]
    else:
        chosen = [columns] if isinstance(columns, str) else list(columns)
        unknown = [name for name in chosen if name not in present and name not in derived]
        if unknown:
            raise ValueError(f"Unknown column(s) {unknown}: expected columns of the dataset {schema.names} "
                             f"or derived columns of the plan {sorted(derived)}.")
    for name in chosen:
        if name in derived:
            source = derived[name].lengths_from
            if kinds.get(source) != "list":
                what = "which the dataset does not have" if source not in present else "which is not a list column"
                raise ValueError(f"Derived column {name!r} takes its row lengths from {source!r}, {what}.")
        elif kinds[name] in (None, "nested"):
            what = "lists of lists" if kinds[name] == "nested" else f"{schema.field(name).type} values"
            hint = "" if columns is not None else "; leave it out with columns=[...]"
            raise ValueError(f"Column {name!r} holds {what}; only numbers and lists of numbers can be batched{hint}.")
        elif name not in entries:
            entries[name] = ColumnDtype(storage=arrow_leaf_dtype(schema.field(name).type))
    return DtypePlan(entries), chosen


@dataclass
class _Job:
    """How one output column of a batch is made; built once per process.

    ``kind`` is ``"list"`` (padded from its own offsets), ``"twin"`` (padded like the list column
    ``shape``, whose rows have the same lengths: its starts plus ``shift[chunk]``), ``"derived"``
    (rebuilt from the row lengths of ``shape``) or ``"scalar"``.
    """

    name: str
    entry: ColumnDtype
    kind: str
    column: ArrowColumn | None = None
    shape: str | None = None
    shift: np.ndarray | None = None
    pad: Any = 0
    dtype: np.dtype | None = None
    windows: RowWindows | None = None  # over the one flat numpy view of the values, when there is one
    bfloat16: bool = False


class _Shape:
    """The padded shape of one batch of a list column: row starts and lengths, width, and the cells that hold values."""

    __slots__ = ("groups", "lengths", "mask", "pad_cells", "starts", "width")

    def __init__(self, column: ArrowColumn, rows: np.ndarray, chunk: np.ndarray | None, options: PadOptions,
                 multiple: int | None) -> None:
        starts, lengths, self.groups = column.spans(rows, chunk)
        self.starts = starts
        self.lengths = truncate(lengths, options.max_length)
        self.width = padded_width(self.lengths, multiple)
        self.mask = length_mask(self.lengths, self.width, options.padding_side)
        self.pad_cells = None

    def padding(self) -> np.ndarray:
        if self.pad_cells is None:
            self.pad_cells = ~self.mask
        return self.pad_cells


@dataclass
class _State:
    """What a fetcher builds lazily in each process: per-column jobs and numpy views of the Arrow buffers."""

    jobs: list[_Job]
    views: dict[str, ArrowColumn]
    mapping: ArrowColumn | None  # the dataset's indices mapping (shuffle / select / filter), if any
    size: int  # the dataset's number of rows


def _list_job(name: str, entry: ColumnDtype, column: ArrowColumn, leaders: list[ArrowColumn]) -> _Job:
    pad, dtype = _pad_value(entry, column.dtype)
    values = column.values
    windows = RowWindows(values.views[0]) if len(values.views) == 1 and not values.bits else None
    job = _Job(name, entry, "list", column, shape=name, pad=pad, dtype=dtype, windows=windows,
               bfloat16=entry.storage == "bfloat16" and dtype == np.uint16)
    if column.is_list and windows is not None:
        for leader in leaders:
            shift = column.twin_shift(leader)
            if shift is not None:
                job.kind, job.shape, job.shift = "twin", leader.name, shift
                return job
        leaders.append(column)
    if not column.is_list:
        job.kind = "scalar"
    return job


class BatchFetcher:
    """The map-style dataset of a loader: ``__getitems__(indices)`` returns the whole padded batch.

    It holds the ``datasets.Dataset`` (which pickles by file path when memory-mapped) and builds its
    numpy views of the Arrow buffers lazily in each process, so it goes to spawn workers as is.
    """

    def __init__(self, dataset: Dataset, plan: DtypePlan, columns: list[str], options: PadOptions) -> None:
        self.dataset = dataset
        self.plan = plan
        self.columns = columns
        self.options = options
        self._state: _State | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}

    def __len__(self) -> int:
        return len(self.dataset)

    def _build(self) -> _State:
        table = self.dataset.data.table
        stored = [name for name in self.columns if name in table.column_names]
        needed = stored + [self.plan[name].lengths_from for name in self.columns if name not in table.column_names]
        views: dict[str, ArrowColumn] = {}
        layout = None
        for name in dict.fromkeys(needed):
            views[name] = ArrowColumn(name, table.column(name), layout)
            layout = views[name].layout
        jobs, leaders = [], []
        for name in self.columns:
            entry = self.plan[name]
            if name in views:
                jobs.append(_list_job(name, entry, views[name], leaders))
            else:
                jobs.append(_Job(name, entry, "derived", shape=entry.lengths_from))
        indices = self.dataset._indices
        mapping = ArrowColumn("indices", indices.table.column(0)) if indices is not None else None
        return _State(jobs, views, mapping, len(self.dataset))

    @staticmethod
    def _positions(indices: Sequence[int], mapping: ArrowColumn | None, size: int) -> np.ndarray:
        if len(indices) and (min(indices) < 0 or max(indices) >= size):
            bad = next(int(i) for i in indices if not 0 <= i < size)
            raise IndexError(f"Row {bad} is out of range for a dataset of {size} rows.")
        rows = np.asarray(indices, dtype=np.int64)
        return rows if mapping is None else mapping.rows(rows).astype(np.int64)

    def batch(self, indices: Sequence[int], *, pad_to_multiple_of: int | None = None) -> dict[str, Any]:
        """The padded batch of dataset rows ``indices``; ``pad_to_multiple_of`` overrides the options'."""
        if self._state is None:
            self._state = self._build()
        state, options = self._state, self.options
        multiple = options.pad_to_multiple_of if pad_to_multiple_of is None else pad_to_multiple_of
        rows = self._positions(indices, state.mapping, state.size)
        chunks: dict[int, np.ndarray | None] = {}
        shapes: dict[str, _Shape] = {}
        out = {}
        for job in state.jobs:
            column = state.views[job.shape] if job.kind != "scalar" else job.column
            key = id(column.layout)
            if key not in chunks:
                chunks[key] = column.layout.locate(rows)
            chunk = chunks[key]
            if job.kind == "scalar":
                values = column.scalars(rows, chunk)
            else:
                shape = shapes.get(job.shape)
                if shape is None:
                    shape = shapes[job.shape] = _Shape(column, rows, chunk, options, multiple)
                if job.kind == "derived":
                    values = shape.mask if job.entry.derived == "ones" else np.zeros(shape.mask.shape, dtype=bool)
                else:
                    starts = shape.starts
                    if job.kind == "twin":
                        starts = starts + (job.shift[0] if chunk is None else job.shift[chunk])
                    values = pad_rows(job.windows or job.column.values.take, starts, shape.lengths,
                                      width=shape.width, pad=job.pad, dtype=job.dtype, padding_side=options.padding_side,
                                      mask=shape.mask, pad_cells=shape.padding(), groups=shape.groups)
            out[job.name] = _tensor(values, job, options.widen)
        return out

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        return self.batch(indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Row ``index``, unpadded: a batch of one, without its batch dimension."""
        return {name: value[0] for name, value in self.batch([index], pad_to_multiple_of=1).items()}


def _tensor(values: np.ndarray, job: _Job, widen: str) -> torch.Tensor:
    """``values`` as a tensor: in storage dtype (bfloat16 bits viewed as bfloat16), or widened to compute dtype."""
    if widen == "cpu" and job.entry.served_dtype != "bfloat16":
        values = numpy_to_compute(values, job.entry)  # numpy casts small arrays faster than torch
        return torch.from_numpy(values)
    tensor = torch.from_numpy(values)
    if job.bfloat16:
        tensor = tensor.view(torch.bfloat16)
    return torch_to_compute(tensor, job.entry) if widen == "cpu" else tensor


def _pad_value(entry: ColumnDtype, dtype: np.dtype) -> tuple[Any, np.dtype]:
    """The column's pad value as a scalar of the dtype its batch is built in: the stored one if it holds the pad."""
    pad = entry.pad_value
    if entry.storage == "bfloat16" and dtype == np.uint16:
        return float32_to_bfloat16_bits(np.array([pad], dtype=np.float32))[0], dtype
    if not _pad_fits(pad, dtype):
        served = entry.served_dtype
        dtype = np.dtype("float32" if served == "bfloat16" else served)
    return np.asarray(pad).astype(dtype)[()], dtype


# --- batches from rows --------------------------------------------------------------------------


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; numpy has no bfloat16, float32 holds it exactly
        value = value.detach().cpu()
        return (value.float() if value.dtype == to_torch("bfloat16") else value).numpy()
    return np.asarray(value)


def _nested_error(name: str, depths: set[int]) -> ValueError:
    return ValueError(f"Column {name!r}: rows must all be numbers or all be flat lists of numbers; "
                      f"found {sorted(depths)}-dimensional rows (lists of lists cannot be padded).")


def _flatten_rows(name: str, values: list[Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows' values end to end, and each row's length (None when every row is one number)."""
    if all(type(value) is list for value in values):  # the common case, without one numpy array per row
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        try:
            flat = np.array(list(itertools.chain.from_iterable(values)))
        except ValueError:
            raise _nested_error(name, {2}) from None
        if flat.ndim != 1:
            raise _nested_error(name, {flat.ndim + 1})
        return (flat if flat.size else flat.astype(np.int64)), lengths
    arrays = [_as_numpy(value) for value in values]
    depths = {array.ndim for array in arrays}
    if len(depths) > 1 or max(depths) > 1:
        raise _nested_error(name, depths)
    if depths == {0}:
        return np.stack(arrays), None
    lengths = np.fromiter((len(array) for array in arrays), dtype=np.int64, count=len(arrays))
    filled = [array for array in arrays if array.size]
    return (np.concatenate(filled) if filled else np.zeros(0, dtype=np.int64)), lengths


def _working_dtype(dtype: np.dtype) -> np.dtype:
    """Values are padded in a dtype that holds any pad (-100 included), and cast once at the end."""
    return np.dtype(np.int64) if dtype.kind in "iu" else dtype


def _cast(tensor, target: str, column: str):
    """``tensor`` in dtype ``target``, or a LossyCastError when an integer value does not fit it."""
    if is_integer(target) and tensor.numel() and not tensor.dtype.is_floating_point and tensor.dtype != to_torch("bool"):
        low, high = integer_range(target)
        smallest, largest = int(tensor.min()), int(tensor.max())
        if smallest < low or largest > high:
            bad = smallest if smallest < low else largest
            raise LossyCastError(f"Column {column!r}: value {bad} does not fit {target}, which holds [{low}, {high}].")
    return tensor.to(to_torch(target))


def _implicit_entry(dtype: np.dtype) -> ColumnDtype:
    """How an unplanned column is served: as ``torch.tensor`` would make it (int64, float32, bool)."""
    return ColumnDtype(storage="bool" if dtype.kind == "b" else "int64" if dtype.kind in "iu" else "float32")


def _target(entry: ColumnDtype, widen: str) -> str:
    if widen == "cpu":
        return entry.served_dtype
    return entry.storage if entry.storage is not None else "bool"


def _pad_column(name: str, values: list[Any], entry: ColumnDtype | None, options: PadOptions):
    flat, lengths = _flatten_rows(name, values)
    if flat.dtype.kind not in "biuf":
        raise ValueError(f"Column {name!r} holds {flat.dtype} values; only numbers and lists of numbers can be padded.")
    entry = entry or _implicit_entry(flat.dtype)
    dtype = _working_dtype(flat.dtype)
    if lengths is None:
        padded = flat.astype(dtype, copy=False)
    else:
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        lengths = truncate(lengths, options.max_length)
        width = padded_width(lengths, options.pad_to_multiple_of)
        padded = pad_rows(flat, starts, lengths, width=width, pad=entry.pad_value, dtype=dtype, padding_side=options.padding_side)
    return _cast(torch.from_numpy(padded), _target(entry, options.widen), name), lengths


def pad_batch(
    rows: Sequence[Mapping[str, Any]],
    plan: DtypePlan | Mapping,
    *,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
    widen: str = "cpu",
) -> dict[str, Any]:
    """Pad ``rows`` (dicts of lists, numpy arrays or tensors) into one batch of tensors, per the plan.

    List values are padded to the longest row (rounded up to ``pad_to_multiple_of``) with their
    column's pad value; numbers become a 1-D tensor; derived columns missing from the rows are
    rebuilt from their source's row lengths; non-numeric values stay a list. ``widen="cpu"`` gives
    the compute dtypes, ``"device"`` the storage dtypes. Keys are kept as they are (``label`` is not
    renamed to ``labels``).
    """
    plan = as_plan(plan)
    options = PadOptions(pad_to_multiple_of, max_length, padding_side, widen)
    if not rows:
        return {}
    names = list(rows[0])
    missing = [(i, name) for i, row in enumerate(rows) for name in names if name not in row]
    if missing:
        raise ValueError(f"Row {missing[0][0]} has no {missing[0][1]!r}; every row needs the keys of the first row {names}.")
    out, lengths_of = {}, {}
    for name in names:
        values = [row[name] for row in rows]
        if isinstance(values[0], (str, bytes)) or (isinstance(values[0], (list, tuple)) and values[0] and isinstance(values[0][0], str)):
            out[name] = values
            continue
        out[name], lengths = _pad_column(name, values, plan.columns.get(name), options)
        if lengths is not None:
            lengths_of[name] = (lengths, out[name].shape[1])
    _add_derived(out, plan, lengths_of, options)
    return out


def _add_derived(out: dict[str, Any], plan: DtypePlan, lengths_of: dict, options: PadOptions) -> None:
    sources = [name for name in lengths_of]
    for name, entry in plan.derived.items():
        source = entry.lengths_from or ("input_ids" if "input_ids" in sources else sources[0] if sources else None)
        if name in out or source not in lengths_of:
            continue
        lengths, width = lengths_of[source]
        mask = _derived(entry, lengths, width, options.padding_side)
        out[name] = _cast(torch.from_numpy(mask), _target(entry, options.widen), name)


class PaddingCollator:
    """A ``collate_fn`` for a row-wise ``DataLoader``: a vectorized drop-in for ``DataCollatorWithPadding``
    and ``DataCollatorForTokenClassification``, padding each column with its plan's pad value.

    Args:
        plan: the dtype plan (pad values, compute and storage dtypes, derived columns).
        pad_to_multiple_of, max_length, padding_side: as in ``hf_dtype.dataloader``.
        widen: ``"cpu"`` (default) for compute dtypes, ``"device"`` for storage dtypes.
    """

    def __init__(self, plan: DtypePlan | Mapping, *, pad_to_multiple_of: int | None = None, max_length: int | None = None,
                 padding_side: str = "right", widen: str = "cpu") -> None:
        self.plan = as_plan(plan)
        self.options = PadOptions(pad_to_multiple_of, max_length, padding_side, widen)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        options = self.options
        return pad_batch(rows, self.plan, pad_to_multiple_of=options.pad_to_multiple_of, max_length=options.max_length,
                         padding_side=options.padding_side, widen=options.widen)

    def __repr__(self) -> str:
        return f"PaddingCollator({self.plan!r}, {self.options})"
