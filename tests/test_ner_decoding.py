"""Tests of ``scripts/ner_decoding.py``: the constrained decoding against every label sequence, enumerated."""

from __future__ import annotations

import itertools

import pytest
import torch

# isort: off
import finetune_fixtures  # noqa: F401  (puts scripts/ on sys.path)
from ner_decoding import iob2_transitions, iob2_viterbi
# isort: on

NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def valid(names: list[str], sequence: tuple[int, ...]) -> bool:
    previous = "O"
    for label in (names[i] for i in sequence):
        if label.startswith("I-") and previous[2:] != label[2:]:
            return False
        previous = label
    return True


def test_transitions_follow_iob2() -> None:
    allowed, may_start = iob2_transitions(NAMES)
    assert may_start.tolist() == [True, True, False, True, False]
    assert allowed[1, 2] and allowed[2, 2] and allowed[0, 1] and allowed[4, 0] and allowed[2, 3]
    assert not allowed[0, 2] and not allowed[1, 4] and not allowed[4, 2] and not allowed[3, 2]
    assert iob2_transitions(["O", "PER", "LOC"]) is None  # not IOB2: the caller keeps the argmax
    assert iob2_transitions(["negative", "positive"]) is None


@pytest.mark.parametrize("seed", range(4))
def test_viterbi_is_the_best_allowed_sequence_of_the_labelled_positions(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows, length = 12, 6
    log_probs = torch.log_softmax(3 * torch.randn(rows, length, len(NAMES), generator=generator), dim=-1)
    labelled = torch.rand(rows, length, generator=generator) < 0.7
    labelled[0] = False  # a row with no labelled position (all padding) must not break the batch
    allowed, may_start = iob2_transitions(NAMES)
    decoded = iob2_viterbi(log_probs, labelled, allowed, may_start)
    for row in range(rows):
        positions = labelled[row].nonzero().flatten().tolist()
        if not positions:
            continue
        best = max((s for s in itertools.product(range(len(NAMES)), repeat=len(positions)) if valid(NAMES, s)),
                   key=lambda s: sum(log_probs[row, p, label].item() for p, label in zip(positions, s, strict=True)))
        assert tuple(decoded[row, positions].tolist()) == best


def test_viterbi_keeps_an_allowed_argmax_and_mends_a_broken_one() -> None:
    allowed, may_start = iob2_transitions(NAMES)
    probs = torch.tensor([[[0.1, 0.7, 0.1, 0.05, 0.05], [0.1, 0.1, 0.7, 0.05, 0.05], [0.8, 0.05, 0.05, 0.05, 0.05]],
                          [[0.6, 0.05, 0.05, 0.25, 0.05], [0.2, 0.05, 0.05, 0.05, 0.65], [0.8, 0.05, 0.05, 0.05, 0.05]]])
    labelled = torch.ones(2, 3, dtype=torch.bool)
    decoded = iob2_viterbi(probs.log(), labelled, allowed, may_start)
    assert decoded[0].tolist() == probs[0].argmax(-1).tolist() == [1, 2, 0]  # B-PER I-PER O: allowed, kept
    assert probs[1].argmax(-1).tolist() == [0, 4, 0]  # O I-LOC O: broken
    assert decoded[1].tolist() == [3, 4, 0]  # B-LOC I-LOC O: the best allowed reading (0.25 * 0.65 > 0.6 * 0.2)
