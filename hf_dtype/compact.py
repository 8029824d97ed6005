"""``compact``: store each column in its plan's storage dtype, checked, with the plan recorded.

Every cast is checked before its result is used: integer ranges, ``NaN`` / ``inf`` / fractions into
integers, integers into floats (exact or an error), float overflow to ``inf`` on narrowing and,
where asked, float exactness. A failure raises a ``LossyCastError`` that names the column, the
value, its row, and what would hold it. ``compact`` runs the casts as a batched ``Dataset.map`` on
Arrow batches, so it is cached and fingerprinted like any ``datasets`` transform, a memory-mapped
dataset stays memory-mapped, and an error part-way leaves no cache file behind. The source dataset
is never modified; a stream is cast lazily as it is read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict

from .dtypes import DTYPE_NAMES, LossyCastError, bfloat16_bits_to_float32, check_integers, is_float, is_integer, narrow_float, to_arrow
from .plan import ColumnDtype, DtypePlan, as_plan
from .ragged import arrow_leaf_dtype, flatten_leaf, leaf_row, list_depth, row_lengths
from .recording import leaf_feature, plan_of, record_plan

__all__ = ["cast_array", "compact", "resolve_for"]

logger = logging.getLogger(__name__)


_NULLS = "a planned column needs every value present (fill or drop nulls first)"


class _Rows:
    """Names the dataset row of a leaf value, for error messages."""

    def __init__(self, column: str, rows: Sequence[int], levels: list[np.ndarray]) -> None:
        self.column, self.rows, self.levels = column, rows, levels

    def __call__(self, leaf_index: int) -> int:
        return self.rows[leaf_row(leaf_index, self.levels)]

    def fail(self, leaf_index: int, message: str) -> None:
        raise LossyCastError(f"Column {self.column!r}, row {self(leaf_index)}: {message}")


def _check_present(array: pa.Array, leaf: pa.Array, where: _Rows) -> None:
    """Reject nulls and non-numeric leaves: a dtype plan has nothing to say about them."""
    if array.null_count:
        row = where.rows[int(np.argmax(~np.asarray(array.is_valid())))]
        raise LossyCastError(f"Column {where.column!r}, row {row}: the row is null; {_NULLS}.")
    if leaf.null_count:
        where.fail(int(np.argmax(~np.asarray(leaf.is_valid()))), f"a null value; {_NULLS}.")
    if not (pa.types.is_integer(leaf.type) or pa.types.is_floating(leaf.type) or pa.types.is_boolean(leaf.type)):
        raise LossyCastError(f"Column {where.column!r} holds {leaf.type} values; a planned column must hold numbers (or lists of them).")


def _first(mask: np.ndarray) -> int | None:
    return int(np.argmax(mask)) if mask.any() else None


def _to_float(values: np.ndarray, target: str, exact: bool, where: _Rows) -> np.ndarray:
    stored, back = narrow_float(values, target)
    if values.dtype.kind != "f":  # integers into floats: every one must be exact
        bad = _first(back != values)
        if bad is not None:
            where.fail(bad, f"integer {values[bad]} is not exact in {target} (it becomes {back[bad]:.0f}); use a wider dtype.")
        return stored
    source = values.astype(np.float64)
    bad = _first(np.isinf(back) & np.isfinite(source))
    if bad is not None:
        wider = "float32" if target in ("float16", "bfloat16") else "float64"
        where.fail(bad, f"value {values[bad]} overflows {target} to inf; {wider} holds it.")
    if exact:
        differs = ~((back == source) | (np.isnan(back) & np.isnan(source)))
        if differs.any():
            with np.errstate(invalid="ignore"):
                error = np.where(differs, np.abs(back - source), 0.0)
            i = int(np.argmax(error))
            where.fail(i, f"{target} is not exact: value {values[i]} becomes {back[i]} (largest error {error[i]:.6g}).")
    return stored


def _to_integer(values: np.ndarray, target: str, pad: int | float | None, where: _Rows) -> np.ndarray:
    if values.dtype.kind == "f":
        bad = _first(~np.isfinite(values))
        if bad is not None:
            where.fail(bad, f"{values[bad]} cannot be stored in integer dtype {target}; fill or drop non-finite values first.")
        bad = _first(values != np.round(values))
        if bad is not None:
            where.fail(bad, f"{values[bad]} has a fraction, so integer dtype {target} cannot hold it; use a float dtype.")
    check_integers(values, target, column=where.column, row_of=where, pad=None if pad is None else int(pad))
    return values.astype(target)


def cast_array(
    array: pa.Array | pa.ChunkedArray,
    target: str,
    *,
    column: str,
    source_bfloat16: bool = False,
    pad: int | float | None = None,
    exact: bool = False,
    rows: Sequence[int] | None = None,
) -> pa.Array:
    """``array`` cast to storage dtype ``target`` (lists kept), or a ``LossyCastError``.

    ``rows`` are the dataset row numbers of ``array``'s rows, for the error message; ``source_bfloat16``
    says the array holds bfloat16 bit patterns.
    """
    leaf, levels = flatten_leaf(array)
    where = _Rows(column, range(len(leaf) if not levels else len(levels[0]) - 1) if rows is None else rows, levels)
    _check_present(array, leaf, where)
    values = leaf.to_numpy(zero_copy_only=False)
    if source_bfloat16:
        values = bfloat16_bits_to_float32(values)
    if values.dtype.kind == "b":
        values = values.astype(np.uint8)
    if is_float(target):
        new_leaf = pa.array(_to_float(values, target, exact, where), type=to_arrow(target))
    elif values.dtype.kind in "iu" and target != "bool":
        check_integers(values, target, column=column, row_of=where, pad=None if pad is None else int(pad))
        new_leaf = pc.cast(leaf, to_arrow(target), safe=False)
    else:
        new_leaf = pa.array(_to_integer(values, target, pad, where), type=to_arrow(target))
    for offsets in reversed(levels):
        new_leaf = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), new_leaf)
    return new_leaf


def resolve_for(schema: pa.Schema, features: Any, plan: DtypePlan | Mapping[str, Any]) -> DtypePlan:
    """``plan`` checked against a dataset's columns: derived columns resolved, ClassLabel names kept."""
    plan = as_plan(plan)
    unknown = [name for name in plan.stored if name not in schema.names]
    if unknown:
        raise ValueError(f"The plan names column(s) {unknown} that the dataset does not have; its columns are {schema.names}.")
    entries = dict(plan.columns)
    for name, entry in plan.stored.items():
        arrow_type = schema.field(name).type
        if arrow_leaf_dtype(arrow_type) is None:
            raise ValueError(f"Column {name!r} is of type {arrow_type}; a planned column must hold numbers "
                             f"({', '.join(DTYPE_NAMES)}) or lists of them.")
        leaf = leaf_feature(features[name]) if features and name in features else None
        if isinstance(leaf, ClassLabel) and entry.names is None:
            if is_integer(entry.storage):
                entries[name] = ColumnDtype(**{**entry.to_dict(), "names": leaf.names})
            else:
                logger.warning("Column %r: its ClassLabel names are not kept in %s storage (integer storage keeps them).",
                               name, entry.storage)
    return DtypePlan(entries).resolve([name for name in schema.names if list_depth(schema.field(name).type) == 1], check=True)


