"""What ``dtype_study.py`` measures on top of ``finetune.py``: the classic data path, the time spent making batches, peak memory.

``finetune.py`` is the example users copy; the study's extra paths and clocks live here, so it stays short.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import finetune
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from datasets import Dataset

__all__ = ["Int64ArrayDataset", "classic_dataloaders", "data_wait", "peak_rss_bytes"]


class Int64ArrayDataset(torch.utils.data.Dataset):
    """The classic route: a ``Dataset`` subclass whose ``__getitem__`` turns each column of a row into an int64 numpy array."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset.with_format("numpy")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(value, dtype=np.int64) for name, value in self.dataset[int(index)].items()}


def classic_dataloaders(args: argparse.Namespace, data: finetune.PreparedData) -> finetune.Dataloaders:
    """``finetune.py``'s datasets-default loaders over ``Int64ArrayDataset`` rows: same order, same collator, same padding."""
    return finetune.datasets_default_dataloaders(args, data, rows=Int64ArrayDataset)


def data_wait(argv: list[str], make_dataloaders: Callable[..., finetune.Dataloaders], metrics: dict[str, Any]) -> dict[str, float]:
    """The time a run of ``argv`` spent waiting for training batches, estimated from a pass over its prepared train loader alone.

    With ``num_workers=0`` a batch is made inside ``next()`` on the loader, so the wait is the time to make it: the
    mean time of one batch of a full pass (after training, in the same process), times the batches trained.
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    args = finetune.check_args(finetune.parse_args(argv))
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    loaders = make_dataloaders(args, finetune.prepare_data(args))
    train = accelerator.prepare(loaders.train)
    start, batches = time.perf_counter(), 0
    for _ in train:
        batches += 1
    per_batch = (time.perf_counter() - start) / batches
    wait = per_batch * metrics["train_batches"]
    return {"data_wait_seconds": wait, "data_wait_share": wait / metrics["train_seconds"]}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (``ru_maxrss``, in bytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
