"""The data paths of ``finetune.py``: the same tokenized rows, served three ways, in the same order.

- ``classic``: a ``torch.utils.data.Dataset`` subclass whose ``__getitem__`` turns each row into
  int64 numpy arrays, padded by a ``transformers`` collator: the pattern of many training scripts.
- ``default``: ``with_format("torch")`` (int64 everywhere) and the same collator: plain ``datasets``.
- ``compact``: ``hd.compact`` with a plan (inferred, or read from JSON) and ``hd.dataloader``, which
  pads straight from the Arrow buffers in the storage dtypes; widened on the device
  (``plan.widen`` after ``accelerate`` moved the batch) or on the CPU.

For one seed, every path visits the rows in the same order (the order ``hd.dataloader`` draws), so
the losses of two paths can be compared step by step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from finetune_data import InputError
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

import hf_dtype as hd
from hf_dtype.loader import EpochSampler

__all__ = ["DATA_PATHS", "Int64ArrayDataset", "ServedData", "get_dataloaders"]

DATA_PATHS = ("classic", "default", "compact")
EVAL_SPLITS = ("validation", "test")


class Int64ArrayDataset(torch.utils.data.Dataset):
    """The classic route: a Dataset subclass whose ``__getitem__`` converts each column of a row to an int64 numpy array."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset.with_format("numpy")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {name: np.asarray(value, dtype=np.int64) for name, value in self.dataset[int(index)].items()}


@dataclass
class ServedData:
    """The loaders of one data path and what the training loop needs to know about them."""

    path: str
    train: DataLoader | None
    eval: dict[str, DataLoader]
    plan: hd.DtypePlan | None = None
    widen_on_device: bool = False
    train_bytes: int | None = None
    samplers: list[Any] = field(default_factory=list)

    def widen(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The batch in compute dtypes: ``plan.widen`` for compact batches served in storage dtypes, else as is."""
        return self.plan.widen(batch) if self.widen_on_device else batch

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the train rows in the order of ``epoch`` (a function of seed and epoch only, so a resumed run agrees)."""
        for sampler in self.samplers:
            sampler.set_epoch(epoch)


def _collator(task: str, tokenizer: Any, pad_to_multiple_of: int) -> Callable:
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    if task == "ner":
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")


def _row_loader(rows: torch.utils.data.Dataset, collate: Callable, batch_size: int, sampler: Any) -> DataLoader:
    return DataLoader(rows, batch_sampler=BatchSampler(sampler, batch_size, drop_last=False), collate_fn=collate)


def _compact_loaders(args: Any, tokenized: DatasetDict, tokenizer: Any) -> ServedData:
    if args.plan == "compact":
        plan = hd.infer_plan(tokenized, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)
        small = hd.compact(tokenized, plan)
    else:  # a plan written by hand may not fit the data: say so before training, naming the file
        try:
            plan = hd.DtypePlan.from_json(args.plan)
            small = hd.compact(tokenized, plan)
        except (ValueError, TypeError) as error:
            raise InputError(f"--plan {args.plan!r} does not fit the tokenized data: {error}") from None
    plan = hd.plan_of(small) or plan
    options = dict(pad_to_multiple_of=args.pad_to_multiple_of, widen=args.widen, plan=plan)
    train = hd.dataloader(small["train"], args.per_device_train_batch_size, shuffle=True, seed=args.seed, **options) \
        if "train" in small else None
    evals = {split: hd.dataloader(small[split], args.per_device_eval_batch_size, shuffle=False, **options)
             for split in EVAL_SPLITS if split in small}
    samplers = [train_sampler(train)] if train is not None else []
    return ServedData("compact", train, evals, plan=plan, widen_on_device=args.widen == "device",
                      train_bytes=small["train"].data.nbytes if "train" in small else None, samplers=samplers)


def train_sampler(loader: DataLoader) -> Any:
    """The index sampler inside an ``hd.dataloader`` train loader (what ``set_epoch`` reaches)."""
    return loader.batch_sampler.sampler


def get_dataloaders(accelerator: Any, args: Any, tokenized: DatasetDict, tokenizer: Any, task: str) -> ServedData:
    """Train and evaluation loaders for ``args.data_path``, in the same row order for every path."""
    if args.data_path == "compact":
        return _compact_loaders(args, tokenized, tokenizer)
    collate = _collator(task, tokenizer, args.pad_to_multiple_of)
    if args.data_path == "default":
        serve = lambda split: tokenized[split].with_format("torch")  # noqa: E731
    elif args.data_path == "classic":
        serve = lambda split: Int64ArrayDataset(tokenized[split])  # noqa: E731
    else:
        raise ValueError(f"Unknown data path {args.data_path!r}; expected one of {DATA_PATHS}.")
    train, samplers = None, []
    if "train" in tokenized:
        sampler = hd_order_sampler(len(tokenized["train"]), seed=args.seed)
        train = _row_loader(serve("train"), collate, args.per_device_train_batch_size, sampler)
        samplers.append(sampler)
    evals = {split: _row_loader(serve(split), collate, args.per_device_eval_batch_size, SequentialSampler(range(len(tokenized[split]))))
             for split in EVAL_SPLITS if split in tokenized}
    return ServedData(args.data_path, train, evals, train_bytes=tokenized["train"].data.nbytes if "train" in tokenized else None,
                      samplers=samplers)


def hd_order_sampler(num_rows: int, seed: int) -> EpochSampler:
    """The row sampler of ``hd.dataloader(..., shuffle=True, seed=seed)`` itself: epoch ``e`` is the permutation of ``seed + e``."""
    return EpochSampler(num_rows, shuffle=True, seed=seed)
