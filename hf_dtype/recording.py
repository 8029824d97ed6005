"""The plan of a dataset: recorded in its features, required of a caller, and completed for the batches a loader makes.

Where a plan lives in a dataset: the ``id`` of each stored column's leaf feature, so it travels with the data.

Of all the places a dataset can hold extra data, the leaf feature's ``id`` survives ``map``,
``filter``, ``select``, ``shuffle``, ``save_to_disk``, ``to_parquet`` and the Hub card (the ``id`` of
a ``List`` does not survive ``map``). A derived column is not stored, so its entry rides on the
column it takes its lengths from. A ``ClassLabel`` column stored narrower than int64 becomes a
``Value`` whose entry keeps the label names; stored as int64 it stays a ``ClassLabel``.

``require_plan`` is the one way a caller gets its plan (given, else recorded, else one error that
says how to give one); ``batch_plan`` completes it with the columns a loader batches unplanned.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from datasets import ClassLabel, Features, LargeList, List, Value

from .dtypes import is_float, to_numpy
from .plan import LABEL_ALIASES, ColumnDtype, DtypePlan
from .ragged import arrow_leaf_dtype, list_depth

__all__ = ["batch_plan", "batchable", "leaf_feature", "plan_of", "plan_of_features", "record_plan", "require_plan", "unplanned_entry"]

logger = logging.getLogger(__name__)

_MARKER = "hf_dtype/1 "

_WAYS = {
    "with_format": "pass plan= to Dataset.with_format, or apply hd.DtypeTransform(plan): ds.with_transform(...) on a Dataset, "
                   "stream.map(..., batched=True) on a stream",
    "dataloader": "or pass plan= to hd.dataloader",
}


def require_plan(given: DtypePlan | Any | None, recorded_in: Any, user: str) -> DtypePlan:
    """The plan ``given`` (a ``DtypePlan`` or its dict form), else the one recorded in ``recorded_in``; else one error
    that says how to give one. ``user`` names the caller: ``"with_format"``, ``"dataloader"``, ``"DtypeTransform"``,
    ``"PaddingCollator"`` (these two take a plan only as given)."""
    plan = given if given is None or isinstance(given, DtypePlan) else DtypePlan(given)
    if plan is None and recorded_in is not None:
        plan = plan_of(recorded_in)
    if plan is not None:
        return plan
    if user in _WAYS:
        raise ValueError(f"The dataset carries no dtype plan: compact it first (hd.compact, lazy on a stream), {_WAYS[user]}.")
    raise ValueError(f"{user} needs a plan: a DtypePlan or its dict form (hd.plan_of(ds) reads a recorded one).")


def leaf_feature(feature: Any) -> Any:
    """The innermost feature of a (nested) list feature."""
    while isinstance(feature, (List, LargeList)):
        feature = feature.feature
    return feature


def _replace_leaf(feature: Any, leaf: Any) -> Any:
    if isinstance(feature, List):
        return List(_replace_leaf(feature.feature, leaf), length=feature.length)
    if isinstance(feature, LargeList):
        return LargeList(_replace_leaf(feature.feature, leaf))
    return leaf


def record_plan(features: Features, plan: DtypePlan) -> Features:
    """``features`` with each stored column's leaf in its storage dtype and carrying its plan entry; derived columns dropped."""
    carried: dict[str, dict[str, dict]] = {}
    for name, entry in plan.derived.items():
        assert entry.lengths_from is not None  # callers resolve the plan first (compact.resolve_for)
        carried.setdefault(entry.lengths_from, {})[name] = {k: v for k, v in entry.to_dict().items() if k != "lengths_from"}
    out = Features({name: feature for name, feature in features.items() if name not in plan.derived})
    for name, entry in plan.stored.items():
        payload: dict[str, Any] = {"column": entry.to_dict()}
        if name in carried:
            payload["carries"] = carried[name]
        marker = _MARKER + json.dumps(payload, separators=(",", ":"))
        if entry.names and entry.storage == "int64":
            leaf = ClassLabel(names=list(entry.names), id=marker)
        else:
            assert entry.storage is not None  # a stored entry has a storage dtype
            leaf = Value(to_numpy(entry.storage).name, id=marker)
        out[name] = _replace_leaf(features[name], leaf)
    return out


def plan_of_features(features: Features | None) -> DtypePlan | None:
    """The plan recorded in ``features``, or None where no column carries one."""
    if not features:
        return None
    return _parse_recorded(tuple((name, getattr(leaf_feature(feature), "id", None)) for name, feature in features.items()))


