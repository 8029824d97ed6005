"""``infer_plan``: the smallest lossless storage per column, from Arrow statistics.

Statistics are computed with ``pyarrow.compute`` over each column's flattened leaf values, chunk by
chunk, without converting rows to Python, and over the rows the dataset shows: after ``select``,
``filter`` or ``shuffle`` only the rows of its indices mapping (those ``compact`` stores), not the
whole Arrow table beneath it. Like Megatron-LM picking uint16 for vocabularies under 65,536 tokens,
the plan stores each integer column in the narrowest dtype that holds all its values and its pad
value; compute dtypes stay those ``datasets`` serves, so the plan is a drop-in. Every proposal
serves: a column whose values no compute dtype holds (integers at or above 2**63) is left out with
a warning.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, IterableDatasetDict

from ._compat import indices_mapping
from .dtypes import bfloat16_bits_to_float32, canonical_dtype, integer_range, is_float, narrow_float, smallest_integer_dtype
from .plan import LABEL_ALIASES, ColumnDtype, DtypePlan
from .ragged import arrow_leaf_dtype, flatten_leaf, list_depth
from .recording import leaf_feature, plan_of_features

__all__ = ["ColumnStats", "dataset_stats", "infer_plan", "table_stats"]

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("labels", *LABEL_ALIASES)
"""Sequence columns padded with -100, the index that ``cross_entropy`` ignores."""

_TAKE_ROWS = 1 << 14
"""Rows of an indices mapping taken at once: statistics of a filtered or shuffled dataset hold this many rows' values."""


@dataclass
class ColumnStats:
    """What ``infer_plan`` knows of one column: its dtype, shape, value range, nulls, bytes and label names."""

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
    names: tuple[str, ...] | None = None

    @property
    def is_sequence(self) -> bool:
        return self.depth == 1

    def merge(self, other: ColumnStats) -> ColumnStats:
        """The statistics of both parts together (splits of a dataset, batches of a stream)."""
        lows = [v for v in (self.minimum, other.minimum) if v is not None]
        highs = [v for v in (self.maximum, other.maximum) if v is not None]
        mine, theirs = self.lengths_digest, other.lengths_digest
        digest = None if mine is None or theirs is None else b"|".join((mine, theirs))
        return ColumnStats(
            name=self.name, dtype=self.dtype, depth=self.depth, rows=self.rows + other.rows, values=self.values + other.values,
            nulls=self.nulls + other.nulls, minimum=min(lows) if lows else None, maximum=max(highs) if highs else None,
            nbytes=self.nbytes + other.nbytes, lengths_digest=digest, names=self.names,
        )


def _column_stats(name: str, arrow_type: pa.DataType, chunks: Iterable[pa.Array], dtype: str,
                  names: tuple[str, ...] | None) -> ColumnStats:
    lows, highs, rows, nulls, values, nbytes = [], [], 0, 0, 0, 0
    depth = list_depth(arrow_type)
    lengths = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        rows, nulls, nbytes = rows + len(chunk), nulls + chunk.null_count, nbytes + chunk.nbytes
        leaf, levels = flatten_leaf(chunk)
        if depth == 1:
            lengths.update(np.diff(levels[0]).astype(np.int64).tobytes())
        nulls += leaf.null_count if depth else 0
        values += len(leaf)
        if dtype == "bfloat16":
            floats = bfloat16_bits_to_float32(leaf.to_numpy(zero_copy_only=False))
            if floats.size:
                lows.append(float(np.nanmin(floats)))
                highs.append(float(np.nanmax(floats)))
            continue
        extremes = pc.min_max(pc.cast(leaf, pa.int8()) if pa.types.is_boolean(leaf.type) else leaf)
        if extremes["min"].is_valid:
            lows.append(extremes["min"].as_py())
            highs.append(extremes["max"].as_py())
    return ColumnStats(
        name=name, dtype=dtype, depth=depth, rows=rows, values=values, nulls=nulls,
        minimum=min(lows) if lows else None, maximum=max(highs) if highs else None,
        nbytes=nbytes, lengths_digest=lengths.digest() if depth == 1 else None, names=names,
    )


def _shown_chunks(column: pa.ChunkedArray, rows: np.ndarray | None) -> Iterator[pa.Array]:
    """The chunks of ``column``, or, where ``rows`` are given, chunks of those rows only, taken ``_TAKE_ROWS`` at a time."""
    if rows is None:
        yield from column.chunks
        return
    for start in range(0, len(rows), _TAKE_ROWS):
        yield from column.take(pa.array(rows[start:start + _TAKE_ROWS])).chunks


