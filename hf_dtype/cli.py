"""``hf-dtype``: inspect a dataset's column dtypes, and write its compact form.

    hf-dtype inspect PATH [--json]
    hf-dtype compact IN OUT [--plan auto|FILE.json] [--column NAME=STORAGE[:COMPUTE]]... [--overwrite]

PATH / IN is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict) or a Parquet,
JSON Lines, JSON or CSV file. ``OUT`` appears whole or not at all, and ``IN`` is never modified:
``OUT`` is staged in ``.OUT.PID.partial`` beside it (``datasets``' temporary files included) and
renamed into place; a later run removes the staging folders of runs that were killed.

Before anything is read or written, ``compact`` refuses an ``OUT`` that is ``IN``, lies inside it or
contains it (symlinks followed, and as written), or contains the working folder; an existing ``OUT``
that holds anything ``save_to_disk`` did not write (a file, a folder of other files); an existing
``OUT`` without ``--overwrite``; and a place it cannot write. ``--overwrite`` replaces only an empty
folder or one that ``save_to_disk`` wrote; there is no way to make it delete anything else. Every
refusal and every ``OSError`` is one line on stderr and exit status 2, with nothing left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import datasets
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict

from .compact import compact
from .dtypes import DTYPE_NAMES, LossyCastError
from .infer import ColumnStats, dataset_stats, infer_plan
from .plan import ColumnDtype, DtypePlan
from .staging import check_target, os_reason, publish, staged, write_error

__all__ = ["main"]

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_FILE_KINDS = {".parquet": "Parquet", ".jsonl": "JSON Lines", ".json": "JSON (a list of objects, or one object per line)",
               ".csv": "CSV after its header line"}


class CliError(Exception):
    """A bad argument or input: reported as one line, exit status 2."""


def _holds_no_rows(location: Path) -> bool:
    """Whether a data file is empty: blank, a CSV header alone, ``[]`` or ``{}`` in JSON, a Parquet file of 0 rows."""
    suffix = location.suffix.lower()
    if suffix == ".parquet":
        try:
            return pq.ParquetFile(location).metadata.num_rows == 0
        except Exception:  # not Parquet: load reports it
            return False
    with location.open("rb") as file:
        if suffix == ".json":
            head = file.read(1 << 16)
            return len(head) < 1 << 16 and re.fullmatch(rb"\s*(\[\s*\]|\{\s*\})?\s*", head) is not None
        lines = list(itertools.islice(filter(None, (line.strip() for line in file)), 2))
    return len(lines) < (2 if suffix == ".csv" else 1)


def load(path: str) -> Dataset | DatasetDict:
    """Load a ``save_to_disk`` folder or a Parquet / JSON / CSV file; one that cannot be read is a one-line error."""
    try:
        return _load(path)
    except OSError as error:
        raise CliError(f"{path}: cannot read it ({os_reason(error)}); expected a file or folder this user can read.") from None


def _load(path: str) -> Dataset | DatasetDict:
    location = Path(path)
    if not location.exists():
        raise CliError(f"{path}: no such file or folder; expected a save_to_disk folder or a .parquet/.jsonl/.json/.csv file.")
    suffix = location.suffix.lower()
    if not location.is_dir() and suffix not in _FILE_BUILDERS:
        raise CliError(f"{path}: unknown file type {location.suffix!r}; expected one of {', '.join(_FILE_BUILDERS)}.")
    if not location.is_dir() and _holds_no_rows(location):
        raise CliError(f"{path} is empty; expected at least one row of {_FILE_KINDS[suffix]}.")
    try:
        if location.is_dir():
            return datasets.load_from_disk(str(location))
        dataset = datasets.load_dataset(_FILE_BUILDERS[suffix], data_files=str(location), split="train")
    except Exception as error:  # datasets and pyarrow raise many kinds for unreadable data
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CliError(f"{path}: cannot read a dataset there ({reason}).") from None
    if len(dataset) == 0:
        raise CliError(f"{path} is empty; expected at least one row of {_FILE_KINDS[suffix]}.")
    return dataset


def _splits(dataset: Dataset | DatasetDict) -> dict[str, Dataset]:
    return dict(dataset) if isinstance(dataset, DatasetDict) else {"": dataset}


def _itemsize(dtype: str | None) -> float:
    if dtype is None:
        return 0.0
    if dtype == "bool":
        return 1 / 8
    return 2 if dtype == "bfloat16" else int(dtype.removeprefix("uint").removeprefix("int").removeprefix("float")) / 8


def projected_nbytes(stats: ColumnStats, entry: ColumnDtype | None) -> int:
    """The Arrow bytes of the column once stored as ``entry`` says (offsets unchanged, derived columns 0)."""
    if entry is None:
        return stats.nbytes
    if entry.derived is not None:
        return 0
    return round(stats.nbytes - stats.values * _itemsize(stats.dtype) + stats.values * _itemsize(entry.storage))


def inspect_report(dataset: Dataset | DatasetDict) -> dict:
    """Per column: storage dtype, bytes, value range, proposed dtype and bytes saved; and totals."""
    splits = _splits(dataset)
    plan = infer_plan(dataset)
    columns: dict[str, dict] = {}
    for part in splits.values():
        stats = dataset_stats(part)  # the rows the dataset shows
        for name in part.column_names:
            row = columns.setdefault(name, {"column": name, "dtype": str(part.features[name]), "bytes": 0, "proposed_bytes": 0,
                                            "min": None, "max": None})
            nbytes = stats[name].nbytes if name in stats else part.data.column(name).nbytes
            row["bytes"] += nbytes
            if name not in stats:
                row["proposed_bytes"] += nbytes
                continue
            column = stats[name]
            row["dtype"] = column.dtype
            row["min"] = column.minimum if row["min"] is None else min(row["min"], column.minimum)
            row["max"] = column.maximum if row["max"] is None else max(row["max"], column.maximum)
            row["proposed_bytes"] += projected_nbytes(column, plan.columns.get(name))
    for name, row in columns.items():
        entry = plan.columns.get(name)
        row["proposed"] = None if entry is None else (entry.storage or f"derived:{entry.derived}")
        row["saved_bytes"] = row["bytes"] - row["proposed_bytes"]
    total = sum(row["bytes"] for row in columns.values())
    proposed = sum(row["proposed_bytes"] for row in columns.values())
    return {
        "rows": {split or "all": len(part) for split, part in splits.items()},
        "columns": list(columns.values()),
        "total_bytes": total,
        "proposed_bytes": proposed,
        "ratio": proposed / total if total else 1.0,
        "plan": plan.to_dict(),
    }


def _format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def _print_report(report: dict) -> None:
    header = ("column", "dtype", "bytes", "range", "proposed", "bytes after", "saved")
    rows = [header]
    for row in report["columns"]:
        value_range = "" if row["min"] is None else f"[{row['min']:g}, {row['max']:g}]"
        rows.append((row["column"], row["dtype"][:40], _format_bytes(row["bytes"]), value_range, row["proposed"] or "-",
                     _format_bytes(row["proposed_bytes"]), _format_bytes(row["saved_bytes"])))
    rows.append(("total", "", _format_bytes(report["total_bytes"]), "", "", _format_bytes(report["proposed_bytes"]),
                 f"{_format_bytes(report['total_bytes'] - report['proposed_bytes'])} ({report['ratio']:.2f}x)"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    print("rows: " + ", ".join(f"{split} {n:,}" for split, n in report["rows"].items()))
    for i, row in enumerate(rows):
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if i == 0 or i == len(rows) - 2:
            print("  ".join("-" * width for width in widths))


def parse_column_option(option: str, base: DtypePlan) -> tuple[str, ColumnDtype]:
    """``NAME=STORAGE[:COMPUTE]`` → a column entry; the pad of ``base``'s entry for that column is kept."""
    name, sep, dtypes = option.partition("=")
    if not sep or not name or not dtypes:
        raise CliError(f"--column {option!r}: expected NAME=STORAGE[:COMPUTE], e.g. input_ids=uint16:int64.")
    storage, _, compute = dtypes.partition(":")
    previous = base.columns.get(name)
    pad = previous.pad if previous is not None else None
    try:
        return name, ColumnDtype(storage=storage, compute=compute or None, pad=pad)
    except ValueError as error:
        raise CliError(f"--column {option!r}: {error}") from None


