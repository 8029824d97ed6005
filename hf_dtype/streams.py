"""``dataloader`` on a stream (``IterableDataset``): the same batches, built from the stream's Arrow record batches.

The stream is read with ``datasets``' own machinery: ``iter(batch_size)`` in Arrow format hands
over record batches of ``batch_size`` rows (padded and flat layouts take one each; blocks are cut
from the rows laid end to end, the remainder carried to the next), ``shuffle`` is its buffer
shuffle, ``set_epoch`` its epoch, and its ``state_dict`` the position a resumed run starts from.
Each process takes its part with ``split_dataset_by_node`` (by shards when they divide evenly,
else by rows) and each ``DataLoader`` worker its share of the process's shards, so every row is
read by one worker of one process per epoch.

A stream the user split already (``split_dataset_by_node``, as the ``datasets`` documentation
says to) is read as it is: each process reads its own part, never a part of its part.

``accelerate`` would split a stream a second time (accelerate issue 3547), so the loader tells
``accelerator.prepare`` that it is prepared already: ``prepare`` hands it back as it is, and
``save_state`` / ``load_state`` keep its position (it is a stateful loader to them). It moves each
batch to ``accelerate``'s device itself (and widens it there, with ``widen="auto"``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import IterableDataset
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader

from ._compat import SelfPrepared, accelerate_device, lean_batches, process_rank, stream_split
from .layouts import Blocks, Layout
from .packing import BlockIndex
from .ragged import RowNames, Rows, offsets_of, positions_in_rows, rows_of_table

__all__ = ["StreamBatches", "StreamDataLoader", "process_rank", "split_stream"]

logger = logging.getLogger(__name__)


class StreamBatches(torch.utils.data.IterableDataset):
    """The batches of one process's part of the stream (and of one worker's share of it)."""

    def __init__(self, stream: IterableDataset, layout: Layout, batch_size: int, drop_last: bool, shuffled: bool) -> None:
        self.stream = stream.with_format("arrow")  # the one object iterated, so that its epoch and position are the loader's
        self.read, self.layout = list(layout.read), layout
        self.batch_size, self.drop_last, self.shuffled = batch_size, drop_last, shuffled
        self.blocks = layout if isinstance(layout, Blocks) else None
        self.process = process_rank()
        self.leftover: dict[str, np.ndarray] | None = None  # tokens read but not yet cut into a block (blocks only)
        self.position = 0  # batches handed out in the pass under way
        self.replay = 0  # batches of the pass to read again without handing them out (a shuffled stream resumed)

    def _stream(self) -> IterableDataset | None:
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers == 1:
            return self.stream
        if info.id >= self.stream.num_shards:
            if info.id == self.stream.num_shards:
                logger.warning("%d DataLoader workers for %d shards: the last %d workers read nothing.", info.num_workers,
                               self.stream.num_shards, info.num_workers - self.stream.num_shards)
            return None
        share = self.stream.shard(num_shards=info.num_workers, index=info.id, contiguous=False)
        share.set_epoch(self.stream.epoch)  # shard() starts its copy at epoch 0
        return share

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream = self._stream()
        if stream is None:
            return
        tables = stream.iter(batch_size=self.batch_size, drop_last_batch=self.drop_last and not self.blocks)
        batches = self._cut(tables) if self.blocks is not None else (
            self.layout(rows_of_table(table, self.read), RowNames(f"{{i}} of stream batch {number}"))
            for number, table in enumerate(tables))
        empty, self.position = True, 0
        for batch in batches:
            empty, self.position = False, self.position + 1
            if self.position > self.replay:
                yield batch
        self.replay = 0
        rank, world = self.process
        if empty and world > 1 and torch.utils.data.get_worker_info() is None:  # the others would wait for it for ever
            raise ValueError(f"Process {rank} of {world} got no row of the stream: it has fewer rows (or shards) than processes; "
                             "expected at least one row for each process.")

    def _cut(self, tables: Iterator[pa.Table]) -> Iterator[dict[str, Any]]:
        """Blocks from the rows laid end to end: each full batch of blocks as soon as its tokens have been read; the tokens
        left over wait for the next record batch (and are part of the loader's state)."""
        blocks = self.blocks
        assert blocks is not None  # called for a Blocks layout only
        size = blocks.block_size * self.batch_size
        carried = self.leftover or {name: np.zeros(0, dtype=np.int64) for name in self.read} | {"starts": np.zeros(0, dtype=bool)}
        for table in tables:
            laid = self._lay_out(rows_of_table(table, self.read))
            carried = {name: np.concatenate([carried[name], laid[name]]) for name in carried}
            while len(carried["starts"]) >= size:
                batch = {name: values[:size] for name, values in carried.items()}
                carried = self.leftover = {name: values[size:] for name, values in carried.items()}
                yield self._batch(batch, self.batch_size)
            self.leftover = carried
        whole = len(carried["starts"]) // blocks.block_size
        if whole and not self.drop_last:
            yield self._batch({name: values[:whole * blocks.block_size] for name, values in carried.items()}, whole)
        self.leftover = None

    def _lay_out(self, rows: dict[str, Rows]) -> dict[str, np.ndarray]:
        """A record batch's rows end to end (a separator after each, -100 in a label column), and where each row starts."""
        blocks, lengths = self.blocks, rows[self.read[0]].lengths
        assert blocks is not None and lengths is not None  # a Blocks layout, whose token column holds lists
        separator = blocks.separator_id
        size = lengths + (separator is not None)
        bounds = offsets_of(size)
        within = positions_in_rows(size, bounds)
        laid = {"starts": np.zeros(bounds[-1], dtype=bool)}
        laid["starts"][bounds[:-1][size > 0]] = True
        last = np.repeat(np.maximum(lengths - 1, 0), size)
        for name in self.read:
            values, starts = rows[name].values, rows[name].starts
            assert starts is not None  # the token and label columns hold lists
            laid[name] = values[np.repeat(starts, size) + np.minimum(within, last)] if len(values) else \
                np.zeros(bounds[-1], dtype=values.dtype)
            if separator is not None:
                laid[name][within == np.repeat(lengths, size)] = -100 if name != self.read[0] else separator
        return laid

    def _batch(self, carried: dict[str, np.ndarray], count: int) -> dict[str, torch.Tensor]:
        """``count`` blocks of contiguous tokens, cut as map-style blocks are cut (``packing.cut_blocks``)."""
        piece_starts = np.flatnonzero(carried["starts"])
        if not len(piece_starts) or piece_starts[0]:  # the buffer opens on the rest of a row
            piece_starts = np.concatenate([[0], piece_starts])
        lengths = np.diff(np.append(piece_starts, len(carried["starts"])))
        columns = {name: Rows(carried[name], carried[name].dtype, piece_starts, lengths) for name in self.read}
        blocks = self.blocks
        assert blocks is not None  # called for a Blocks layout only
        return blocks.cut(BlockIndex(lengths, blocks.block_size, None), np.arange(count), columns)


class StreamDataLoader(SelfPrepared, DataLoader):
    """A ``DataLoader`` of batches of a stream, with ``set_epoch``, a resumable ``state_dict`` and the ``plan`` it serves."""

    dataset: StreamBatches

    def __init__(self, *args: Any, widen_on_device: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.widen_on_device = widen_on_device  # batches come in storage dtypes, to be widened after the move

    @property
    def plan(self) -> Any:
        """The plan of the served columns; ``plan.widen(batch)`` gives the compute dtypes."""
        return self.dataset.layout.plan

    def set_epoch(self, epoch: int) -> None:
        """The stream's epoch: its shards and shuffle buffer are reshuffled with ``seed + epoch``."""
        self.dataset.stream.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where a resumed run starts: the stream's position (``IterableDataset.state_dict``) and the tokens read but not
        yet cut into a block; for a shuffled stream, its epoch and the batches handed out in it."""
        if self.num_workers:
            raise ValueError("The position of a stream read by DataLoader workers is theirs to know: resume with num_workers=0, "
                             "or use torchdata's StatefulDataLoader.")
        batches, leftover = self.dataset, self.dataset.leftover
        return {"stream": batches.stream.state_dict(), "epoch": batches.stream.epoch, "batches": batches.position,
                "leftover": None if leftover is None else {name: values.tolist() for name, values in leftover.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume where ``state`` was saved. A shuffled stream reads its epoch again up to there (``datasets``' own stream
        state would lose the rows waiting in the shuffle buffer), an unshuffled one starts right there."""
        batches = self.dataset
        if batches.shuffled:
            batches.stream.set_epoch(state["epoch"])
            batches.replay, batches.leftover = state["batches"], None
            return
        batches.stream.load_state_dict(state["stream"])
        leftover = state.get("leftover")
        batches.leftover = None if leftover is None else {
            name: np.asarray(values, dtype=bool if name == "starts" else None) for name, values in leftover.items()}

    # torch types DataLoader.__iter__ as returning its own iterator class; a generator serves the same protocol
    def __iter__(self) -> Iterator[dict[str, Any]]:  # type: ignore[override]
        device = accelerate_device()
        for batch in lean_batches(self) or super().__iter__():
            if device is not None and self.widen_on_device:
                batch.to(device, non_blocking=self.pin_memory)
            elif device is not None and device.type != "cpu":
                batch.update({name: value.to(device, non_blocking=self.pin_memory) for name, value in batch.items()
                              if torch.is_tensor(value)})
            yield batch


def split_stream(stream: IterableDataset) -> IterableDataset:
    """This process's part of ``stream`` (``split_dataset_by_node``): by shards when they divide evenly, else by rows.

    A stream split already is this process's part as it is (when processes are known, it must have been split for this one).
    """
    rank, world = process_rank()
    split = stream_split(stream)
    if split is not None:
        if world > 1 and split != (rank, world):
            raise ValueError(f"The stream was split for process {split[0]} of {split[1]} (split_dataset_by_node), but this "
                             f"is process {rank} of {world}; expected split_dataset_by_node(stream, rank={rank}, world_size={world}), "
                             "or a stream not split at all (hd.dataloader then splits it).")
        return stream
    if world == 1:
        return stream
    if stream.num_shards % world and stream.num_shards < world:
        logger.info("%d shards for %d processes: each process reads every row and keeps 1 in %d.", stream.num_shards, world, world)
    return split_dataset_by_node(stream, rank=rank, world_size=world)
