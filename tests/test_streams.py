"""Streams (``IterableDataset``): plans from the first rows, lazy checked casts, and ``hd.dataloader`` batches equal to
the map-style batches of the same rows; workers, resume, a local folder laid out as a Hub dataset repo, bad input."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import hf_dtype as hd

ROWS = 53  # not a multiple of any batch size below


def _rows(count: int = ROWS, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 20, count)
    return datasets.Dataset.from_dict({
        "input_ids": [rng.integers(100, 30000, n).tolist() for n in lengths],
        "attention_mask": [[1] * n for n in lengths],
        "labels": [[-100, *rng.integers(0, 9, n - 1).tolist()] for n in lengths],
        "idx": list(range(count)),
    })


@pytest.fixture(scope="module")
def small() -> datasets.Dataset:
    return hd.compact(_rows(), vocab_size=30522)


def _hub_folder(small: datasets.Dataset, folder, shards: int):
    """A local folder laid out as ``push_to_hub`` lays out a dataset repo: Parquet shards under data/ and the README card,
    written by the same functions (and the parquet schema metadata dropped, so the plan can only come from the card)."""
    from datasets.arrow_dataset import _get_updated_dataset_card
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    (folder / "data").mkdir(parents=True)
    for index in range(shards):
        path = folder / "data" / f"train-{index:05d}-of-{shards:05d}.parquet"
        small.shard(shards, index, contiguous=True).to_parquet(str(path))
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
    card, _ = _get_updated_dataset_card(
        fs=DirFileSystem(path=str(folder), fs=LocalFileSystem()), config_name="default",
        splits_info=[datasets.SplitInfo("train", num_bytes=small.data.nbytes, num_examples=len(small))],
        features=small.features, data_dir="data", set_default=None, uploaded_sizes=[0], deleted_sizes=[0], remove_other_splits=False,
    )
    (folder / "README.md").write_text(str(card))
    return folder


def _equal(ours: dict, reference: dict) -> None:
    assert list(ours) == list(reference)
    for name, value in reference.items():
        if torch.is_tensor(value):
            assert ours[name].dtype == value.dtype and torch.equal(ours[name], value), name
        else:
            assert ours[name] == value, name


def test_a_hub_dataset_streamed_from_its_files_keeps_its_plan_and_batches(small, tmp_path):
    stream = datasets.load_dataset(str(_hub_folder(small, tmp_path / "repo", 4)), streaming=True, split="train")
    assert stream.num_shards == 4 and hd.plan_of(stream) == hd.plan_of(small)
    for options in ({"layout": hd.Padded(pad_to_multiple_of=8)}, {"widen": "cpu"},
                    {"layout": hd.Flat(return_flash_attn_kwargs=True, label_column=None)},
                    {"layout": hd.Blocks(16, document_positions=True)}):
        expected = list(hd.dataloader(small, 5, **options))
        got = list(hd.dataloader(stream, 5, **options))
        assert len(got) == len(expected)
        for ours, reference in zip(got, expected, strict=True):
            _equal(ours, reference)
    row = next(iter(stream.with_format("hf_dtype")))  # the formatter reads the plan from the stream's features
    assert row["input_ids"].dtype == torch.int64 and row["attention_mask"].tolist() == [1] * len(row["input_ids"])


def test_infer_plan_from_the_first_rows_and_a_lazy_checked_compact():
    stream = _rows().to_iterable_dataset(num_shards=3)
    plan = hd.infer_plan(stream, sample_rows=10)
    assert "inferred from the first 10 rows of the stream" in str(plan)
    small = hd.compact(stream, plan | {"input_ids": "uint16"})
    assert hd.plan_of(small)["input_ids"].storage == "uint16"
    assert [row["idx"] for row in small] == list(range(ROWS))
    narrow = hd.compact(stream, {"input_ids": "uint8"})  # nothing is read until the stream is
    with pytest.raises(hd.LossyCastError, match=r"Column 'input_ids', row 0: value \d+ does not fit uint8"):
        next(iter(narrow))
    late = datasets.Dataset.from_dict({"x": [2 + i % 5 for i in range(40)] + [70000]}).to_iterable_dataset()
    with pytest.raises(hd.LossyCastError, match=r"Column 'x', row 40: value 70000 does not fit uint8"):
        list(hd.compact(late, hd.infer_plan(late, sample_rows=20)))


def test_workers_read_every_row_once(small):
    stream = small.to_iterable_dataset(num_shards=4)
    for workers in (0, 2, 3):
        seen = [i for batch in hd.dataloader(stream, 4, num_workers=workers) for i in batch["idx"].tolist()]
        assert sorted(seen) == list(range(ROWS)), workers


def test_shuffle_and_set_epoch(small):
    loader = hd.dataloader(small.to_iterable_dataset(num_shards=4), 4, shuffle=True, seed=3, buffer_size=16)
    first = [i for batch in loader for i in batch["idx"].tolist()]
    loader.set_epoch(1)
    second = [i for batch in loader for i in batch["idx"].tolist()]
    assert sorted(first) == sorted(second) == list(range(ROWS)) and first != second


@pytest.mark.parametrize("options", [{}, {"layout": hd.Blocks(16, label_column=None)}])
def test_resume_mid_stream_reads_the_rows_the_uninterrupted_run_reads(small, options):
    stream = small.to_iterable_dataset(num_shards=4)
    key = "idx" if not options else "input_ids"
    full = [batch[key].tolist() for batch in hd.dataloader(stream, 4, **options)]
    loader = hd.dataloader(stream, 4, **options)
    iterator = iter(loader)
    head = [next(iterator)[key].tolist() for _ in range(3)]
    state = loader.state_dict()
    resumed = hd.dataloader(small.to_iterable_dataset(num_shards=4), 4, **options)
    resumed.load_state_dict(state)
    assert head + [batch[key].tolist() for batch in resumed] == full


def test_accelerate_save_state_keeps_the_position_of_a_stream(small, tmp_path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(hd.dataloader(small.to_iterable_dataset(num_shards=2), 4))
    assert loader in accelerator._dataloaders  # handed back as it is: not split again
    iterator = iter(loader)
    seen = [next(iterator)["idx"].tolist() for _ in range(2)]
    accelerator.save_state(str(tmp_path / "state"))
    again = accelerator.prepare(hd.dataloader(small.to_iterable_dataset(num_shards=2), 4))
    accelerator._dataloaders = [again]
    accelerator.load_state(str(tmp_path / "state"))
    rest = [batch["idx"].tolist() for batch in again]
    assert [i for batch in seen + rest for i in batch] == list(range(ROWS))
    accelerator.end_training()


# --- bad input -----------------------------------------------------------------------------------


def test_a_stream_without_a_plan():
    stream = _rows().to_iterable_dataset()
    with pytest.raises(ValueError, match=r"no dtype plan: compact it first \(hd.compact, lazy on a stream\), or pass plan= to "
                                         r"hd.dataloader\."):
        hd.dataloader(stream, 4)
    with pytest.raises(ValueError, match=r"no dtype plan.*stream\.map\(\.\.\., batched=True\) on a stream"):
        next(iter(stream.with_format("hf_dtype")))
    row = next(iter(stream.map(hd.DtypeTransform({"input_ids": "uint16"}), batched=True)))  # the explicit route on a stream
    assert row["input_ids"].dtype == torch.int64


def test_a_stream_without_features():
    stream = datasets.IterableDataset.from_generator(lambda: iter([{"input_ids": [1, 2]}]))
    assert stream.features is None
    with pytest.raises(ValueError, match=r"The stream does not know its columns \(features is None\)"):
        hd.dataloader(stream, 4, plan={"input_ids": "uint8"})
    assert hd.plan_of(hd.compact(stream, {"input_ids": "uint8"}))["input_ids"].storage == "uint8"  # compact finds them


def test_an_empty_stream():
    empty = datasets.IterableDataset.from_generator(lambda: iter([]), features=datasets.Features({"x": datasets.Value("int64")}))
    with pytest.raises(ValueError, match="The stream is empty: a plan needs at least one row"):
        hd.infer_plan(empty)


def test_more_processes_than_rows(monkeypatch):
    from hf_dtype import streams

    tiny = hd.compact(datasets.Dataset.from_dict({"input_ids": [[1], [2]]})).to_iterable_dataset()
    monkeypatch.setattr(streams, "process_rank", lambda: (3, 4))
    with pytest.raises(ValueError, match=r"Process 3 of 4 got no row of the stream: it has fewer rows \(or shards\) than processes"):
        list(hd.dataloader(tiny, 2))


def test_table_of_a_stream():
    table = pa.table({"input_ids": pa.array([[1, 2], [3]], pa.list_(pa.uint8()))})
    from hf_dtype.ragged import rows_of_table

    rows = rows_of_table(table, ["input_ids"])["input_ids"]
    assert rows.starts.tolist() == [0, 2] and rows.lengths.tolist() == [2, 1]


# --- two nodes of two processes ------------------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_of_two_processes_read_every_row_once(tmp_path):
    """torchrun --nnodes 2 --nproc_per_node 2 with a local rendezvous (gloo): over 8 shards (2 a process) and 5 (every 4th
    row a process), with and without workers, every row is read by exactly one process per epoch; set_epoch gives a new
    order; a run resumed mid-epoch reads what the uninterrupted one reads."""
    import os
    import socket
    import subprocess
    import sys
    from collections import Counter
    from pathlib import Path

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(__file__).parent / "stream_ranks.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                               "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port), str(script),
                               "--out", str(tmp_path)], env=env, cwd=Path(__file__).parents[1], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [out[1][-2000:] for out in outputs]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(4)]
    assert [rank["world"] for rank in ranks] == [4] * 4
    assert sorted(ranks[0]["runs"]) == sorted(f"{split}{shards}x{workers}" for split in ("", "split-") for shards in (8, 5)
                                              for workers in (0, 2))  # split by hd.dataloader, and by the user first
    for run in ranks[0]["runs"]:
        epochs = [[i for rank in ranks for i in rank["runs"][run]["epochs"][e]] for e in range(2)]
        for epoch in epochs:
            assert Counter(epoch) == Counter(range(203)), run  # each row once, over the 4 processes
        orders = [[rank["runs"][run]["epochs"][e] for rank in ranks] for e in range(2)]
        assert orders[0] != orders[1], run
        if run.endswith("x0"):
            assert [rank["runs"][run]["resumed"] for rank in ranks] == orders[1], run


def test_a_stream_split_by_the_user_is_not_split_again(monkeypatch):
    """split_dataset_by_node first, as the datasets documentation says: the loader reads that part whole."""
    from datasets.distributed import split_dataset_by_node

    from hf_dtype import streams

    rows = hd.compact(datasets.Dataset.from_dict({"input_ids": [[i + 1] * (1 + i % 3) for i in range(40)], "idx": list(range(40))}))
    parts = []
    for rank in range(4):
        monkeypatch.setattr(streams, "process_rank", lambda rank=rank: (rank, 4))
        part = split_dataset_by_node(rows.to_iterable_dataset(num_shards=5), rank=rank, world_size=4)
        parts.append([i for batch in hd.dataloader(part, 3) for i in batch["idx"].tolist()])
    assert sorted(i for part in parts for i in part) == list(range(40))  # every row once over the 4 processes
    monkeypatch.setattr(streams, "process_rank", lambda: (1, 2))
    part = split_dataset_by_node(rows.to_iterable_dataset(num_shards=4), rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"split for process 0 of 4 \(split_dataset_by_node\), but this is process 1 of 2"):
        hd.dataloader(part, 3)
