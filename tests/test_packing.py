"""Packed and padding-free batches: equal to ``run_clm.py``'s ``group_texts`` blocks and to
``DataCollatorWithFlattening``, every block or row once per epoch, and the same loss as the rows run alone."""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorWithFlattening

import hf_dtype as hd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from pretrain import group_texts

VOCAB = 65  # a character vocabulary: uint8 storage


def _corpus(rows: int = 40, seed: int = 0) -> datasets.Dataset:
    """Rows of 0..150 token ids (some empty, some longer than any block used below), as datasets stores them (int32)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 150, rows)
    lengths[3] = 0
    ids = [rng.integers(1, VOCAB, n).tolist() for n in lengths]
    return datasets.Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * n for n in lengths], "idx": list(range(rows))})


@pytest.fixture(scope="module")
def corpus() -> datasets.Dataset:
    return _corpus()


@pytest.fixture(scope="module")
def compact_corpus(corpus) -> datasets.Dataset:
    return hd.compact(corpus, hd.infer_plan(corpus, vocab_size=VOCAB))


def _run_clm_blocks(dataset: datasets.Dataset, block_size: int) -> list[list[int]]:
    grouped = dataset.select_columns(["input_ids", "attention_mask"]).map(
        group_texts, batched=True, batch_size=None, fn_kwargs={"block_size": block_size})  # over the whole split
    return grouped["input_ids"]


@pytest.mark.parametrize(("group_rows", "block_size"), [(7, 16), (10, 64), (3, 200), (1000, 32)])
def test_group_rows_gives_the_blocks_of_run_clm_map_batches(corpus, compact_corpus, group_rows, block_size):
    """run_clm_no_trainer.py maps group_texts over batches of 1,000 rows (its default): each batch drops its own remainder."""
    grouped = corpus.select_columns(["input_ids", "attention_mask"]).map(group_texts, batched=True, batch_size=group_rows,
                                                                         fn_kwargs={"block_size": block_size})
    loader = hd.dataloader(compact_corpus, 4, layout=hd.Blocks(block_size, group_rows=group_rows), widen="cpu")
    assert len(loader.dataset) == len(grouped)
    assert [row for batch in loader for row in batch["input_ids"].tolist()] == grouped["input_ids"]
    if group_rows < len(corpus):  # the whole-split blocks are others: more of them, and other ones after the first group
        assert len(_run_clm_blocks(corpus, block_size)) > len(grouped)


@pytest.mark.parametrize("block_size", [1, 7, 64, 256])
def test_blocks_equal_group_texts(corpus, compact_corpus, block_size):
    expected = _run_clm_blocks(corpus, block_size)
    loader = hd.dataloader(compact_corpus, 5, layout=hd.Blocks(block_size), widen="device")
    batches = list(loader)
    assert batches[0]["input_ids"].dtype == torch.uint8 and batches[0]["input_ids"].shape[1] == block_size
    got = [row for batch in batches for row in loader.plan.widen(batch)["input_ids"].tolist()]
    assert got == expected
    labels = [row for batch in batches for row in loader.plan.widen(batch)["labels"].tolist()]
    assert labels == expected and set(batches[0]) == {"input_ids", "labels"}


def test_blocks_with_a_separator_after_each_row(corpus, compact_corpus):
    with_separator = corpus.map(lambda row: {"input_ids": [*row["input_ids"], 0], "attention_mask": [*row["attention_mask"], 1]})
    expected = _run_clm_blocks(with_separator, 64)
    got = [row for batch in hd.dataloader(compact_corpus, 4, layout=hd.Blocks(64, separator_id=0), widen="cpu")
           for row in batch["input_ids"].tolist()]
    assert got == expected


def test_blocks_follow_the_rows_as_the_dataset_shows_them(corpus, compact_corpus):
    view = compact_corpus.shuffle(seed=2).select(range(30))
    expected = _run_clm_blocks(corpus.shuffle(seed=2).select(range(30)), 32)
    got = [row for batch in hd.dataloader(view, 8, layout=hd.Blocks(32), widen="cpu") for row in batch["input_ids"].tolist()]
    assert got == expected


def test_every_block_once_per_epoch_shuffled(compact_corpus):
    loader = hd.dataloader(compact_corpus, 3, layout=hd.Blocks(16), shuffle=True, seed=1, widen="cpu")
    ordered = [row for batch in hd.dataloader(compact_corpus, 3, layout=hd.Blocks(16), widen="cpu")
               for row in batch["input_ids"].tolist()]
    epochs = [[row for batch in loader for row in batch["input_ids"].tolist()] for _ in range(2)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(ordered) and len(epoch) == len(ordered) == len(loader.dataset)
    assert epochs[0] != epochs[1] != ordered


def test_document_positions_restart_at_every_row_start(compact_corpus):
    loader = hd.dataloader(compact_corpus, 2, layout=hd.Blocks(50, document_positions=True), widen="cpu")
    lengths = [len(ids) for ids in compact_corpus["input_ids"]]
    starts = set(np.cumsum([0, *lengths]).tolist())
    stream = 0
    for batch in loader:
        for positions in batch["position_ids"].tolist():
            for offset, position in enumerate(positions):
                at = stream + offset
                expected = 0 if offset == 0 or at in starts else positions[offset - 1] + 1
                assert position == expected
            stream += 50


def test_blocks_of_token_classification_take_their_labels_along():
    rows = {"input_ids": [[5, 6, 7], [8, 9], [10, 11, 12, 13]], "labels": [[-100, 1, 2], [3, -100], [4, 5, 6, -100]]}
    small = hd.compact(datasets.Dataset.from_dict(rows))
    batch = next(iter(hd.dataloader(small, 2, layout=hd.Blocks(4, separator_id=1), widen="cpu")))
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1], [8, 9, 1, 10]]
    assert batch["labels"].tolist() == [[-100, 1, 2, -100], [3, -100, -100, 4]]


# --- flat ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("flash", [False, True])
def test_flat_batches_equal_data_collator_with_flattening(corpus, with_labels, flash):
    data = corpus.remove_columns("attention_mask")
    if with_labels:
        data = data.map(lambda row: {"labels": [(i * 7) % 9 if i % 3 else -100 for i in row["input_ids"]]})
    small = hd.compact(data, hd.infer_plan(data, vocab_size=VOCAB))
    collator = DataCollatorWithFlattening(return_flash_attn_kwargs=flash)
    loader = hd.dataloader(small, 6, layout=hd.Flat(return_flash_attn_kwargs=flash), widen="cpu")
    columns = ["input_ids", "labels"] if with_labels else ["input_ids"]
    for start, batch in zip(range(0, len(data), 6), loader, strict=True):
        rows = [{name: data[i][name] for name in columns} for i in range(start, min(start + 6, len(data)))]
        expected = collator(rows)
        assert list(batch) == list(expected)
        for name, value in expected.items():
            if isinstance(value, torch.Tensor):
                assert batch[name].dtype == value.dtype and torch.equal(batch[name], value), name
            else:
                assert batch[name] == value, name
    device = next(iter(hd.dataloader(small, 6, layout=hd.Flat(return_flash_attn_kwargs=flash), widen="device")))
    assert device["input_ids"].dtype == torch.uint8
    widened = hd.dataloader(small, 6, layout=hd.Flat()).plan.widen(device)
    assert torch.equal(widened["labels"], next(iter(loader))["labels"])


def test_flat_every_row_once(compact_corpus):
    loader = hd.dataloader(compact_corpus, 7, layout=hd.Flat(return_flash_attn_kwargs=True, label_column=None), shuffle=True, seed=3)
    seen = []
    for batch in loader:
        bounds = batch["cu_seq_lens_q"].tolist()
        ids = loader.plan.widen(batch)["input_ids"][0].tolist()
        seen += [tuple(ids[a:b]) for a, b in pairwise(bounds)]
    assert sorted(seen) == sorted(tuple(row) for row in compact_corpus["input_ids"] if row)


# --- the loss of packed rows equals the loss of the rows run alone -----------------------------------


def _tiny_llama(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, attn_implementation=attention)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_flat_batch_gives_the_loss_of_its_rows_padded(compact_corpus, attention):
    """The trap: with use_cache on, transformers ignores position_ids for masking and the rows attend to each other."""
    model = _tiny_llama(attention)
    small = compact_corpus.select(range(8))
    flat = hd.dataloader(small, 8, layout=hd.Flat(label_column=None), widen="cpu")
    batch = next(iter(flat))
    padded = next(iter(hd.dataloader(small, 8, widen="cpu", columns=["input_ids", "attention_mask"])))
    labels = padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100)
    with torch.no_grad():
        reference = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], labels=labels).logits
        packed = model(**batch, use_cache=False)
        trap = model(**batch, use_cache=True).logits
    rows = [row for row in small["input_ids"] if row]
    expected = torch.cat([reference[i, :len(row)] for i, row in enumerate(r for r in small["input_ids"]) if row])
    assert (packed.logits[0] - expected).abs().max() < 1e-5
    assert (trap[0] - expected).abs().max() > 1e-2  # rows after the first see the rows before them
    losses = [torch.nn.functional.cross_entropy(reference[i, :len(r) - 1], torch.tensor(r[1:]), reduction="sum")
              for i, r in enumerate(small["input_ids"]) if len(r) > 1]
    assert abs(packed.loss.item() - (sum(losses) / sum(len(r) - 1 for r in rows)).item()) < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_document_positions_give_the_loss_of_each_document_run_alone(compact_corpus, attention):
    model = _tiny_llama(attention)
    loader = hd.dataloader(compact_corpus, 2, layout=hd.Blocks(48, document_positions=True), widen="cpu")
    batch = next(iter(loader))
    with torch.no_grad():
        packed = model(**batch, use_cache=False).logits
        for block, positions in zip(batch["input_ids"], batch["position_ids"], strict=True):
            starts = [i for i, p in enumerate(positions.tolist()) if p == 0] + [len(positions)]
            for a, b in pairwise(starts):
                alone = model(input_ids=block[a:b][None], use_cache=False).logits[0]
                row = batch["input_ids"].tolist().index(block.tolist())
                assert (packed[row, a:b] - alone).abs().max() < 1e-5


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "match"), [
    (lambda: hd.Blocks(None), r"block_size must be a positive integer; got None"),
    (lambda: hd.Blocks(0), r"block_size must be a positive integer; got 0"),
    (lambda: hd.Blocks(8, group_rows=-1), r"group_rows must be a positive integer or None; got -1"),
    (lambda: hd.Blocks(8, separator_id="0"), r"separator_id must be a token id \(an integer\) or None; got '0'"),
    (lambda: hd.Padded(pad_to_multiple_of=0), r"pad_to_multiple_of must be a positive integer or None; got 0"),
    (lambda: hd.Padded(padding_side="top"), r"padding_side must be one of \('right', 'left'\); got 'top'"),
])
def test_bad_layout_options_fail_when_the_layout_is_made(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(("layout", "match"), [
    (hd.Blocks(10**6), r"block_size 1000000 is larger than the token stream of 'input_ids' \(\d+ tokens"),
    (hd.Blocks(8, separator_id=300), r"separator_id 300 is not a token id of 'input_ids', whose storage"),
    (hd.Flat(token_column="idx"), r"Flat needs list columns of numbers: 'idx' is not one"),
    (hd.Blocks(8, label_column="idx"), r"Blocks needs list columns of numbers: 'idx' is not one"),
])
def test_bad_layouts_for_the_dataset(compact_corpus, layout, match):
    with pytest.raises(ValueError, match=match):
        hd.dataloader(compact_corpus, 2, layout=layout)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"packing": "blocks", "block_size": 8}, r"packing= -> layout=hd.Blocks\(block_size\) or layout=hd.Flat\(\); "
                                             r"block_size= -> layout=hd.Blocks\(8\)"),
    ({"pad_to_multiple_of": 8}, r"pad_to_multiple_of= -> layout=hd.Padded\(pad_to_multiple_of=8\)"),
    ({"flash_attn_kwargs": True}, r"flash_attn_kwargs= -> layout=hd.Flat\(return_flash_attn_kwargs=True\)"),
    ({"separator": 0}, r"separator= -> layout=hd.Blocks\(block_size, separator_id=0\)"),
])
def test_the_old_keywords_show_the_new_form(compact_corpus, kwargs, match):
    with pytest.raises(TypeError, match=match):
        hd.dataloader(compact_corpus, 2, **kwargs)


def test_flat_on_a_dataset_without_a_list_column():
    small = hd.compact(datasets.Dataset.from_dict({"label": [1, 0]}))
    with pytest.raises(ValueError, match=r"'input_ids' is not one; the dataset's list columns are \[\]"):
        hd.dataloader(small, 2, layout=hd.Flat())
