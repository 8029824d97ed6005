"""Does iterating a large memory-mapped compact dataset grow the process's memory? (issue 3)

1. Build (in a child process, so its memory does not count): the CoNLL-2003 train split tokenized
   with the all-MiniLM-L6-v2 tokenizer and compacted (``hd.compact``, inferred plan: uint16
   ``input_ids``, int8 ``labels``, derived masks) is replicated with ``concatenate_datasets`` to at
   least ``--size_gb`` of Arrow data, and written with ``save_to_disk`` into ``--workdir``.
   ``--rows long`` uses synthetic rows of 128-512 tokens instead (fewer, longer rows), which
   separates what costs per row (the shuffled order) from what costs per byte.
2. Iterate (each in a FRESH child process): ``load_from_disk`` (memory-mapped), then one shuffled
   epoch of ``hd.dataloader(ds, batch_size=256, shuffle=True, widen="device")``, sampling ``/proc/self/status``
   (``VmRSS``, ``RssAnon``, ``RssFile``) every few batches. Memory-mapped pages that were read count
   as file-backed RSS (``RssFile``; the kernel can drop them at any time), so the honest measure of
   what the loader keeps is the anonymous memory (``RssAnon``); both are reported, as growth over
   the process just before the epoch and relative to the dataset's bytes on disk.
3. Baseline (another fresh child): ``ds.with_format("torch")`` through a ``DataLoader`` with
   ``DataCollatorForTokenClassification``, shuffled, for ``--compare_batches`` batches (a full epoch
   would take hours); the ``hd.dataloader`` run records its memory at the same batch count.

Usage::

    python scripts/bench_memory.py                    # 2 GB, writes docs/bench/memory.json
    python scripts/bench_memory.py --size_gb 0.2 --compare_batches 50 --output_json /tmp/memory.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc

STATUS_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")
TARGET_FRACTION = 0.10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(bc.DEFAULT_DATA_DIR),
                        help="folder that holds conll2003/train.jsonl (default: ../shared/data beside the repository)")
    parser.add_argument("--size_gb", type=float, default=2.0, help="least Arrow bytes of the dataset, in GB (10^9)")
    parser.add_argument("--rows", choices=("conll", "long"), default="conll",
                        help="conll: replicated tokenized CoNLL-2003 rows (about 20 tokens); long: synthetic rows of 128-512 tokens")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--compare_batches", type=int, default=300,
                        help="batches of the with_format('torch') baseline, and the batch at which hd.dataloader's memory is also recorded")
    parser.add_argument("--skip_baseline", action="store_true", help="do not run the with_format('torch') baseline")
    parser.add_argument("--sample_every", type=int, default=20, help="read /proc/self/status every this many batches")
    parser.add_argument("--workdir", default=None, help="where the dataset is written (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the dataset in --workdir after the run")
    parser.add_argument("--output_json", default=str(bc.REPO_ROOT / "docs" / "bench" / "memory.json"))
    parser.add_argument("--stage", choices=("all", "build", "iterate"), default="all", help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=("hd", "torch"), default="hd", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def status() -> dict[str, int]:
    """``/proc/self/status`` memory fields, in bytes."""
    return {key: value * 1024 for key, value in bc.proc_status_kib(*STATUS_KEYS).items()}


# --- stage 1: build (child process) -------------------------------------------------------------

def _long_rows(vocab_size: int, rows: int = 20_000, seed: int = 0):
    """Synthetic tokenized rows of 128-512 tokens, in the types ``datasets`` gives a tokenizer's output."""
    import numpy as np
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo, Features, List, Value
    from datasets.table import InMemoryTable

    rng = np.random.default_rng(seed)
    lengths = rng.integers(128, 513, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    ids = rng.integers(1000, vocab_size, size=int(offsets[-1]), dtype=np.int32)
    labels = rng.integers(0, 9, size=int(offsets[-1]), dtype=np.int64)
    labels[rng.random(labels.size) < 0.2] = -100
    table = pa.table({"input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids)),
                      "labels": pa.ListArray.from_arrays(pa.array(offsets), pa.array(labels))})
    features = Features({"input_ids": List(Value("int32")), "labels": List(Value("int64"))})
    return Dataset(InMemoryTable(table.cast(features.arrow_schema)), info=DatasetInfo(features=features))


def stage_build(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    import datasets

    import hf_dtype as hd

    datasets.disable_progress_bars()
    start = time.perf_counter()
    tokenizer = bc.get_tokenizer()
    base = _long_rows(tokenizer.vocab_size) if args.rows == "long" else bc.tokenize_conll(bc.load_conll(args.data_dir), tokenizer)
    plan = hd.infer_plan(base, vocab_size=tokenizer.vocab_size)
    small = hd.compact(base, plan)
    base_bytes = sum(bc.column_nbytes(small).values())
    copies = max(1, math.ceil(args.size_gb * 1e9 / base_bytes))
    big = datasets.concatenate_datasets([small] * copies)
    built = time.perf_counter()
    big.save_to_disk(str(path))
    saved = time.perf_counter()
    reloaded = datasets.load_from_disk(str(path))
    return {
        "rows_kind": args.rows,
        "base_rows": len(small),
        "copies": copies,
        "rows": len(big),
        "tokens": int(sum(len(chunk.flatten()) for chunk in small.data.column("input_ids").chunks)) * copies,
        "arrow_bytes": base_bytes * copies,
        "disk": bc.dir_bytes(path),
        "plan": plan.to_dict(),
        "plan_survives_save_load": (hd.plan_of(reloaded) or hd.DtypePlan()).to_dict() == plan.to_dict(),
        "stored_types": bc.arrow_type_names(reloaded),
        "build_s": built - start,
        "save_to_disk_s": saved - built,
    }


# --- stage 2: iterate (fresh child process) -----------------------------------------------------

def stage_iterate(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    import datasets
    import numpy  # noqa: F401  (imported before the first reading, like everything the loop uses)
    import torch
    from torch.utils.data import DataLoader

    import hf_dtype as hd

    datasets.disable_progress_bars()
    collator = None
    if args.method == "torch":
        from transformers import DataCollatorForTokenClassification

        collator = DataCollatorForTokenClassification(bc.get_tokenizer())
    before_load = status()
    dataset = datasets.load_from_disk(str(path))
    after_load = status()
    if args.method == "hd":
        loader = hd.dataloader(dataset, batch_size=args.batch_size, shuffle=True, widen="device")  # storage dtypes, as stored
        limit = None
    else:
        loader = DataLoader(dataset.with_format("torch"), batch_size=args.batch_size, shuffle=True, collate_fn=collator)
        limit = args.compare_batches
    before_epoch = status()
    peak = dict(before_epoch)
    at_compare = None
    rows = batches = 0
    crossed = 0
    start = time.perf_counter()
    first_batch_s = None
    for batch in loader:
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - start
        batches += 1
        rows += int(batch["input_ids"].shape[0])
        crossed += sum(int(v.nbytes) for v in batch.values() if isinstance(v, torch.Tensor))
        if batches % args.sample_every == 0 or batches == args.compare_batches:
            now = status()
            peak = {key: max(peak.get(key, 0), value) for key, value in now.items()}
            if batches == args.compare_batches:
                at_compare = now
        if limit is not None and batches >= limit:
            break
    elapsed = time.perf_counter() - start
    end = status()
    peak = {key: max(peak.get(key, 0), value) for key, value in end.items()}
    return {
        "method": args.method,
        "loader": ("hd.dataloader(ds, batch_size, shuffle=True, widen='device')" if args.method == "hd" else
                   "DataLoader(ds.with_format('torch'), batch_size, shuffle=True, collate_fn=DataCollatorForTokenClassification)"),
        "rows": rows,
        "batches": batches,
        "full_epoch": limit is None,
        "seconds": elapsed,
        "first_batch_s": first_batch_s,
        "rows_per_s": rows / elapsed if elapsed else None,
        "bytes_per_batch": crossed / max(batches, 1),
        "status": {"before_load": before_load, "after_load": after_load, "before_epoch": before_epoch,
                   "at_compare_batches": at_compare, "end": end, "peak_sampled": peak},
    }


# --- driver -------------------------------------------------------------------------------------

def _child(args: argparse.Namespace, stage: str, workdir: Path, method: str = "hd") -> dict[str, Any]:
    result = workdir / f"result_{stage}_{method}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--method", method, "--workdir", str(workdir),
               "--result", str(result), "--data_dir", args.data_dir, "--size_gb", str(args.size_gb), "--rows", args.rows,
               "--batch_size", str(args.batch_size), "--compare_batches", str(args.compare_batches),
               "--sample_every", str(args.sample_every)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    out = json.loads(result.read_text(encoding="utf-8"))
    out["child_wall_s"] = time.perf_counter() - start
    return out


def _growth(run: dict[str, Any], disk: int, at: str = "peak_sampled") -> dict[str, Any]:
    """Growth of each measure at ``at`` over the value just before the epoch, and over the value before ``load_from_disk``."""
    point = run["status"][at]
    if point is None:
        return {}
    out = {}
    for since in ("before_epoch", "before_load"):
        base = run["status"][since]
        for key in ("RssAnon", "RssFile", "VmRSS"):
            delta = point.get(key, 0) - base.get(key, 0)
            out[f"{key}_since_{since}"] = {"growth_bytes": delta, "fraction_of_disk": delta / disk}
    return out


def _cell(growth: dict[str, Any], key: str) -> str:
    entry = growth[key]
    return f"{entry['growth_bytes'] / 2**20:,.1f} MiB ({100 * entry['fraction_of_disk']:.2f}%)"


def report(build: dict[str, Any], runs: dict[str, dict[str, Any]], compare_batches: int) -> dict[str, Any]:
    disk = build["disk"]["total"]
    summary: dict[str, Any] = {}
    print(f"\n== Memory: {build['rows']:,} rows ({build['rows_kind']}), {build['tokens']:,} tokens, "
          f"{disk / 1e9:.3f} GB on disk, {build['disk']['arrow'] / 1e9:.3f} GB of .arrow ==")
    print(f"stored: {', '.join(f'{k}={v}' for k, v in build['stored_types'].items())}; plan survives save/load: "
          f"{build['plan_survives_save_load']}")
    rows = []
    for key, label, run, at in (
        ("hd_full_epoch", "hd.dataloader, full epoch", runs.get("hd"), "peak_sampled"),
        ("hd_compare_batches", f"hd.dataloader, first {compare_batches} batches", runs.get("hd"), "at_compare_batches"),
        ("torch_compare_batches", f"with_format('torch') + collator, {compare_batches} batches", runs.get("torch"), "peak_sampled"),
    ):
        if not run or run["status"].get(at) is None:
            continue
        growth = _growth(run, disk, at)
        summary[key] = growth
        rows.append([label, f"{run['rows_per_s']:,.0f}" if at == "peak_sampled" else "",
                     _cell(growth, "RssAnon_since_before_epoch"), _cell(growth, "RssAnon_since_before_load"),
                     _cell(growth, "RssFile_since_before_load"), _cell(growth, "VmRSS_since_before_load")])
    print("growth of the peak (sampled) over the fresh process just before the epoch / before load_from_disk; "
          "% = of the bytes on disk")
    print(bc.table(rows, ["run", "rows/s", "RssAnon, epoch", "RssAnon, load+epoch", "RssFile, load+epoch", "VmRSS, load+epoch"]))
    if "hd_full_epoch" in summary:
        epoch = summary["hd_full_epoch"]["RssAnon_since_before_epoch"]["fraction_of_disk"]
        with_load = summary["hd_full_epoch"]["RssAnon_since_before_load"]["fraction_of_disk"]
        vm_fraction = summary["hd_full_epoch"]["VmRSS_since_before_load"]["fraction_of_disk"]
        status = runs["hd"]["status"]
        load = status["after_load"].get("RssAnon", 0) - status["before_load"].get("RssAnon", 0)
        order = 4 * build["rows"]  # EpochSampler keeps an int32 order
        print(f"target: anonymous memory grows < {TARGET_FRACTION:.0%} of the dataset's size over the epoch: "
              f"{'met' if epoch < TARGET_FRACTION else 'MISSED'} ({100 * epoch:.2f}%); with load_from_disk: {100 * with_load:.2f}%; "
              f"total RSS (file-backed mmap pages included) grows {100 * vm_fraction:.1f}%")
        print(f"load_from_disk itself: {load / 2**20:,.1f} MiB anonymous ({100 * load / disk:.2f}%); a shuffled epoch's row order "
              f"(one int32 per row): {order / 2**20:,.1f} MiB ({100 * order / disk:.2f}%)")
        summary["target"] = {"max_fraction_of_disk": TARGET_FRACTION, "measure": "RssAnon_since_before_epoch",
                             "met": epoch < TARGET_FRACTION, "met_including_load_from_disk": with_load < TARGET_FRACTION}
        summary["load_from_disk_RssAnon_bytes"] = load
        summary["row_order_int64_bytes"] = order
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.stage != "all":
        path = Path(args.workdir) / "dataset"
        result = stage_build(args, path) if args.stage == "build" else stage_iterate(args, path)
        Path(args.result).write_text(json.dumps(result, indent=2), encoding="utf-8")
        return None

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_memory_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "dataset").exists():
        raise FileExistsError(f"{workdir / 'dataset'} exists; pass an empty --workdir.")
    payload: dict[str, Any] = {
        "benchmark": "bench_memory",
        "command": "python scripts/bench_memory.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": bc.machine_info(),
        "code": bc.code_version(),
        "load_average_at_start": bc.load_average(),
        "measure": "/proc/self/status of a fresh process: RssAnon (anonymous: what the process holds), RssFile (file-backed: "
                   "mmapped Arrow pages read so far, reclaimable), VmRSS (their sum with RssShmem); growth = peak sampled during "
                   "the epoch minus the value just before the first batch (after load_from_disk and building the loader)",
    }
    try:
        print(f"building {args.size_gb} GB in {workdir} ...", flush=True)
        payload["build"] = _child(args, "build", workdir)
        print(f"built {payload['build']['rows']:,} rows, {payload['build']['disk']['total'] / 1e9:.3f} GB on disk in "
              f"{payload['build']['child_wall_s']:.0f} s", flush=True)
        runs = {"hd": _child(args, "iterate", workdir, "hd")}
        print(f"hd.dataloader: one epoch in {runs['hd']['seconds']:.1f} s", flush=True)
        if not args.skip_baseline:
            runs["torch"] = _child(args, "iterate", workdir, "torch")
            print(f"with_format('torch'): {runs['torch']['batches']} batches in {runs['torch']['seconds']:.1f} s", flush=True)
        payload["runs"] = runs
        payload["summary"] = report(payload["build"], runs, args.compare_batches)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    bc.finish_report(args.output_json, payload)
    return payload


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
