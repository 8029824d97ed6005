"""One rank of the multi-process loader test: ``torchrun --nproc_per_node 2 tests/loader_ranks.py --out DIR``.

Each rank builds the same small compacted dataset, shards ``hd.dataloader`` with
``accelerator.prepare``, checks every row it gets against the values it was built from, and writes
the row ids of its batches, and of ``gather_for_metrics``, to ``DIR/rank<N>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import datasets

import hf_dtype as hd

datasets.disable_progress_bars()


def row_values(row: int) -> tuple[list[int], list[int]]:
    """The ``input_ids`` and ``labels`` of row ``row``: lengths 1..11, ids up to 60,000 (uint16), labels with -100."""
    length = 1 + (row * 7) % 11
    ids = [(row * 1_009 + 13 * j) % 60_000 + 1 for j in range(length)]
    labels = [-100 if j == 0 else (row + j) % 9 for j in range(length)]
    return ids, labels


def build(num_rows: int) -> datasets.Dataset:
    """The compacted dataset every rank builds: input_ids, labels, a derived attention_mask and a row id."""
    rows = [row_values(row) for row in range(num_rows)]
    raw = datasets.Dataset.from_dict({"input_ids": [r[0] for r in rows], "labels": [r[1] for r in rows],
                                      "idx": list(range(num_rows))})
    plan = {"input_ids": {"storage": "uint16", "compute": "int64", "pad": 0},
            "labels": {"storage": "int8", "compute": "int64", "pad": -100},
            "attention_mask": {"derived": "ones", "compute": "int64"},
            "idx": {"storage": "uint16", "compute": "int64"}}
    return hd.compact(raw, plan)


def check_rows(batch: dict) -> None:
    """Raise unless every row of ``batch`` (compute dtypes) holds the values of the row its ``idx`` names."""
    for position, row in enumerate(batch["idx"].tolist()):
        ids, labels = row_values(row)
        length = len(ids)
        assert batch["input_ids"][position, :length].tolist() == ids, row
        assert batch["labels"][position, :length].tolist() == labels, row
        assert batch["attention_mask"][position].tolist() == [1] * length + [0] * (batch["attention_mask"].shape[1] - length), row
        assert not batch["input_ids"][position, length:].any() and (batch["labels"][position, length:] == -100).all(), row


PACKED = {"blocks": {"layout": hd.Blocks(16, label_column=None)},
          "flat": {"layout": hd.Flat(return_flash_attn_kwargs=True, label_column=None)}}


def packed_epoch(accelerator, loaders: dict, epoch: int) -> dict[str, list]:
    """One epoch of each packed loader: the token ids of every block, and of every row of the flat batches."""
    out = {}
    for name, loader in loaders.items():
        loader.set_epoch(epoch)
        pieces = []
        for batch in loader:
            if name == "blocks":
                pieces += batch["input_ids"].tolist()
            else:
                bounds, ids = batch["cu_seq_lens_q"].tolist(), batch["input_ids"][0].tolist()
                pieces += [ids[a:b] for a, b in itertools.pairwise(bounds)]
        out[name] = pieces
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--rows", type=int, default=37)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    dataset = build(args.rows)
    loader = hd.dataloader(dataset, args.batch_size, layout=hd.Padded(pad_to_multiple_of=8), shuffle=True, seed=args.seed, widen="device")
    prepared = accelerator.prepare(loader)
    record = {"rank": accelerator.process_index, "num_processes": accelerator.num_processes, "epochs": []}
    packed = {name: accelerator.prepare(hd.dataloader(dataset, 3, shuffle=True, seed=args.seed, **options))
              for name, options in PACKED.items()}
    for epoch in range(args.epochs):
        prepared.set_epoch(epoch)
        batches, gathered = [], []
        for batch in prepared:
            assert batch["input_ids"].dtype.itemsize == 2 and batch["attention_mask"].dtype.is_floating_point is False
            wide = loader.plan.widen(batch)
            check_rows(wide)
            batches.append(wide["idx"].tolist())
            gathered.extend(accelerator.gather_for_metrics(wide["idx"]).tolist())
        record["epochs"].append({"batches": batches, "gathered": gathered, **packed_epoch(accelerator, packed, epoch)})
    Path(args.out, f"rank{accelerator.process_index}.json").write_text(json.dumps(record))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
