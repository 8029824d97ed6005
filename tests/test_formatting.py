import datasets
import numpy as np
import pytest
import torch

import hf_dtype as hd
from hf_dtype import DtypePlan, DtypeTransform, LossyCastError


@pytest.fixture(scope="module")
def small(tokenized):
    return hd.compact(tokenized.add_column("words", [f"s{i}" for i in range(len(tokenized))]))


def _assert_same(served, reference):
    assert served.keys() == reference.keys()
    for key, value in reference.items():
        got = served[key]
        if isinstance(value, torch.Tensor):
            assert got.dtype == value.dtype, key
            assert torch.equal(got, value), key
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            assert len(got) == len(value) and all(g.dtype == v.dtype and torch.equal(g, v) for g, v in zip(got, value, strict=True)), key
        else:
            assert got == value, key


@pytest.mark.parametrize("key", [0, 3, -1, slice(0, 3), slice(1, 2), [4, 0, 2], [1], range(2, 5)])
def test_a_compact_dataset_serves_what_with_format_torch_serves(tokenized, small, key):
    """A plan with default compute dtypes is a drop-in for with_format("torch")."""
    reference = tokenized.add_column("words", [f"s{i}" for i in range(len(tokenized))]).with_format("torch")[key]
    served = small.with_format("hf_dtype")[key]
    _assert_same({k: served[k] for k in reference}, reference)


def test_columns_are_served_in_their_own_compute_dtypes(small):
    plan = hd.plan_of(small).update({
        "input_ids": {"storage": "uint16", "compute": "int32", "pad": 0},
        "attention_mask": {"derived": "ones", "compute": "bool", "lengths_from": "input_ids"},
    })
    row = small.with_format("hf_dtype", plan=plan)[0]
    assert row["input_ids"].dtype == torch.int32
    assert row["attention_mask"].dtype == torch.bool
    assert row["labels"].dtype == torch.int64
    assert row["token_type_ids"].dtype == torch.int64


def test_numpy_backend(small, tokenized):
    batch = small.with_format("hf_dtype", backend="numpy")[:2]
    assert isinstance(batch["labels"][0], np.ndarray) and batch["labels"][0].dtype == np.int64
    np.testing.assert_array_equal(batch["input_ids"][1], tokenized[1]["input_ids"])
    assert list(batch["words"]) == ["s0", "s1"]


def test_uniform_rows_are_stacked(small):
    same = small.filter(lambda row: len(row["input_ids"]) == len(small[0]["input_ids"]))
    batch = same.with_format("hf_dtype")[:]
    assert isinstance(batch["input_ids"], torch.Tensor) and batch["input_ids"].ndim == 2
    assert batch["attention_mask"].shape == batch["input_ids"].shape


def test_column_access_and_set_format(small):
    ds = small.with_format(None)
    ds.set_format("hf_dtype", backend="torch", columns=["input_ids", "labels"])
    row = ds[0]
    assert set(row) == {"input_ids", "labels", "attention_mask", "token_type_ids"}
    assert small.with_format("hf_dtype")["labels"][0].dtype == torch.int64


def test_output_all_columns(small):
    row = small.with_format("hf_dtype", columns=["input_ids"], output_all_columns=True)[0]
    assert row["words"] == "s0" and row["labels"][0] == -100


def test_format_errors(tokenized, small):
    with pytest.raises(ValueError, match=r"no dtype plan: compact it first.*plan= to Dataset.with_format, or apply hd.DtypeTransform"):
        tokenized.with_format("hf_dtype")[0]
    with pytest.raises(ValueError, match="Unknown backend 'jax': expected one of torch, numpy"):
        small.with_format("hf_dtype", backend="jax")[0]


def test_plan_on_a_dataset_that_was_not_compacted(tokenized):
    plan = DtypePlan.from_dict({"input_ids": {"storage": "int32", "compute": "int32"}, "labels": "int64"})
    row = tokenized.with_format("hf_dtype", plan=plan)[0]
    assert row["input_ids"].dtype == torch.int32 and row["labels"].dtype == torch.int64
    assert row["attention_mask"].dtype == torch.int64  # outside the plan: as datasets serves it


def test_narrowing_compute_dtype_is_checked():
    ds = datasets.Dataset.from_dict({"x": [1, 300]})
    plan = {"x": {"storage": "int64", "compute": "int8"}}
    assert ds.with_format("hf_dtype", plan=plan)[0]["x"].item() == 1
    with pytest.raises(LossyCastError, match=r"Column 'x', row 1: value 300 does not fit int8, which holds \[-128, 127\]"):
        ds.with_format("hf_dtype", plan=plan)[:]


def test_bfloat16_compute_from_float32_storage():
    ds = datasets.Dataset.from_dict({"x": [[0.5, 1.0 / 3]]})
    row = ds.with_format("hf_dtype", plan={"x": {"storage": "float32", "compute": "bf16"}})[0]
    assert row["x"].dtype == torch.bfloat16 and row["x"].tolist() == torch.tensor([0.5, 1.0 / 3]).bfloat16().tolist()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_formatter_in_dataloader_workers(small, context):
    # A spawned worker imports what unpickling names: passing the plan makes that hf_dtype (a script that
    # imports hf_dtype at the top gets the same from re-importing its main module).
    ds = small.with_format("hf_dtype", plan=hd.plan_of(small), columns=["input_ids", "labels"])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context=context)
    rows = list(loader)
    assert len(rows) == len(small)
    assert all(row["input_ids"].dtype == torch.int64 and row["attention_mask"].dtype == torch.int64 for row in rows)
    assert [row["labels"].tolist() for row in rows] == [r.tolist() for r in small.with_format("hf_dtype")["labels"]]


# --- DtypeTransform --------------------------------------------------------------------------


def test_transform_serves_what_the_formatter_serves(small):
    plan = hd.plan_of(small)
    transformed = small.with_transform(DtypeTransform(plan))[:4]
    formatted = small.with_format("hf_dtype")[:4]
    _assert_same(transformed, formatted)


def test_transform_numpy_backend_and_bfloat16():
    ds = hd.compact(datasets.Dataset.from_dict({"x": [[0.1, 2.0], [3.0]]}), {"x": "bf16"})
    out = ds.with_transform(DtypeTransform(hd.plan_of(ds), backend="numpy"))[:]
    assert out["x"][0].dtype == np.float32
    np.testing.assert_array_equal(out["x"][0], np.array([0.10009765625, 2.0], dtype=np.float32))


def test_transform_composes_with_on_the_fly_tokenization(tokenizer):
    raw = datasets.Dataset.from_dict({"text": ["hello world", "an example sentence here"]})
    plan = DtypePlan.from_dict({
        "input_ids": {"storage": "uint16", "compute": "int32", "pad": 0},
        "attention_mask": {"derived": "ones", "compute": "bool", "lengths_from": "input_ids"},
    })

    def tokenize(batch):
        return dict(tokenizer(batch["text"], return_attention_mask=False))

    out = raw.with_transform(DtypeTransform(plan, before=tokenize))[:]
    expected = tokenizer(["hello world", "an example sentence here"])
    assert [row.tolist() for row in out["input_ids"]] == expected["input_ids"]
    assert out["input_ids"][0].dtype == torch.int32
    assert out["attention_mask"][1].dtype == torch.bool and out["attention_mask"][1].all()


def test_transform_rejects_a_bad_backend():
    with pytest.raises(ValueError, match="Unknown backend"):
        DtypeTransform({"x": "int8"}, backend="tf")
