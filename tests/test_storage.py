import datasets
import numpy as np
import pyarrow as pa
import pytest

import hf_dtype as hd
from hf_dtype import DtypePlan, LossyCastError


@pytest.fixture(scope="module")
def small(tokenized):
    return hd.compact(tokenized)


def _values(ds, column):
    return ds.with_format("hf_dtype", backend="numpy")[column] if hd.plan_of(ds) else ds.with_format("numpy")[column]


def test_compact_stores_the_smallest_lossless_dtypes(tokenized, small):
    assert tokenized.data.schema.field("input_ids").type == pa.list_(pa.int32())
    assert small.data.schema.field("input_ids").type == pa.list_(pa.uint16())
    assert small.data.schema.field("labels").type == pa.list_(pa.int8())
    assert "attention_mask" not in small.column_names and "token_type_ids" not in small.column_names
    assert small.data.nbytes < 0.25 * tokenized.data.nbytes


def test_compact_keeps_every_value(tokenized, small):
    served = small.with_format("hf_dtype", backend="numpy")[:]
    original = tokenized.with_format("numpy")[:]
    for column in tokenized.column_names:
        for got, expected in zip(served[column], original[column], strict=True):
            np.testing.assert_array_equal(got, expected)
            assert got.dtype == np.int64


def test_compact_does_not_modify_the_source(tokenized):
    before = (tokenized.features.copy(), tokenized._fingerprint, tokenized.data.schema)
    hd.compact(tokenized, {"input_ids": "uint16"})
    assert (tokenized.features, tokenized._fingerprint, tokenized.data.schema) == before
    assert hd.plan_of(tokenized) is None


def test_plan_of_reads_back_the_plan(tokenized, small):
    assert hd.plan_of(small) == hd.infer_plan(tokenized)
    assert hd.plan_of(tokenized) is None


ROUND_TRIPS = {
    "map": lambda ds, tmp: ds.map(lambda row: {"n": len(row["input_ids"])}),
    "map_batched": lambda ds, tmp: ds.map(lambda batch: batch, batched=True),
    "filter": lambda ds, tmp: ds.filter(lambda row: len(row["input_ids"]) > 4),
    "select": lambda ds, tmp: ds.select([2, 0]),
    "shuffle": lambda ds, tmp: ds.shuffle(seed=1),
    "flatten_indices": lambda ds, tmp: ds.shuffle(seed=1).flatten_indices(),
    "train_test_split": lambda ds, tmp: ds.train_test_split(test_size=2, seed=0)["test"],
    "concatenate": lambda ds, tmp: datasets.concatenate_datasets([ds, ds]),
    "rename_other": lambda ds, tmp: ds.add_column("idx", list(range(len(ds)))).rename_column("idx", "row"),
    "save_to_disk": lambda ds, tmp: (ds.save_to_disk(tmp / "d"), datasets.load_from_disk(tmp / "d"))[1],
    "datasetdict_save_to_disk": lambda ds, tmp: (
        datasets.DatasetDict({"train": ds}).save_to_disk(tmp / "dd"), datasets.load_from_disk(tmp / "dd")["train"])[1],
    "to_parquet": lambda ds, tmp: (
        ds.to_parquet(tmp / "d.parquet"), datasets.load_dataset("parquet", data_files=str(tmp / "d.parquet"), split="train"))[1],
}


@pytest.mark.parametrize("operation", ROUND_TRIPS)
def test_the_plan_survives(operation, small, tmp_path):
    out = ROUND_TRIPS[operation](small, tmp_path)
    assert hd.plan_of(out) == hd.plan_of(small)
    served = out.with_format("hf_dtype")[0]
    assert served["input_ids"].dtype.is_signed and served["attention_mask"].tolist() == [1] * len(served["input_ids"])


def test_the_plan_survives_the_hub_card(small, tmp_path):
    """push_to_hub writes the features into the README YAML; load_dataset reads them back from there."""
    from datasets.arrow_dataset import _get_updated_dataset_card
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    (tmp_path / "data").mkdir()
    small.to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    card, _ = _get_updated_dataset_card(
        fs=DirFileSystem(path=str(tmp_path), fs=LocalFileSystem()), config_name="default",
        splits_info=[datasets.SplitInfo("train", num_bytes=small.data.nbytes, num_examples=len(small))],
        features=small.features, data_dir="data", set_default=None, uploaded_sizes=[0], deleted_sizes=[0],
        remove_other_splits=False,
    )
    (tmp_path / "README.md").write_text(str(card))
    assert "hf_dtype/1" in str(card)
    # The parquet schema also carries the features: drop it so the plan can only come from the card.
    table = pa.parquet.read_table(tmp_path / "data" / "train-00000-of-00001.parquet").replace_schema_metadata(None)
    pa.parquet.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    loaded = datasets.load_dataset(str(tmp_path), split="train")
    assert hd.plan_of(loaded) == hd.plan_of(small)


