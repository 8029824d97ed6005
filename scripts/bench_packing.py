"""Packed batches of ``hf_dtype`` side by side with ``run_clm.py``, nanoGPT and ``DataCollatorWithFlattening``, in one run.

On tiny Shakespeare (one row per line, ``keep_linebreaks=True``) tokenized with a character
vocabulary (the 65 distinct characters of the file in sorted order -> ids 0..64, a batched ``map``
that returns ``input_ids`` and an all-ones ``attention_mask``, so that ``datasets`` stores them as
int32 and int8 as it does a tokenizer's output), in tokens per second:

Blocks of ``block_size`` tokens (the rows laid end to end, the remainder dropped):

1. ``run_clm.py``'s data path: its ``group_texts`` applied with ``map(batched=True,
   batch_size=None)`` over the whole split (the ``map`` timed apart), then ``with_format("torch")``
   and a shuffled ``DataLoader`` with ``transformers.default_data_collator``.
2. nanoGPT's ``get_batch`` (written from its description): the tokens in a uint16 ``np.memmap`` on
   disk, opened again for every batch; ``batch_size`` random offsets; ``x`` = the stacked int64
   copies of ``data[i:i+block]``, ``y`` = those of ``data[i+1:i+1+block]``. It returns x AND y;
   the tokens of x are counted.
3. ``hd.dataloader(compact, batch_size, layout=hd.Blocks(B), shuffle=True)``, with
   ``widen="device"`` (storage dtypes: uint8 ids, int16 labels) and ``widen="cpu"`` (int64).
6. The limit: a plain torch gather of the same blocks from one in-memory copy of the compact
   token buffer (``index_select`` of the block windows, labels a copy), in the storage dtypes
   (against 3-device) and in int64 (against 3-cpu); no ``DataLoader``.

Flat batches (a batch of rows as one row, with flash-attention kwargs):

4. ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` on rows of
   ``ds.with_format("torch", columns=["input_ids"])`` through a shuffled ``DataLoader`` (the
   collator reads no other column, so none other is formatted).
5. ``hd.dataloader(compact, rows, layout=hd.Flat(return_flash_attn_kwargs=True), shuffle=True)``,
   ``widen="device"`` and ``widen="cpu"``.

At two shapes: 12 x 64 and 8 x 1,024 (flat: 12 and 8 rows a batch). It also reports the bytes on
disk per token (``save_to_disk`` of (1)'s grouped dataset, of the tokenized lines, of the compact
dataset; nanoGPT's ``.bin``), the bytes per batch that would move to the device, checks that (1)
and (3) serve the same blocks and (4) and (5) the same flat batches, and whether the targets are
met: (3) >= 20x (1) and >= 2x (2); (5) >= 20x (4); the compact token column <= 2 bytes a token.
Every method reads its data from disk (memory-mapped), is warmed up, then timed in interleaved
rounds of at least ``--min_seconds`` (whole epochs when an epoch is shorter, else the batches
that fit); the median round is reported. A method of ``hf_dtype`` that misses a target is
profiled (cProfile) and the profile lands in the JSON (``--profile`` profiles them all).

Usage::

    python scripts/bench_packing.py                       # full run (~4 min), writes docs/bench/packing.json
    python scripts/bench_packing.py --quick --output_json /tmp/packing.json    # smoke test, 4,000 lines
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
from pretrain import group_texts  # run_clm.py's, as pretrain.py's datasets-default path runs it

DEFAULT_DATA_FILE = bc.DEFAULT_DATA_DIR / "tinyshakespeare" / "input.txt"
SHAPES = ((12, 64), (8, 1024))
"""(batch size, block size); flat batches take ``batch size`` rows."""
QUICK_LINES = 4000
TARGET_VS_RUN_CLM = 20.0
TARGET_VS_NANOGPT = 2.0
TARGET_VS_FLATTENING = 20.0
TARGET_COMPACT_BYTES_PER_TOKEN = 2.0

BLOCK_METHODS = {
    "1_run_clm": "(1) run_clm.py: group_texts map + with_format('torch') + default_data_collator",
    "1t_run_clm_trainer": "(1t) run_clm.py as its Trainer serves it: no format (Python lists) + default_data_collator",
    "2_nanogpt": "(2) nanoGPT get_batch: uint16 memmap, random offsets, int64 x and y",
    "3_hd_blocks_device": "(3) hd.dataloader(layout=hd.Blocks(B), widen='device')",
    "3_hd_blocks_cpu": "(3) hd.dataloader(layout=hd.Blocks(B), widen='cpu')",
    "6_limit_storage": "(6) limit: torch gather of the same blocks, storage dtypes",
    "6_limit_int64": "(6) limit: torch gather of the same blocks, int64",
    "6_limit_dataloader": "(6dl) limit (6, storage dtypes) served through a DataLoader (batch_sampler + __getitems__)",
}
FLAT_METHODS = {
    "4_flattening": "(4) with_format('torch') rows + DataCollatorWithFlattening(flash kwargs)",
    "4t_flattening_lists": "(4t) rows as Python lists (no format, as a Trainer serves them) + DataCollatorWithFlattening",
    "5_hd_flat_device": "(5) hd.dataloader(layout=hd.Flat(return_flash_attn_kwargs=True), widen='device')",
    "5_hd_flat_cpu": "(5) hd.dataloader(layout=hd.Flat(return_flash_attn_kwargs=True), widen='cpu')",
}
METHODS = {**BLOCK_METHODS, **FLAT_METHODS}
HD_METHODS = ("3_hd_blocks_device", "3_hd_blocks_cpu", "5_hd_flat_device", "5_hd_flat_cpu")
LIMIT_OF = {"3_hd_blocks_device": "6_limit_storage", "3_hd_blocks_cpu": "6_limit_int64"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_file", default=str(DEFAULT_DATA_FILE),
                        help="tiny Shakespeare's input.txt (default: ../shared/data/tinyshakespeare/input.txt beside the repository)")
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_LINES:,} lines, short timings: a smoke test, not figures")
    parser.add_argument("--min_seconds", type=float, default=None,
                        help="least time of one timed round per method (default 1.5, 0.2 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per method, median reported (default 3, 1 with --quick)")
    parser.add_argument("--profile", action="store_true", help="cProfile every hf_dtype method (by default only those that miss a target)")
    parser.add_argument("--output_json", default=str(bc.REPO_ROOT / "docs" / "bench" / "packing.json"))
    return parser.parse_args(argv)


def check_data(args: argparse.Namespace) -> None:
    """One clear error, before any work, when the corpus is not where the arguments say (parsing itself reads no file)."""
    if not Path(args.data_file).is_file():
        raise SystemExit(f"bench_packing.py: error: no tiny Shakespeare file at {args.data_file}; pass --data_file (the input.txt "
                         "of https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt).")


# ----------------------------------------------------------------------------------------------------------------
# Data: lines, character tokens, run_clm.py's blocks, the compact dataset, nanoGPT's file
# ----------------------------------------------------------------------------------------------------------------

def char_vocab(data_file: str) -> dict[str, int]:
    """The distinct characters of the whole file in sorted order -> ids 0..n-1 (nanoGPT's shakespeare_char vocabulary)."""
    text = Path(data_file).read_text(encoding="utf-8")
    return {char: i for i, char in enumerate(sorted(set(text)))}


def load_lines(data_file: str, limit: int | None):
    """The file as ``datasets`` reads text: one row per line, the line break kept."""
    from datasets import load_dataset

    lines = load_dataset("text", data_files=data_file, keep_linebreaks=True, split="train")
    return lines.select(range(min(limit, len(lines)))).flatten_indices() if limit is not None else lines


class CharTokenizer:
    """The batched ``map`` function: ``input_ids`` and an all-ones ``attention_mask``, as a tokenizer returns them."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        ids = [[self.vocab[char] for char in text] for text in batch["text"]]
        return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids]}


def timed_call(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def save_and_reload(dataset, path: Path):
    """``dataset`` saved with ``save_to_disk`` and loaded back (memory-mapped), with its bytes on disk."""
    from datasets import load_from_disk

    dataset.save_to_disk(str(path))
    return load_from_disk(str(path)), bc.dir_bytes(path)


def token_values(dataset, column: str = "input_ids"):
    """The values of a list column of ``dataset`` end to end, as one numpy array (rows in the order they are stored)."""
    import numpy as np

    chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in dataset.data.table.column(column).chunks]
    return np.concatenate(chunks) if len(chunks) != 1 else chunks[0]


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Every dataset and file the methods read, each saved to ``workdir`` and loaded back; timings and sizes."""
    import datasets
    import numpy as np

    import hf_dtype as hd

    vocab = char_vocab(args.data_file)
    lines = load_lines(args.data_file, QUICK_LINES if args.quick else None)
    datasets.disable_caching()  # map results in temporary files: every run really runs the map
    tokenized, tokenize_s = timed_call(lambda: lines.map(CharTokenizer(vocab), batched=True, remove_columns=["text"]))
    tokenized, tokenized_disk = save_and_reload(tokenized, workdir / "tokenized")
    plan, infer_s = timed_call(lambda: hd.infer_plan(tokenized, vocab_size=len(vocab)))
    compact, compact_s = timed_call(lambda: hd.compact(tokenized, plan))
    compact, compact_disk = save_and_reload(compact, workdir / "compact")
    tokens = token_values(compact)
    bin_path = workdir / "train.bin"  # nanoGPT's prepare.py: the token ids as uint16
    tokens.astype(np.uint16).tofile(bin_path)
    grouped, group_s, grouped_disk = {}, {}, {}
    for _, block_size in SHAPES:
        mapped, group_s[block_size] = timed_call(lambda b=block_size: tokenized.map(
            group_texts, batched=True, batch_size=None, fn_kwargs={"block_size": b}))
        grouped[block_size], grouped_disk[block_size] = save_and_reload(mapped, workdir / f"grouped_{block_size}")
    n = len(tokens)
    leaf = {field.name: str(field.type) for field in tokenized.data.schema}
    return {
        "vocab": vocab, "tokenized": tokenized, "compact": compact, "plan": plan, "tokens": tokens, "bin_path": bin_path,
        "grouped": grouped,
        "info": {
            "file": str(args.data_file), "lines": len(lines), "tokens": n, "vocab_size": len(vocab),
            "tokenized_arrow_types": leaf, "compact_plan": plan.to_dict(),
            "seconds": {"tokenize_map": tokenize_s, "infer_plan": infer_s, "compact": compact_s,
                        **{f"group_texts_map_block_{b}": s for b, s in group_s.items()}},
        },
        "storage": {
            "tokenized_lines_datasets": {"what": "tokenized lines as datasets stores them (int32 ids + int8 mask)",
                                         "disk_bytes": tokenized_disk["total"], "tokens": n},
            **{f"run_clm_grouped_block_{b}": {
                "what": f"(1) group_texts blocks of {b} (int32 ids + int8 mask + int64 labels)", "disk_bytes": grouped_disk[b]["total"],
                "tokens": len(grouped[b]) * b, "arrow_types": {f.name: str(f.type) for f in grouped[b].data.schema}} for b in grouped},
            "hd_compact": {"what": "hd.compact(tokenized lines, infer_plan(vocab_size=65)): uint8 ids, mask derived",
                           "disk_bytes": compact_disk["total"], "tokens": n,
                           "arrow_types": {f.name: str(f.type) for f in compact.data.schema}},
            "nanogpt_bin": {"what": "(2) nanoGPT's train.bin: uint16 token ids", "disk_bytes": bin_path.stat().st_size, "tokens": n},
        },
    }


# ----------------------------------------------------------------------------------------------------------------
# The methods: each an iterable of one epoch of batches per pass
# ----------------------------------------------------------------------------------------------------------------

def run_clm_loader(grouped, batch_size: int, seed: int = 0, torch_format: bool = True):
    """(1) ``run_clm.py`` after ``group_texts``: ``with_format("torch")`` + ``default_data_collator``. (1t) without the format:
    what ``Trainer._get_dataloader`` builds for ``run_clm.py`` (it sets no format, so the collator gets Python lists)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    return DataLoader(grouped.with_format("torch") if torch_format else grouped, batch_size=batch_size, shuffle=True,
                      collate_fn=default_data_collator, generator=torch.Generator().manual_seed(seed))


class NanoGPTBatches:
    """(2) nanoGPT's ``get_batch`` from its description: the memmap opened anew for each batch (nanoGPT does so to
    avoid a memory leak), ``batch_size`` random offsets, ``x`` and ``y`` stacked int64 copies. A pass yields
    ``batches`` batches, as many as an epoch of blocks has, so that its rounds are timed like the others'."""

    def __init__(self, path: Path, batch_size: int, block_size: int, batches: int, seed: int = 0) -> None:
        import torch

        self.path, self.batch_size, self.block_size, self.batches = path, batch_size, block_size, batches
        self.generator = torch.Generator().manual_seed(seed)

    def get_batch(self):
        import numpy as np
        import torch

        data = np.memmap(self.path, dtype=np.uint16, mode="r")
        ix = torch.randint(len(data) - self.block_size, (self.batch_size,), generator=self.generator)
        x = torch.stack([torch.from_numpy(data[i:i + self.block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + self.block_size].astype(np.int64)) for i in ix])
        return x, y

    def __iter__(self):
        for _ in range(self.batches):
            yield self.get_batch()


