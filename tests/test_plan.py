import json

import datasets
import numpy as np
import pytest

import hf_dtype as hd
from hf_dtype import ColumnDtype, DtypePlan

PLAN_DICT = {
    "input_ids": {"storage": "uint16", "compute": "int64", "pad": 0},
    "labels": {"storage": "int8", "compute": "int64", "pad": -100},
    "attention_mask": {"derived": "ones", "compute": "bool"},
}


def test_plan_round_trips_through_dict_and_json(tmp_path):
    plan = DtypePlan.from_dict(PLAN_DICT)
    assert plan.to_dict() == PLAN_DICT
    assert DtypePlan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert DtypePlan.from_json(path) == plan
    assert json.loads(path.read_text()) == PLAN_DICT


def test_plan_accepts_bare_dtype_names_and_aliases():
    plan = DtypePlan.from_dict({"input_ids": "uint16", "features": {"storage": "bf16"}, "mask": np.bool_})
    assert plan["input_ids"] == ColumnDtype(storage="uint16")
    assert plan["features"].storage == "bfloat16"
    assert plan["features"].served_dtype == "float32"
    assert plan["mask"].served_dtype == "bool"
    assert plan["input_ids"].served_dtype == "int64"


def test_plan_prints_as_a_table():
    text = str(DtypePlan.from_dict(PLAN_DICT))
    assert text.splitlines()[0].split() == ["column", "storage", "compute", "pad"]
    assert "derived: ones" in text and "-100" in text


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ({"storage": "uint12"}, r"Column 'x': Unknown dtype 'uint12'"),
        ({"storage": "uint8", "pad": -100}, r"Pad value -100 does not fit storage dtype uint8.*signed"),
        ({"derived": "twos"}, r"Unknown derived kind 'twos'"),
        ({"derived": "ones", "storage": "int8"}, r"not stored, so it takes no storage dtype"),
        ({"compute": "int64"}, r"needs a storage dtype, or derived"),
        ({"storage": "int8", "colour": "red"}, r"unknown key\(s\) \['colour'\]"),
    ],
)
def test_bad_entries_are_rejected_with_the_reason(entry, match):
    with pytest.raises(ValueError, match=match):
        DtypePlan.from_dict({"x": entry})


def test_derived_column_must_follow_a_stored_column():
    with pytest.raises(ValueError, match="takes its lengths from 'nope'"):
        DtypePlan.from_dict({"mask": {"derived": "ones", "lengths_from": "nope"}})


def test_plan_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; expected a JSON file"):
        DtypePlan.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="JSON object"):
        DtypePlan.from_json(bad)


def test_infer_plan_on_tokenized_conll(tokenized):
    plan = hd.infer_plan(tokenized)
    assert plan["input_ids"] == ColumnDtype(storage="uint16", compute="int64", pad=0)
    assert plan["labels"] == ColumnDtype(storage="int8", compute="int64", pad=-100)
    assert plan["attention_mask"] == ColumnDtype(derived="ones", compute="int64", lengths_from="input_ids")
    assert plan["token_type_ids"] == ColumnDtype(derived="zeros", compute="int64", lengths_from="input_ids")


def test_infer_plan_without_derivation_stores_masks_as_bool(tokenized):
    plan = hd.infer_plan(tokenized, derive=False)
    assert plan["attention_mask"].storage == "bool"
    assert plan["attention_mask"].served_dtype == "int64"


def test_infer_plan_widens_for_vocab_and_pad(tokenized):
    ds = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3]], "labels": [[0, 1, 2]]})
    assert hd.infer_plan(ds)["input_ids"].storage == "uint8"
    assert hd.infer_plan(ds, vocab_size=30522)["input_ids"].storage == "uint16"
    assert hd.infer_plan(ds, pad_token_id=300)["input_ids"] == ColumnDtype(storage="uint16", compute="int64", pad=300)
    assert hd.infer_plan(ds)["labels"].storage == "int8"  # the -100 pad needs a sign


def test_infer_plan_floats_only_when_asked_and_safe():
    ds = datasets.Dataset.from_dict({"small": [0.5, -2.0], "huge": [1e6, 2.0]})
    assert hd.infer_plan(ds)["small"].storage == "float64"
    plan = hd.infer_plan(ds, floats="fp16")
    assert plan["small"].storage == "float16"
    assert plan["huge"].storage == "float64"  # 1e6 overflows float16
    assert hd.infer_plan(ds, floats="bf16")["huge"] == ColumnDtype(storage="bfloat16", compute="bfloat16")
    with pytest.raises(ValueError, match="floats must be 'float16' or 'bfloat16'"):
        hd.infer_plan(ds, floats="int8")


