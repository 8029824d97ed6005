"""Every touch of a private name of ``datasets``, ``accelerate`` or ``transformers``, and of torch's loader internals, in one place.

Each helper names what it reads and the versions it was checked on (datasets 5.2, accelerate
1.13, transformers 5.24, torch 2.13); ``tests/test_compat.py`` fails loudly, naming the helper,
the day one of these names disappears. Nothing else in the package reaches a private name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import torch

__all__ = [
    "SelfPrepared", "accelerate_device", "accelerate_is_set_up", "accelerate_loaders", "indices_mapping", "lean_batches",
    "process_rank", "register_formatter", "signature_columns", "stream_split", "temporary_cache_dir",
]


class SelfPrepared:
    """Marks a ``DataLoader`` that shards itself and keeps its own state, as ``accelerate``'s prepared loaders do.

    ``accelerator.prepare`` hands a loader with ``_is_accelerate_prepared`` back as it is (and keeps it
    in ``accelerator._dataloaders``); ``save_state`` / ``load_state`` call ``state_dict`` /
    ``load_state_dict`` of those with ``use_stateful_dataloader`` (accelerate 1.x ``checkpointing.py``).
    """

    _is_accelerate_prepared = True
    use_stateful_dataloader = True


def lean_batches(loader: Any) -> Iterator[Any] | None:
    """One pass of ``loader`` as torch's single-process iterator makes it (``_SingleProcessDataLoaderIter`` and its
    fetchers, torch 2.13), without its per-batch bookkeeping (a profiler range, index and fetcher calls), which takes as
    long as making a small batch: ``collate_fn(dataset.__getitems__(indices))`` per batch of the batch sampler, or
    ``collate_fn(item)`` per item of an iterable dataset served with ``batch_size=None``. None where torch's iterator
    does more: workers, or memory to pin."""
    if loader.num_workers or (loader.pin_memory and torch.accelerator.is_available()):
        return None
    if loader.batch_sampler is None:
        return (loader.collate_fn(item) for item in loader.dataset)
    return (loader.collate_fn(loader.dataset.__getitems__(indices)) for indices in loader.batch_sampler)


def accelerate_is_set_up() -> bool:
    """Whether ``accelerate``'s process state exists (``PartialState._shared_state``), without making one."""
    from accelerate.state import PartialState

    return bool(PartialState._shared_state)


def accelerate_device() -> Any:
    """The device ``accelerate`` set up in this process, or None where it is not set up."""
    from accelerate.state import PartialState

    return PartialState().device if accelerate_is_set_up() else None


def accelerate_loaders() -> list[Any]:
    """The loaders ``accelerate`` is iterating right now (``GradientState().dataloader_references``)."""
    from accelerate.state import GradientState

    return [loader for loader in GradientState().dataloader_references if loader is not None]


def stream_split(stream: Any) -> tuple[int, int] | None:
    """``(rank, world_size)`` of a stream split by ``split_dataset_by_node``, or None (``IterableDataset._distributed``)."""
    split = stream._distributed
    return None if split is None else (split.rank, split.world_size)


def indices_mapping(dataset: Any) -> pa.Table | None:
    """A ``Dataset``'s indices mapping after ``select`` / ``filter`` / ``shuffle``: a table of row positions, or None."""
    return dataset._indices


def register_formatter(formatter: type, name: str, aliases: list[str]) -> None:
    """Register a ``datasets`` formatter under ``name`` (``datasets.formatting._register_formatter``)."""
    from datasets.formatting import _register_formatter

    _register_formatter(formatter, name, aliases=aliases)


def signature_columns(trainer: Any) -> list[str]:
    """The columns ``trainer``'s model takes, as ``remove_unused_columns`` keeps them (``Trainer._signature_columns``)."""
    trainer._set_signature_columns_if_needed()
    return list(trainer._signature_columns)


@contextlib.contextmanager
def temporary_cache_dir() -> Iterator[None]:
    """``datasets`` makes its temporary cache folder again on first use within, and gets its own back after
    (``datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES``)."""
    import datasets.fingerprint

    saved = datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES
    datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES = None
    try:
        yield
    finally:
        datasets.fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES = saved


def process_rank() -> tuple[int, int]:
    """``(rank, world size)`` of this process: accelerate's when it is set up, else torch.distributed's, else ``(0, 1)``."""
    if accelerate_is_set_up():
        from accelerate.state import PartialState

        state = PartialState()
        return state.process_index, state.num_processes
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
