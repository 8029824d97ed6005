import datasets
import numpy as np
import pyarrow as pa
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
    plan = hd.plan_of(small) | {
        "input_ids": {"storage": "uint16", "compute": "int32", "pad": 0},
        "attention_mask": {"derived": "ones", "compute": "bool", "lengths_from": "input_ids"},
    }
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


# --- uint64 values at or above 2**63: datasets serves them wrapped to negative int64 ---------------------

BEYOND = [2**63 + 5, 3, 2**64 - 1]


def _uint64_columns() -> datasets.Dataset:
    return datasets.Dataset(pa.table({
        "big": pa.array(BEYOND, pa.uint64()),
        "seq": pa.array([[2**63 + 5, 1], [3], [2**64 - 1]], pa.list_(pa.uint64())),
        "pairs": pa.array([[1, 2], [3, 2**63], [5, 6]], pa.list_(pa.uint64(), 2)),
        "nested": pa.array([[[1]], [[2, 3]], [[2**64 - 1]]], pa.list_(pa.list_(pa.uint64()))),
        "x": [1, 2, 3],
    }))


def test_unplanned_uint64_beyond_int64_is_served_exactly_by_numpy():
    """The issue's column: infer_plan leaves it out, and the formatter served it as -9223372036854775803, 3, -1."""
    ds = _uint64_columns()
    plan = hd.infer_plan(ds)
    assert list(plan) == ["x"]
    batch = ds.with_format("hf_dtype", plan=plan, backend="numpy")[:]
    assert batch["big"].dtype == np.uint64 and batch["big"].tolist() == BEYOND
    assert [row.dtype for row in batch["seq"]] == [np.uint64] * 3 and [row.tolist() for row in batch["seq"]] == ds["seq"]
    assert batch["pairs"].dtype == np.uint64 and batch["pairs"].tolist() == ds["pairs"]
    assert [row.tolist() for row in batch["nested"]] == ds["nested"] and batch["nested"][2].dtype == np.uint64
    assert ds.with_format("hf_dtype", plan=plan, backend="numpy")[2]["big"] == 2**64 - 1
    batch["big"][0] = 0  # the caller's memory, not the dataset's
    assert ds["big"] == BEYOND


@pytest.mark.parametrize("column", ["big", "seq", "pairs", "nested"])
def test_unplanned_uint64_beyond_int64_is_refused_by_torch_with_what_to_do(column):
    ds = _uint64_columns().select_columns([column, "x"])
    row, value = {"big": (0, 2**63 + 5), "seq": (0, 2**63 + 5), "pairs": (1, 2**63), "nested": (2, 2**64 - 1)}[column]
    with pytest.raises(LossyCastError, match=rf"Column '{column}', row {row}: value {value} is beyond int64, so datasets' own formats "
                                             rf"would serve it wrapped \(as {value - 2**64}\) .*; serve it with backend='numpy' "
                                             r"\(exact uint64\), plan it with compute 'uint64'"):
        ds.with_format("hf_dtype", plan={"x": "uint8"})[:]


def test_unplanned_uint64_below_2_63_is_served_as_datasets_serves_it():
    ds = datasets.Dataset(pa.table({"big": pa.array([2**63 - 1, 3], pa.uint64()), "seq": pa.array([[1, 2], [3]], pa.list_(pa.uint64())),
                                    "x": [1, 2]}))
    for backend in ("torch", "numpy"):
        served = ds.with_format("hf_dtype", plan={"x": "uint8"}, backend=backend)[:]
        reference = ds.with_format(backend)[:]
        assert str(served["big"].dtype).endswith("int64") and served["big"].tolist() == reference["big"].tolist() == [2**63 - 1, 3]
        assert [row.tolist() for row in served["seq"]] == [[1, 2], [3]] and str(served["seq"][0].dtype).endswith("int64")


