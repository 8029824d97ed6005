"""``hd.Padded(group_by_length=True)``: ``transformers``' length-grouped order, on map-style loaders and in ``DtypeTrainer``."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
from transformers.trainer_pt_utils import get_length_grouped_indices

import hf_dtype as hd
from hf_dtype.sampling import length_grouped

LENGTHS = np.random.default_rng(0).integers(1, 90, 403)


@pytest.fixture(scope="module")
def rows() -> datasets.Dataset:
    """403 rows of ids whose first id is the row number, so each batch row says which dataset row it is."""
    ids = [[i, *range(1, int(n))] for i, n in enumerate(LENGTHS)]
    return hd.compact(datasets.Dataset.from_dict({"input_ids": ids, "label": [i % 2 for i in range(len(ids))]}), vocab_size=1000)


@pytest.mark.parametrize(("size", "batch_size"), [(1000, 8), (37, 4), (5, 8), (1, 3), (4000, 32)])
def test_the_order_is_transformers_get_length_grouped_indices(size, batch_size):
    lengths = np.random.default_rng(size).integers(1, 100, size)
    for seed in range(3):
        expected = get_length_grouped_indices(lengths.tolist(), batch_size, generator=torch.Generator().manual_seed(seed))
        order = torch.randperm(size, dtype=torch.int32, generator=torch.Generator().manual_seed(seed)).numpy()
        assert length_grouped(order, lengths, batch_size).tolist() == expected


def _row_numbers(loader) -> list[list[int]]:
    return [batch["input_ids"][:, 0].tolist() for batch in loader]


def _order(loader) -> list[int]:
    return [row for batch in _row_numbers(loader) for row in batch]


def test_batches_hold_rows_of_similar_length_and_every_row_once_an_epoch(rows):
    grouped = hd.dataloader(rows, 16, shuffle=True, seed=3, layout=hd.Padded(group_by_length=True))
    plain = hd.dataloader(rows, 16, shuffle=True, seed=3)
    for epoch in range(2):
        seen = _order(grouped)
        assert sorted(seen) == list(range(len(rows)))
        order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(3 + epoch)).numpy()
        assert seen == length_grouped(order, LENGTHS, 16).tolist()
    padded = [sum(b["input_ids"].numel() for b in loader) for loader in (grouped, plain)]
    assert padded[0] < 0.75 * padded[1]  # the point of it: far less padding


def test_a_view_is_grouped_by_the_lengths_it_shows(rows):
    view = rows.shuffle(seed=1).select(range(100))
    originals = np.array([ids[0] for ids in view["input_ids"]])
    position = {int(row): i for i, row in enumerate(originals)}
    loader = hd.dataloader(view, 10, layout=hd.Padded(group_by_length=True))
    seen = [position[row] for row in _order(loader)]
    assert seen == length_grouped(np.arange(100), LENGTHS[originals], 10).tolist()


def test_the_state_resumes_the_grouped_order(rows):
    loader = hd.dataloader(rows, 16, shuffle=True, seed=5, layout=hd.Padded(group_by_length=True))
    first = _row_numbers(loader)
    state = loader.state_dict()
    second = _row_numbers(loader)
    again = hd.dataloader(rows, 16, shuffle=True, seed=5, layout=hd.Padded(group_by_length=True))
    again.load_state_dict(state)
    assert _row_numbers(again) == second != first


def test_shuffle_batches_deals_the_same_batches_in_a_random_order_of_each_epoch(rows):
    trainers = hd.dataloader(rows, 16, shuffle=True, seed=3, layout=hd.Padded(group_by_length=True))
    dealt = hd.dataloader(rows, 16, shuffle=True, seed=3, layout=hd.Padded(group_by_length=True, shuffle_batches=True))
    epochs = []
    for _ in range(2):
        expected, seen = _row_numbers(trainers), _row_numbers(dealt)
        assert seen[0] == expected[0] and seen[-1] == expected[-1]  # the longest row's batch first, the short one last
        assert sorted(map(tuple, seen)) == sorted(map(tuple, expected)) and seen != expected  # the same batches, reordered
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    again = hd.dataloader(rows, 16, shuffle=True, seed=3, layout=hd.Padded(group_by_length=True, shuffle_batches=True))
    assert _row_numbers(again) == epochs[0]  # a seed and an epoch give one order
    in_order = hd.dataloader(rows, 16, layout=hd.Padded(group_by_length=True, shuffle_batches=True))
    assert _order(in_order) == length_grouped(np.arange(len(rows)), LENGTHS, 16).tolist()  # not shuffling: nothing dealt


def test_shuffle_batches_breaks_the_run_of_labels_that_follow_the_length():
    """Where the label follows the length (longer reviews are more often positive), Trainer's long-to-short order gives
    consecutive batches the same labels; dealt out at random they are independent."""
    lengths = np.random.default_rng(1).integers(2, 200, 4000)
    rows = hd.compact(datasets.Dataset.from_dict({"input_ids": [[1] * int(n) for n in lengths],
                                                  "label": (lengths > np.median(lengths)).astype(int).tolist()}), vocab_size=8)

    def lag_one(shuffle_batches: bool) -> float:
        layout = hd.Padded(group_by_length=True, shuffle_batches=shuffle_batches)
        share = np.array([batch["labels"].float().mean().item() for batch in hd.dataloader(rows, 32, shuffle=True, layout=layout)])
        centred = share - share.mean()
        return float(np.sum(centred[1:] * centred[:-1]) / np.sum(centred * centred))

    assert lag_one(False) > 0.6 and abs(lag_one(True)) < 0.2


def test_bad_uses_are_clear_errors(rows):
    with pytest.raises(ValueError, match="group_by_length must be True or False"):
        hd.Padded(group_by_length="yes")
    with pytest.raises(ValueError, match="shuffle_batches reorders the batches of group_by_length"):
        hd.Padded(shuffle_batches=True)
    with pytest.raises(ValueError, match="group_by_length orders rows by the length of a list column"):
        hd.dataloader(rows, 4, columns=["label"], layout=hd.Padded(group_by_length=True))
    with pytest.raises(ValueError, match="a stream's order is the one its rows arrive in"):
        hd.dataloader(rows.to_iterable_dataset(), 4, layout=hd.Padded(group_by_length=True))


def _trainer(rows, tmp_path, strategy: str, **dataloader_options) -> hd.DtypeTrainer:
    config = BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
                        max_position_embeddings=128, num_labels=2)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, report_to=[], use_cpu=True, seed=7,
                             train_sampling_strategy=strategy)
    return hd.DtypeTrainer(model=BertForSequenceClassification(config), args=args, train_dataset=rows,
                           dataloader_options=dataloader_options)


def test_dtype_trainer_follows_train_sampling_strategy(rows, tmp_path):
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(7)).numpy()
    grouped = _trainer(rows, tmp_path, "group_by_length").get_train_dataloader()
    assert _order(grouped) == length_grouped(order, LENGTHS, 16).tolist()
    sequential = _trainer(rows, tmp_path, "sequential").get_train_dataloader()
    assert _order(sequential) == list(range(len(rows)))
    with pytest.raises(ValueError, match="'random', 'sequential' or 'group_by_length'; got 'batch_rebalance'"):
        _trainer(rows, tmp_path, "batch_rebalance").get_train_dataloader()


def test_dtype_trainer_deals_the_grouped_batches_at_random_when_asked(rows, tmp_path):
    trainers = _order(_trainer(rows, tmp_path, "group_by_length").get_train_dataloader())
    layout = hd.Padded(group_by_length=True, shuffle_batches=True)
    dealt = _row_numbers(_trainer(rows, tmp_path, "group_by_length", layout=layout).get_train_dataloader())
    assert sorted(row for batch in dealt for row in batch) == sorted(trainers) and [row for batch in dealt for row in batch] != trainers
    assert dealt[0] == trainers[:16]  # the longest row's batch first
