"""``hd.dataloader`` under ``accelerate``: sharded across two CPU processes (torchrun, gloo), and in one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import hf_dtype as hd

sys.path.insert(0, str(Path(__file__).parent))
from loader_ranks import PACKED, build, check_rows

ROWS, BATCH, SEED = 37, 4, 11  # 37 rows: not a multiple of 2 processes x 4, so even_batches repeats rows


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _single_process_order(epoch: int) -> list[int]:
    loader = hd.dataloader(build(ROWS), BATCH, shuffle=True, seed=SEED)
    loader.set_epoch(epoch)
    return [i for batch in loader for i in batch["idx"].tolist()]


@pytest.mark.slow
def test_two_processes_shard_every_row_once(tmp_path):
    script = Path(__file__).parent / "loader_ranks.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(script), "--out", str(tmp_path),
               "--rows", str(ROWS), "--batch_size", str(BATCH), "--seed", str(SEED)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [rank["num_processes"] for rank in ranks] == [2, 2]
    orders = []
    for epoch in range(2):
        per_rank = [rank["epochs"][epoch]["batches"] for rank in ranks]
        assert len(per_rank[0]) == len(per_rank[1])  # even_batches: as many batches on each rank
        assert all(len(batch) == BATCH for batches in per_rank for batch in batches)
        seen = Counter(i for batches in per_rank for batch in batches for i in batch)
        assert set(seen) == set(range(ROWS))
        interleaved = [i for pair in zip(*per_rank, strict=True) for batch in pair for i in batch]
        order = _single_process_order(epoch)
        assert interleaved[:ROWS] == order  # rank r takes every other batch of the same permutation
        assert interleaved[ROWS:] == order[:len(interleaved) - ROWS]  # ... completed from the start of the epoch
        for rank in ranks:
            assert sorted(rank["epochs"][epoch]["gathered"]) == list(range(ROWS))  # duplicates dropped
        orders.append(order)
    assert orders[0] != orders[1]
    for name, options in PACKED.items():  # every block, and every row of flat batches, read by exactly one process
        single = hd.dataloader(build(ROWS), 3, **options)
        if name == "blocks":
            expected = sorted(row for batch in single for row in single.plan.widen(batch)["input_ids"].tolist())
        else:
            expected = sorted(row for row in build(ROWS)["input_ids"] if row)
        for epoch in range(2):
            got = [piece for rank in ranks for piece in rank["epochs"][epoch][name]]
            distinct = sorted({tuple(piece) for piece in got})
            assert distinct == sorted({tuple(piece) for piece in expected})  # all of them ...
            assert len(got) - len(expected) < 2 * 3  # ... and repeats only to even out the last batches


@pytest.mark.parametrize("use_seedable_sampler", [False, True])
def test_single_process_prepare(fresh_accelerate_state, use_seedable_sampler):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    config = DataLoaderConfiguration(use_seedable_sampler=use_seedable_sampler)
    accelerator = Accelerator(cpu=True, dataloader_config=config)
    loader = hd.dataloader(build(ROWS), BATCH, shuffle=True, seed=SEED, widen="device")
    prepared = accelerator.prepare(loader)
    for epoch in (0, 1, 2):
        if epoch != 1:  # accelerate sets the epoch to its own count of passes when it is not set
            prepared.set_epoch(epoch)
        order, gathered = [], []
        for batch in prepared:
            assert batch["input_ids"].dtype == torch.uint16 and batch["attention_mask"].dtype == torch.bool
            wide = loader.plan.widen(batch)
            check_rows(wide)
            order.extend(wide["idx"].tolist())
            gathered.extend(accelerator.gather_for_metrics(wide["idx"]).tolist())
        assert order == _single_process_order(epoch)  # the loader's own seed, whatever accelerate's sampler options
        assert sorted(gathered) == list(range(ROWS))
    assert len(prepared) == -(-ROWS // BATCH)
    again = accelerator.prepare(hd.dataloader(build(ROWS), BATCH, shuffle=True, seed=SEED))
    again.set_epoch(1)  # as load_state sets it
    resumed = accelerator.skip_first_batches(again, 3)  # resuming mid-epoch
    assert [i for batch in resumed for i in batch["idx"].tolist()] == _single_process_order(1)[3 * BATCH:]
    accelerator.end_training()
