"""Masked-LM masks, ``DataCollatorForLanguageModeling``'s rules, drawn per token from a counter-based hash.

Every random number is a hash of (seed, epoch, item, position, stream): the item is the dataset
row (padded rows) or the block (blocks), the position its place in the row or block. So the masks
depend on nothing else: not on which process or worker makes the batch, on what else is in it, on
its padded width, or on whether the run was resumed; and no generator state has to be saved.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_tokens", "uniforms"]

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
