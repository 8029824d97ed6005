"""``dataloader``: a ``torch.utils.data.DataLoader`` of batches gathered straight from the Arrow buffers.

Its shape is the one ``accelerate`` shards in one process and in many (accelerate issue 2392): a
``BatchSampler`` (``EpochBatchSampler``) over an ``EpochSampler`` picks the row (or block)
indices, the fetcher's ``__getitems__`` makes the whole batch from them (``fetch.py``: padded,
flat or blocks), and the ``collate_fn`` passes it through.

Order: ``shuffle=True`` draws a permutation from a ``torch.Generator`` seeded with ``seed + epoch``,
so a seed and an epoch give the same order on every process. Each pass advances the epoch by one;
``set_epoch(n)`` moves it to ``n`` but never back, because ``accelerate``'s prepared loader calls
``set_epoch`` with its own count of passes, which restarts at 0 in a resumed run. The loader's
``state_dict`` holds the epoch, so ``accelerator.register_for_checkpointing(loader)`` makes
``save_state`` / ``load_state`` resume in the same order. Iterating never draws from torch's
global random generator (the loader has its own), so dropout is the same whether a run was resumed or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, IterableDataset
from torch.utils.data import BatchSampler, DataLoader, Sampler

from .arrow import arrow_leaf_dtype, list_depth
from .batching import PadOptions
from .fetch import BatchFetcher, BlockFetcher, Blocks, Flat, Padded, batch_plan
from .packing import PACKINGS, check_separator, packed_plan
from .plan import DtypePlan, as_plan
from .recording import NO_PLAN, plan_of
from .streams import StreamBatches, StreamDataLoader, split_stream

__all__ = ["ArrowDataLoader", "EpochBatchSampler", "EpochSampler", "dataloader"]

_SET_BY_DATALOADER = ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last", "dataset")


class EpochSampler(Sampler[int]):
    """Row indices ``0..size-1``, in order or in the permutation of ``seed + epoch``; each pass advances the epoch."""

    def __init__(self, size: int, *, shuffle: bool = False, seed: int = 0) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0  # the epoch of the next pass
        self.current: int | None = None  # the epoch of the pass under way (its batches not all handed out yet)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``, unless the loader has already gone past it (it never goes back)."""
        self.epoch = max(int(epoch), self.epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch``; int32 where it fits, so a large epoch's order takes half the memory."""
        dtype = torch.int32 if self.size <= np.iinfo(np.int32).max else torch.int64
        if not self.shuffle:
            return torch.arange(self.size, dtype=dtype).numpy()
        return torch.randperm(self.size, dtype=dtype, generator=torch.Generator().manual_seed(self.seed + epoch)).numpy()

    def start_pass(self) -> np.ndarray:
        """The order of the pass that starts now; the epoch then advances by one."""
        self.current, self.epoch = self.epoch, self.epoch + 1
        return self.order(self.current)

    def batches(self, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
        """The batches of the pass that starts now; the pass counts as done once its last batch is handed out."""
        order = self.start_pass()
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        starts = range(0, stop, batch_size)
        for i, start in enumerate(starts):
            if i == len(starts) - 1:
                self.current = None
            yield order[start:start + batch_size]
        self.current = None

    def __iter__(self) -> Iterator[int]:
        for block in self.batches(1 << 16, drop_last=False):
            yield from block.tolist()

    def state_dict(self) -> dict[str, int]:
        """The epoch a resumed run starts in: the one under way, or the next when none is."""
        active = _accelerate_loader_over(self)  # workers may have drained the sampler before the pass ends
        under_way = (not active.end_of_dataloader) if active is not None else self.current is not None
        return {"epoch": self.epoch - 1 if under_way else self.epoch, "seed": self.seed, "rows": self.size}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume at the epoch of ``state`` (from ``state_dict``, e.g. through ``accelerator.load_state``)."""
        if (state.get("seed"), state.get("rows")) != (self.seed, self.size):
            raise ValueError(f"The saved loader state is of seed {state.get('seed')} over {state.get('rows')} rows; this loader has "
                             f"seed {self.seed} over {self.size} rows, so it cannot resume in the same order.")
        self.epoch, self.current = int(state["epoch"]), None

    def __len__(self) -> int:
        return self.size


class EpochBatchSampler(BatchSampler):
    """A ``BatchSampler`` over an ``EpochSampler`` that slices the epoch's order into batches (no per-index Python loop).

    It yields what ``BatchSampler(sampler, batch_size, drop_last)`` yields, and is one for
    ``accelerate``, which shards it with ``BatchSamplerShard`` and reaches ``sampler.set_epoch``.
    """

    sampler: EpochSampler

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler.batches(self.batch_size, self.drop_last):
            yield batch.tolist()


def _accelerate_loader_over(sampler: EpochSampler) -> Any:
    """The ``accelerate`` loader iterating over ``sampler`` right now, if any (it wraps it in shards and skips)."""
    from accelerate.state import GradientState

    for loader in GradientState().dataloader_references:
        inner = getattr(loader, "batch_sampler", None)
        while inner is not None and getattr(inner, "sampler", None) is not sampler:
            inner = getattr(inner, "batch_sampler", None)
        if inner is not None:
            return loader
    return None


class ArrowDataLoader(DataLoader):
    """A ``DataLoader`` of batches gathered from Arrow, with ``set_epoch``, a resumable ``state_dict`` and the ``plan`` it serves."""

    def set_epoch(self, epoch: int) -> None:
        """Use the row order of ``epoch`` (the permutation of ``seed + epoch``) for the next pass."""
        self.batch_sampler.sampler.set_epoch(epoch)

    @property
    def plan(self) -> DtypePlan:
        """The plan of the served columns; ``plan.widen(batch)`` gives the compute dtypes."""
        return self.dataset.plan

    def state_dict(self) -> dict[str, int]:
        """The order's state (``EpochSampler.state_dict``): register the loader with ``accelerator.register_for_checkpointing``."""
        return self.batch_sampler.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batch_sampler.sampler.load_state_dict(state)


def _check_int(name: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (positive and value <= 0):
        raise ValueError(f"{name} must be {'a positive integer' if positive else 'an integer'}; got {value!r}.")


def _packed_columns(schema: pa.Schema, columns: Sequence[str] | str | None, packing: str) -> tuple[str, str | None]:
    """The token column of a packed loader and its label column (token classification), checked."""
    lists = [field.name for field in schema if list_depth(field.type) == 1 and arrow_leaf_dtype(field.type) is not None]
    names = [columns] if isinstance(columns, str) else list(columns or [])
    token = names[0] if names else "input_ids"
    labels = names[1] if len(names) > 1 else (None if names else next((n for n in ("labels", "label_ids") if n in lists), None))
    for name in (token, labels):
        if name is not None and name not in lists:
            raise ValueError(f"packing={packing!r} needs list columns of numbers: {name!r} is not one; the dataset's list columns "
                             f"are {lists} (name the token column, and the label column if any, with columns=).")
    return token, labels


def _layout(schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None, options: PadOptions, packing: str | None,
            block_size: int | None, separator: int | None, document_positions: bool,
            flash_attn_kwargs: bool) -> tuple[Padded | Flat | Blocks, list[str]]:
    """The layout of the batches, its options checked, and the stored columns to read for it."""
    if packing not in (None, *PACKINGS):
        raise ValueError(f"packing must be None (padded rows), 'blocks' or 'flat'; got {packing!r}.")
    given = {"block_size": block_size is not None, "separator": separator is not None, "document_positions": document_positions}
    misplaced = [name for name, used in given.items() if used and packing != "blocks"]
    misplaced += ["flash_attn_kwargs"] if flash_attn_kwargs and packing != "flat" else []
    misplaced += [name for name in ("pad_to_multiple_of", "max_length") if packing and getattr(options, name) is not None]
    if misplaced:
        raise ValueError(f"{misplaced} do not apply to packing={packing!r}: block_size, separator and document_positions are for "
                         "'blocks', flash_attn_kwargs for 'flat', pad_to_multiple_of and max_length for padded batches (None).")
    if packing is None:
        served_plan, names = batch_plan(schema, plan, columns)
        sources = [served_plan[name].lengths_from for name in names if name not in schema.names]
        return Padded(served_plan, names, options), list(dict.fromkeys([*(name for name in names if name in schema.names), *sources]))
    token, labels = _packed_columns(schema, columns, packing)
    read = [token] + ([labels] if labels else [])
    plan, _ = batch_plan(schema, plan, read)
    if packing == "flat":
        return Flat(packed_plan(plan, token, labels, positions=None), token, labels, options.widen, bool(flash_attn_kwargs)), read
    _check_int("block_size", block_size, positive=True)
    check_separator(separator, plan[token], token)
    return Blocks(packed_plan(plan, token, labels, positions=block_size - 1), token, labels, block_size, separator, options.widen,
                  bool(document_positions)), read


def dataloader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    pad_to_multiple_of: int | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
    widen: str = "device",
    plan: DtypePlan | Mapping | None = None,
    columns: Sequence[str] | str | None = None,
    packing: str | None = None,
    block_size: int | None = None,
    separator: int | None = None,
    document_positions: bool = False,
    flash_attn_kwargs: bool = False,
    buffer_size: int = 1000,
    **dataloader_kwargs: Any,
) -> ArrowDataLoader | StreamDataLoader:
    """A ``DataLoader`` of batches of ``dataset`` gathered from its Arrow buffers, vectorized: padded, packed or flat.

    Args:
        dataset: a ``datasets.Dataset``, usually compacted; ``shuffle`` / ``select`` / ``filter``
            views and memory-mapped, multi-file datasets are read in place, never copied. Or a
            stream (``IterableDataset``): see ``streams.py``.
        batch_size: rows (blocks, for ``packing="blocks"``) per batch.
        shuffle, drop_last: as in ``DataLoader``; the order is the permutation of ``seed + epoch``
            (a stream: ``datasets``' buffer shuffle of ``buffer_size`` rows, with ``seed``).
        seed: the seed of the order (the same on every process).
        num_workers, pin_memory: as in ``DataLoader``.
        pad_to_multiple_of, max_length, padding_side: how padded batches are padded (``packing=None``).
        widen: ``"device"`` serves the storage dtypes (call ``loader.plan.widen(batch)`` after moving
            the batch to the device), ``"cpu"`` the compute dtypes.
        plan: the dtype plan; ``None`` reads the one ``compact`` recorded in ``dataset``.
        columns: padded batches: the columns to batch (default: every planned column present or
            derived). Packed batches: the token column, and the label column of token
            classification (default: ``input_ids``, and ``labels`` if the dataset has it).
        packing: ``None`` (padded rows), ``"blocks"`` (``block_size`` tokens of the rows laid end to
            end, as ``run_clm.py``'s ``group_texts``) or ``"flat"`` (each batch as one row, as
            ``DataCollatorWithFlattening``). Packed batches need ``model.config.use_cache = False``.
        block_size, separator, document_positions: for ``"blocks"``: the block length, a token id
            appended after each row, and ``position_ids`` that restart at every row start.
        flash_attn_kwargs: for ``"flat"``: add ``cu_seq_lens_q/k`` and ``max_length_q/k``.
        buffer_size: the shuffle buffer of a stream.
        **dataloader_kwargs: passed on to ``DataLoader`` (``multiprocessing_context``,
            ``persistent_workers``, ``prefetch_factor``, ``worker_init_fn``, ``generator``, ...).

    Returns:
        An ``ArrowDataLoader`` (a ``StreamDataLoader`` for a stream); each batch is a dict of tensors (padded: ``(batch, width)`` and
        ``(batch,)``, with ``label`` / ``label_ids`` renamed ``labels``).
    """
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(f"dataloader takes a datasets.Dataset or IterableDataset (one split); got {type(dataset).__name__}.")
    _check_int("batch_size", batch_size, positive=True)
    _check_int("seed", seed, positive=False)
    taken = sorted(set(dataloader_kwargs) & set(_SET_BY_DATALOADER))
    if taken:
        raise TypeError(f"dataloader sets {taken} itself; pass batch_size=, shuffle=, drop_last= as its own arguments.")
    options = PadOptions(pad_to_multiple_of, max_length, padding_side, widen)
    plan = as_plan(plan) or plan_of(dataset)
    if plan is None:
        raise ValueError(NO_PLAN.replace(", pass plan= to Dataset.with_format, or apply hd.DtypeTransform(plan): ds.with_transform(...) "
                                         "on a Dataset, stream.map(..., batched=True) on a stream.", " or pass plan=."))
    stream = isinstance(dataset, IterableDataset)
    schema = _stream_schema(dataset) if stream else dataset.data.table.schema
    layout, read = _layout(schema, plan, columns, options, packing, block_size, separator, document_positions, flash_attn_kwargs)
    if stream:
        if dataloader_kwargs.pop("generator", None) is not None:
            raise TypeError("A stream is shuffled by datasets (seed=, buffer_size=): it takes no generator.")
        stream = split_stream(dataset.shuffle(seed=seed, buffer_size=buffer_size) if shuffle else dataset)
        return StreamDataLoader(StreamBatches(stream, read, layout, batch_size, drop_last, bool(shuffle)), batch_size=None,
                                collate_fn=_passthrough, num_workers=num_workers, pin_memory=pin_memory, **dataloader_kwargs)
    if isinstance(layout, Blocks):
        fetcher = BlockFetcher(dataset, layout)
        if fetcher.num_blocks == 0:
            tokens = int(fetcher._stream()[0].stream[-1])
            raise ValueError(f"block_size {block_size} is larger than the token stream of {layout.token!r} ({tokens} tokens over "
                             f"{len(dataset)} rows): no block can be made; expected a block_size of at most {tokens}.")
    else:
        fetcher = BatchFetcher(dataset, read, layout)
    dataloader_kwargs.setdefault("generator", torch.Generator().manual_seed(int(seed)))
    return ArrowDataLoader(
        fetcher,
        batch_sampler=EpochBatchSampler(EpochSampler(len(fetcher), shuffle=bool(shuffle), seed=int(seed)), batch_size, drop_last),
        collate_fn=_passthrough,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **dataloader_kwargs,
    )


def _stream_schema(stream: IterableDataset) -> pa.Schema:
    if stream.features is None:
        raise ValueError("The stream does not know its columns (features is None): give it features, e.g. with "
                         "stream.cast(features), or compact it (hd.compact), which records them.")
    return stream.features.arrow_schema


def _passthrough(batch: dict[str, Any]) -> dict[str, Any]:
    """The ``collate_fn`` of a loader whose dataset already returns whole batches."""
    return batch
