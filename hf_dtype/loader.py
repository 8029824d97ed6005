"""``dataloader``: a ``torch.utils.data.DataLoader`` of batches gathered straight from the Arrow buffers.

Its shape is the one ``accelerate`` shards (accelerate issue 2392): a ``BatchSampler``
(``EpochBatchSampler``) over an ``EpochSampler`` picks the row (or block) indices (``sampling.py``), the
fetcher's ``__getitems__`` makes the whole batch from them (``fetch.py``: padded, flat or blocks), and
the ``collate_fn`` passes it through. With no workers a pass is that loop itself (``_compat.lean_batches``).

The loader is prepared for ``accelerate`` by itself, as ``accelerate``'s own ``DataLoaderShard``
is: each process takes its batches as ``BatchSamplerShard`` deals them (``even_batches``), batches
move to ``accelerate``'s device and are widened there, ``end_of_dataloader`` / ``remainder`` are kept
for gradient accumulation and ``gather_for_metrics``, and ``save_state`` / ``load_state`` carry its
``state_dict`` with no ``register_for_checkpointing`` (it is a stateful loader to them), so a run that
resumes in ``complete_nlp_example``'s shape sees the rows of the uninterrupted run.

Order: ``shuffle=True`` draws a permutation from a ``torch.Generator`` seeded with ``seed + epoch``,
so a seed and an epoch give the same order on every process. Each pass advances the epoch by one;
``set_epoch(n)`` moves it to ``n`` but never back. Iterating never draws from torch's global random
generator (the loader has its own), so dropout is the same whether a run was resumed or not.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.state import GradientState
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader

from ._compat import SelfPrepared, accelerate_device, lean_batches, process_rank
from .batching import WIDEN_MODES
from .convert import Batch
from .fetch import BatchFetcher, BlockFetcher
from .layouts import Blocks, Layout, Padded, check_count
from .masking import MaskedLM
from .plan import DtypePlan
from .recording import require_plan
from .sampling import EpochBatchSampler, EpochSampler
from .streams import StreamBatches, StreamDataLoader, split_stream

__all__ = ["ArrowDataLoader", "AsBatch", "dataloader"]

_SET_BY_DATALOADER = ("batch_size", "shuffle", "sampler", "batch_sampler", "collate_fn", "drop_last", "dataset")


class ArrowDataLoader(SelfPrepared, DataLoaderStateMixin, DataLoader):
    """A ``DataLoader`` of batches gathered from Arrow, with ``set_epoch``, a resumable ``state_dict`` and the ``plan`` it serves.

    ``accelerator.prepare`` hands it back as it is (it shards itself and moves its batches), and
    ``save_state`` / ``load_state`` keep its state (the epoch) whether or not it was registered.
    """

    batch_sampler: EpochBatchSampler

    def __init__(self, *args: Any, widen_on_device: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.widen_on_device = widen_on_device  # batches come in storage dtypes, to be widened after the move
        self.gradient_state = GradientState()

    @property
    def _drop_last(self) -> bool:
        return self.batch_sampler.drop_last

    @property
    def total_batch_size(self) -> int:
        """The rows of one step over every process (``accelerate``'s name; ``gather_for_metrics`` counts with it)."""
        return self.batch_sampler.batch_size * process_rank()[1]

    # torch types DataLoader.__iter__ as returning its own iterator class; a generator serves the same protocol
    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        device = accelerate_device()
        if device is None:  # no accelerate: batches as the fetcher makes them
            yield from lean_batches(self) or super().__iter__()
            return
        self.begin()
        batches = lean_batches(self) or super().__iter__()
        current = next(batches, None)
        while current is not None:  # one batch ahead, to say end_of_dataloader with the last (as DataLoaderShard does)
            following = next(batches, None)
            self.end_of_dataloader = following is None
            yield self._placed(current, device)
            current = following
        self.end()

    def _placed(self, batch: Batch, device: torch.device) -> Batch:
        if self.widen_on_device:
            return batch.to(device, non_blocking=self.pin_memory)
        if device.type == "cpu":
            return batch
        batch.update({name: value.to(device, non_blocking=self.pin_memory) for name, value in batch.items() if torch.is_tensor(value)})
        return batch

    def set_epoch(self, epoch: int) -> None:
        """Use the row order of ``epoch`` (the permutation of ``seed + epoch``) for the next pass."""
        self.batch_sampler.sampler.set_epoch(epoch)

    @property
    def plan(self) -> DtypePlan:
        """The plan of the served columns; ``plan.widen(batch)`` gives the compute dtypes."""
        # torch types the dataset as a torch Dataset; a map-style DataLoader takes any object with __getitem__ and __len__
        return cast("BatchFetcher | BlockFetcher", self.dataset).plan

    def state_dict(self) -> dict[str, int]:
        """The order's state (``EpochSampler.state_dict``), which ``accelerator.save_state`` saves."""
        return self.batch_sampler.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume in the epoch of ``state`` (``accelerator.load_state`` calls it)."""
        self.batch_sampler.sampler.load_state_dict(state)


_MOVED_TO_LAYOUTS = {
    "pad_to_multiple_of": "layout=hd.Padded(pad_to_multiple_of={value!r})",
    "max_length": "layout=hd.Padded(max_length={value!r})",
    "padding_side": "layout=hd.Padded(padding_side={value!r})",
    "packing": "layout=hd.Blocks(block_size) or layout=hd.Flat()",
    "block_size": "layout=hd.Blocks({value!r})",
    "separator": "layout=hd.Blocks(block_size, separator_id={value!r})",
    "document_positions": "layout=hd.Blocks(block_size, document_positions={value!r})",
    "group_rows": "layout=hd.Blocks(block_size, group_rows={value!r})",
    "flash_attn_kwargs": "layout=hd.Flat(return_flash_attn_kwargs={value!r})",
}


def _check_moved(options: Mapping[str, Any]) -> None:
    """The keywords that became layout options end in one line that shows the new form."""
    moved = [name for name in _MOVED_TO_LAYOUTS if name in options]
    if moved:
        forms = "; ".join(f"{name}= -> {_MOVED_TO_LAYOUTS[name].format(value=options[name])}" for name in moved)
        raise TypeError(f"dataloader takes the batch layout as an object now: {forms} (e.g. hd.dataloader(ds, 32, "
                        f"layout=hd.Padded(pad_to_multiple_of=8))).")


def dataloader(
    dataset: Dataset | IterableDataset,
    batch_size: int,
    *,
    layout: Layout | None = None,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int | None = 0,
    widen: str = "auto",
    plan: DtypePlan | Mapping | None = None,
    columns: Sequence[str] | str | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    buffer_size: int = 1000,
    **dataloader_kwargs: Any,
) -> ArrowDataLoader | StreamDataLoader:
    """A ``DataLoader`` of batches of ``dataset`` gathered from its Arrow buffers, vectorized, in the ``layout`` given.

    Args:
        dataset: a ``datasets.Dataset``, usually compacted; ``shuffle`` / ``select`` / ``filter``
            views and memory-mapped, multi-file datasets are read in place, never copied. Or a
            stream (``IterableDataset``), split by the user already or not
            (each process reads its part, as ``split_dataset_by_node`` gives it).
        batch_size: rows (blocks, for ``hd.Blocks``) per batch.
        layout: ``hd.Padded(...)`` (the default: rows padded as the collators pad them),
            ``hd.Blocks(block_size, ...)`` (``run_clm.py``'s blocks) or ``hd.Flat(...)`` (padding-free rows).
        shuffle, drop_last: as in ``DataLoader``; the order is the permutation of ``seed + epoch``
            (a stream: ``datasets``' buffer shuffle of ``buffer_size`` rows, with ``seed``).
        seed: the seed of the order (the same on every process); ``None`` draws one from torch's
            global generator when the loader is made (process 0's under several processes), as a
            ``DataLoader`` without a generator draws its order.
        widen: where storage dtypes become compute dtypes. ``"auto"``: on ``accelerate``'s device
            when it is a GPU (the storage bytes cross, the loader moves and widens each batch), else on
            the CPU: batches come out in compute dtypes either way. ``"device"``: batches in storage
            dtypes, widened by ``batch.to(device)`` or ``loader.plan.widen(batch)``. ``"cpu"``: compute dtypes.
        plan: the dtype plan; ``None`` reads the one ``compact`` recorded in ``dataset``.
        columns: the columns to batch (default: every column of numbers or lists of numbers,
            planned or not, and the plan's derived columns). Packed layouts name theirs themselves.
        num_workers, pin_memory: as in ``DataLoader``.
        buffer_size: the shuffle buffer of a stream.
        **dataloader_kwargs: passed on to ``DataLoader`` (``multiprocessing_context``,
            ``persistent_workers``, ``prefetch_factor``, ``worker_init_fn``, ``generator``, ...).

    Returns:
        An ``ArrowDataLoader`` (a ``StreamDataLoader`` for a stream); each batch is a ``Batch``, a dict of tensors
            whose ``to(device)`` moves and widens it in place, as ``BatchEncoding.to`` moves.
    """
    if not isinstance(dataset, (Dataset, IterableDataset)):
        raise TypeError(f"dataloader takes a datasets.Dataset or IterableDataset (one split); got {type(dataset).__name__}.")
    _check_moved(dataloader_kwargs)
    check_count("batch_size", batch_size)
    seed = _drawn_seed() if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer or None; got {seed!r}.")
    layout = Padded() if layout is None else layout
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be hd.Padded(...), hd.Blocks(...) or hd.Flat(...); got {type(layout).__name__}.")
    if widen not in ("auto", *WIDEN_MODES):
        raise ValueError(f"widen must be 'auto', 'device' or 'cpu' ('auto': compute dtypes, widened on accelerate's GPU after "
                         f"the transfer or on the CPU; 'device': storage dtypes, widened by batch.to(device); 'cpu': compute "
                         f"dtypes); got {widen!r}.")
    taken = sorted(set(dataloader_kwargs) & set(_SET_BY_DATALOADER))
    if taken:
        raise TypeError(f"dataloader sets {taken} itself; pass batch_size=, shuffle=, drop_last= as its own arguments.")
    plan = require_plan(plan, dataset, "dataloader")
    widen_on_device = widen == "auto" and getattr(accelerate_device(), "type", "cpu") != "cpu"
    stream = isinstance(dataset, IterableDataset)
    schema = _stream_schema(dataset) if stream else dataset.data.table.schema
    layout = layout.bind(schema, plan, columns, "device" if widen_on_device or widen == "device" else "cpu", int(seed))
    if stream:
        if isinstance(layout, MaskedLM):
            raise ValueError("hd.MaskedLM batches come from a Dataset for now: a stream's rows have no index to draw their masks by.")
        if layout.group_by_length:
            raise ValueError("group_by_length orders a Dataset's rows: a stream's order is the one its rows arrive in.")
        if isinstance(layout, Blocks) and layout.group_rows is not None:
            raise ValueError("group_rows applies to a Dataset: a stream's blocks are cut as its rows arrive, over the whole stream.")
        if dataloader_kwargs.pop("generator", None) is not None:
            raise TypeError("A stream is shuffled by datasets (seed=, buffer_size=): it takes no generator.")
        stream = split_stream(dataset.shuffle(seed=seed, buffer_size=buffer_size) if shuffle else dataset)
        return StreamDataLoader(StreamBatches(stream, layout, batch_size, drop_last, bool(shuffle)), batch_size=None,
                                collate_fn=AsBatch(layout.plan), widen_on_device=widen_on_device, num_workers=num_workers,
                                pin_memory=pin_memory, **dataloader_kwargs)
    fetcher: BlockFetcher | BatchFetcher
    lengths = None
    if layout.unit == "blocks":
        blocks = cast("Blocks | MaskedLM", layout)  # the layouts of unit "blocks": Blocks, and MaskedLM over Blocks
        fetcher = BlockFetcher(dataset, blocks)
        if fetcher.num_blocks == 0:
            tokens = int(fetcher._stream()[0].stream[-1])
            raise ValueError(f"block_size {blocks.block_size} is larger than the token stream of {blocks.token!r} ({tokens} tokens "
                             f"over {len(dataset)} rows): no block can be made; expected a block_size of at most {tokens}.")
    else:
        fetcher = BatchFetcher(dataset, layout)
        lengths = fetcher.row_lengths(layout.length_column) if layout.length_column is not None else None
    dataloader_kwargs.setdefault("generator", torch.Generator().manual_seed(int(seed)))
    sampler = EpochSampler(len(fetcher), shuffle=bool(shuffle), seed=int(seed), lengths=lengths, batch_size=batch_size,
                           shuffle_batches=layout.shuffle_batches)
    return ArrowDataLoader(
        fetcher,
        batch_sampler=EpochBatchSampler(sampler, batch_size, drop_last),
        collate_fn=AsBatch(layout.plan),
        num_workers=num_workers,
        pin_memory=pin_memory,
        widen_on_device=widen_on_device,
        **dataloader_kwargs,
    )


def _stream_schema(stream: IterableDataset) -> pa.Schema:
    if stream.features is None:
        raise ValueError("The stream does not know its columns (features is None): give it features, e.g. with "
                         "stream.cast(features), or compact it (hd.compact), which records them.")
    return stream.features.arrow_schema


class AsBatch:
    """The ``collate_fn`` of a loader whose dataset already returns whole batches: each as a ``Batch`` of ``plan``."""

    def __init__(self, plan: DtypePlan) -> None:
        self.plan = plan

    def __call__(self, batch: dict[str, Any]) -> Batch:
        return Batch(batch, plan=self.plan)


def _drawn_seed() -> int:
    """A seed drawn from torch's global generator, process 0's where there are several (all must shuffle alike)."""
    seed = [int(torch.empty((), dtype=torch.int64).random_().item())]
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast_object_list(seed, src=0)
    return seed[0]
