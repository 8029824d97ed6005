"""Column dtypes and plans: what each column is stored as, served as, and padded with.

A plan is checked when it is built, so a bad plan file fails at once with the key that is wrong and
what was expected. ``resolve`` is the one place where a derived column learns which stored column
gives it its row lengths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import Any, NoReturn, cast, overload

from .dtypes import canonical_dtype, integer_range, is_float, is_integer, smallest_integer_dtype, widen_batch

__all__ = ["DERIVED_KINDS", "LABEL_ALIASES", "ColumnDtype", "DtypePlan", "as_plan"]

DERIVED_KINDS = {"ones": 1, "zeros": 0}
LABEL_ALIASES = ("label", "label_ids")
"""Columns that batches hand to the model as ``labels``, as ``DataCollatorWithPadding`` does."""

_ENTRY_KEYS = ("storage", "compute", "pad", "derived", "lengths_from", "names")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ColumnDtype:
    """The dtypes of one column.

    Args:
        storage: what Arrow holds (``None`` for a derived column, which is not stored).
        compute: what the model receives; ``None`` serves what ``datasets`` would (int64, float32, bool).
        pad: the value that pads a sequence column in a batch (``0``, ``-100``, a pad token id).
        derived: ``"ones"`` or ``"zeros"`` for a constant sequence column rebuilt from row lengths.
        lengths_from: for a derived column, the stored sequence column whose row lengths it has.
        names: the label names of a ``ClassLabel`` column, kept when it is stored in a narrow dtype.
    """

    storage: str | None = None
    compute: str | None = None
    pad: int | float | None = None
    derived: str | None = None
    lengths_from: str | None = None
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for key in ("storage", "compute"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, canonical_dtype(getattr(self, key)))
        if self.pad is not None and not _is_number(self.pad):
            raise ValueError(f"pad must be a number (e.g. 0 or -100); got {self.pad!r} ({type(self.pad).__name__}).")
        if self.derived is not None:
            if self.derived not in DERIVED_KINDS:
                raise ValueError(f"Unknown derived kind {self.derived!r}: expected one of {sorted(DERIVED_KINDS)}.")
            if self.storage is not None:
                raise ValueError(f"A derived ({self.derived!r}) column is not stored, so it takes no storage dtype; got {self.storage!r}.")
        elif self.storage is None:
            raise ValueError("A column dtype needs a storage dtype, or derived='ones' / 'zeros'.")
        if self.lengths_from is not None:
            if self.derived is None:
                raise ValueError("lengths_from applies to derived columns only.")
            if not isinstance(self.lengths_from, str):
                raise ValueError(f"lengths_from must be a column name; got {self.lengths_from!r}.")
        if self.names is not None:
            if isinstance(self.names, str) or not all(isinstance(name, str) for name in self.names):
                raise ValueError(f"names must be a list of label names (strings); got {self.names!r}.")
            object.__setattr__(self, "names", tuple(self.names))
            if not is_integer(self.storage):
                raise ValueError(f"Label names need an integer storage dtype; got {self.storage!r}.")
        if self.pad is not None and self.storage is not None and not is_float(self.storage):
            _check_pad_fits(self.pad, self.storage)

    @property
    def served_dtype(self) -> str:
        """The dtype a value of this column is served in: the compute dtype, or the default of ``datasets``."""
        if self.compute is not None:
            return self.compute
        if self.derived is not None or is_integer(self.storage):
            return "int64"
        return "bool" if self.storage == "bool" else "float32"

    @property
    def derived_value(self) -> int:
        """The constant of a derived column where its source has values (1 for ``"ones"``, 0 for ``"zeros"``)."""
        assert self.derived is not None  # only derived columns have one
        return DERIVED_KINDS[self.derived]

    def for_labels(self) -> ColumnDtype:
        """This entry for labels: -100 marks the positions the loss ignores, so the storage is one that holds it."""
        if self.pad == -100:
            return self
        low, high = integer_range(self.storage)
        return ColumnDtype(storage=smallest_integer_dtype(min(low, -100), high), compute=self.compute or "int64", pad=-100)

    @property
    def pad_value(self) -> int | float:
        """The value that pads this column in a batch: ``pad``, or 0."""
        return 0 if self.pad is None else self.pad

    def to_dict(self) -> dict[str, Any]:
        """The entry as the JSON object of a plan file (keys that are None left out)."""
        out = {key: getattr(self, key) for key in _ENTRY_KEYS if getattr(self, key) is not None}
        if "names" in out:
            out["names"] = list(out["names"])
        return out

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any] | str | ColumnDtype, column: str = "?") -> ColumnDtype:
        """Build from ``{"storage": ..., "compute": ..., "pad": ...}`` or a bare storage dtype name."""
        if isinstance(entry, ColumnDtype):
            return entry
        if not isinstance(entry, Mapping):  # a bare storage dtype: "uint16", np.uint16, torch.uint16, ...
            entry = {"storage": entry}
        unknown = sorted(set(entry) - set(_ENTRY_KEYS))
        if unknown:
            raise ValueError(f"Column {column!r}: unknown key(s) {unknown}; expected some of {list(_ENTRY_KEYS)}.")
        try:
            return cls(**entry)
        except ValueError as error:
            raise ValueError(f"Column {column!r}: {error}") from None


def _check_pad_fits(pad: int | float, storage: str) -> None:
    if isinstance(pad, float) and not pad.is_integer():
        raise ValueError(f"Pad value {pad} is not an integer, so {storage} cannot hold it.")
    low, high = integer_range(storage)
    if not low <= pad <= high:
        signed = " (a negative pad such as -100 needs a signed dtype, e.g. int8)" if pad < 0 else ""
        raise ValueError(f"Pad value {pad} does not fit storage dtype {storage}, which holds [{low}, {high}]{signed}.")


@dataclass(frozen=True)
class DtypePlan(Mapping[str, ColumnDtype]):
    """The column dtypes of one dataset, by column name. Columns outside the plan are left as they are.

    A plan is immutable: ``plan | {"input_ids": "uint16"}`` and ``plan.replace(input_ids="uint16")`` make new ones.

    Args:
        columns: column name to ``ColumnDtype``, or to its dict form, or to a bare storage dtype name.
        note: where the plan came from, printed under its table (not saved, not compared).
    """

    columns: Mapping[str, ColumnDtype] = field(default_factory=dict)
    note: str = field(default="", compare=False)  # where the plan came from, printed under its table (not saved)

    def __post_init__(self) -> None:
        if not isinstance(self.columns, Mapping):
            raise ValueError(f"A plan is a mapping of column name to column dtype; got {type(self.columns).__name__}.")
        columns = {}
        for name, entry in self.columns.items():
            if not isinstance(name, str):
                raise ValueError(f"Column names are strings; got {name!r}.")
            columns[name] = ColumnDtype.from_dict(entry, name)
        object.__setattr__(self, "columns", columns)
        for name, entry in columns.items():
            source = entry.lengths_from
            if source is not None and (source not in columns or columns[source].derived is not None):
                raise ValueError(f"Column {name!r} takes its lengths from {source!r}, which is not a stored column of the plan.")

    def __getitem__(self, name: str) -> ColumnDtype:
        return self.columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def stored(self) -> dict[str, ColumnDtype]:
        """The entries of the columns Arrow holds."""
        return {name: entry for name, entry in self.columns.items() if entry.derived is None}

    @property
    def derived(self) -> dict[str, ColumnDtype]:
        """The entries of the constant columns rebuilt from row lengths, not stored."""
        return {name: entry for name, entry in self.columns.items() if entry.derived is not None}

    def entry_for(self, key: str) -> ColumnDtype | None:
        """The entry of batch key ``key``; ``labels`` falls back to a ``label`` / ``label_ids`` entry (renamed in batches)."""
        entry = self.columns.get(key)
        if entry is None and key == "labels":
            entry = next((self.columns[alias] for alias in LABEL_ALIASES if alias in self.columns), None)
        return entry

    def resolve(self, sequences: Sequence[str], *, check: bool = False, present: Iterable[str] = ()) -> DtypePlan:
        """The plan with each derived column's ``lengths_from`` filled in from the list columns ``sequences``.

        The default source is ``input_ids``, else the first planned column of ``sequences``; where
        there is none, ``lengths_from`` stays None and the column cannot be rebuilt (see ``unresolved``):
        with ``check``, that is an error, unless the dataset holds the column itself (``present``).
        """
        planned = [name for name in sequences if name in self.stored]
        default = "input_ids" if "input_ids" in planned else (planned[0] if planned else None)
        plan = self
        if default is not None and any(entry.lengths_from is None for entry in self.derived.values()):
            plan = DtypePlan({name: ColumnDtype(**{**entry.to_dict(), "lengths_from": default})
                              if entry.derived is not None and entry.lengths_from is None else entry
                              for name, entry in self.columns.items()})
        held = set(present)
        missing = [name for name in plan.unresolved() if name not in held] if check else []
        if missing:
            raise ValueError(f"Derived column(s) {missing} have no list column to take their row lengths from: expected a list "
                             f"column of numbers in the plan (input_ids, by default), or lengths_from= naming one.")
        return plan

    def unresolved(self) -> list[str]:
        """Derived columns that do not know which stored column gives their row lengths."""
        return [name for name, entry in self.derived.items() if entry.lengths_from is None]

    def select(self, names: Iterable[str]) -> DtypePlan:
        """The plan restricted to ``names`` (and the derived columns that follow one of them)."""
        keep = set(names)
        return DtypePlan({name: entry for name, entry in self.columns.items()
                          if name in keep or (entry.lengths_from is not None and entry.lengths_from in keep)})

    def __or__(self, other: Mapping[str, ColumnDtype | Mapping | str]) -> DtypePlan:
        """``plan | {...}``: a new plan with the entries of ``other`` replacing or adding to these, as ``dict | dict``.

        A bare dtype changes the storage of a stored column and keeps the rest of its entry (its
        compute dtype, its pad such as the labels' -100, its label names): ``plan | {"labels": "int16"}``
        still pads labels with -100. An entry given as a dict or ``ColumnDtype`` replaces the whole entry.
        """
        if not isinstance(other, Mapping):
            return NotImplemented
        kept = {}
        for name, entry in other.items():
            if name in self.columns and self.columns[name].storage is not None and not isinstance(entry, (Mapping, ColumnDtype)):
                try:  # a kept pad that the new storage cannot hold is an error, never dropped
                    kept[name] = ColumnDtype.from_dict({**self.columns[name].to_dict(), "storage": entry}, name)
                except ValueError as error:
                    raise ValueError(f"{error} (a bare dtype keeps the rest of the plan's entry {self.columns[name].to_dict()}; "
                                     f"give a whole entry to change it too, e.g. {{'storage': {entry!r}, 'pad': 0}}).") from None
        return DtypePlan(cast("Mapping[str, ColumnDtype]", {**self.columns, **other, **kept}))  # __post_init__ checks each entry

    def __ror__(self, other: Mapping[str, ColumnDtype | Mapping | str]) -> DtypePlan:
        """``{...} | plan``: a new plan with this plan's entries replacing or adding to those of ``other`` (the right one wins)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        return DtypePlan(cast("Mapping[str, ColumnDtype]", {**other, **self.columns}))  # __post_init__ checks and converts each entry

    def replace(self, /, **columns: ColumnDtype | Mapping | str) -> DtypePlan:
        """A new plan with these column entries replacing or adding to this plan's: ``plan.replace(input_ids="uint16")``."""
        return self | columns

    def update(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Refused: a plan is immutable, so an in-place ``dict.update`` would silently change nothing."""
        raise TypeError("A DtypePlan is immutable, so plan.update(...) cannot change it; make a new plan instead: "
                        "plan = plan | {\"input_ids\": \"uint16\"} or plan = plan.replace(input_ids=\"uint16\").")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The plan as a JSON-ready dict of column entries (``from_dict`` reads it back)."""
        return {name: entry.to_dict() for name, entry in self.columns.items()}

    @classmethod
    def from_dict(cls, columns: Mapping[str, Any]) -> DtypePlan:
        """A plan from a dict of column entries (checked, as every plan is)."""
        return cls(columns)

    def to_json(self, path: str | PathLike | None = None, *, indent: int = 2) -> str:
        """The plan as JSON text, also written to ``path`` when given (``from_json`` reads it back)."""
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | PathLike) -> DtypePlan:
        """Read a plan from a JSON file, or from a JSON string (an object of column entries)."""
        text = str(text_or_path)
        is_file = os.path.isfile(text)
        if is_file:
            with open(text, encoding="utf-8") as file:
                text = file.read()
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as error:
            if not is_file and (isinstance(text_or_path, PathLike) or not text.lstrip().startswith(("{", "["))):
                raise FileNotFoundError(f"Plan file {text!r} does not exist; expected a JSON file "
                                        "(or a JSON string of column entries).") from None
            raise ValueError(f"A plan must be a JSON object of column entries: {error}.") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"A plan must be a JSON object of column entries, e.g. {{\"input_ids\": \"uint16\"}}; "
                             f"got a JSON {type(loaded).__name__}.")
        return cls(loaded)

    def widen(self, batch: Mapping[str, Any], *, non_blocking: bool = False) -> dict[str, Any]:
        """``batch`` with each planned tensor or array in its compute dtype, on the device it is on."""
        return widen_batch(self, batch, non_blocking=non_blocking)

    def __str__(self) -> str:
        rows = [("column", "storage", "compute", "pad")]
        for name, entry in self.columns.items():
            storage = entry.storage or f"derived: {entry.derived}" + (f" ({entry.lengths_from})" if entry.lengths_from else "")
            if entry.names:
                storage += f" ({len(entry.names)} label names)"
            rows.append((name, storage, entry.served_dtype, "" if entry.pad is None else str(entry.pad)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines + ([f"({self.note})"] if self.note else []))

    def __repr__(self) -> str:
        return f"DtypePlan({self.to_dict()!r})"


@overload
def as_plan(plan: None) -> None: ...
@overload
def as_plan(plan: DtypePlan | Mapping) -> DtypePlan: ...
@overload
def as_plan(plan: DtypePlan | Mapping | None) -> DtypePlan | None: ...
def as_plan(plan: DtypePlan | Mapping | None) -> DtypePlan | None:
    """``plan`` as a ``DtypePlan`` (None stays None)."""
    return plan if plan is None or isinstance(plan, DtypePlan) else DtypePlan(plan)