def test_datasetdict_is_compacted_with_one_plan(tokenized, tmp_path):
    dd = datasets.DatasetDict({"train": tokenized.select(range(4)), "validation": tokenized.select([4, 5])})
    out = hd.compact(dd)
    assert hd.plan_of(out) == hd.infer_plan(dd)
    out.save_to_disk(tmp_path / "dd")
    assert hd.plan_of(datasets.load_from_disk(tmp_path / "dd")) == hd.plan_of(out)


def test_compact_of_a_shuffled_view_keeps_its_order(tokenized):
    view = tokenized.shuffle(seed=3).select([0, 1, 2])
    out = hd.compact(view)
    assert out.with_format("hf_dtype")["input_ids"][0].tolist() == view["input_ids"][0]


def test_compact_of_a_view_infers_from_the_rows_it_stores():
    """select([2, 0, 1]) of [1, 2, 3, 70000] stores 3, 1, 2: uint8, not the uint32 that 70000 beneath the view needs."""
    ds = datasets.Dataset.from_dict({"x": [1, 2, 3, 70000], "ids": [[1], [2, 3], [4], [70000]]})
    out = hd.compact(ds.select([2, 0, 1]))
    assert out.features["x"].dtype == "uint8" and out.features["ids"].feature.dtype == "uint8"
    assert out["x"] == [3, 1, 2] and out["ids"] == [[4], [1], [2, 3]]
    evens = hd.compact(datasets.DatasetDict({"train": ds.filter(lambda row: row["x"] % 2 == 1), "test": ds.select([1])}))
    assert hd.plan_of(evens)["x"].storage == "uint8" and evens["train"]["x"] == [1, 3]


def test_empty_dataset_compacts(tokenized):
    out = hd.compact(tokenized.select([]))
    assert len(out) == 0 and hd.plan_of(out) is not None


def test_explicit_plan_with_bool_masks(tokenized):
    plan = DtypePlan.from_dict({
        "input_ids": {"storage": "uint16", "pad": 0},
        "labels": {"storage": "int8", "pad": -100},
        "attention_mask": {"storage": "bool", "compute": "bool"},
    })
    out = hd.compact(tokenized, plan)
    assert out.data.schema.field("attention_mask").type == pa.list_(pa.bool_())
    assert out.data.schema.field("token_type_ids").type == pa.list_(pa.int8())  # outside the plan: untouched
    row = out.with_format("hf_dtype")[1]
    assert row["attention_mask"].dtype.is_floating_point is False and row["attention_mask"].all()


# --- floats -------------------------------------------------------------------------------------


def test_bfloat16_storage_is_bits_served_as_a_copy_the_caller_owns():
    import torch

    values = [[0.1, -2.5, 3.0e4], [1e-3]]
    ds = datasets.Dataset.from_dict({"feat": values})
    out = hd.compact(ds, {"feat": {"storage": "bf16", "compute": "bf16"}})
    assert out.data.schema.field("feat").type == pa.list_(pa.uint16())
    served = out.with_format("hf_dtype", backend="torch")[0]["feat"]
    assert served.dtype == torch.bfloat16
    assert served.tolist() == torch.tensor(values[0]).to(torch.bfloat16).tolist()
    leaf = out.data.column("feat").chunk(0).flatten().buffers()[1]
    assert served.untyped_storage().data_ptr() != leaf.address  # a view would let served.add_(1) change the dataset


def test_bfloat16_recompacts_to_float32_exactly():
    ds = hd.compact(datasets.Dataset.from_dict({"x": [0.1, 7.0]}), {"x": "bf16"})
    out = hd.compact(ds, {"x": "float32"})
    assert out.data.schema.field("x").type == pa.float32()
    assert out["x"] == [0.10009765625, 7.0]  # the bfloat16 values, exactly


def test_float16_overflow_is_loud():
    ds = datasets.Dataset.from_dict({"x": [1.0, 70000.0, 2.0]})
    with pytest.raises(LossyCastError, match=r"Column 'x', row 1: value 70000.0 overflows float16 to inf; float32 holds it"):
        hd.compact(ds, {"x": "float16"})


def test_float_exactness_when_asked():
    ds = datasets.Dataset.from_dict({"x": [0.5, 0.1]})
    assert hd.compact(ds, {"x": "float16"})  # inexact but asked for: allowed
    with pytest.raises(LossyCastError, match=r"row 1: float16 is not exact: value 0.1 becomes .* \(largest error"):
        hd.compact(ds, {"x": "float16"}, exact=True)


