"""One process of the multi-node stream test: ``torchrun --nnodes 2 --nproc_per_node 2 ... tests/stream_ranks.py --out DIR``.

Each process builds the same compacted rows as a stream of 8 and of 5 shards, reads its part with ``hd.dataloader``
(given the whole stream, which it splits by node with ``split_dataset_by_node``, or a stream the script split itself
first, as the ``datasets`` documentation says to; with 0 and 2 workers), for two epochs and once more resumed mid-epoch,
and writes the row ids it read to ``DIR/rank<N>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import datasets
from datasets.distributed import split_dataset_by_node

import hf_dtype as hd

datasets.disable_progress_bars()


def build(rows: int) -> datasets.Dataset:
    data = {"input_ids": [[1 + (r * 7 + j) % 500 for j in range(1 + r % 9)] for r in range(rows)], "idx": list(range(rows))}
    return hd.compact(datasets.Dataset.from_dict(data), {"input_ids": {"storage": "uint16", "pad": 0}, "idx": "uint16"})


def read(loader) -> list[int]:
    return [i for batch in loader for i in batch["idx"].tolist()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=203)
    args = parser.parse_args()

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    small = build(args.rows)
    record = {"rank": accelerator.process_index, "world": accelerator.num_processes, "runs": {}}

    def stream_of(shards: int, split: bool) -> datasets.IterableDataset:
        stream = small.to_iterable_dataset(num_shards=shards)
        return split_dataset_by_node(stream, accelerator.process_index, accelerator.num_processes) if split else stream

    for split, shards, workers in itertools.product((False, True), (8, 5), (0, 2)):
        stream = stream_of(shards, split)
        loader = accelerator.prepare(hd.dataloader(stream, 4, shuffle=True, seed=1, buffer_size=8, num_workers=workers))
        epochs = [read(loader)]
        loader.set_epoch(1)
        epochs.append(read(loader))
        run = {"epochs": epochs}
        if workers == 0:  # resumed after 3 batches of epoch 1 (a stream's position is known without workers)
            iterator = iter(loader)
            head = [i for _ in range(3) for i in next(iterator)["idx"].tolist()]
            state = loader.state_dict()
            again = hd.dataloader(stream_of(shards, split), 4, shuffle=True, seed=1, buffer_size=8)
            again.load_state_dict(state)
            run["resumed"] = head + read(again)
        record["runs"][f"{'split-' if split else ''}{shards}x{workers}"] = run
    Path(args.out, f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