class _BatchCaster:
    """The ``map`` function of ``compact``: checks and casts one Arrow batch."""

    def __init__(self, plan: DtypePlan, source_plan: DtypePlan | None, exact: bool) -> None:
        self.plan = plan
        self.source_bfloat16 = {name for name, entry in (source_plan or {}).items() if entry.storage == "bfloat16"}
        self.exact = exact

    def __call__(self, batch: pa.Table, indices: list[int]) -> pa.Table:
        columns = {name: batch.column(name) for name in batch.column_names if name not in self.plan.derived}
        for name, entry in self.plan.stored.items():
            assert entry.storage is not None  # a stored entry has a storage dtype
            columns[name] = cast_array(batch.column(name), entry.storage, column=name, source_bfloat16=name in self.source_bfloat16,
                                       pad=entry.pad, exact=self.exact, rows=indices)
        for name, entry in self.plan.derived.items():
            if name in batch.column_names:
                _verify_derived(batch, name, entry, indices)
        return pa.table(columns)


def _verify_derived(batch: pa.Table, name: str, entry: ColumnDtype, indices: list[int]) -> None:
    """A column planned as derived must be constant and as long as its source in every row: else it cannot be rebuilt."""
    column = batch.column(name)
    if column.null_count:
        raise LossyCastError(f"Column {name!r} has null rows, so it is not constant; store it instead of deriving it.")
    leaf, levels = flatten_leaf(column)
    values = leaf.to_numpy(zero_copy_only=False)
    assert entry.derived is not None  # only derived entries are verified
    differs = values != entry.derived_value
    if differs.any():
        i = int(np.argmax(differs))
        raise LossyCastError(f"Column {name!r}, row {indices[leaf_row(i, levels)]}: holds {values[i]}, so it is not all "
                             f"{entry.derived} and cannot be derived; store it instead (e.g. as bool or int8).")
    own, source = row_lengths(column), row_lengths(batch.column(entry.lengths_from))
    if (own != source).any():
        i = int(np.argmax(own != source))
        raise LossyCastError(f"Column {name!r}, row {indices[i]}: has length {own[i]} but {entry.lengths_from!r} has {source[i]}, "
                             f"so it cannot be rebuilt from {entry.lengths_from!r}'s lengths; store it instead.")