def build_plan(dataset: Dataset | DatasetDict, plan_option: str, column_options: Sequence[str]) -> DtypePlan:
    if plan_option == "auto":
        plan = infer_plan(dataset)
    else:
        try:
            plan = DtypePlan.from_json(Path(plan_option))
        except (OSError, ValueError, TypeError) as error:
            raise CliError(f"--plan {plan_option}: {error}") from None
    return plan | dict(parse_column_option(option, plan) for option in column_options)


def _inspect(args: argparse.Namespace) -> None:
    report = inspect_report(load(args.path))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report)


def _compact(args: argparse.Namespace) -> None:
    out = check_target(args.input, args.output, args.overwrite)
    dataset = load(args.input)
    plan = build_plan(dataset, args.plan, args.column)
    try:
        with staged(out) as written:
            compacted = compact(dataset, plan, exact=args.exact, num_proc=args.num_proc)
            compacted.save_to_disk(str(written))
            after = sum(part.data.nbytes for part in _splits(compacted).values())
            publish(written, out)
    except OSError as error:
        raise write_error(args.output, error) from None
    before = sum(part.data.nbytes for part in _splits(dataset).values())
    print(plan)
    print(f"wrote {args.output}: {_format_bytes(after)} of Arrow data, {after / before if before else 1:.2f}x of {_format_bytes(before)}")


