"""The pad kernel: ragged rows, given as start positions and lengths in a flat buffer, into one 2-D array.

Pure numpy and vectorized, whatever the batch size, with no loop over rows: the mask is one gather
from a cached table, the values one gather of row windows (``RowWindows``, a strided view) or of
clipped cell positions, and the pad one masked fill. The caller supplies the flat values, or a
``take`` function for values that are not one numpy array (bit-packed Arrow booleans, buffers
split across files).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["PADDING_SIDES", "WIDEN_MODES", "PadOptions", "RowWindows", "length_mask", "pad_rows", "padded_width", "truncate"]

PADDING_SIDES = ("right", "left")
WIDEN_MODES = ("device", "cpu")


def _positive_or_none(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer or None; got {value!r}.")


@dataclass(frozen=True)
class PadOptions:
    """How a batch is padded and served; checked once, when built.

    Args:
        pad_to_multiple_of: round the padded width up to a multiple of this (8 for tensor cores).
        max_length: keep at most the first ``max_length`` values of each row.
        padding_side: ``"right"`` (pad after the values) or ``"left"`` (pad before them).
        widen: ``"device"`` keeps the storage dtypes (widen after the transfer with ``plan.widen``),
            ``"cpu"`` serves the compute dtypes.
    """

    pad_to_multiple_of: int | None = None
    max_length: int | None = None
    padding_side: str = "right"
    widen: str = "device"

    def __post_init__(self) -> None:
        _positive_or_none("pad_to_multiple_of", self.pad_to_multiple_of)
        _positive_or_none("max_length", self.max_length)
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be one of {PADDING_SIDES}; got {self.padding_side!r}.")
        if self.widen not in WIDEN_MODES:
            raise ValueError(
                f"widen must be one of {WIDEN_MODES} ('device': storage dtypes, widen after the transfer with plan.widen; "
                f"'cpu': compute dtypes); got {self.widen!r}."
            )


def truncate(lengths: np.ndarray, max_length: int | None) -> np.ndarray:
    """Row lengths after keeping at most the first ``max_length`` values of each row."""
    return lengths if max_length is None else np.minimum(lengths, max_length)


def padded_width(lengths: np.ndarray, pad_to_multiple_of: int | None = None) -> int:
    """The longest of ``lengths`` (0 for an empty batch), rounded up to a multiple of ``pad_to_multiple_of``."""
    width = int(lengths.max()) if len(lengths) else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    return width


def length_mask(lengths: np.ndarray, width: int, padding_side: str = "right") -> np.ndarray:
    """A ``(rows, width)`` bool array that is True where a row has a value, False where it is padded.

    One gather of rows from a cached table whose row ``k`` has ``k`` values (``lengths <= width``).
    """
    table = _mask_table(width, padding_side)
    if padding_side == "left":
        return table[lengths, table.shape[1] - width:]
    return table[lengths, :width]


_MASKS: dict[str, np.ndarray] = {}


def _mask_table(width: int, padding_side: str) -> np.ndarray:
    """``(n + 1, n)`` bools, ``n >= width``: row ``k`` is True in its first (right padding) or last (left) ``k`` places."""
    table = _MASKS.get(padding_side)
    if table is None or table.shape[1] < width:
        size = max(width, 64, 2 * (0 if table is None else table.shape[1]))
        columns, counts = np.arange(size), np.arange(size + 1)[:, None]
        table = columns >= size - counts if padding_side == "left" else columns < counts
        _MASKS[padding_side] = table
    return table


class RowWindows:
    """Every run of consecutive values of a flat array as one read-only strided view, without a copy:
    ``rows(starts, width)`` gathers a ``(len(starts), width)`` batch in one numpy step.

    Out-of-range starts make numpy raise, so ``rows`` returns None for them, and the caller falls
    back to a clipped gather.
    """

    def __init__(self, flat: np.ndarray) -> None:
        self.flat = flat
        self._view: np.ndarray | None = None
        self._width = 0

    def rows(self, starts: np.ndarray, width: int) -> np.ndarray | None:
        if width > self._width:
            self._width = max(width, 64, 2 * self._width)
            if self._width > len(self.flat):
                self._width, self._view = width, None
            else:
                step = self.flat.strides[0]
                self._view = as_strided(self.flat, shape=(len(self.flat) - self._width + 1, self._width),
                                        strides=(step, step), writeable=False)
        if self._view is None:
            return None
        try:
            return self._view[starts, :width]
        except IndexError:
            return None


def pad_rows(
    values: np.ndarray | RowWindows | Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    starts: np.ndarray,
    lengths: np.ndarray,
    *,
    width: int,
    pad: int | float,
    dtype: np.dtype,
    padding_side: str = "right",
    mask: np.ndarray | None = None,
    pad_cells: np.ndarray | None = None,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Rows ``values[starts[i] : starts[i] + lengths[i]]`` in a ``(rows, width)`` array filled with ``pad``.

    ``lengths`` must already be truncated to at most ``width``; ``mask`` is their ``length_mask``
    and ``pad_cells`` its negation, when the caller has them (columns of equal row lengths share
    them). ``values`` is a flat array, its ``RowWindows``, or a function ``take(positions, groups)``
    that returns the values at flat ``positions``, where ``groups`` (from the per-row ``groups``)
    says which buffer each lies in.
    """
    if not len(lengths) or not width:
        return np.full((len(lengths), width), pad, dtype=dtype)
    if mask is None:
        mask = length_mask(lengths, width, padding_side)
    origin = starts if padding_side == "right" else starts - (width - lengths)
    out = None
    if isinstance(values, RowWindows):
        if padding_side == "right" or origin.min() >= 0:  # a negative start would wrap around
            out = values.rows(origin, width)
        values = values.flat
    if out is None and not isinstance(values, np.ndarray):
        out = np.full((len(lengths), width), pad, dtype=dtype)
        positions = (origin[:, None] + _columns(width))[mask]
        out[mask] = values(positions, None if groups is None else np.broadcast_to(groups[:, None], mask.shape)[mask])
        return out
    if out is None:  # every cell gathered, pad cells clipped into the array, then overwritten
        out = values.take(origin[:, None] + _columns(width), mode="clip")
    if out.dtype != dtype:
        out = out.astype(dtype)
    np.copyto(out, pad, where=~mask if pad_cells is None else pad_cells)
    return out


_COLUMNS = np.arange(1024)


def _columns(width: int) -> np.ndarray:
    """``np.arange(width)``, from a cached array."""
    global _COLUMNS
    if width > len(_COLUMNS):
        _COLUMNS = np.arange(max(width, 2 * len(_COLUMNS)))
    return _COLUMNS[:width]
