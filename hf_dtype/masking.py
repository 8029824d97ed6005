"""Masked-LM batches: the ``MaskedLM`` layout over blocks or padded rows, its masks drawn per token from a counter-based hash.

Every random number is a hash of (seed, epoch, item, position, stream): the item is the dataset
row (padded rows) or the block (blocks), the position its place in the row or block. So the masks
depend on nothing else: not on which process or worker makes the batch, on what else is in it, on
its padded width, or on whether the run was resumed; and no generator state has to be saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch

from .dtypes import integer_range, widen_batch
from .layouts import Blocks, Layout, Padded, check_count
from .packing import BlockIndex
from .plan import DtypePlan
from .ragged import RowNames, Rows

__all__ = ["MaskedLM", "mask_tokens", "uniforms"]

_STREAMS = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)  # chosen, kind, random token
_KEYS = np.array([0xD6E8FEB86659FD93, 0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3], dtype=np.uint64)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a bijection of uint64 whose outputs look independent for neighbouring inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def uniforms(seed: int, epoch: int, items: np.ndarray, positions: np.ndarray, stream: int) -> np.ndarray:
    """Numbers in [0, 1), one per (item, position) pair of the broadcast of ``items[:, None]`` and ``positions``."""
    with np.errstate(over="ignore"):
        head = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _KEYS[0] ^ np.uint64(epoch) * _KEYS[1] ^ np.uint64(_STREAMS[stream]))
        x = _mix(head ^ items.astype(np.uint64)[:, None] * _KEYS[2])
        x = _mix(x ^ positions.astype(np.uint64) * _KEYS[3])
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def mask_tokens(ids: np.ndarray, maskable: np.ndarray, items: np.ndarray, positions: np.ndarray, *, seed: int, epoch: int,
                mlm_probability: float, mask_replace_prob: float, random_replace_prob: float, mask_token_id: int,
                vocab_size: int) -> np.ndarray:
    """Mask ``ids`` (a 2-D array, changed in place) as ``DataCollatorForLanguageModeling`` does; return the chosen positions.

    Of the ``maskable`` tokens, ``mlm_probability`` are chosen; of those, ``mask_replace_prob`` become
    ``mask_token_id``, ``random_replace_prob`` a token drawn from ``[0, vocab_size)``, the rest stay.
    """
    chosen = maskable & (uniforms(seed, epoch, items, positions, 0) < mlm_probability)
    kind = uniforms(seed, epoch, items, positions, 1)
    replaced = chosen & (kind < mask_replace_prob)
    randomized = chosen & ~replaced & (kind < mask_replace_prob + random_replace_prob)
    ids[replaced] = mask_token_id
    if randomized.any():
        drawn = np.floor(uniforms(seed, epoch, items, positions, 2) * vocab_size).astype(ids.dtype)
        ids[randomized] = drawn[randomized]
    return chosen


class MaskedLM(Layout):
    """Masked-LM batches: ``DataCollatorForLanguageModeling``'s, over the blocks or padded rows of ``layout``.

    Of the tokens that are neither special nor padding, ``mlm_probability`` are chosen; of those
    ``mask_replace_prob`` become ``mask_token_id``, ``random_replace_prob`` a random token of
    ``[0, vocab_size)``, the rest stay; ``labels`` hold the chosen tokens' ids and -100 elsewhere. The
    draws are a hash of (the loader's seed, the epoch, the row or block, the position): a resumed run
    and any number of processes or workers see the masks of the uninterrupted run (``uniforms`` above).

    Args:
        layout: ``hd.Blocks(block_size)`` (``run_mlm.py``'s grouped texts) or ``hd.Padded(...)`` (its ``line_by_line``).
        mask_token_id, vocab_size: the tokenizer's ``mask_token_id`` and ``len(tokenizer)``.
        special_token_ids: ids never chosen (the tokenizer's ``all_special_ids``); the pad id is added.
        mlm_probability, mask_replace_prob, random_replace_prob: as in ``DataCollatorForLanguageModeling``.
    """

    def __init__(self, layout: Blocks | Padded, *, mask_token_id: int, vocab_size: int, special_token_ids: Sequence[int] = (),
                 mlm_probability: float = 0.15, mask_replace_prob: float = 0.8, random_replace_prob: float = 0.1) -> None:
        if not isinstance(layout, (Blocks, Padded)):
            raise ValueError(f"MaskedLM masks hd.Blocks(...) or hd.Padded(...) batches; got {layout!r}.")
        if isinstance(layout, Padded) and layout.padding_side != "right":
            raise ValueError("MaskedLM pads on the right: give hd.Padded(padding_side='right').")
        if isinstance(layout, Blocks) and layout.label_column not in (None, "labels"):
            raise ValueError("MaskedLM makes the labels itself: give hd.Blocks(..., label_column=None).")
        check_count("vocab_size", vocab_size)
        if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, (int, np.integer)) or not 0 <= mask_token_id < vocab_size:
            raise ValueError(f"mask_token_id must be a token id below vocab_size {vocab_size}; got {mask_token_id!r}.")
        for name, value in (("mlm_probability", mlm_probability), ("mask_replace_prob", mask_replace_prob),
                            ("random_replace_prob", random_replace_prob)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1]; got {value!r}.")
        if mask_replace_prob + random_replace_prob > 1:
            raise ValueError(f"mask_replace_prob + random_replace_prob must be at most 1; got {mask_replace_prob + random_replace_prob}.")
        self.layout, self.mask_token_id, self.vocab_size = layout, int(mask_token_id), int(vocab_size)
        self.group_by_length, self.shuffle_batches = layout.group_by_length, layout.shuffle_batches
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        self.mlm_probability, self.mask_replace_prob, self.random_replace_prob = mlm_probability, mask_replace_prob, random_replace_prob
        self.widen, self.seed = "cpu", 0

    def _options(self) -> dict[str, Any]:
        return {"layout": self.layout, "mask_token_id": self.mask_token_id, "vocab_size": self.vocab_size,
                "special_token_ids": self.special_token_ids, "mlm_probability": self.mlm_probability,
                "mask_replace_prob": self.mask_replace_prob, "random_replace_prob": self.random_replace_prob}

    def _bind(self, schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None) -> None:
        inner = self.layout
        if isinstance(inner, Blocks):
            inner = Blocks(**{**inner._options(), "label_column": None})
        self.inner = inner.bind(schema, plan, columns, "device", self.seed)  # masked in storage dtypes, served after
        self.read = self.inner.read
        token = self.inner.token if isinstance(self.inner, Blocks) else "input_ids"
        if token not in self.inner.plan:
            raise ValueError(f"MaskedLM needs a column of token ids {token!r}; the batches have {sorted(self.inner.plan)}.")
        entry = self.inner.plan[token]
        low, high = integer_range(entry.storage)
        if self.vocab_size - 1 > high:
            raise ValueError(f"vocab_size {self.vocab_size} does not fit {token!r}'s storage dtype {entry.storage} (it holds [{low}, "
                             f"{high}]): the random tokens could not be stored; compact with vocab_size= so the plan holds every id.")
        self.token, self.unit, self.labels = token, self.inner.unit, None
        self.block_size = getattr(self.inner, "block_size", None)
        self.length_column = self.inner.length_column
        self.plan = self.inner.plan | {"labels": entry.for_labels()}
        self.special = np.array(sorted({*self.special_token_ids, int(entry.pad_value)}), dtype=np.int64)

    def _mask(self, batch: dict[str, Any], items: np.ndarray, epoch: int) -> dict[str, Any]:
        """``batch`` (storage dtypes) masked: its token ids changed in place, its labels the chosen tokens' ids."""
        ids = batch[self.token].numpy()  # a new array of this batch: masked in place
        original = ids.copy()
        maskable = ~np.isin(ids, self.special)
        if "attention_mask" in batch:
            maskable &= batch["attention_mask"].numpy().astype(bool)
        chosen = mask_tokens(ids, maskable, items, np.arange(ids.shape[1]), seed=self.seed, epoch=epoch,
                             mlm_probability=self.mlm_probability, mask_replace_prob=self.mask_replace_prob,
                             random_replace_prob=self.random_replace_prob, mask_token_id=self.mask_token_id, vocab_size=self.vocab_size)
        labels = np.full(ids.shape, -100, dtype=np.dtype(self.plan["labels"].storage))
        labels[chosen] = original[chosen]
        batch["labels"] = torch.from_numpy(labels)
        return batch if self.widen == "device" else widen_batch(self.plan, batch)

    def __call__(self, columns: Mapping[str, Rows], rows: Sequence[Any] | RowNames) -> dict[str, Any]:
        batch = self.inner(columns, rows)
        indices = cast("Sequence[int]", rows)  # dataset row indices: MaskedLM takes no stream, PaddingCollator takes Padded only
        return self._mask(batch, np.asarray(indices, dtype=np.int64), getattr(rows, "epoch", 0))

    def index(self, lengths: np.ndarray, *, grouped: bool = True) -> BlockIndex:
        inner = self.inner
        assert isinstance(inner, Blocks)  # called when unit == "blocks"
        return inner.index(lengths, grouped=grouped)

    def cut(self, index: BlockIndex, blocks: np.ndarray, columns: Mapping[str, Rows], epoch: int = 0) -> dict[str, torch.Tensor]:
        inner = self.inner
        assert isinstance(inner, Blocks)  # called when unit == "blocks"
        batch = inner.cut(index, blocks, columns)
        return self._mask(batch, np.asarray(blocks, dtype=np.int64), epoch)