class GatherLimit:
    """(6) The limit of a blocks loader: per batch one torch ``index_select`` of the batch's block windows from a flat
    token tensor (in memory), labels a copy in their dtype; the order a permutation of the blocks per pass, as hd's."""

    def __init__(self, tokens, batch_size: int, block_size: int, *, labels_dtype, ids_dtype=None, seed: int = 0) -> None:
        import numpy as np
        import torch

        self.tokens = torch.from_numpy(np.array(tokens))  # one writable in-memory copy of the stream
        if ids_dtype is not None:
            self.tokens = self.tokens.to(ids_dtype)
        self.batch_size, self.block_size = batch_size, block_size
        self.num_blocks = len(tokens) // block_size
        self.labels_dtype = labels_dtype
        self.columns = torch.arange(block_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        import torch

        order = torch.randperm(self.num_blocks, generator=self.generator)
        for start in range(0, self.num_blocks, self.batch_size):
            blocks = order[start:start + self.batch_size]
            yield self.batch(blocks)

    def batch(self, blocks):
        import torch

        windows = (blocks[:, None] * self.block_size + self.columns).view(-1)
        ids = torch.index_select(self.tokens, 0, windows).view(len(blocks), self.block_size)
        return {"input_ids": ids, "labels": ids.to(self.labels_dtype, copy=True)}


class LimitFetcher:
    """(6dl) The limit as a map-style dataset whose ``__getitems__`` returns the whole batch, as ``hd.dataloader``'s fetcher
    does: the difference between (6) and (6dl) is what a ``DataLoader`` adds per batch."""

    def __init__(self, limit: GatherLimit) -> None:
        self.limit = limit

    def __len__(self) -> int:
        return self.limit.num_blocks

    def __getitems__(self, blocks: list[int]):
        import torch

        return self.limit.batch(torch.as_tensor(blocks))


class PermutationBatches:
    """A batch sampler: a fresh permutation per pass, sliced into lists of indices (what ``hd.dataloader``'s sampler yields)."""

    def __init__(self, size: int, batch_size: int, seed: int = 0) -> None:
        import torch

        self.size, self.batch_size = size, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)

    def __iter__(self):
        import torch

        order = torch.randperm(self.size, generator=self.generator).numpy()
        for start in range(0, self.size, self.batch_size):
            yield order[start:start + self.batch_size].tolist()