@functools.lru_cache(maxsize=256)
def _parse_recorded(recorded: tuple[tuple[str, str | None], ...]) -> DtypePlan | None:
    """Parse once per distinct set of leaf ids: ``datasets`` builds a formatter on every access."""
    names = {name for name, _ in recorded}
    columns: dict[str, ColumnDtype] = {}
    for name, leaf_id in recorded:
        if not isinstance(leaf_id, str) or not leaf_id.startswith(_MARKER):
            continue
        payload = json.loads(leaf_id[len(_MARKER):])
        columns[name] = ColumnDtype.from_dict(payload["column"], name)
        for derived_name, derived in payload.get("carries", {}).items():
            if derived_name not in names:
                columns[derived_name] = ColumnDtype.from_dict({**derived, "lengths_from": name}, derived_name)
    return DtypePlan(columns) if columns else None


def plan_of(dataset: Any) -> DtypePlan | None:
    """The plan recorded in ``dataset`` by ``compact``, or None.

    Args:
        dataset: a ``Dataset``, ``IterableDataset``, ``DatasetDict`` (its splits must carry the same plan) or ``Features``.
    """
    if isinstance(dataset, Features):
        return plan_of_features(dataset)
    if isinstance(dataset, dict):  # DatasetDict, IterableDatasetDict
        plans = {split: plan_of(part) for split, part in dataset.items()}
        if len({json.dumps(p.to_dict() if p else None, sort_keys=True) for p in plans.values()}) > 1:
            found = {split: plan and plan.to_dict() for split, plan in plans.items()}
            raise ValueError(f"The splits carry different plans: {found}; compact them with one plan.")
        return next(iter(plans.values()), None)
    return plan_of_features(getattr(dataset, "features", None))


def batchable(schema: pa.Schema) -> dict[str, int]:
    """The list depth of every column of numbers (0) or lists of numbers (1, 2, ...)."""
    return {field.name: list_depth(field.type) for field in schema if arrow_leaf_dtype(field.type) is not None}


def batch_plan(schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None) -> tuple[DtypePlan, list[str]]:
    """The plan a loader serves (unplanned columns added as stored) and the columns it batches, checked.

    By default every column of numbers or lists of numbers that the dataset (of ``schema``) holds,
    planned or not (a plan that names some columns does not drop the others: the model still gets its
    ``attention_mask``), and every derived column whose source it holds; other columns (text,
    lists of lists) are left out, which the log says.
    """
    depth = batchable(schema)
    unplanned = {name: unplanned_entry(name, arrow_leaf_dtype(schema.field(name).type) or "int64", d)
                 for name, d in depth.items() if name not in plan and d in (0, 1)}
    plan = (plan | unplanned).resolve([name for name, d in depth.items() if d == 1], check=True, present=schema.names)
    derived = {name: entry for name, entry in plan.derived.items() if name not in schema.names}
    if columns is None:
        chosen = [name for name in plan if name in schema.names or (name in derived and derived[name].lengths_from in schema.names)]
        left_out = [name for name in schema.names if name not in chosen]
        if left_out:
            logger.info("Columns %s are not batched: only numbers and lists of numbers are (name the columns with columns=).",
                        left_out)
    else:
        chosen = [columns] if isinstance(columns, str) else list(columns)
        unknown = [name for name in chosen if name not in schema.names and name not in derived]
        if unknown:
            raise ValueError(f"Unknown column(s) {unknown}: expected columns of the dataset {schema.names} "
                             f"or derived columns of the plan {sorted(derived)}.")
    entries = dict(plan.columns)
    for name in chosen:
        if name in derived:
            source = derived[name].lengths_from
            if source is None or depth.get(source) != 1:
                what = "which the dataset does not have" if source not in schema.names else "which is not a list column"
                raise ValueError(f"Derived column {name!r} takes its row lengths from {source!r}, {what}.")
        elif depth.get(name) not in (0, 1):
            what = "lists of lists" if name in depth else f"{schema.field(name).type} values"
            hint = "" if columns is not None else "; leave it out with columns=[...]"
            raise ValueError(f"Column {name!r} holds {what}; only numbers and lists of numbers can be batched{hint}.")
        elif name not in entries:
            storage = arrow_leaf_dtype(schema.field(name).type)
            assert storage is not None  # batchable keeps columns of numbers and lists of numbers only
            entries[name] = unplanned_entry(name, storage, depth[name])
    return DtypePlan(entries), chosen


def unplanned_entry(name: str, storage: str, depth: int) -> ColumnDtype:
    """A column the plan does not name, as stored; a list column of labels pads with -100, as the collators pad it."""
    entry = ColumnDtype(storage=storage)
    return entry.for_labels() if depth == 1 and name in ("labels", *LABEL_ALIASES) and not is_float(storage) else entry
