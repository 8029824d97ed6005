import hashlib
import json
import re

import datasets
import pytest

import hf_dtype as hd
from hf_dtype.cli import main


@pytest.fixture()
def saved(tokenized, tmp_path):
    path = tmp_path / "tokenized"
    tokenized.save_to_disk(str(path))
    return path


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_inspect_prints_a_table(saved, capsys):
    assert main(["inspect", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "input_ids" in out and "uint16" in out and "derived:ones" in out and "total" in out


def test_inspect_json(saved, capsys, tokenized):
    assert main(["inspect", str(saved), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    columns = {row["column"]: row for row in report["columns"]}
    assert columns["labels"]["dtype"] == "int64" and columns["labels"]["proposed"] == "int8"
    assert columns["labels"]["min"] == -100
    assert report["total_bytes"] == tokenized.data.nbytes
    assert report["proposed_bytes"] == hd.compact(tokenized).data.nbytes
    assert report["plan"] == hd.infer_plan(tokenized).to_dict()


def test_inspect_parquet_file(tokenized, tmp_path, capsys):
    tokenized.to_parquet(tmp_path / "t.parquet")
    assert main(["inspect", str(tmp_path / "t.parquet"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == {"all": len(tokenized)}


def test_compact_writes_the_dataset_and_leaves_the_input_alone(saved, tmp_path, tokenized):
    before = _digest(saved)
    out = tmp_path / "small"
    assert main(["compact", str(saved), str(out), "--column", "labels=int16:int32"]) == 0
    assert _digest(saved) == before
    small = datasets.load_from_disk(str(out))
    plan = hd.plan_of(small)
    assert plan["labels"].storage == "int16" and plan["labels"].served_dtype == "int32" and plan["labels"].pad == -100
    assert plan["input_ids"].storage == "uint16"
    assert small.with_format("hf_dtype")[0]["labels"].tolist() == tokenized[0]["labels"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_compact_with_a_plan_file_and_a_datasetdict(tokenized, tmp_path):
    datasets.DatasetDict({"train": tokenized, "test": tokenized.select([0])}).save_to_disk(str(tmp_path / "dd"))
    plan_file = tmp_path / "plan.json"
    hd.DtypePlan.from_dict({"input_ids": {"storage": "uint32", "pad": 0}}).to_json(plan_file)
    assert main(["compact", str(tmp_path / "dd"), str(tmp_path / "out"), "--plan", str(plan_file)]) == 0
    loaded = datasets.load_from_disk(str(tmp_path / "out"))
    assert set(loaded) == {"train", "test"}
    assert hd.plan_of(loaded).to_dict() == {"input_ids": {"storage": "uint32", "pad": 0}}


def test_existing_output_needs_overwrite(saved, tmp_path, capsys):
    out = tmp_path / "small"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["compact", str(saved), str(out)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["compact", str(saved), str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and hd.plan_of(datasets.load_from_disk(str(out))) is not None


def test_a_failed_cast_leaves_no_output(saved, tmp_path, capsys):
    out = tmp_path / "small"
    assert main(["compact", str(saved), str(out), "--column", "input_ids=uint8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Column 'input_ids', row 0: value 7327 does not fit uint8" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenized"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--column", "labels"], r"expected NAME=STORAGE\[:COMPUTE\]"),
        (["--column", "labels=uint12"], "Unknown dtype 'uint12'"),
        (["--column", "nope=int8"], r"names column\(s\) \['nope'\]"),
        (["--plan", "missing.json"], "Plan file 'missing.json' does not exist"),
    ],
)
def test_bad_arguments_exit_with_one_line(saved, tmp_path, capsys, args, match):
    assert main(["compact", str(saved), str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(match, err)


def test_missing_and_corrupted_inputs(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_info.json").write_text("{ not json")
    (broken / "state.json").write_text("garbage")
    assert main(["inspect", str(broken)]) == 2
    assert "cannot read a dataset there" in capsys.readouterr().err
    (tmp_path / "data.txt").write_text("hello")
    assert main(["inspect", str(tmp_path / "data.txt")]) == 2
    assert "unknown file type '.txt'" in capsys.readouterr().err


def test_output_inside_input_is_refused(saved, capsys):
    assert main(["compact", str(saved), str(saved / "sub")]) == 2
    assert "must lie outside IN" in capsys.readouterr().err


def test_console_script_is_installed():
    import shutil
    import subprocess

    executable = shutil.which("hf-dtype")
    assert executable, "pip install should put hf-dtype on PATH"
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    assert "inspect" in result.stdout and "compact" in result.stdout
