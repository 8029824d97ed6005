"""Column dtypes and plans: what each column is stored as, served as, and padded with."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

from .dtypes import canonical_dtype, integer_range, is_float, is_integer

__all__ = ["ColumnDtype", "DtypePlan", "DERIVED_KINDS"]

DERIVED_KINDS = {"ones": 1, "zeros": 0}
_ENTRY_KEYS = {"storage", "compute", "pad", "derived", "lengths_from"}


@dataclass(frozen=True)
class ColumnDtype:
    """The dtypes of one column.

    Args:
        storage: what Arrow holds (``None`` for a derived column, which is not stored).
        compute: what the model receives; ``None`` serves the storage dtype widened as ``datasets`` would.
        pad: the value that pads a sequence column in a batch (``0``, ``-100``, a pad token id).
        derived: ``"ones"`` or ``"zeros"`` for a constant sequence column rebuilt from row lengths.
        lengths_from: for a derived column, the stored sequence column whose row lengths it has.
    """

    storage: str | None = None
    compute: str | None = None
    pad: int | float | None = None
    derived: str | None = None
    lengths_from: str | None = None

    def __post_init__(self) -> None:
        for name in ("storage", "compute"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, canonical_dtype(value))
        if self.derived is not None:
            if self.derived not in DERIVED_KINDS:
                raise ValueError(f"Unknown derived kind {self.derived!r}: expected one of {sorted(DERIVED_KINDS)}.")
            if self.storage is not None:
                raise ValueError(f"A derived ({self.derived!r}) column is not stored, so it takes no storage dtype; got {self.storage!r}.")
        elif self.storage is None:
            raise ValueError("A column dtype needs a storage dtype, or derived='ones' / 'zeros'.")
        if self.lengths_from is not None and self.derived is None:
            raise ValueError("lengths_from applies to derived columns only.")
        if self.pad is not None and self.storage is not None:
            _check_pad_fits(self.pad, self.storage)

    @property
    def served_dtype(self) -> str:
        """The dtype a value of this column is served in: the compute dtype, or the default of ``datasets``."""
        if self.compute is not None:
            return self.compute
        if self.derived is not None or is_integer(self.storage):
            return "int64"
        if self.storage == "bool":
            return "bool"
        return "float32"

    @property
    def pad_value(self) -> int | float:
        return 0 if self.pad is None else self.pad

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any] | str, column: str = "?") -> ColumnDtype:
        """Build from ``{"storage": ..., "compute": ..., "pad": ...}`` or a bare storage dtype name."""
        if isinstance(entry, ColumnDtype):
            return entry
        if not isinstance(entry, Mapping):
            entry = {"storage": entry}
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ValueError(f"Column {column!r}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_ENTRY_KEYS)}.")
        try:
            return cls(**entry)
        except ValueError as error:
            raise ValueError(f"Column {column!r}: {error}") from None


def _check_pad_fits(pad: int | float, storage: str) -> None:
    if is_float(storage):
        return
    if isinstance(pad, float) and not pad.is_integer():
        raise ValueError(f"Pad value {pad} is not an integer, so {storage} cannot hold it.")
    low, high = integer_range(storage)
    if not low <= pad <= high:
        signed = " (a negative pad such as -100 needs a signed dtype, e.g. int8)" if pad < 0 else ""
        raise ValueError(f"Pad value {pad} does not fit storage dtype {storage}, which holds [{low}, {high}]{signed}.")


@dataclass(frozen=True)
class DtypePlan(Mapping[str, ColumnDtype]):
    """The column dtypes of one dataset, by column name. Columns outside the plan are left as they are."""

    columns: Mapping[str, ColumnDtype] = field(default_factory=dict)

    def __post_init__(self) -> None:
        columns = {name: ColumnDtype.from_dict(entry, name) for name, entry in dict(self.columns).items()}
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
        return {name: entry for name, entry in self.columns.items() if entry.derived is None}

    @property
    def derived(self) -> dict[str, ColumnDtype]:
        return {name: entry for name, entry in self.columns.items() if entry.derived is not None}

    def select(self, names: Iterator[str]) -> DtypePlan:
        """The plan restricted to ``names`` (and the derived columns that follow one of them)."""
        keep = set(names)
        return DtypePlan({
            name: entry
            for name, entry in self.columns.items()
            if name in keep or (entry.lengths_from is not None and entry.lengths_from in keep)
        })

    def update(self, other: Mapping[str, ColumnDtype | Mapping | str]) -> DtypePlan:
        """A new plan with the entries of ``other`` replacing or adding to these."""
        return DtypePlan({**self.columns, **{name: ColumnDtype.from_dict(e, name) for name, e in other.items()}})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: entry.to_dict() for name, entry in self.columns.items()}

    @classmethod
    def from_dict(cls, columns: Mapping[str, Any]) -> DtypePlan:
        if not isinstance(columns, Mapping):
            raise TypeError(f"A plan is a mapping of column name to column dtype; got {type(columns).__name__}.")
        return cls(dict(columns))

    def to_json(self, path: str | PathLike | None = None, *, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            with open(path, "w", encoding="utf-8") as file:
                file.write(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | PathLike) -> DtypePlan:
        """Read a plan from a JSON string or a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            try:
                with open(text_or_path, encoding="utf-8") as file:
                    text = file.read()
            except OSError as error:
                raise FileNotFoundError(f"Cannot read plan file {str(text_or_path)!r}: {error.strerror}.") from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise ValueError(f"A plan must be a JSON object of column entries: {error}.") from None

    def widen(self, batch: Mapping[str, Any], *, non_blocking: bool = False) -> dict[str, Any]:
        """``batch`` with each planned tensor or array cast to its compute dtype, on the device it is on."""
        from .widening import widen_batch

        return widen_batch(self, batch, non_blocking=non_blocking)

    def __str__(self) -> str:
        rows = [("column", "storage", "compute", "pad")]
        for name, entry in self.columns.items():
            storage = entry.storage or f"derived: {entry.derived}" + (f" ({entry.lengths_from})" if entry.lengths_from else "")
            rows.append((name, storage, entry.served_dtype, "" if entry.pad is None else str(entry.pad)))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"DtypePlan({self.to_dict()!r})"
