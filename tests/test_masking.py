"""Masked-LM batches: ``DataCollatorForLanguageModeling``'s rules and rates, and the same masks however they are made.

The masks are a hash of (seed, epoch, row or block, position): checked exactly against that rule on
a fixed draw, against the collator's rates over about a million tokens, and for being the same in a
resumed run, in a shuffled order, and over any number of processes.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling

import hf_dtype as hd
from hf_dtype import loader as loader_module
from hf_dtype.masking import uniforms

MASK, VOCAB, SPECIAL = 3, 500, (0, 1, 2, 3)  # pad, cls, sep, mask


def _rows(count: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    ids = [[1, *rng.integers(4, VOCAB, n).tolist(), 2] for n in rng.integers(0, 40, count)]
    raw = datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids], "idx": list(range(count))})
    return hd.compact(raw, hd.infer_plan(raw, vocab_size=VOCAB))  # uint16 ids, the mask derived


def _masked(layout: hd.Padded | hd.Blocks, **options) -> hd.MaskedLM:
    return hd.MaskedLM(layout, mask_token_id=MASK, vocab_size=VOCAB, special_token_ids=SPECIAL, **options)


@pytest.fixture(scope="module")
def rows() -> datasets.Dataset:
    return _rows(60)


def test_the_rules_on_a_fixed_draw(rows):
    """Each chosen token follows from the three draws of its (seed, epoch, row, position), exactly."""
    batch = next(iter(hd.dataloader(rows, 60, layout=_masked(hd.Padded()), seed=7)))
    plain = next(iter(hd.dataloader(rows, 60, seed=7)))
    original, ids, labels = plain["input_ids"].numpy(), batch["input_ids"].numpy(), batch["labels"].numpy()
    items, positions = plain["idx"].numpy(), np.arange(original.shape[1])
    maskable = ~np.isin(original, SPECIAL) & plain["attention_mask"].numpy().astype(bool)
    chosen = maskable & (uniforms(7, 0, items, positions, 0) < 0.15)
    kind = uniforms(7, 0, items, positions, 1)
    random_ids = np.floor(uniforms(7, 0, items, positions, 2) * VOCAB).astype(np.int64)
    expected = np.where(chosen & (kind < 0.8), MASK, np.where(chosen & (kind >= 0.8) & (kind < 0.9), random_ids, original))
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(labels, np.where(chosen, original, -100))
    assert chosen.any() and not (labels[~maskable] != -100).any()  # special tokens and padding are never chosen
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64 and set(batch) == {"input_ids", "attention_mask",
                                                                                             "idx", "labels"}


def test_the_rates_are_the_collators_over_a_million_tokens():
    """Chosen, [MASK], random and kept shares against DataCollatorForLanguageModeling's on rows of 250 tokens."""

    class Tokenizer:  # what the collator reads of a tokenizer
        mask_token, pad_token, _pad_token_type_id = "[MASK]", "[PAD]", 0
        all_special_ids = SPECIAL

        def __len__(self):
            return VOCAB

        def convert_tokens_to_ids(self, token):
            return MASK

        def get_special_tokens_mask(self, ids, already_has_special_tokens=True):
            return [int(i in SPECIAL) for i in ids]

    rng = np.random.default_rng(1)
    ids = rng.integers(4, VOCAB, (4_000, 250))
    small = hd.compact(datasets.Dataset.from_dict({"input_ids": ids.tolist()}), {"input_ids": {"storage": "uint16", "pad": 0}})
    ours = next(iter(hd.dataloader(small, 4_000, layout=_masked(hd.Blocks(250, label_column=None)))))
    collator = DataCollatorForLanguageModeling(Tokenizer(), mlm_probability=0.15, seed=0)
    theirs = collator.torch_mask_tokens(torch.tensor(ids), special_tokens_mask=torch.zeros(ids.shape, dtype=torch.bool))

    def shares(inputs, labels):
        chosen = labels != -100
        return [chosen.float().mean().item(), (inputs[chosen] == MASK).float().mean().item(),
                (inputs[chosen] == labels[chosen]).float().mean().item()]

    for mine, reference, expected in zip(shares(ours["input_ids"], ours["labels"]), shares(*theirs), (0.15, 0.8, 0.1 + 0.1 / VOCAB),
                                         strict=True):
        assert abs(mine - reference) < 0.004 and abs(mine - expected) < 0.004, (mine, reference, expected)


