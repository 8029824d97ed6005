"""``compact``: store each column in its plan's storage dtype, checked, with the plan recorded.

It runs as a batched ``Dataset.map`` on Arrow batches, so it is cached and fingerprinted like any
``datasets`` transform, a memory-mapped dataset stays memory-mapped, and an error part-way leaves
no cache file behind. The source dataset is never modified.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Dataset, DatasetDict

from .casting import LossyCastError, cast_array, flatten_leaf, row_lengths
from .dtypes import DTYPE_NAMES, arrow_leaf_dtype
from .plan import DERIVED_KINDS, ColumnDtype, DtypePlan
from .recording import plan_of, record_plan

__all__ = ["compact", "resolve_plan"]


def resolve_plan(dataset: Dataset, plan: DtypePlan | Mapping[str, Any]) -> DtypePlan:
    """``plan`` checked against ``dataset``'s columns, with each derived column's ``lengths_from`` filled in."""
    plan = plan if isinstance(plan, DtypePlan) else DtypePlan.from_dict(plan)
    columns = dataset.column_names
    unknown = [name for name in plan.stored if name not in columns]
    if unknown:
        raise ValueError(f"The plan names column(s) {unknown} that the dataset does not have; its columns are {columns}.")
    for name in plan.stored:
        if arrow_leaf_dtype(dataset.data.schema.field(name).type) is None:
            raise ValueError(
                f"Column {name!r} is of type {dataset.data.schema.field(name).type}; a planned column must hold numbers "
                f"({', '.join(DTYPE_NAMES)}) or lists of them."
            )
    sequences = [name for name in plan.stored if pa.types.is_list(dataset.data.schema.field(name).type)
                 or pa.types.is_large_list(dataset.data.schema.field(name).type)]
    resolved = dict(plan.columns)
    for name, entry in plan.derived.items():
        if entry.lengths_from is None:
            if not sequences:
                raise ValueError(f"Derived column {name!r} needs a stored sequence column in the plan to take its row lengths from.")
            source = "input_ids" if "input_ids" in sequences else sequences[0]
            resolved[name] = ColumnDtype(**{**entry.to_dict(), "lengths_from": source})
    return DtypePlan(resolved)


class _BatchCaster:
    """The ``map`` function of ``compact``: checks and casts one Arrow batch."""

    def __init__(self, plan: DtypePlan, source_plan: DtypePlan | None, exact: bool) -> None:
        self.plan = plan
        self.source_bfloat16 = {name for name, entry in (source_plan or {}).items() if entry.storage == "bfloat16"}
        self.exact = exact

    def __call__(self, batch: pa.Table, indices: list[int]) -> pa.Table:
        columns = {name: batch.column(name) for name in batch.column_names if name not in self.plan.derived}
        for name, entry in self.plan.stored.items():
            columns[name] = cast_array(
                batch.column(name), entry.storage, column=name, source_bfloat16=name in self.source_bfloat16,
                pad=entry.pad, exact=self.exact, rows=indices,
            )
        for name, entry in self.plan.derived.items():
            if name in batch.column_names:
                self._verify_derived(batch, name, entry, indices)
        return pa.table(columns)

    @staticmethod
    def _verify_derived(batch: pa.Table, name: str, entry: ColumnDtype, indices: list[int]) -> None:
        column = batch.column(name).combine_chunks()
        if column.null_count:
            raise LossyCastError(f"Column {name!r} has null rows, so it is not constant; store it instead of deriving it.")
        leaf, levels = flatten_leaf(column)
        values = leaf.to_numpy(zero_copy_only=False)
        constant = DERIVED_KINDS[entry.derived]
        if values.size and (values != constant).any():
            from .casting import leaf_row

            i = int(np.argmax(values != constant))
            raise LossyCastError(
                f"Column {name!r}, row {indices[leaf_row(i, levels)]}: holds {values[i]}, so it is not all {entry.derived} "
                f"and cannot be derived; store it instead (e.g. as bool or int8)."
            )
        own = row_lengths(column)
        source = row_lengths(batch.column(entry.lengths_from).combine_chunks())
        if (own != source).any():
            i = int(np.argmax(own != source))
            raise LossyCastError(
                f"Column {name!r}, row {indices[i]}: has length {own[i]} but {entry.lengths_from!r} has {source[i]}, "
                f"so it cannot be rebuilt from {entry.lengths_from!r}'s lengths; store it instead."
            )


def _compact_split(dataset: Dataset, plan: DtypePlan | Mapping | None, *, exact: bool, num_proc: int | None,
                   vocab_size: int | None, floats: str | None) -> Dataset:
    if plan is None:
        from .inference import infer_plan

        plan = infer_plan(dataset, vocab_size=vocab_size, floats=floats)
    plan = resolve_plan(dataset, plan)
    features = record_plan(dataset.features, plan)
    for name in plan.derived:
        features.pop(name, None)
    derived_present = [name for name in plan.derived if name in dataset.column_names]
    if len(dataset) == 0:  # map skips empty datasets, features included
        return Dataset.from_dict({name: [] for name in features}, features=features, split=dataset.split)
    compacted = dataset.with_format("arrow").map(
        _BatchCaster(plan, plan_of(dataset), exact),
        batched=True,
        with_indices=True,
        features=features,
        remove_columns=derived_present,
        num_proc=num_proc,
        desc="Compacting",
    )
    return compacted.with_format(None)


def compact(
    dataset: Dataset | DatasetDict,
    plan: DtypePlan | Mapping[str, Any] | None = None,
    *,
    exact: bool = False,
    num_proc: int | None = None,
    vocab_size: int | None = None,
    floats: str | None = None,
) -> Dataset | DatasetDict:
    """Store each planned column of ``dataset`` in its storage dtype, checked, and record the plan.

    Args:
        dataset: a ``Dataset`` or ``DatasetDict``; it is not modified.
        plan: a ``DtypePlan`` or its dict form; ``None`` infers one (``infer_plan``) from the data,
            per split for a ``DatasetDict`` unless given.
        exact: also require float narrowing to be exact (float16 / bfloat16 of float32 data).
        num_proc: processes for the underlying ``map``.
        vocab_size, floats: passed to ``infer_plan`` when ``plan`` is None.

    Returns:
        The compacted dataset, unformatted, whose features carry the plan (read it with ``plan_of``).

    Raises:
        LossyCastError: a value that the storage dtype cannot hold, with its column and row.
        ValueError: a plan that does not fit the dataset (unknown column, non-numeric column, ...).
    """
    options = dict(exact=exact, num_proc=num_proc, vocab_size=vocab_size, floats=floats)
    if isinstance(dataset, DatasetDict):
        if plan is None:
            from .inference import infer_plan

            plan = infer_plan(dataset, vocab_size=vocab_size, floats=floats)
        return DatasetDict({split: _compact_split(part, plan, **options) for split, part in dataset.items()})
    if not isinstance(dataset, Dataset):
        raise TypeError(f"compact takes a datasets.Dataset or DatasetDict; got {type(dataset).__name__}.")
    return _compact_split(dataset, plan, **options)