def test_infer_plan_scalar_columns_and_bool():
    ds = datasets.Dataset.from_dict({"label": [0, 1, 1], "flag": [True, False, True], "year": [1996, 2003, 2024]})
    plan = hd.infer_plan(ds)
    assert plan["label"] == ColumnDtype(storage="bool", compute="int64")
    assert plan["flag"] == ColumnDtype(storage="bool", compute="bool")
    assert plan["year"].storage == "uint16" and plan["year"].pad is None


def test_infer_plan_skips_nulls_and_strings():
    features = datasets.Features({"maybe": datasets.Value("int64"), "text": datasets.Value("string"), "nothing": datasets.Value("null")})
    ds = datasets.Dataset.from_dict({"maybe": [1, None], "text": ["a", "b"], "nothing": [None, None]}, features=features)
    assert len(hd.infer_plan(ds)) == 0


def test_infer_plan_on_an_empty_dataset_keeps_dtypes(tokenized):
    empty = tokenized.select([])
    plan = hd.infer_plan(empty)
    assert plan["input_ids"].storage == "int32"
    assert plan["labels"].storage == "int64"


def test_infer_plan_holds_every_split(tokenized):
    big = tokenized.map(lambda row: {"labels": [70000 if x == 3 else x for x in row["labels"]]})
    plan = hd.infer_plan(datasets.DatasetDict({"train": tokenized, "validation": big}))
    assert plan["labels"].storage == "int32"


def test_derived_needs_matching_lengths():
    ds = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7], [8]], "mask": [[1, 1], [1, 1]]})
    assert hd.infer_plan(ds)["mask"].storage == "bool"


def test_infer_plan_columns_argument(tokenized):
    assert list(hd.infer_plan(tokenized, columns=["labels"])) == ["labels"]
    with pytest.raises(ValueError, match=r"Cannot plan column\(s\) \['tokens'\]"):
        hd.infer_plan(tokenized, columns=["tokens"])