def _passthrough(batch):
    return batch


def flattening_loader(tokenized, rows: int, seed: int = 0, torch_format: bool = True):
    """(4) ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` on rows of ``with_format("torch")``; (4t) on rows of
    Python lists (no format, as a ``Trainer`` serves them)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithFlattening

    rows_of = tokenized.with_format("torch", columns=["input_ids"]) if torch_format else tokenized.select_columns(["input_ids"])
    return DataLoader(rows_of, batch_size=rows, shuffle=True,
                      collate_fn=DataCollatorWithFlattening(return_flash_attn_kwargs=True), generator=torch.Generator().manual_seed(seed))


def hd_blocks_loader(compact, batch_size: int, block_size: int, widen: str, shuffle: bool = True):
    import hf_dtype as hd

    return hd.dataloader(compact, batch_size, layout=hd.Blocks(block_size), shuffle=shuffle, seed=0, widen=widen)


def hd_flat_loader(compact, rows: int, widen: str, shuffle: bool = True):
    import hf_dtype as hd

    return hd.dataloader(compact, rows, layout=hd.Flat(return_flash_attn_kwargs=True), shuffle=shuffle, seed=0, widen=widen)


def build_methods(data: dict[str, Any], batch_size: int, block_size: int) -> tuple[dict[str, Iterable], dict[str, float]]:
    """Every method at one shape, and the seconds each ``hf_dtype`` loader took to build (its block index included)."""
    import torch
    from torch.utils.data import DataLoader

    compact = data["compact"]
    num_blocks = len(data["tokens"]) // block_size
    built: dict[str, float] = {}
    methods: dict[str, Iterable] = {
        "1_run_clm": run_clm_loader(data["grouped"][block_size], batch_size),
        "1t_run_clm_trainer": run_clm_loader(data["grouped"][block_size], batch_size, torch_format=False),
        "2_nanogpt": NanoGPTBatches(data["bin_path"], batch_size, block_size, batches=-(-num_blocks // batch_size)),
    }
    for widen in ("device", "cpu"):
        methods[f"3_hd_blocks_{widen}"], built[f"3_hd_blocks_{widen}"] = timed_call(
            lambda w=widen: hd_blocks_loader(compact, batch_size, block_size, w))
    labels_storage = getattr(torch, methods["3_hd_blocks_device"].plan["labels"].storage)
    methods["6_limit_storage"] = GatherLimit(data["tokens"], batch_size, block_size, labels_dtype=labels_storage)
    methods["6_limit_int64"] = GatherLimit(data["tokens"], batch_size, block_size, labels_dtype=torch.int64, ids_dtype=torch.int64)
    methods["6_limit_dataloader"] = DataLoader(LimitFetcher(methods["6_limit_storage"]), collate_fn=_passthrough,
                                               batch_sampler=PermutationBatches(num_blocks, batch_size))
    methods["4_flattening"] = flattening_loader(data["tokenized"], batch_size)
    methods["4t_flattening_lists"] = flattening_loader(data["tokenized"], batch_size, torch_format=False)
    for widen in ("device", "cpu"):
        methods[f"5_hd_flat_{widen}"], built[f"5_hd_flat_{widen}"] = timed_call(lambda w=widen: hd_flat_loader(compact, batch_size, w))
    return methods, built


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------

def batch_tokens(batch) -> int:
    """Tokens of a batch: of ``input_ids`` (of ``x`` for nanoGPT's ``(x, y)``)."""
    return int((batch[0] if isinstance(batch, tuple) else batch["input_ids"]).numel())


def batch_tensors(batch) -> list:
    values = batch if isinstance(batch, tuple) else batch.values()
    return [value for value in values if hasattr(value, "nbytes")]


def warm_up(method: Iterable, seconds: float) -> dict[str, Any]:
    """Untimed: one epoch, or as much of it as ``seconds`` allow; tokens and bytes per batch, the served dtypes."""
    batches = tokens = nbytes = 0
    dtypes: dict[str, str] = {}
    start = time.perf_counter()
    for batch in method:
        batches += 1
        tokens += batch_tokens(batch)
        nbytes += sum(int(value.nbytes) for value in batch_tensors(batch))
        if not dtypes:
            named = enumerate(batch) if isinstance(batch, tuple) else batch.items()
            dtypes = {("xy"[k] if isinstance(k, int) else k): str(getattr(v, "dtype", type(v).__name__)).removeprefix("torch.")
                      for k, v in named}
        if time.perf_counter() - start >= seconds:
            break
    return {"warmup_batches": batches, "tokens_per_batch": tokens / max(batches, 1), "bytes_per_batch": nbytes / max(batches, 1),
            "bytes_per_token": nbytes / max(tokens, 1), "dtypes": dtypes}


def timed_round(method: Iterable, min_seconds: float) -> tuple[float, int]:
    """Tokens per second over at least ``min_seconds``: whole epochs while they are shorter, else the batches that fit."""
    tokens = batches = 0
    start = time.perf_counter()
    while True:
        for batch in method:
            tokens += batch_tokens(batch)
            batches += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return tokens / elapsed, batches


def bench_shape(data: dict[str, Any], batch_size: int, block_size: int, *, min_seconds: float, repeats: int) -> dict[str, Any]:
    """Every method warmed up, then ``repeats`` rounds that time each method in turn (a slow spell of the shared machine
    hits every method alike); the median round, and the ratios."""
    methods, built = build_methods(data, batch_size, block_size)
    results: dict[str, Any] = {}
    for key, method in methods.items():
        results[key] = {"method": METHODS[key], **warm_up(method, max(min_seconds, 0.5))}
        if key in built:
            results[key]["build_seconds"] = built[key]
    for _ in range(repeats):
        for key, method in methods.items():
            speed, batches = timed_round(method, min_seconds)
            results[key].setdefault("tokens_per_s_rounds", []).append(speed)
            results[key].setdefault("batches_per_round", []).append(batches)
    for entry in results.values():
        entry["tokens_per_s"] = statistics.median(entry["tokens_per_s_rounds"])
    speed = {key: entry["tokens_per_s"] for key, entry in results.items()}
    for key, entry in results.items():
        if key in BLOCK_METHODS:
            entry["vs_run_clm"] = speed[key] / speed["1_run_clm"]
            entry["vs_nanogpt"] = speed[key] / speed["2_nanogpt"]
            entry["vs_run_clm_trainer"] = speed[key] / speed["1t_run_clm_trainer"]
        else:
            entry["vs_flattening"] = speed[key] / speed["4_flattening"]
            entry["vs_flattening_lists"] = speed[key] / speed["4t_flattening_lists"]
        if key in LIMIT_OF:
            entry["of_limit"] = speed[key] / speed[LIMIT_OF[key]]
        if key == "3_hd_blocks_device":
            entry["of_limit_dataloader"] = speed[key] / speed["6_limit_dataloader"]
    for key in results:
        print(f"  {batch_size:>2} x {block_size:<5} {METHODS[key]:<96} {speed[key]:>14,.0f} tokens/s", flush=True)
    return {"batch_size": batch_size, "block_size": block_size, "flat_rows_per_batch": batch_size, "results": results}


# ----------------------------------------------------------------------------------------------------------------
# Checks: the same blocks as run_clm.py, the same flat batches as DataCollatorWithFlattening
# ----------------------------------------------------------------------------------------------------------------

def _sorted_rows(array):
    import numpy as np

    return array[np.lexsort(array.T[::-1])]


def check_blocks(data: dict[str, Any], batch_size: int, block_size: int) -> dict[str, bool]:
    """Whether one shuffled epoch of each blocks loader holds exactly (1)'s blocks (as a multiset), labels = ids."""
    import numpy as np
    import torch

    grouped = data["grouped"][block_size].with_format("numpy")
    reference = np.asarray(grouped["input_ids"], dtype=np.int64)
    same_labels = bool(np.array_equal(np.asarray(grouped["labels"], dtype=np.int64), reference))
    expected = _sorted_rows(reference)
    out = {"run_clm_labels_equal_ids": same_labels}
    loaders = {"3_hd_blocks_device": hd_blocks_loader(data["compact"], batch_size, block_size, "device"),
               "3_hd_blocks_cpu": hd_blocks_loader(data["compact"], batch_size, block_size, "cpu")}
    for key, loader in loaders.items():
        batches = [loader.plan.widen(batch) if key.endswith("device") else batch for batch in loader]
        ids = torch.cat([b["input_ids"] for b in batches]).numpy()
        labels = torch.cat([b["labels"] for b in batches]).numpy()
        out[key] = (ids.dtype == np.int64 and np.array_equal(labels, ids) and ids.shape == reference.shape
                    and np.array_equal(_sorted_rows(ids), expected))
    limit = GatherLimit(data["tokens"], batch_size, block_size, labels_dtype=torch.int16)
    out["6_limit_storage"] = bool(np.array_equal(_sorted_rows(torch.cat([b["input_ids"] for b in limit]).long().numpy()), expected))
    return {key: bool(value) for key, value in out.items()}


def check_flat(data: dict[str, Any], rows: int, batches: int) -> dict[str, bool]:
    """Whether the first ``batches`` sequential batches of (5) equal ``DataCollatorWithFlattening`` on the same rows
    (widen="cpu": values and dtypes; widen="device": values after ``plan.widen``, ids in uint8)."""
    from itertools import islice

    import torch
    from torch.utils.data import DataLoader
    from transformers import DataCollatorWithFlattening

    reference = list(islice(DataLoader(data["tokenized"].with_format("torch", columns=["input_ids"]), batch_size=rows, shuffle=False,
                                       collate_fn=DataCollatorWithFlattening(return_flash_attn_kwargs=True)), batches))

    def same(got: dict[str, Any], expected: dict[str, Any], dtypes: bool) -> bool:
        if list(got) != list(expected):
            return False
        for name, value in expected.items():
            if torch.is_tensor(value):
                if not torch.equal(got[name].long(), value.long()) or (dtypes and got[name].dtype != value.dtype):
                    return False
            elif got[name] != value:
                return False
        return True

    out = {}
    for widen in ("cpu", "device"):
        loader = hd_flat_loader(data["compact"], rows, widen, shuffle=False)
        got = list(islice(loader, batches))
        device_ok = widen == "cpu" or all(batch["input_ids"].dtype == torch.uint8 for batch in got)
        if widen == "device":
            got = [loader.plan.widen(batch) for batch in got]
        out[f"5_hd_flat_{widen}"] = device_ok and len(got) == len(reference) and all(
            same(g, e, dtypes=True) for g, e in zip(got, reference, strict=True))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Targets, profiles, tables
# ----------------------------------------------------------------------------------------------------------------

def evaluate_targets(shapes: list[dict[str, Any]], compact_bytes_per_token: float) -> list[dict[str, Any]]:
    targets = []
    for shape in shapes:
        label = f"{shape['batch_size']} x {shape['block_size']}"
        results = shape["results"]
        for key in ("3_hd_blocks_device", "3_hd_blocks_cpu"):
            targets.append({"shape": label, "method": key, "what": f"(3) >= {TARGET_VS_RUN_CLM:g}x (1)",
                            "value": results[key]["vs_run_clm"], "met": results[key]["vs_run_clm"] >= TARGET_VS_RUN_CLM})
            targets.append({"shape": label, "method": key, "what": f"(3) >= {TARGET_VS_NANOGPT:g}x (2)",
                            "value": results[key]["vs_nanogpt"], "met": results[key]["vs_nanogpt"] >= TARGET_VS_NANOGPT})
        for key in ("5_hd_flat_device", "5_hd_flat_cpu"):
            targets.append({"shape": f"{shape['batch_size']} rows", "method": key, "what": f"(5) >= {TARGET_VS_FLATTENING:g}x (4)",
                            "value": results[key]["vs_flattening"], "met": results[key]["vs_flattening"] >= TARGET_VS_FLATTENING})
    targets.append({"shape": "-", "method": "hd_compact", "what": f"compact token column <= {TARGET_COMPACT_BYTES_PER_TOKEN:g} bytes/token",
                    "value": compact_bytes_per_token, "met": compact_bytes_per_token <= TARGET_COMPACT_BYTES_PER_TOKEN})
    return targets


def profile_method(method: Iterable, seconds: float, top: int = 25) -> str:
    """cProfile of the method's batches over about ``seconds``: the functions with the most own time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    timed_round(method, seconds)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}x"


def print_tables(payload: dict[str, Any]) -> None:
    storage = payload["storage"]
    print("\n## Bytes on disk per token (save_to_disk)\n")
    rows = [[entry["what"], f"{entry['disk_bytes']:,}", f"{entry['tokens']:,}", f"{entry['disk_bytes'] / entry['tokens']:.2f}"]
            for entry in storage.values()]
    print(bc.markdown_table(rows, ["data", "bytes on disk", "tokens", "bytes/token"]))
    for shape in payload["shapes"]:
        results = shape["results"]
        print(f"\n## Blocks: batch {shape['batch_size']} x block {shape['block_size']} (tokens/s, median of "
              f"{payload['repeats']} rounds)\n")
        rows = []
        for key in BLOCK_METHODS:
            entry = results[key]
            rows.append([entry["method"], f"{entry['tokens_per_s']:,.0f}", _ratio(entry["vs_run_clm"]), _ratio(entry["vs_nanogpt"]),
                         _ratio(entry["vs_run_clm_trainer"]),
                         f"{entry['of_limit']:.2f}" if "of_limit" in entry else "-",
                         f"{entry['of_limit_dataloader']:.2f}" if "of_limit_dataloader" in entry else "-",
                         f"{entry['bytes_per_batch'] / 1024:,.1f}",
                         f"{entry['bytes_per_token']:.0f}", ", ".join(f"{k}={v}" for k, v in entry["dtypes"].items())])
        print(bc.markdown_table(rows, ["method", "tokens/s", "vs (1)", "vs (2)", "vs (1t)", "of (6)", "of (6dl)", "KiB/batch", "B/token",
                                       "dtypes"]))
        print(f"\n## Flat: {shape['flat_rows_per_batch']} rows a batch (tokens/s, median of {payload['repeats']} rounds)\n")
        rows = []
        for key in FLAT_METHODS:
            entry = results[key]
            rows.append([entry["method"], f"{entry['tokens_per_s']:,.0f}", _ratio(entry["vs_flattening"]),
                         _ratio(entry["vs_flattening_lists"]),
                         f"{entry['tokens_per_batch']:,.0f}", f"{entry['bytes_per_batch'] / 1024:,.1f}",
                         ", ".join(f"{k}={v}" for k, v in entry["dtypes"].items() if k in ("input_ids", "labels", "position_ids"))])
        print(bc.markdown_table(rows, ["method", "tokens/s", "vs (4)", "vs (4t)", "tokens/batch", "KiB/batch", "dtypes"]))
    seconds = payload["data"]["seconds"]
    built = [f"{key[5:]} @ {s['batch_size']}x{s['block_size']} {s['results'][key]['build_seconds']:.3f}"
             for s in payload["shapes"] for key in HD_METHODS]
    print("\nOne-off work, seconds: " + ", ".join(f"{name} {value:.2f}" for name, value in seconds.items())
          + "; hd.dataloader built in " + ", ".join(built))
    print("\nSame blocks as (1) (one shuffled epoch, as a multiset) and same flat batches as (4) (sequential, same rows): "
          + "; ".join(f"{shape}: " + ", ".join(f"{k}={'yes' if ok else 'NO'}" for k, ok in checks.items())
                      for shape, checks in payload["checks"].items()))
    print("\n## Targets\n")
    rows = [[t["shape"], METHODS.get(t["method"], t["method"]).split(":")[0], t["what"],
             f"{t['value']:.2f}" + ("" if "bytes" in t["what"] else "x"), "met" if t["met"] else "MISSED"] for t in payload["targets"]]
    print(bc.markdown_table(rows, ["shape", "method", "target", "measured", ""]))
    print("\nCeilings (what any blocks loader could reach here): " + "; ".join(
        f"{s['batch_size']} x {s['block_size']}: plain torch gather (6) = {s['results']['6_limit_storage']['vs_run_clm']:.1f}x (1) and "
        f"{s['results']['6_limit_storage']['vs_nanogpt']:.1f}x (2); the same through a DataLoader (6dl) = "
        f"{s['results']['6_limit_dataloader']['vs_run_clm']:.1f}x (1) and {s['results']['6_limit_dataloader']['vs_nanogpt']:.1f}x (2)"
        for s in payload["shapes"]))


# ----------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_data(args)
    import datasets

    datasets.disable_progress_bars()
    min_seconds = args.min_seconds if args.min_seconds is not None else (0.2 if args.quick else 1.5)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    payload: dict[str, Any] = {
        "benchmark": "bench_packing",
        "command": ("python scripts/bench_packing.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
        "quick": args.quick,
        "machine": bc.machine_info(),
        "code": bc.code_version(),
        "load_average_at_start": bc.load_average(),
        "min_seconds": min_seconds,
        "repeats": repeats,
        "methods": METHODS,
    }
    with tempfile.TemporaryDirectory(prefix="bench_packing_") as tmp:
        data = prepare(args, Path(tmp))
        payload["data"], payload["storage"] = data["info"], data["storage"]
        print(f"tiny Shakespeare: {data['info']['lines']:,} lines, {data['info']['tokens']:,} tokens, vocabulary "
              f"{data['info']['vocab_size']}; tokenized as {data['info']['tokenized_arrow_types']}", flush=True)
        payload["checks"] = {}
        for batch_size, block_size in SHAPES:
            payload["checks"][f"{batch_size} x {block_size}"] = {**check_blocks(data, batch_size, block_size),
                                                                 **check_flat(data, batch_size, batches=50)}
        print(f"\ntimed: >= {min_seconds} s x {repeats} interleaved rounds per method", flush=True)
        payload["shapes"] = [bench_shape(data, b, s, min_seconds=min_seconds, repeats=repeats) for b, s in SHAPES]
        compact = payload["storage"]["hd_compact"]
        payload["targets"] = evaluate_targets(payload["shapes"], compact["disk_bytes"] / compact["tokens"])
        missed = {(t["method"], t["shape"]) for t in payload["targets"] if not t["met"] and t["method"] in HD_METHODS}
        payload["profiles"] = {}
        for batch_size, block_size in SHAPES:
            shape = f"{batch_size} x {block_size}"
            keys = [k for k in HD_METHODS if args.profile or (k, shape) in missed or (k, f"{batch_size} rows") in missed]
            if keys:
                methods, _ = build_methods(data, batch_size, block_size)
                for key in keys:
                    payload["profiles"][f"{key} @ {shape}"] = profile_method(methods[key], max(min_seconds, 1.0))
    print_tables(payload)
    for name, text in payload["profiles"].items():
        print(f"\n== cProfile of {name} ==\n{text}")
    bc.finish_report(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
