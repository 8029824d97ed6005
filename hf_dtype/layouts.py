"""Batch layouts as objects: ``Padded``, ``Blocks``, ``Flat``, each with its options, checks, served plan and kernel.

A layout is made by the user with its options (``hd.Blocks(1024, separator_id=0)``), checked at
once, and bound by a loader to a dataset's columns and plan (``bind``): the bound layout knows the
plan of what it serves and the stored columns to read, and turns the rows read into a batch. The
map-style loader, the stream loader and ``PaddingCollator`` all use the same objects, so a new
layout is one new subclass of ``Layout`` (``MaskedLM``, in ``masking.py``, wraps ``Blocks`` or
``Padded``). The argument names are ``transformers``' where it has them
(``pad_to_multiple_of``, ``max_length``, ``padding_side``, ``separator_id``, ``return_flash_attn_kwargs``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import pyarrow as pa
import torch

from .batching import PADDING_SIDES, assemble
from .dtypes import dtype_name
from .packing import BlockIndex, check_separator, cut_blocks, flatten_rows, packed_plan
from .plan import DtypePlan
from .ragged import RowNames, Rows, list_depth
from .recording import batch_plan, batchable, unplanned_entry

__all__ = ["Blocks", "Flat", "Layout", "Padded", "check_count"]


_L = TypeVar("_L", bound="Layout")


def check_count(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` must be a positive integer (or None where ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}; got {value!r}.")


class Layout:
    """How the rows a loader reads become a batch. Subclasses check their options when made; ``bind`` fits one to a dataset.

    A bound layout has ``plan`` (the entries of what it serves), ``read`` (the stored columns to read)
    and ``widen`` (``"device"``: storage dtypes; ``"cpu"``: compute dtypes).
    """

    plan: DtypePlan
    read: list[str]
    widen: str
    seed: int = 0
    unit = "rows"  # what a batch_size counts, and what a map-style loader's indices name: dataset rows, or blocks
    group_by_length = False
    shuffle_batches = False  # with group_by_length: the grouped batches dealt out in a random order
    length_column: str | None = None  # bound with group_by_length: the list column whose row lengths order the rows

    def bind(self: _L, schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None, widen: str, seed: int = 0) -> _L:
        """A copy of this layout bound to the columns of ``schema`` and their ``plan`` (``seed``: the loader's)."""
        bound = copy.copy(self)
        bound.widen, bound.seed = widen, seed
        bound._bind(schema, plan, columns)
        return bound

    def _bind(self, schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None) -> None:
        raise NotImplementedError

    def __call__(self, columns: Mapping[str, Rows], rows: Sequence[Any] | RowNames) -> dict[str, Any]:
        """The batch of ``rows`` (their names in errors), from the rows of each column read."""
        raise NotImplementedError

    def _options(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"hd.{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._options().items())})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._options() == self._options()

    def __hash__(self) -> int:
        return hash((type(self), tuple(self._options().items())))


class Padded(Layout):
    """Rows padded to the batch's longest row, per column with its pad value, derived columns rebuilt (the default).

    The batches of ``DataCollatorWithPadding`` / ``DataCollatorForTokenClassification`` on the same
    rows; ``label`` / ``label_ids`` become ``labels`` as they rename them.

    Args:
        pad_to_multiple_of: round the padded width up to a multiple of this (8 for tensor cores).
        max_length: pad every batch to this width (rounded up to ``pad_to_multiple_of``), as the
            collators do with ``padding="max_length"``; like them it truncates nothing: a longer row is
            an error (truncate when tokenizing).
        padding_side: ``"right"`` (pad after the values) or ``"left"``.
        group_by_length: put rows of similar length in the same batch, as ``Trainer``'s
            ``train_sampling_strategy="group_by_length"`` does (a map-style loader's order: cut into
            mega-batches of 50 batches, each sorted longest first; the longest row's batch first), so
            batches carry less padding. The lengths are those of ``input_ids`` (else the first list column).
        shuffle_batches: with ``group_by_length`` and a shuffled loader, deal each epoch's batches out in
            the order of its permutation (the longest row's batch still first), as bucketing samplers do.
            ``Trainer``'s order runs from long to short rows 50 batches at a time, so where the label
            depends on the length, consecutive batches share their labels: a sentiment classifier fed
            that way learns nothing for hundreds of steps (``docs/guides/batches.md``).
    """

    def __init__(self, pad_to_multiple_of: int | None = None, max_length: int | None = None, padding_side: str = "right",
                 group_by_length: bool = False, shuffle_batches: bool = False) -> None:
        check_count("pad_to_multiple_of", pad_to_multiple_of, optional=True)
        check_count("max_length", max_length, optional=True)
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}; got {padding_side!r}.")
        for name, value in (("group_by_length", group_by_length), ("shuffle_batches", shuffle_batches)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False; got {value!r}.")
        if shuffle_batches and not group_by_length:
            raise ValueError("shuffle_batches reorders the batches of group_by_length: give hd.Padded(group_by_length=True, "
                             "shuffle_batches=True) (without grouping, a shuffled loader's batches are in random order already).")
        self.pad_to_multiple_of, self.max_length, self.padding_side = pad_to_multiple_of, max_length, padding_side
        self.group_by_length, self.shuffle_batches = group_by_length, shuffle_batches
        self.widen = "cpu"

    def _options(self) -> dict[str, Any]:
        return {"pad_to_multiple_of": self.pad_to_multiple_of, "max_length": self.max_length, "padding_side": self.padding_side,
                "group_by_length": self.group_by_length, "shuffle_batches": self.shuffle_batches}

    def width(self, lengths: np.ndarray) -> int:
        """The padded width of rows of ``lengths``: the longest (or ``max_length``), rounded up to ``pad_to_multiple_of``."""
        width = self.max_length if self.max_length is not None else (int(lengths.max()) if len(lengths) else 0)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def _bind(self, schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None) -> None:
        self.plan, self.names = batch_plan(schema, plan, columns)
        # batch_plan checked that each derived column's source is a list column of the dataset
        sources = cast("list[str]", [self.plan[name].lengths_from for name in self.names if name not in schema.names])
        self.read = list(dict.fromkeys([*(name for name in self.names if name in schema.names), *sources]))
        if self.group_by_length:
            lists = [name for name in self.read if list_depth(schema.field(name).type) == 1]
            if not lists:
                raise ValueError(f"group_by_length orders rows by the length of a list column; the batches read {self.read}, "
                                 f"none a list of numbers (expected e.g. input_ids).")
            self.length_column = "input_ids" if "input_ids" in lists else lists[0]

    def bind_rows(self, plan: DtypePlan, columns: Mapping[str, Rows], names: Sequence[str], widen: str) -> Padded:
        """A copy bound to rows given as Python values (``PaddingCollator``): ``names`` in the order given, the columns
        the plan does not name served as given (label lists padded with -100, as the collators pad them)."""
        unplanned = {name: unplanned_entry(name, dtype_name(rows.dtype), 0 if rows.starts is None else 1)
                     for name, rows in columns.items() if name not in plan}
        bound = copy.copy(self)
        bound.plan, bound.names, bound.read, bound.widen = plan | unplanned, list(names), list(names), widen
        return bound

    def __call__(self, columns: Mapping[str, Rows], rows: Sequence[Any] | RowNames) -> dict[str, torch.Tensor]:
        return assemble(columns, self.plan, self.names, self, rows)


def _token_columns(schema: pa.Schema, token: str, labels: str | None, default_labels: bool, layout: str) -> tuple[str, str | None]:
    """The token column of a packed layout and its label column (token classification), checked."""
    lists = [name for name, depth in batchable(schema).items() if depth == 1]
    if default_labels:
        labels = next((name for name in ("labels", "label_ids") if name in lists), None)
    for name in (token, labels):
        if name is not None and name not in lists:
            raise ValueError(f"{layout} needs list columns of numbers: {name!r} is not one; the dataset's list columns are {lists} "
                             f"(name them with token_column= and label_column=).")
    return token, labels


class _Packed(Layout):
    """A layout of the tokens of ``token_column`` (and the labels of ``label_column``): blocks or flat rows."""

    def __init__(self, token_column: str, label_column: str | None) -> None:
        self.token_column, self.label_column = token_column, label_column

    def _columns(self, schema: pa.Schema, plan: DtypePlan, positions: int | None) -> None:
        default = self.label_column == "labels"  # the default: labels (or label_ids) where the dataset has them
        self.token, self.labels = _token_columns(schema, self.token_column, self.label_column, default, type(self).__name__)
        self.read = [self.token] + ([self.labels] if self.labels else [])
        stored, _ = batch_plan(schema, plan, self.read)
        self.stored_plan = stored
        self.plan = packed_plan(stored, self.token, self.labels, positions=positions)


class Blocks(_Packed):
    """``block_size`` tokens of the rows laid end to end: the blocks of ``run_clm.py``'s ``group_texts``, gathered at batch time.

    A batch is ``input_ids`` and ``labels`` (the ids themselves, or the ``label_column`` of token
    classification cut along); causal models shift inside. ``batch_size`` counts blocks.

    Args:
        block_size: tokens per block; the remainder is dropped.
        separator_id: a token id appended after each row (``-100`` in a label column there).
        document_positions: add ``position_ids`` that restart at 0 at every row start (and block start),
            so documents in a block do not attend to each other (with the model's cache off).
        group_rows: cut each run of this many rows on its own, each dropping its remainder:
            ``group_rows=1000`` gives the very blocks of ``run_clm.py``, whose ``group_texts`` runs per
            ``map`` batch of 1,000 rows; None (default) cuts the whole split as one stream.
        token_column, label_column: the columns of tokens and of per-token labels; the default label
            column is ``labels`` (or ``label_ids``) where the dataset has one; None: labels are the ids.
    """

    unit = "blocks"

    def __init__(self, block_size: int, separator_id: int | None = None, document_positions: bool = False,
                 group_rows: int | None = None, token_column: str = "input_ids", label_column: str | None = "labels") -> None:
        check_count("block_size", block_size)
        check_count("group_rows", group_rows, optional=True)
        if separator_id is not None and (isinstance(separator_id, bool) or not isinstance(separator_id, (int, np.integer))):
            raise ValueError(f"separator_id must be a token id (an integer) or None; got {separator_id!r}.")
        super().__init__(token_column, label_column)
        self.block_size, self.separator_id = int(block_size), separator_id
        self.document_positions, self.group_rows = bool(document_positions), group_rows
        self.widen = "cpu"

    def _options(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "separator_id": self.separator_id, "document_positions": self.document_positions,
                "group_rows": self.group_rows, "token_column": self.token_column, "label_column": self.label_column}

    def _bind(self, schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None) -> None:
        self._columns(schema, plan, positions=self.block_size - 1)
        check_separator(self.separator_id, self.stored_plan[self.token], self.token)

    def index(self, lengths: np.ndarray, *, grouped: bool = True) -> BlockIndex:
        """Where the blocks of rows of ``lengths`` lie (a stream's buffer is cut as one run: ``grouped=False``)."""
        return BlockIndex(lengths.astype(np.int64), self.block_size, self.separator_id, self.group_rows if grouped else None)

    def cut(self, index: BlockIndex, blocks: np.ndarray, columns: Mapping[str, Rows], epoch: int = 0) -> dict[str, torch.Tensor]:
        """Blocks ``blocks`` of the rows in ``columns`` (every row, in order), laid out by ``index`` (``epoch``: of the pass)."""
        return cut_blocks(index, blocks, columns, self.plan, token=self.token, labels=self.labels, widen=self.widen,
                          document_positions=self.document_positions)


class Flat(_Packed):
    """A batch of rows as one padding-free row of all their tokens, as ``DataCollatorWithFlattening`` makes it.

    ``input_ids`` and ``position_ids`` of shape ``(1, total)``, ``labels`` (each row's own, else its
    ids) with ``-100`` at every row's first position; the model's cache must be off.

    Args:
        return_flash_attn_kwargs: add ``cu_seq_lens_q/k`` and ``max_length_q/k`` for flash attention.
        token_column, label_column: as for ``Blocks``.
    """

    def __init__(self, return_flash_attn_kwargs: bool = False, token_column: str = "input_ids",
                 label_column: str | None = "labels") -> None:
        super().__init__(token_column, label_column)
        self.return_flash_attn_kwargs = bool(return_flash_attn_kwargs)
        self.widen = "cpu"

    def _options(self) -> dict[str, Any]:
        return {"return_flash_attn_kwargs": self.return_flash_attn_kwargs, "token_column": self.token_column,
                "label_column": self.label_column}

    def _bind(self, schema: pa.Schema, plan: DtypePlan, columns: Sequence[str] | str | None) -> None:
        self._columns(schema, plan, positions=None)

    def __call__(self, columns: Mapping[str, Rows], rows: Sequence[Any] | RowNames) -> dict[str, Any]:
        return flatten_rows(columns, self.plan, token=self.token, labels=self.labels, widen=self.widen,
                            flash_attn_kwargs=self.return_flash_attn_kwargs, rows=rows)