def test_a_resumed_run_and_another_order_see_the_same_masks(rows):
    """Masks belong to (epoch, row): the same after load_state_dict, and whatever batch a row lands in."""
    layout = _masked(hd.Padded())
    full = hd.dataloader(rows, 8, layout=layout, shuffle=True, seed=2)
    epochs = [list(full), list(full)]
    resumed = hd.dataloader(rows, 8, layout=layout, shuffle=True, seed=2)
    resumed.load_state_dict({"epoch": 1, "seed": 2, "rows": len(rows)})
    for ours, reference in zip(resumed, epochs[1], strict=True):
        assert torch.equal(ours["input_ids"], reference["input_ids"]) and torch.equal(ours["labels"], reference["labels"])

    def by_row(batches):
        out = {}
        for batch in batches:
            for i, row in enumerate(batch["idx"].tolist()):
                length = int(batch["attention_mask"][i].sum())
                out[row] = (batch["input_ids"][i, :length].tolist(), batch["labels"][i, :length].tolist())
        return out

    in_order = by_row(hd.dataloader(rows, 5, layout=layout, seed=2))  # another order, other batches, other widths
    assert by_row(epochs[0]) == in_order and by_row(epochs[1]) != in_order  # epoch 1 draws anew


def test_any_number_of_processes_see_the_masks_of_one(rows, monkeypatch):
    layout = _masked(hd.Blocks(16, label_column=None))
    single = {tuple(batch["input_ids"][i].tolist()) for batch in hd.dataloader(rows, 4, layout=layout, shuffle=True, seed=5)
              for i in range(len(batch["input_ids"]))}
    shared = set()
    for rank in range(3):
        monkeypatch.setattr(loader_module, "process_rank", lambda rank=rank: (rank, 3))
        for batch in hd.dataloader(rows, 4, layout=layout, shuffle=True, seed=5):
            shared |= {tuple(row) for row in batch["input_ids"].tolist()}
    assert shared == single


def test_unmasked_block_tokens_are_the_group_texts_blocks(rows):
    blocks = [row for batch in hd.dataloader(rows, 4, layout=hd.Blocks(16, label_column=None), widen="cpu")
              for row in batch["input_ids"].tolist()]
    masked = list(hd.dataloader(rows, 4, layout=_masked(hd.Blocks(16, label_column=None))))
    inputs = torch.cat([batch["input_ids"] for batch in masked])
    labels = torch.cat([batch["labels"] for batch in masked])
    original = torch.where(labels != -100, labels, inputs)
    assert original.tolist() == blocks
    assert masked[0]["input_ids"].dtype == torch.int64
    stored = next(iter(hd.dataloader(rows, 4, layout=_masked(hd.Blocks(16, label_column=None)), widen="device")))
    assert stored["input_ids"].dtype == torch.uint16 and stored["labels"].dtype == torch.int32  # -100 and every id fit


@pytest.mark.parametrize(("make", "match"), [
    (lambda: hd.MaskedLM(hd.Flat(), mask_token_id=3, vocab_size=10), r"MaskedLM masks hd.Blocks\(...\) or hd.Padded\(...\) batches"),
    (lambda: hd.MaskedLM(hd.Padded(padding_side="left"), mask_token_id=3, vocab_size=10), r"MaskedLM pads on the right"),
    (lambda: hd.MaskedLM(hd.Padded(), mask_token_id=10, vocab_size=10), r"mask_token_id must be a token id below vocab_size 10"),
    (lambda: hd.MaskedLM(hd.Padded(), mask_token_id=3, vocab_size=10, mlm_probability=1.5), r"mlm_probability must be a probability"),
    (lambda: hd.MaskedLM(hd.Padded(), mask_token_id=3, vocab_size=10, mask_replace_prob=0.9, random_replace_prob=0.2),
     r"mask_replace_prob \+ random_replace_prob must be at most 1"),
])
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_a_vocabulary_the_storage_cannot_hold_and_a_stream_are_refused():
    tiny = hd.compact(datasets.Dataset.from_dict({"input_ids": [[1, 5, 2]] * 4}))  # uint8 ids
    with pytest.raises(ValueError, match=r"vocab_size 30522 does not fit 'input_ids''s storage dtype uint8.*vocab_size="):
        hd.dataloader(tiny, 2, layout=hd.MaskedLM(hd.Padded(), mask_token_id=3, vocab_size=30522))
    with pytest.raises(ValueError, match=r"MaskedLM batches come from a Dataset for now"):
        hd.dataloader(tiny.to_iterable_dataset(), 2, layout=hd.MaskedLM(hd.Padded(), mask_token_id=3, vocab_size=10))
