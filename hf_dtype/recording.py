"""Recording a plan inside a dataset's features, so it travels with the dataset.

Each stored column's entry goes into the ``id`` field of its leaf ``Value`` feature: of all the
places a dataset can hold extra data, that one survives ``map``, ``filter``, ``select``,
``shuffle``, ``save_to_disk``, ``to_parquet`` and the Hub card (the ``id`` of a ``List`` does not
survive ``map``). A derived column is not stored, so its entry rides on the column it takes its
lengths from.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Features, LargeList, List, Value

from .dtypes import to_numpy
from .plan import ColumnDtype, DtypePlan

__all__ = ["plan_of", "plan_of_features", "record_plan"]

logger = logging.getLogger(__name__)

_MARKER = "hf_dtype/1 "


def _leaf(feature: Any) -> Any:
    while isinstance(feature, (List, LargeList)):
        feature = feature.feature
    return feature


def _replace_leaf(feature: Any, leaf: Value) -> Any:
    if isinstance(feature, List):
        return List(_replace_leaf(feature.feature, leaf), length=feature.length)
    if isinstance(feature, LargeList):
        return LargeList(_replace_leaf(feature.feature, leaf))
    return leaf


def record_plan(features: Features, plan: DtypePlan) -> Features:
    """``features`` with each stored column's leaf set to its storage dtype and carrying its plan entry."""
    carried: dict[str, dict[str, dict]] = {}
    for name, entry in plan.derived.items():
        carried.setdefault(entry.lengths_from, {})[name] = entry.to_dict()
    out = Features(features)
    for name, entry in plan.stored.items():
        if isinstance(_leaf(features[name]), ClassLabel):
            logger.warning("Column %r: its ClassLabel names are not kept in %s storage.", name, entry.storage)
        payload = {"column": entry.to_dict()}
        if name in carried:
            payload["carries"] = carried[name]
        leaf = Value(to_numpy(entry.storage).name, id=_MARKER + json.dumps(payload, separators=(",", ":")))
        out[name] = _replace_leaf(features[name], leaf)
    return out


def plan_of_features(features: Features | None) -> DtypePlan | None:
    """The plan recorded in ``features``, or None where no column carries one."""
    if not features:
        return None
    recorded = tuple((name, getattr(_leaf(feature), "id", None)) for name, feature in features.items())
    return _parse_recorded(recorded)


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


def plan_of(dataset: Dataset | DatasetDict | Features) -> DtypePlan | None:
    """The plan recorded in ``dataset`` by ``compact``, or None. A ``DatasetDict``'s splits must agree."""
    if isinstance(dataset, Features):
        return plan_of_features(dataset)
    if isinstance(dataset, DatasetDict):
        plans = {split: plan_of_features(part.features) for split, part in dataset.items()}
        distinct = {json.dumps(p.to_dict() if p else None, sort_keys=True) for p in plans.values()}
        if len(distinct) > 1:
            found = {split: plan and plan.to_dict() for split, plan in plans.items()}
            raise ValueError(f"The splits carry different plans: {found}; compact them with one plan.")
        return next(iter(plans.values()), None)
    return plan_of_features(getattr(dataset, "features", None))
