"""``compact``: store each column in its plan's storage dtype, checked, with the plan recorded.

It runs as a batched ``Dataset.map`` on Arrow batches, so it is cached and fingerprinted like any
``datasets`` transform, a memory-mapped dataset stays memory-mapped, and an error part-way leaves
no cache file behind. The source dataset is never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict

from .arrow import arrow_leaf_dtype, flatten_leaf, leaf_row, list_depth, row_lengths
from .casting import cast_array
from .dtypes import DTYPE_NAMES, LossyCastError, is_integer
from .plan import DERIVED_KINDS, ColumnDtype, DtypePlan, as_plan
from .recording import leaf_feature, plan_of, record_plan

__all__ = ["compact", "resolve_for"]

logger = logging.getLogger(__name__)


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
    resolved = DtypePlan(entries).resolve([name for name in schema.names if list_depth(schema.field(name).type) == 1])
    if resolved.unresolved():
        raise ValueError(f"Derived column(s) {resolved.unresolved()} need a stored sequence column in the plan to take their "
                         f"row lengths from (lengths_from); the plan stores none.")
    return resolved


class _BatchCaster:
    """The ``map`` function of ``compact``: checks and casts one Arrow batch."""

    def __init__(self, plan: DtypePlan, source_plan: DtypePlan | None, exact: bool) -> None:
        self.plan = plan
        self.source_bfloat16 = {name for name, entry in (source_plan or {}).items() if entry.storage == "bfloat16"}
        self.exact = exact

    def __call__(self, batch: pa.Table, indices: list[int]) -> pa.Table:
        columns = {name: batch.column(name) for name in batch.column_names if name not in self.plan.derived}
        for name, entry in self.plan.stored.items():
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
    differs = values != DERIVED_KINDS[entry.derived]
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
    infer_options = dict(vocab_size=vocab_size, pad_token_id=pad_token_id, floats=floats)
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
