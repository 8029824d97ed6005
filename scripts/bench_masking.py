"""Masked-LM batches side by side: ``run_mlm.py``'s path against ``hd.MaskedLM``, on the same blocks, in one process.

    python scripts/bench_masking.py [--data_dir DIR] [--block_size 128] [--batch_size 32] [--rounds 5] [--output_json FILE]

(1) ``run_mlm.py``: ``group_texts`` blocks + ``with_format("torch")`` + ``DataCollatorForLanguageModeling``
    (masks drawn in Python per batch from torch's generator), through a ``DataLoader``.
(2) ``hd.dataloader(compact, layout=hd.MaskedLM(hd.Blocks(block_size)))``: blocks gathered from the
    Arrow buffers and masked vectorized; compute dtypes (``widen="cpu"``) and storage dtypes (``widen="device"``).
Tiny Shakespeare tokenized with the MiniLM (BERT) tokenizer; shuffled epochs, interleaved rounds, the
median round per method; tokens/s and the ratio to (1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import bench_common as bc
import datasets
import torch
from pretrain import group_texts
from torch.utils.data import DataLoader
from transformers import DataCollatorForLanguageModeling

import hf_dtype as hd


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(bc.DEFAULT_DATA_DIR), help="a folder with tinyshakespeare/input.txt")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median round counts")
    parser.add_argument("--output_json", default=str(bc.REPO_ROOT / "docs" / "bench" / "masking.json"))
    return parser.parse_args()


def epoch_seconds(loader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    datasets.disable_progress_bars()
    tokenizer = bc.get_tokenizer()
    text = (Path(args.data_dir) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    lines = datasets.Dataset.from_dict({"text": [line for line in text.splitlines() if line.strip()]})
    tokenized = lines.map(lambda batch: tokenizer(batch["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"])
    blocks = tokenized.map(group_texts, batched=True, batch_size=None, fn_kwargs={"block_size": args.block_size})
    blocks = blocks.remove_columns(["labels"]).with_format("torch")
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    compact = hd.compact(tokenized.remove_columns(["special_tokens_mask"]), vocab_size=len(tokenizer))
    masked = hd.MaskedLM(hd.Blocks(args.block_size, label_column=None), mask_token_id=tokenizer.mask_token_id,
                         vocab_size=len(tokenizer), special_token_ids=tokenizer.all_special_ids)
    methods = {
        "1_run_mlm": DataLoader(blocks, batch_size=args.batch_size, shuffle=True, collate_fn=collator,
                                generator=torch.Generator().manual_seed(0)),
        "2_hd_masked_cpu": hd.dataloader(compact, args.batch_size, layout=masked, shuffle=True, widen="cpu"),
        "2_hd_masked_device": hd.dataloader(compact, args.batch_size, layout=masked, shuffle=True, widen="device"),
    }
    tokens = len(blocks) * args.block_size
    assert len(methods["2_hd_masked_cpu"].dataset) == len(blocks)  # the same blocks
    times: dict[str, list[float]] = {name: [] for name in methods}
    start_load = bc.load_average()
    for _ in range(args.rounds):
        for name, loader in methods.items():
            times[name].append(epoch_seconds(loader))
    rates = {name: tokens / statistics.median(seconds) for name, seconds in times.items()}
    rows = [[name, f"{rate:,.0f}", f"{rate / rates['1_run_mlm']:.1f}x"] for name, rate in rates.items()]
    print(bc.table(rows, ["method", "tokens/s", "vs (1)"]))
    bc.finish_report(args.output_json, {
        "command": "python scripts/bench_masking.py", "block_size": args.block_size, "batch_size": args.batch_size,
        "blocks": len(blocks), "tokens_per_epoch": tokens, "seconds": times, "tokens_per_s": rates,
        "ratio_vs_run_mlm": {name: rate / rates["1_run_mlm"] for name, rate in rates.items()},
        "load_average": {"start": start_load, "end": bc.load_average()}, "machine": bc.machine_info(), "code": bc.code_version(),
    })


if __name__ == "__main__":
    main()