# --- bad plan files: the key that is wrong, and what was expected --------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]", r"A plan must be a JSON object of column entries, e.g. .*; got a JSON list"),
        ('"uint16"', r"got a JSON str"),
        ('{"x": {"storage": "uint8", "pad": "0"}}', r"Column 'x': pad must be a number \(e.g. 0 or -100\); got '0' \(str\)"),
        ('{"x": {"storage": "uint8", "pad": true}}', r"Column 'x': pad must be a number"),
        ('{"x": {"storage": 16}}', r"Column 'x': Unknown dtype 16"),
        ('{"x": [1, 2]}', r"Column 'x': Unknown dtype \[1, 2\]"),
        ('{"x": {"derived": "ones", "lengths_from": 3}}', r"Column 'x': lengths_from must be a column name; got 3"),
        ('{"x": {"storage": "int8", "names": "neg"}}', r"Column 'x': names must be a list of label names"),
        ('{"x": {"storage": "float32", "names": ["a"]}}', r"Column 'x': Label names need an integer storage dtype"),
    ],
)
def test_plan_files_of_the_wrong_shape_say_which_key_is_wrong(text, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        DtypePlan.from_json(text)
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        DtypePlan.from_json(path)


def test_infer_plan_refuses_what_is_not_a_dataset():
    with pytest.raises(TypeError, match=r"infer_plan takes a datasets\.Dataset, DatasetDict, IterableDataset or .*; got list"):
        hd.infer_plan([1, 2])


# --- inference at the ends of the ranges ----------------------------------------------------------


def test_bfloat16_is_proposed_only_where_the_rounding_keeps_every_value_finite():
    """bfloat16's largest finite value is 3.3895e38; 3.39e38 rounds down to it, 3.4e38 rounds up to inf."""
    fits = datasets.Dataset.from_dict({"x": [3.39e38, -1.0]}, features=datasets.Features({"x": datasets.Value("float32")}))
    over = datasets.Dataset.from_dict({"x": [3.4e38, -1.0]}, features=datasets.Features({"x": datasets.Value("float32")}))
    assert hd.infer_plan(fits, floats="bfloat16")["x"].storage == "bfloat16"
    assert hd.infer_plan(over, floats="bfloat16")["x"].storage == "float32"
    hd.compact(fits, hd.infer_plan(fits, floats="bfloat16"))  # what is proposed compacts
    hd.compact(over, hd.infer_plan(over, floats="bfloat16"))
    half = datasets.Dataset.from_dict({"x": [65519.0, 65520.0]})
    assert hd.infer_plan(half.select([0]), floats="float16")["x"].storage == "float16"  # 65519 rounds to 65504
    assert hd.infer_plan(half, floats="float16")["x"].storage == "float64"  # 65520 rounds to inf


def test_class_label_columns_are_planned_with_their_names():
    names = ["negative", "positive"]
    ds = datasets.Dataset.from_dict({"label": [0, 1, 1], "tags": [[0, 2], [1], []]}, features=datasets.Features({
        "label": datasets.ClassLabel(names=names),
        "tags": datasets.List(datasets.ClassLabel(names=[f"t{i}" for i in range(200)])),
    }))
    plan = hd.infer_plan(ds)
    assert plan["label"] == ColumnDtype(storage="int8", compute="int64", names=tuple(names))
    assert plan["tags"] == ColumnDtype(storage="int16", compute="int64", pad=-100, names=tuple(f"t{i}" for i in range(200)))
    assert "2 label names" in str(plan)


# --- a plan is immutable: a new plan is made with |, and update (dict's in-place change) is refused -----


def test_or_makes_a_new_plan_and_leaves_the_old_one_unchanged():
    plan = DtypePlan.from_dict(PLAN_DICT)
    wider = plan | {"input_ids": "int32", "score": {"storage": "float16"}}
    assert isinstance(wider, DtypePlan) and wider["input_ids"] == ColumnDtype(**{**PLAN_DICT["input_ids"], "storage": "int32"})
    assert wider["score"].storage == "float16" and list(wider) == [*PLAN_DICT, "score"]
    assert plan.to_dict() == PLAN_DICT  # unchanged
    assert (plan | {"labels": "int16"})["labels"] == ColumnDtype(storage="int16", compute="int64", pad=-100)  # a bare dtype keeps the pad
    assert (plan | DtypePlan.from_dict({"labels": "int16"}))["labels"] == ColumnDtype(storage="int16")  # an entry replaces it
    with pytest.raises(ValueError, match="a bare dtype keeps the rest of the plan's entry"):
        plan | {"labels": "uint8"}  # -100 does not fit: loud, never dropped
    assert ({"labels": "int16", "extra": "uint8"} | plan).to_dict() == {"labels": PLAN_DICT["labels"], "extra": {"storage": "uint8"},
                                                                       "input_ids": PLAN_DICT["input_ids"],
                                                                       "attention_mask": PLAN_DICT["attention_mask"]}  # right wins
    same = plan
    same |= {"labels": "int16"}
    assert same["labels"].storage == "int16" and plan["labels"].storage == "int8"  # |= rebinds, as with a frozenset


def test_replace_takes_columns_as_keywords():
    plan = DtypePlan.from_dict(PLAN_DICT)
    assert plan.replace(input_ids="uint32", token_type_ids={"derived": "zeros"}) == plan | {
        "input_ids": "uint32", "token_type_ids": {"derived": "zeros"}}
    assert plan.replace() == plan and plan["input_ids"].storage == "uint16"


def test_update_is_refused_with_the_way_to_write_it():
    """dict.update changes in place; plan.update used to return a new plan, so plan.update({...}) silently changed nothing."""
    plan = DtypePlan.from_dict(PLAN_DICT)
    with pytest.raises(TypeError, match=r"A DtypePlan is immutable, so plan\.update\(\.\.\.\) cannot change it; make a new plan "
                                        r"instead: plan = plan \| \{\"input_ids\": \"uint16\"\} or plan = plan\.replace\("):
        plan.update({"input_ids": "uint32"})
    with pytest.raises(TypeError, match="immutable"):
        plan.update(input_ids="uint32")
    assert plan.to_dict() == PLAN_DICT


def test_new_entries_are_checked_and_only_mappings_combine():
    plan = DtypePlan.from_dict(PLAN_DICT)
    with pytest.raises(ValueError, match=r"Column 'x': Unknown dtype 'uint7'"):
        plan | {"x": "uint7"}
    with pytest.raises(ValueError, match=r"Column 'attention_mask' takes its lengths from 'input_ids', which is not a stored column"):
        DtypePlan.from_dict({**PLAN_DICT, "attention_mask": {**PLAN_DICT["attention_mask"], "lengths_from": "input_ids"}}) | {
            "input_ids": {"derived": "zeros"}}
    with pytest.raises(TypeError, match=r"unsupported operand type\(s\) for \|: 'DtypePlan' and 'list'"):
        plan | [("x", "uint8")]


# --- inference reads the rows a dataset shows (its indices mapping), not the table beneath it ---------


def _numbers() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"x": [1, 2, 3, 70000], "ids": [[1, 2], [3], [2, 1], [70000, 5]],
                                       "mask": [[1, 1], [1], [1, 1], [0, 1]], "text": list("abcd")})