def test_integers_into_floats_must_be_exact():
    ds = datasets.Dataset.from_dict({"x": [1, 2049]})
    with pytest.raises(LossyCastError, match=r"row 1: integer 2049 is not exact in float16 \(it becomes 2048\)"):
        hd.compact(ds, {"x": "float16"})


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "error", "match"),
    [
        ({"nope": "int8"}, ValueError, r"names column\(s\) \['nope'\] that the dataset does not have; its columns are"),
        ({"input_ids": "uint12"}, ValueError, r"Unknown dtype 'uint12'"),
        ({"input_ids": "uint8"}, LossyCastError, r"Column 'input_ids', row 0: value 7327 does not fit uint8, .* \[0, 255\]; uint16 holds"),
        ({"labels": "uint8"}, LossyCastError, r"value -100 does not fit uint8, .* need a signed dtype\); int8 holds"),
        ({"labels": {"storage": "uint8", "pad": -100}}, ValueError, r"Pad value -100 does not fit storage dtype uint8"),
        ({"input_ids": "uint16", "labels": {"derived": "zeros"}}, LossyCastError,
         r"Column 'labels', row 0: holds -100, so it is not all zeros"),
    ],
)
def test_bad_plans_are_rejected(tokenized, plan, error, match):
    with pytest.raises(error, match=match):
        hd.compact(tokenized, plan)


def test_overflow_names_the_row_of_a_later_batch():
    ds = datasets.Dataset.from_dict({"ids": [[1, 2]] * 2500 + [[3, 300]] + [[4]] * 10})
    with pytest.raises(LossyCastError, match=r"Column 'ids', row 2500: value 300 does not fit uint8"):
        hd.compact(ds, {"ids": "uint8"})


def test_nan_into_an_integer_column_is_loud():
    ds = datasets.Dataset.from_dict({"x": [1.0, float("nan")]})
    with pytest.raises(LossyCastError, match=r"row 1: nan cannot be stored in integer dtype int8"):
        hd.compact(ds, {"x": "int8"})
    with pytest.raises(LossyCastError, match=r"row 0: 1.5 has a fraction"):
        hd.compact(datasets.Dataset.from_dict({"x": [1.5]}), {"x": "int8"})


def test_nulls_and_non_numeric_columns_are_rejected():
    ds = datasets.Dataset.from_dict({"x": [1, None], "n": [None, None], "s": ["a", "b"], "xs": [[1, None], [2]]})
    with pytest.raises(LossyCastError, match=r"Column 'x', row 1: the row is null"):
        hd.compact(ds, {"x": "int8"})
    with pytest.raises(LossyCastError, match=r"Column 'xs', row 0: a null value"):
        hd.compact(ds, {"xs": "int8"})
    with pytest.raises(ValueError, match=r"Column 'n' is of type null; a planned column must hold numbers"):
        hd.compact(ds, {"n": "int8"})
    with pytest.raises(ValueError, match=r"Column 's' is of type string"):
        hd.compact(ds, {"s": "int8"})


def test_derived_column_with_other_lengths_is_rejected():
    ds = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7]], "mask": [[1, 1]]})
    with pytest.raises(LossyCastError, match=r"Column 'mask', row 0: has length 2 but 'input_ids' has 3"):
        hd.compact(ds, {"input_ids": "uint8", "mask": {"derived": "ones"}})


def test_nested_lists_keep_their_shape():
    ds = datasets.Dataset.from_dict({"boxes": [[[1, 2], [3, 4, 5]], [[6]]]})
    out = hd.compact(ds, {"boxes": "uint8"})
    assert out.data.schema.field("boxes").type == pa.list_(pa.list_(pa.uint8()))
    assert out["boxes"] == ds["boxes"]
    with pytest.raises(LossyCastError, match=r"Column 'boxes', row 0: value 2 does not fit bool, which holds \[0, 1\]; uint8 holds"):
        hd.compact(ds, {"boxes": "bool"})


def test_compact_rejects_other_types():
    with pytest.raises(TypeError, match=r"takes a datasets\.Dataset, DatasetDict, IterableDataset or IterableDatasetDict; got list"):
        hd.compact([1, 2])


# --- ClassLabel names and the options of compact(plan=None) ---------------------------------------


def _sst2_like() -> datasets.Dataset:
    features = datasets.Features({"input_ids": datasets.List(datasets.Value("int32")), "label": datasets.ClassLabel(names=["neg", "pos"])})
    return datasets.Dataset.from_dict({"input_ids": [[101, 5, 102], [101, 102]], "label": [1, 0]}, features=features)


@pytest.mark.parametrize("operation", ["save_to_disk", "to_parquet"])
def test_class_label_names_survive_compact_and_saving(operation, tmp_path):
    small = hd.compact(_sst2_like())
    assert small.data.schema.field("label").type == pa.int8()
    out = ROUND_TRIPS[operation](small, tmp_path)
    assert hd.plan_of(out)["label"].names == ("neg", "pos")
    back = hd.compact(out, hd.plan_of(out) | {"label": {"storage": "int64", "names": ["neg", "pos"]}})
    assert back.features["label"] == datasets.ClassLabel(names=["neg", "pos"], id=back.features["label"].id)  # a ClassLabel again


def test_an_explicit_plan_keeps_class_label_names():
    small = hd.compact(_sst2_like(), {"input_ids": "uint16", "label": "int8"})
    assert hd.plan_of(small)["label"].names == ("neg", "pos")


def test_compact_without_a_plan_forwards_pad_token_id(tokenized):
    assert hd.plan_of(hd.compact(tokenized, pad_token_id=7))["input_ids"].pad == 7