def table_stats(table: pa.Table, features: Features | None, *, rows: np.ndarray | None = None) -> dict[str, ColumnStats]:
    """Statistics of every numeric column of ``table`` (``features`` give ClassLabel names and a recorded plan).

    ``rows``: positions in ``table`` of the rows to count (an indices mapping; a row given twice counts twice); default all.
    """
    recorded = plan_of_features(features) or DtypePlan()
    out = {}
    for name in table.column_names:
        arrow_type = table.schema.field(name).type
        dtype = arrow_leaf_dtype(arrow_type)
        if dtype is None:
            continue
        entry = recorded.columns.get(name)
        leaf = leaf_feature(features[name]) if features and name in features else None
        names = tuple(leaf.names) if isinstance(leaf, ClassLabel) else (entry.names if entry is not None else None)
        if entry is not None and entry.storage == "bfloat16":
            dtype = "bfloat16"
        out[name] = _column_stats(name, arrow_type, _shown_chunks(table.column(name), rows), dtype, names)
    return out


def dataset_stats(dataset: Dataset) -> dict[str, ColumnStats]:
    """Statistics of every numeric column over the rows ``dataset`` shows: after ``select``, ``filter``, ``shuffle`` or
    ``train_test_split`` those of its indices mapping, not every row of the Arrow table beneath it."""
    table, mapping = dataset.data.table, indices_mapping(dataset)
    rows = None if mapping is None else np.sort(mapping.column(0).to_numpy())  # sorted: a memory map is read in order
    if rows is not None and len(rows) and (np.diff(rows) == 1).all():  # a run of rows (all of them after a shuffle): a slice
        table, rows = table.slice(int(rows[0]), len(rows)), None
    return table_stats(table, dataset.features, rows=rows)


def _default_pad(stats: ColumnStats, pad_token_id: int | None) -> int | None:
    if not stats.is_sequence:
        return None
    if stats.name in LABEL_COLUMNS or stats.names is not None:
        return -100
    if stats.name.endswith("input_ids") and pad_token_id is not None:
        return pad_token_id
    return 0


def _integer_entry(stats: ColumnStats, pad: int | None, vocab_size: int | None) -> ColumnDtype | None:
    compute = "bool" if stats.dtype == "bool" else "int64"
    if stats.minimum is None:
        return ColumnDtype(storage=stats.dtype, compute=compute, pad=pad, names=stats.names)
    assert stats.maximum is not None  # set together with the minimum
    low, high = int(stats.minimum), int(stats.maximum)
    if stats.names is not None:  # room for every label id and for -1 (no label)
        low, high = min(low, -1), max(high, len(stats.names) - 1)
    if pad is not None:
        low, high = min(low, pad), max(high, pad)
    if vocab_size is not None and stats.name.endswith("input_ids"):
        high = max(high, vocab_size - 1)
    if high > integer_range("int64")[1]:
        logger.warning("Column %r is left out of the plan: its value %d is beyond int64, so no compute dtype of torch holds it "
                       "(with_format('hf_dtype', backend='numpy') serves it as exact uint64; backend='torch' refuses it).",
                       stats.name, high)
        return None
    storage = "bool" if stats.dtype == "bool" or (stats.names is None and low >= 0 and high <= 1) else smallest_integer_dtype(low, high)
    if storage == "uint64":  # int64 holds the same values, in as many bytes, and serves
        storage = "int64"
    return ColumnDtype(storage=storage, compute=compute, pad=pad, names=stats.names)


def _fits_float(stats: ColumnStats, target: str) -> bool:
    """Whether every value of the column stays finite in ``target``, rounded as storing rounds."""
    extremes = np.array([stats.minimum, stats.maximum], dtype=np.float64)
    _, back = narrow_float(extremes, target)
    return not (np.isinf(back) & np.isfinite(extremes)).any()


def _float_entry(stats: ColumnStats, pad: int | None, floats: str | None) -> ColumnDtype:
    storage = stats.dtype
    if floats is not None and stats.minimum is not None:
        if _fits_float(stats, floats):
            storage = floats
        else:
            assert stats.maximum is not None  # set together with the minimum
            logger.info("Column %r keeps %s: its values reach %g, which %s rounds to inf.", stats.name, storage,
                        max(abs(stats.minimum), abs(stats.maximum)), floats)
    return ColumnDtype(storage=storage, compute="bfloat16" if storage == "bfloat16" else "float32", pad=pad)


def _sample(stream: IterableDataset, rows: int) -> tuple[pa.Table, Features | None]:
    """The first ``rows`` rows of a stream, as one Arrow table, and the stream's features."""
    table = next(iter(stream.with_format("arrow").iter(batch_size=rows)), None)
    if table is None:
        raise ValueError("The stream is empty: a plan needs at least one row to infer from.")
    return table, stream.features