@pytest.mark.parametrize("view", [
    lambda ds: ds.select([2, 0, 1]),
    lambda ds: ds.filter(lambda row: row["x"] < 100),
    lambda ds: ds.shuffle(seed=1).filter(lambda row: row["x"] < 100),
    lambda ds: next(part for part in ds.train_test_split(test_size=2, seed=0).values() if 70000 not in part["x"]),
])
def test_infer_plan_reads_only_the_rows_the_dataset_shows(view):
    """70000 lies in the Arrow table beneath every view, but in none of the rows it shows: uint8 holds them all."""
    shown = view(_numbers())
    assert 70000 not in shown["x"] and shown._indices is not None
    plan = hd.infer_plan(shown)
    assert plan["x"].storage == "uint8" and plan["ids"].storage == "uint8"
    assert plan["mask"].derived == "ones"  # the one 0 lies in a row it does not show
    small = hd.compact(shown)
    assert small.features["x"].dtype == "uint8" and small["x"] == shown["x"] and small["ids"] == shown["ids"]


def test_infer_plan_of_views_in_a_datasetdict_and_an_empty_view():
    ds = _numbers()
    plan = hd.infer_plan(datasets.DatasetDict({"train": ds.select([1, 0]), "test": ds.select([2])}))
    assert plan["x"].storage == "uint8" and plan["ids"].storage == "uint8"
    assert hd.infer_plan(ds.select([2, 0]).select([])).to_dict()["x"]["storage"] == "int64"  # no rows: the dtype it has


def test_statistics_of_a_view_equal_those_of_its_rows_when_taken_in_several_batches(tokenized, monkeypatch):
    from hf_dtype import infer

    monkeypatch.setattr(infer, "_TAKE_ROWS", 2)
    view = tokenized.shuffle(seed=5).select([4, 0, 3, 1, 5])
    got = infer.dataset_stats(view)
    expected = infer.table_stats(view.flatten_indices().data.table, None)  # the rows it shows, written out
    for name, stats in expected.items():
        assert (got[name].rows, got[name].values, got[name].minimum, got[name].maximum) == (
            stats.rows, stats.values, stats.minimum, stats.maximum), name
    assert got["attention_mask"].lengths_digest == got["input_ids"].lengths_digest  # masks are still derived
    assert hd.infer_plan(view) == hd.infer_plan(view.flatten_indices())
    assert infer.dataset_stats(tokenized.shuffle(seed=1))["labels"].rows == len(tokenized)  # every row: read as the table
    assert infer.dataset_stats(tokenized.select([3, 0, 3]))["labels"].rows == 3  # a row shown twice counts twice, as compact stores it


# --- the package ------------------------------------------------------------------------------------


def test_the_installed_version_is_the_package_version():
    """pyproject.toml reads the version from hf_dtype.__version__: one place to change it."""
    import importlib.metadata

    assert importlib.metadata.version("hf-dtype") == hd.__version__ == "0.2.0"


def test_resolve_gives_each_derived_column_a_source_or_one_error():
    plan = DtypePlan({"input_ids": "uint16", "labels": "int8", "attention_mask": {"derived": "ones"}})
    assert plan.resolve(["labels", "input_ids"])["attention_mask"].lengths_from == "input_ids"
    assert plan.resolve(["labels"])["attention_mask"].lengths_from == "labels"
    assert plan.resolve([]).unresolved() == ["attention_mask"]  # unchecked: left for the caller
    message = r"Derived column\(s\) \['attention_mask'\] have no list column to take their row lengths from: expected a list column"
    with pytest.raises(ValueError, match=message):
        plan.resolve(["tokens"], check=True)  # a list column the plan does not store is no source
    assert plan.resolve([], check=True, present=["attention_mask"]).unresolved() == ["attention_mask"]  # held as stored
