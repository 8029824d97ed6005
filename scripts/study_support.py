"""What ``dtype_study.py`` measures on top of ``finetune.py``: the classic data path, the time spent making batches, peak memory,
and bf16 matrix products on a CPU that has no bf16 instructions.

``finetune.py`` is the example users copy; the study's extra paths and clocks live here, so it stays short.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

import finetune
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from datasets import Dataset
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["Bf16MatmulsOnFloat32Kernels", "Int64ArrayDataset", "classic_dataloaders", "cpu_has_bf16", "data_wait", "peak_rss_bytes"]


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


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX512-BF16 or AMX); Linux only, False elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            flags = file.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class Bf16MatmulsOnFloat32Kernels(TorchDispatchMode):
    """bf16 matrix products with a GPU's numerics at near float32 speed, for bf16 autocast on a CPU without bf16 instructions.

    There a training step with torch's own bf16 matrix products takes 20 to 30 times as long as in float32. A
    bf16 GEMM multiplies bf16 values, sums in float32 and rounds the sum to bf16; the product of two bf16 values is
    exact in float32, so a float32 kernel on the same bf16 values, its result rounded to bf16, computes the same thing
    up to the order of the sums. Everything else (autocast's casts, attention, norms, the optimizer) is untouched.
    ``calls`` counts the products taken over, backward included.
    """

    OPS: ClassVar[frozenset[Any]] = frozenset({torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                                               torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default})

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func not in self.OPS or not any(isinstance(arg, torch.Tensor) and arg.dtype == torch.bfloat16 for arg in args):
            return func(*args, **kwargs)
        self.calls += 1
        widened = [arg.float() if isinstance(arg, torch.Tensor) and arg.dtype == torch.bfloat16 else arg for arg in args]
        return func(*widened, **kwargs).to(torch.bfloat16)
