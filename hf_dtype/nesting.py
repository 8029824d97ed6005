"""Flat leaf values plus list offsets → the nested rows a formatter hands out.

Uniform lengths give one stacked array or tensor (a zero-copy reshape), ragged ones a list of views,
as ``datasets``' own formatters consolidate them. Works the same on numpy arrays and torch tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["nest"]


def nest(values: Any, levels: Sequence[np.ndarray]) -> Any:
    """Rows of ``values`` along ``levels`` (offsets from 0, outermost first): stacked if uniform, else a list."""
    if not levels:
        return values
    shape = [len(levels[0]) - 1]
    for offsets in levels:
        lengths = np.diff(offsets)
        if len(lengths) == 0 or not (lengths == lengths[0]).all():
            break
        shape.append(int(lengths[0]))
    else:
        return values.reshape(shape)
    outer, inner = levels[0], levels[1:]
    if not inner:
        return [values[start:stop] for start, stop in zip(outer[:-1].tolist(), outer[1:].tolist(), strict=True)]
    rows = []
    for start, stop in zip(outer[:-1].tolist(), outer[1:].tolist(), strict=True):
        row_levels = [inner[0][start:stop + 1]]
        for deeper in inner[1:]:
            row_levels.append(deeper[row_levels[-1][0]:row_levels[-1][-1] + 1])
        base = row_levels[-1][0]
        rows.append(nest(values[base:row_levels[-1][-1]], [level - level[0] for level in row_levels]))
    return rows