_IN_HELP = "a save_to_disk folder (Dataset or DatasetDict) or a .parquet/.jsonl/.json/.csv file; never modified"
_DESCRIPTION = """\
Per-column dtypes for Hugging Face datasets: inspect what each column takes and what the
smallest lossless dtypes would save; compact writes the dataset in them, checked, with the
plan recorded in its features (hf_dtype.plan_of reads it back).
"""
_INSPECT_DESCRIPTION = """\
Print, per column, its stored dtype, bytes and value range, the dtype that infer_plan proposes
and the bytes it saves, then the totals. Nothing is written.
"""
_COMPACT_DESCRIPTION = """\
Write IN's columns in the smallest dtypes that hold their values, checked (a value that does
not fit is an error naming its column and row), with the plan recorded in the features.

  IN   a save_to_disk folder (a Dataset or a DatasetDict) or a .parquet, .jsonl, .json or .csv
       file; it is never modified.
  OUT  a save_to_disk folder, written whole or not at all: it is staged in .OUT.PID.partial
       beside OUT and renamed into place. It must not be IN, lie inside IN, or contain IN
       or the working folder.
       An existing OUT is replaced only with --overwrite, and only if it is empty or holds
       what save_to_disk wrote (a Dataset or DatasetDict folder); one that holds anything
       else is refused, listing what would be deleted: pick another OUT or remove it by hand.

example:
  hf-dtype compact tokenized tokenized-small --column labels=int8:int64
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-dtype", formatter_class=_HelpFormatter, description=_DESCRIPTION,
        epilog="Run 'hf-dtype COMMAND --help' for a command's arguments.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{inspect,compact}")
    inspect = commands.add_parser(
        "inspect", formatter_class=_HelpFormatter, help="per column: dtype, bytes, value range, proposed dtype, bytes saved",
        description=_INSPECT_DESCRIPTION)
    inspect.add_argument("path", metavar="PATH", help=_IN_HELP)
    inspect.add_argument("--json", action="store_true", help="print the report as JSON (with the proposed plan)")
    inspect.set_defaults(run=_inspect)
    compact_parser = commands.add_parser("compact", formatter_class=_HelpFormatter, description=_COMPACT_DESCRIPTION,
                                         help="write the compact dataset (OUT appears whole or not at all)")
    compact_parser.add_argument("input", metavar="IN", help=_IN_HELP)
    compact_parser.add_argument("output", metavar="OUT", help="the save_to_disk folder to write, whole or not at all")
    compact_parser.add_argument("--plan", default="auto", metavar="auto|FILE.json",
                                help="'auto' infers the plan from the data; or a plan JSON file (default: %(default)s)")
    compact_parser.add_argument("--column", action="append", default=[], metavar="NAME=STORAGE[:COMPUTE]",
                                help="store column NAME as STORAGE and serve it as COMPUTE (default: int64 for integers, "
                                     "float32 for floats, as datasets serves them); the plan's pad is kept; repeatable. "
                                     f"Dtypes: {', '.join(DTYPE_NAMES)}")
    compact_parser.add_argument("--exact", action="store_true", help="require float narrowing to be exact (default: only no overflow)")
    compact_parser.add_argument("--num_proc", type=int, default=None, help="processes for the casting map (default: one)")
    compact_parser.add_argument("--overwrite", action="store_true",
                                help="replace an existing OUT that is empty or that save_to_disk wrote; an OUT that holds "
                                     "anything else is always refused (default: refuse any existing OUT)")
    compact_parser.set_defaults(run=_compact)
    return parser


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """``datasets``' progress bars off while a command runs (stdout stays the command's output)."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _no_progress_bars():
            args.run(args)
    except (CliError, LossyCastError, ValueError, OSError) as error:
        message = os_reason(error) if isinstance(error, OSError) else error
        print(f"hf-dtype {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