def test_uint64_with_nulls_or_in_a_struct_is_refused_by_both_backends():
    ds = datasets.Dataset(pa.table({
        "maybe": pa.array([3, None, 2**63 + 1], pa.uint64()),
        "record": pa.array([{"id": 1}, {"id": 2**63 + 2}, {"id": 2}], pa.struct([("id", pa.uint64())])),
        "x": [1, 2, 3],
    }))
    for backend in ("torch", "numpy"):
        for column, row, value in (("maybe", 2, 2**63 + 1), ("record", 1, 2**63 + 2)):
            with pytest.raises(LossyCastError, match=rf"Column '{column}', row {row}: value {value} is beyond int64.*; fill its nulls "
                                                     r"and take it out of any struct"):
                ds.select_columns([column, "x"]).with_format("hf_dtype", plan={"x": "uint8"}, backend=backend)[:]


def test_a_planned_uint64_column_is_range_checked_or_served_as_uint64_when_asked():
    ds = _uint64_columns().select_columns(["big"])
    for backend in ("torch", "numpy"):
        with pytest.raises(LossyCastError, match=r"Column 'big', row 0: value 9223372036854775813 does not fit int64.*no signed dtype "
                                                 r"holds it: compute 'uint64' serves it exactly"):
            ds.with_format("hf_dtype", plan={"big": "uint64"}, backend=backend)[:]
    exact = ds.with_format("hf_dtype", plan={"big": {"storage": "uint64", "compute": "uint64"}})[:]["big"]
    assert exact.dtype == torch.uint64 and exact.tolist() == BEYOND


def test_transform_serves_uint64_beyond_int64_exactly_or_refuses_it():
    ds = _uint64_columns().select_columns(["big", "seq", "x"])
    out = ds.with_transform(DtypeTransform({"x": "uint8"}))[:]
    assert out["big"] == BEYOND and out["seq"] == ds["seq"]  # outside the plan: set_transform's Python ints, exact
    for backend in ("torch", "numpy"):  # was an OverflowError from numpy, naming nothing
        with pytest.raises(LossyCastError, match=r"Column 'seq', row 0: value 9223372036854775813 does not fit int64.*compute 'uint64'"):
            ds.with_transform(DtypeTransform({"seq": "uint64"}, backend=backend))[:]
    exact = ds.with_transform(DtypeTransform({"big": {"storage": "uint64", "compute": "uint64"}}))[:]["big"]
    assert exact.dtype == torch.uint64 and exact.tolist() == BEYOND
    with pytest.raises(LossyCastError, match=r"Column 'v', row 1: value 9223372036854775808 does not fit int64, and no integer dtype "
                                             r"holds every value of the batch"):
        DtypeTransform({"v": "int64"})({"v": [[1], [-1, 2**63]]})


def test_nulls_in_a_planned_integer_column_are_refused_by_row():
    """Read as numpy, a null made the column float (2**60 + 1 rounded) and was served as int64's smallest value."""
    ds = datasets.Dataset(pa.table({
        "x": pa.array([2**60 + 1, None, 3]),
        "ids": pa.array([[1, 2], [3, None], [4]], pa.list_(pa.int32())),
        "rows": pa.array([[1], [2], None], pa.list_(pa.int32())),
        "score": pa.array([0.5, None, 1.0], pa.float32()),
    }))
    for backend in ("torch", "numpy"):
        for column, row in (("x", 1), ("ids", 1), ("rows", 2)):
            with pytest.raises(LossyCastError, match=rf"Column '{column}', row {row}: a null, which int64 cannot hold; fill the nulls"):
                ds.with_format("hf_dtype", plan={column: "int64"}, backend=backend)[:]
        score = ds.with_format("hf_dtype", plan={"score": "float32"}, backend=backend)[:]["score"]
        assert np.isnan(np.asarray(score)[1]) and np.asarray(score)[2] == 1.0  # a float serves a null as NaN, as datasets does
    assert ds.with_format("hf_dtype", plan={"x": "int64"})[0]["x"].item() == 2**60 + 1  # a row without a null serves


def test_a_derived_column_without_a_source_is_an_error(tokenized):
    rows = tokenized.remove_columns(["attention_mask"])
    with pytest.raises(ValueError, match=r"Derived column\(s\) \['attention_mask'\] have no list column to take their row lengths from"):
        rows.with_format("hf_dtype", plan={"attention_mask": {"derived": "ones"}})[0]
