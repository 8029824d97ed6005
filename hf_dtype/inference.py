"""``infer_plan``: the smallest lossless storage per column, from Arrow statistics.

Statistics are computed with ``pyarrow.compute`` over each column's flattened leaf values, chunk by
chunk, without converting rows to Python. Like Megatron-LM picking uint16 for vocabularies under
65,536 tokens, the plan stores each integer column in the narrowest dtype that holds all its
values and its pad value; compute dtypes stay those ``datasets`` serves, so the plan is a drop-in.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict

from .casting import flatten_leaf
from .dtypes import arrow_leaf_dtype, bfloat16_bits_to_float32, canonical_dtype, is_float, smallest_integer_dtype
from .plan import ColumnDtype, DtypePlan
from .recording import _leaf, plan_of

__all__ = ["ColumnStats", "column_stats", "infer_plan", "LABEL_COLUMNS"]

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("labels", "label_ids")
"""Sequence columns padded with -100, the index that ``cross_entropy`` ignores."""


@dataclass
class ColumnStats:
    """What ``infer_plan`` knows of one column: its dtype, shape, value range, nulls and bytes."""

    name: str
    dtype: str
    depth: int
    rows: int
    values: int
    nulls: int
    minimum: float | None
    maximum: float | None
    nbytes: int
    lengths_digest: bytes | None

    @property
    def is_sequence(self) -> bool:
        return self.depth == 1


def _stats(name: str, column: pa.ChunkedArray, dtype: str, source_bfloat16: bool) -> ColumnStats:
    lows, highs, nulls, values = [], [], column.null_count, 0
    depth = len(flatten_leaf(pa.array([], column.type))[1])
    lengths = hashlib.blake2b(digest_size=16)
    for chunk in column.chunks:
        leaf, levels = flatten_leaf(chunk)
        if depth == 1:
            lengths.update(np.diff(levels[0]).astype(np.int64).tobytes())
        nulls += leaf.null_count if depth else 0
        values += len(leaf)
        if source_bfloat16:
            floats = bfloat16_bits_to_float32(leaf.to_numpy(zero_copy_only=False))
            if floats.size:
                lows.append(float(np.nanmin(floats)))
                highs.append(float(np.nanmax(floats)))
            continue
        if pa.types.is_boolean(leaf.type):
            leaf = pc.cast(leaf, pa.int8())
        extremes = pc.min_max(leaf)
        if extremes["min"].is_valid:
            lows.append(extremes["min"].as_py())
            highs.append(extremes["max"].as_py())
    digest = lengths.digest() if depth == 1 else None
    return ColumnStats(
        name=name, dtype=dtype, depth=depth, rows=len(column), values=values, nulls=nulls,
        minimum=min(lows) if lows else None, maximum=max(highs) if highs else None,
        nbytes=column.nbytes, lengths_digest=digest,
    )


def column_stats(dataset: Dataset) -> dict[str, ColumnStats]:
    """Statistics of every numeric column of ``dataset`` (ClassLabel columns excluded)."""
    recorded = plan_of(dataset) or DtypePlan()
    out = {}
    for name in dataset.column_names:
        arrow_type = dataset.data.schema.field(name).type
        dtype = arrow_leaf_dtype(arrow_type)
        if dtype is None or isinstance(_leaf(dataset.features[name]), ClassLabel):
            continue
        source_bfloat16 = name in recorded and recorded[name].storage == "bfloat16"
        out[name] = _stats(name, dataset.data.column(name), "bfloat16" if source_bfloat16 else dtype, source_bfloat16)
    return out


def _merge(parts: Iterable[ColumnStats]) -> ColumnStats:
    parts = list(parts)
    first = parts[0]
    lows = [p.minimum for p in parts if p.minimum is not None]
    highs = [p.maximum for p in parts if p.maximum is not None]
    digests = [p.lengths_digest for p in parts]
    return ColumnStats(
        name=first.name, dtype=first.dtype, depth=first.depth, rows=sum(p.rows for p in parts),
        values=sum(p.values for p in parts), nulls=sum(p.nulls for p in parts),
        minimum=min(lows) if lows else None, maximum=max(highs) if highs else None,
        nbytes=sum(p.nbytes for p in parts), lengths_digest=None if None in digests else b"|".join(digests),
    )


def _default_pad(name: str, pad_token_id: int | None) -> int:
    if name in LABEL_COLUMNS:
        return -100
    if name.endswith("input_ids") and pad_token_id is not None:
        return pad_token_id
    return 0


def _integer_entry(stats: ColumnStats, pad: int | None, vocab_size: int | None) -> ColumnDtype:
    compute = "bool" if stats.dtype == "bool" else "int64"
    if stats.minimum is None:
        return ColumnDtype(storage=stats.dtype, compute=compute, pad=pad)
    low, high = int(stats.minimum), int(stats.maximum)
    if pad is not None:
        low, high = min(low, pad), max(high, pad)
    if vocab_size is not None and stats.name.endswith("input_ids"):
        high = max(high, vocab_size - 1)
    storage = "bool" if (low >= 0 and high <= 1) else smallest_integer_dtype(low, high)
    return ColumnDtype(storage=storage, compute=compute, pad=pad)


def _float_entry(stats: ColumnStats, pad: int | None, floats: str | None) -> ColumnDtype:
    storage = stats.dtype
    if floats is not None and stats.minimum is not None:
        limit = float(np.finfo(np.float16).max) if floats == "float16" else float(np.finfo(np.float32).max)
        if max(abs(stats.minimum), abs(stats.maximum)) < limit:
            storage = floats
        else:
            logger.info("Column %r keeps %s: its values reach %g, beyond %s.", stats.name, storage, stats.maximum, floats)
    return ColumnDtype(storage=storage, compute="bfloat16" if storage == "bfloat16" else "float32", pad=pad)


def infer_plan(
    dataset: Dataset | DatasetDict,
    *,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    floats: str | None = None,
    derive: bool = True,
    columns: Iterable[str] | None = None,
) -> DtypePlan:
    """Propose the smallest lossless storage dtype for each numeric column of ``dataset``.

    Args:
        dataset: a ``Dataset``, or a ``DatasetDict`` (one plan that holds every split).
        vocab_size: store ``*input_ids`` columns in a dtype that holds every token id, not only those seen.
        pad_token_id: the pad value of ``*input_ids`` columns (default 0); label columns pad with -100.
        floats: ``"float16"`` or ``"bfloat16"`` to narrow float columns where no value overflows.
        derive: propose ``derived`` for all-ones / all-zeros sequence columns whose lengths match
            a stored sequence column (``attention_mask``, ``token_type_ids``).
        columns: only these columns (default: every numeric column; ClassLabel columns are left alone).
    """
    floats = canonical_dtype(floats) if floats is not None else None
    if floats is not None and floats not in ("float16", "bfloat16"):
        raise ValueError(f"floats must be 'float16' or 'bfloat16'; got {floats!r}.")
    splits = list(dataset.values()) if isinstance(dataset, DatasetDict) else [dataset]
    per_split = [column_stats(split) for split in splits]
    names = [name for name in per_split[0] if all(name in stats for stats in per_split)]
    if columns is not None:
        wanted = list(columns)
        missing = [name for name in wanted if name not in names]
        if missing:
            raise ValueError(f"Cannot plan column(s) {missing}: the numeric columns are {names}.")
        names = wanted
    stats = {name: _merge(s[name] for s in per_split) for name in names}

    entries: dict[str, ColumnDtype] = {}
    for name, column in stats.items():
        if column.nulls:
            logger.info("Column %r has %d null values and is left out of the plan.", name, column.nulls)
            continue
        pad = _default_pad(name, pad_token_id) if column.is_sequence else None
        if is_float(column.dtype):
            entries[name] = _float_entry(column, pad, floats)
        else:
            entries[name] = _integer_entry(column, pad, vocab_size)

    if derive:
        _derive_constant_columns(stats, entries)
    return DtypePlan(entries)


def _derive_constant_columns(stats: dict[str, ColumnStats], entries: dict[str, ColumnDtype]) -> None:
    """Turn all-ones / all-zeros integer sequence columns into derived ones where a stored column has their lengths."""
    sources = sorted(
        (name for name in entries if stats[name].is_sequence and stats[name].values),
        key=lambda name: (not name.endswith("input_ids"), name),
    )
    for name in list(entries):
        column = stats[name]
        constant = column.minimum if column.minimum == column.maximum else None
        if not column.is_sequence or is_float(column.dtype) or constant not in (0, 1) or name in LABEL_COLUMNS:
            continue
        for source in sources:
            if source != name and entries[source].derived is None and stats[source].lengths_digest == column.lengths_digest:
                entries[name] = ColumnDtype(derived="ones" if constant == 1 else "zeros",
                                            compute=entries[name].served_dtype, lengths_from=source)
                break