def infer_plan(
    dataset: Dataset | DatasetDict | IterableDataset | IterableDatasetDict,
    *,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    floats: str | None = None,
    derive: bool = True,
    columns: Iterable[str] | None = None,
    sample_rows: int = 10_000,
) -> DtypePlan:
    """Propose the smallest lossless storage dtype for each numeric column of ``dataset``.

    Args:
        dataset: a ``Dataset`` (the rows it shows, after ``select`` / ``filter`` / ``shuffle``), or a
            ``DatasetDict`` (one plan that holds every split); or a stream
            (``IterableDataset``, ``IterableDatasetDict``), read no further than its first ``sample_rows``
            rows: a later row outside the proposed range makes ``compact`` raise, naming it.
        vocab_size: store ``*input_ids`` columns in a dtype that holds every token id, not only those seen.
        pad_token_id: the pad value of ``*input_ids`` columns (default 0); label columns pad with -100.
        floats: ``"float16"`` or ``"bfloat16"`` to narrow float columns where no value overflows.
        derive: propose ``derived`` for all-ones / all-zeros sequence columns whose lengths match
            a stored sequence column (``attention_mask``, ``token_type_ids``).
        columns: only these columns (default: every numeric column, ``ClassLabel`` columns included).
        sample_rows: for a stream, how many of its first rows to read.
    """
    floats = canonical_dtype(floats) if floats is not None else None
    if floats is not None and floats not in ("float16", "bfloat16"):
        raise ValueError(f"floats must be 'float16' or 'bfloat16'; got {floats!r}.")
    splits = list(dataset.values()) if isinstance(dataset, (DatasetDict, IterableDatasetDict)) else [dataset]
    if not splits or not all(isinstance(split, (Dataset, IterableDataset)) for split in splits):
        raise TypeError(f"infer_plan takes a datasets.Dataset, DatasetDict, IterableDataset or IterableDatasetDict; "
                        f"got {type(dataset).__name__}.")
    streams = isinstance(splits[0], IterableDataset)
    samples = [_sample(split, sample_rows) for split in splits] if streams else []
    per_split = [table_stats(*sample) for sample in samples] if streams else [dataset_stats(split) for split in splits]
    names = [name for name in per_split[0] if all(name in stats for stats in per_split)]
    if columns is not None:
        wanted = list(columns)
        missing = [name for name in wanted if name not in names]
        if missing:
            raise ValueError(f"Cannot plan column(s) {missing}: the numeric columns are {names}.")
        names = wanted
    stats = {}
    for name in names:
        merged = per_split[0][name]
        for other in per_split[1:]:
            merged = merged.merge(other[name])
        stats[name] = merged
    plan = plan_from_stats(stats, vocab_size=vocab_size, pad_token_id=pad_token_id, floats=floats, derive=derive)
    if streams:
        rows = sum(table.num_rows for table, _ in samples)
        return DtypePlan(plan.columns, note=f"inferred from the first {rows:,} rows of the stream; give vocab_size= for token ids")
    return plan


def plan_from_stats(stats: dict[str, ColumnStats], *, vocab_size: int | None, pad_token_id: int | None, floats: str | None,
                    derive: bool) -> DtypePlan:
    """The plan that ``infer_plan`` proposes for columns with these statistics."""
    entries: dict[str, ColumnDtype] = {}
    for name, column in stats.items():
        if column.nulls:
            logger.info("Column %r has %d null values and is left out of the plan.", name, column.nulls)
            continue
        pad = _default_pad(column, pad_token_id)
        entry = _float_entry(column, pad, floats) if is_float(column.dtype) else _integer_entry(column, pad, vocab_size)
        if entry is not None:
            entries[name] = entry
    if derive:
        _derive_constant_columns(stats, entries)
    return DtypePlan(entries)


def _derive_constant_columns(stats: dict[str, ColumnStats], entries: dict[str, ColumnDtype]) -> None:
    """Turn all-ones / all-zeros integer sequence columns into derived ones where a stored column has their lengths."""
    sources = sorted((name for name in entries if stats[name].is_sequence and stats[name].values),
                     key=lambda name: (not name.endswith("input_ids"), name))
    for name in list(entries):
        column = stats[name]
        constant = column.minimum if column.minimum == column.maximum else None
        if (not column.is_sequence or is_float(column.dtype) or constant not in (0, 1) or name in LABEL_COLUMNS
                or column.names is not None):
            continue
        for source in sources:
            if source != name and entries[source].derived is None and stats[source].lengths_digest == column.lengths_digest:
                entries[name] = ColumnDtype(derived="ones" if constant == 1 else "zeros",
                                            compute=entries[name].served_dtype, lengths_from=source)
                break