def _compact_split(dataset: Dataset, plan: DtypePlan | Mapping | None, *, exact: bool, num_proc: int | None,
                   infer_options: dict[str, Any]) -> Dataset:
    if plan is None:
        from .infer import infer_plan

        plan = infer_plan(dataset, **infer_options)
    plan = resolve_for(dataset.data.schema, dataset.features, plan)
    features = record_plan(dataset.features, plan)
    if len(dataset) == 0:  # map skips empty datasets, features included
        return Dataset.from_dict({name: [] for name in features}, features=features, split=dataset.split)
    compacted = dataset.with_format("arrow").map(
        _BatchCaster(plan, plan_of(dataset), exact),
        batched=True,
        with_indices=True,
        features=features,
        remove_columns=[name for name in plan.derived if name in dataset.column_names],
        num_proc=num_proc,
        desc="Compacting",
    )
    return compacted.with_format(None)


def _compact_stream(stream: IterableDataset, plan: DtypePlan | Mapping | None, *, exact: bool,
                    infer_options: dict[str, Any]) -> IterableDataset:
    """A stream that casts each Arrow batch as it is read, with the checks of ``compact``; its features carry the plan."""
    if plan is None:
        from .infer import infer_plan

        plan = infer_plan(stream, **infer_options)
    features = stream.features
    if features is None:  # a stream of JSON or text files knows its columns once it is read
        first = next(iter(stream.with_format("arrow").iter(batch_size=1)), None)
        if first is None:
            raise ValueError("The stream is empty: nothing to compact.")
        features = Features.from_arrow_schema(first.schema)
    plan = resolve_for(features.arrow_schema, features, plan)
    return stream.with_format("arrow").map(
        _BatchCaster(plan, plan_of(stream), exact), batched=True, with_indices=True, features=record_plan(features, plan),
        remove_columns=[name for name in plan.derived if name in features],
    ).with_format(None)


def compact(
    dataset: Dataset | DatasetDict | IterableDataset | IterableDatasetDict,
    plan: DtypePlan | Mapping[str, Any] | None = None,
    *,
    exact: bool = False,
    num_proc: int | None = None,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    floats: str | None = None,
) -> Dataset | DatasetDict:
    """Store each planned column of ``dataset`` in its storage dtype, checked, and record the plan.

    Args:
        dataset: a ``Dataset`` or ``DatasetDict``, or a stream (``IterableDataset``,
            ``IterableDatasetDict``), cast lazily as it is read; it is not modified.
        plan: a ``DtypePlan`` or its dict form; ``None`` infers one (``infer_plan``) that holds every split.
        exact: also require float narrowing to be exact (float16 / bfloat16 of float32 data).
        num_proc: processes for the underlying ``map``.
        vocab_size, pad_token_id, floats: passed to ``infer_plan`` when ``plan`` is None.

    Returns:
        The compacted dataset, unformatted, whose features carry the plan (read it with ``plan_of``).

    Raises:
        LossyCastError: a value that the storage dtype cannot hold, with its column and row.
        ValueError: a plan that does not fit the dataset (unknown column, non-numeric column, ...).
    """
    infer_options: dict[str, Any] = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, floats=floats)
    if isinstance(dataset, IterableDataset):
        return _compact_stream(dataset, plan, exact=exact, infer_options=infer_options)
    if isinstance(dataset, IterableDatasetDict):
        if plan is None:
            from .infer import infer_plan

            plan = infer_plan(dataset, **infer_options)
        return IterableDatasetDict({split: _compact_stream(part, plan, exact=exact, infer_options=infer_options)
                                    for split, part in dataset.items()})
    if isinstance(dataset, DatasetDict):
        if plan is None:
            from .infer import infer_plan

            plan = infer_plan(dataset, **infer_options)
        return DatasetDict({split: _compact_split(part, plan, exact=exact, num_proc=num_proc, infer_options=infer_options)
                            for split, part in dataset.items()})
    if not isinstance(dataset, Dataset):
        raise TypeError(f"compact takes a datasets.Dataset, DatasetDict, IterableDataset or IterableDatasetDict; "
                        f"got {type(dataset).__name__}.")
    return _compact_split(dataset, plan, exact=exact, num_proc=num_proc, infer_options=infer_options)
