import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import datasets.fingerprint
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hf_dtype as hd
import hf_dtype.cli as cli
from hf_dtype.cli import main
from hf_dtype.dtypes import DTYPE_NAMES


@pytest.fixture()
def saved(tokenized, tmp_path):
    path = tmp_path / "tokenized"
    tokenized.save_to_disk(str(path))
    return path


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _snapshot(root):
    """Every path under ``root`` (links not followed) with what it holds: equal snapshots mean nothing was touched."""
    snapshot = {}
    for folder, names, files in os.walk(root):
        for name in [*names, *files]:
            path = Path(folder, name)
            if path.is_symlink():
                snapshot[str(path.relative_to(root))] = f"link to {os.readlink(path)}"
            elif path.is_dir():
                snapshot[str(path.relative_to(root))] = "folder"
            else:
                snapshot[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return snapshot


def _one_line(capsys):
    """The error a command printed: one line on stderr, no traceback."""
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and captured.out == "", captured.err
    return captured.err


_APART = "expected an OUT folder outside IN that does not contain it (IN is never modified)"
_REMEDY = "--overwrite replaces only a folder that save_to_disk wrote, or an empty one: pick another OUT or remove it by hand."


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


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


def test_existing_output_needs_overwrite(tokenized, saved, tmp_path, capsys):
    out = tmp_path / "small"
    tokenized.save_to_disk(str(out))
    before, source = _snapshot(out), _snapshot(saved)
    assert main(["compact", str(saved), str(out)]) == 2
    assert capsys.readouterr().err == f"hf-dtype compact: error: {out} exists; pass --overwrite to replace it.\n"
    assert _snapshot(out) == before
    assert main(["compact", str(saved), str(out), "--overwrite"]) == 0
    assert hd.plan_of(datasets.load_from_disk(str(out))) is not None and _snapshot(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small", "tokenized"]
    assert _snapshot(saved) == source


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


def test_output_inside_input_is_refused(saved, tmp_path, capsys):
    before = _snapshot(tmp_path)
    assert main(["compact", str(saved), str(saved / "sub")]) == 2
    assert capsys.readouterr().err == (f"hf-dtype compact: error: OUT {saved / 'sub'} lies inside IN {saved}; {_APART}.\n")
    assert _snapshot(tmp_path) == before



@pytest.fixture()
def data_folder(tokenized, tmp_path, monkeypatch):
    """``tmp_path/data`` holding IN (``tok``), another dataset and a file of the user's; the working folder is ``tmp_path``."""
    tokenized.save_to_disk(str(tmp_path / "data" / "tok"))
    tokenized.select([0]).save_to_disk(str(tmp_path / "data" / "other"))
    (tmp_path / "data" / "notes.txt").write_text("the user's")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("cwd", "source", "out"),
    [("", "data/tok", "data"), ("", "data/tok", "."), ("data", "tok", ".."), ("data", "tok", "."), ("", "data/tok", "/"),
     ("", "data/tok", "data/../data/")],
)
def test_out_that_contains_in_is_refused(data_folder, capsys, cwd, source, out):
    before = _snapshot(data_folder.parent)
    os.chdir(data_folder.parent / cwd)
    assert main(["compact", source, out, "--overwrite"]) == 2
    assert _one_line(capsys) == f"hf-dtype compact: error: OUT {out} contains IN {source}, which replacing OUT would delete; {_APART}.\n"
    assert _snapshot(data_folder.parent) == before


@pytest.mark.parametrize("out", ["data/tok", "data/tok/", "./data/other/../tok", "{tmp}/data/tok", "link"])
def test_out_that_is_in_is_refused(data_folder, capsys, out):
    (data_folder.parent / "link").symlink_to(data_folder / "tok")
    out = out.format(tmp=data_folder.parent)
    before = _snapshot(data_folder.parent)
    assert main(["compact", "data/tok", out, "--overwrite"]) == 2
    assert _one_line(capsys) == f"hf-dtype compact: error: OUT {out} is IN data/tok; {_APART}.\n"
    assert _snapshot(data_folder.parent) == before


def test_symlinks_are_followed_both_ways(data_folder, capsys):
    (data_folder.parent / "to-data").symlink_to(data_folder)
    before = _snapshot(data_folder.parent)
    assert main(["compact", "data/tok", "to-data", "--overwrite"]) == 2
    assert "error: OUT to-data contains IN data/tok, which replacing OUT would delete" in _one_line(capsys)
    assert main(["compact", "data/tok", "to-data/tok/small"]) == 2
    assert "error: OUT to-data/tok/small lies inside IN data/tok" in _one_line(capsys)
    # IN reached through a link inside OUT: replacing OUT would delete the link IN is named by
    (data_folder.parent / "links").mkdir()
    (data_folder.parent / "links" / "tok").symlink_to(data_folder / "tok")
    before = _snapshot(data_folder.parent)
    assert main(["compact", "links/tok", "links", "--overwrite"]) == 2
    assert "error: OUT links contains IN links/tok, which replacing OUT would delete" in _one_line(capsys)
    assert _snapshot(data_folder.parent) == before


def test_out_that_is_the_working_folder_is_refused(tokenized, data_folder, capsys):
    work = data_folder.parent / "work"
    tokenized.save_to_disk(str(work))  # a dataset folder, which --overwrite would otherwise replace
    os.chdir(work)
    before = _snapshot(data_folder.parent)
    assert main(["compact", "../data/tok", ".", "--overwrite"]) == 2
    assert _one_line(capsys) == (f"hf-dtype compact: error: OUT . is or contains the working folder {work}; expected an OUT folder "
                                 "that does not contain it, e.g. tok-compact.\n")
    assert _snapshot(data_folder.parent) == before


def _write_user_files(out, names) -> None:
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(f"the user's {name}")


def _a_dataset_and(*names):
    def make(out, dataset):
        dataset.save_to_disk(str(out))
        _write_user_files(out, names)
    return make


def _a_dataset_dict_and(*names):
    def make(out, dataset):
        datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(out))
        _write_user_files(out, names)
    return make


def _files(*names):
    def make(out, dataset):
        _write_user_files(out, names)
    return make


@pytest.mark.parametrize(
    ("make", "listed"),
    [
        (_files("notes.txt", "src/main.py"), "notes.txt, src/"),
        (_files(*"abcdefg"), "a, b, c, d, e and 2 more"),
        (_files("state.json"), "state.json"),  # not a dataset without its dataset_info.json
        (_files("state.json", "dataset_info.json", "model.safetensors"), "model.safetensors"),
        (_a_dataset_and("README.md"), "README.md"),
        (_a_dataset_and(".git/HEAD"), ".git/"),
        (_a_dataset_and("data-00000-of-00001.arrow.bak"), "data-00000-of-00001.arrow.bak"),
        (_a_dataset_dict_and("train/notes.txt"), "train/notes.txt"),
        (_a_dataset_dict_and("validation/state.json", "validation/dataset_info.json"), "validation/"),  # not a listed split
        (_a_dataset_dict_and("run.log"), "run.log"),
    ],
)
def test_out_holding_what_save_to_disk_did_not_write_is_refused(tokenized, saved, tmp_path, capsys, make, listed):
    out = tmp_path / "out"
    out.mkdir()
    make(out, tokenized.select([0, 1]))
    before = _snapshot(tmp_path)
    for overwrite in ([], ["--overwrite"]):
        assert main(["compact", str(saved), str(out), *overwrite]) == 2
        assert _one_line(capsys) == (f"hf-dtype compact: error: OUT {out} holds what save_to_disk did not write, which replacing "
                                     f"it would delete: {listed}; {_REMEDY}\n")
        assert _snapshot(tmp_path) == before


def test_out_that_is_a_file_is_refused(saved, tmp_path, capsys):
    (tmp_path / "small").write_bytes(b"the user's")
    before = _snapshot(tmp_path)
    assert main(["compact", str(saved), str(tmp_path / "small"), "--overwrite"]) == 2
    assert _one_line(capsys) == f"hf-dtype compact: error: OUT {tmp_path / 'small'} is a file, not a dataset folder; {_REMEDY}\n"
    assert _snapshot(tmp_path) == before


def _empty(out, dataset):
    out.mkdir()


def _dataset_with_cache_files(out, dataset):
    dataset.save_to_disk(str(out), num_shards=2)
    (out / "cache-0123456789abcdef.arrow").write_bytes(b"map's cache")
    (out / "cache-0123456789abcdef_00000_of_00002.arrow").write_bytes(b"map's cache")


@pytest.mark.parametrize("make", [_empty, _a_dataset_and(), _dataset_with_cache_files, _a_dataset_dict_and()])
def test_overwrite_replaces_an_empty_folder_or_one_save_to_disk_wrote(tokenized, saved, tmp_path, make):
    out = tmp_path / "out"
    make(out, tokenized.select([0, 1]))
    source = _snapshot(saved)
    assert main(["compact", str(saved), str(out), "--overwrite"]) == 0
    written = datasets.load_from_disk(str(out))
    assert len(written) == len(tokenized) and hd.plan_of(written)["input_ids"].storage == "uint16"
    assert sorted(p.name for p in out.iterdir()) == ["data-00000-of-00001.arrow", "dataset_info.json", "state.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tokenized"]
    assert _snapshot(saved) == source


def test_out_under_a_file_is_refused_before_anything_is_written(saved, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("the user's")
    before = _snapshot(tmp_path)
    for out in (tmp_path / "notes.txt" / "small", tmp_path / "notes.txt" / "deeper" / "small"):
        assert main(["compact", str(saved), str(out)]) == 2
        assert _one_line(capsys) == (f"hf-dtype compact: error: cannot write OUT {out}: {tmp_path / 'notes.txt'} is a file, "
                                     "not a folder; expected OUT in a folder.\n")
        assert _snapshot(tmp_path) == before


def _read_only(monkeypatch, folder):
    """``mkdir`` in ``folder`` fails as in a read-only folder (chmod does not stop root, who runs the tests here)."""
    mkdir = Path.mkdir

    def refuse(path, *args, **kwargs):
        if path.parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)


@pytest.mark.parametrize("name", ["small", "new/deeper/small"])
def test_a_read_only_place_is_one_line_and_nothing_is_written(saved, tmp_path, monkeypatch, capsys, name):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    before = _snapshot(tmp_path)
    _read_only(monkeypatch, read_only)
    out = read_only / name
    assert main(["compact", str(saved), str(out)]) == 2
    refused = read_only / (f".small.{os.getpid()}.partial" if name == "small" else "new")
    assert _one_line(capsys) == (f"hf-dtype compact: error: cannot write OUT {out} (Permission denied: {refused}); expected a "
                                 "place this user can write, with room for the dataset. Nothing was written.\n")
    assert _snapshot(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="chmod does not stop root from writing")
def test_a_read_only_folder_is_one_line_and_nothing_is_written(saved, tmp_path, capsys):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    before = _snapshot(tmp_path)
    read_only.chmod(0o555)
    try:
        assert main(["compact", str(saved), str(read_only / "small")]) == 2
        assert "Permission denied" in _one_line(capsys)
    finally:
        read_only.chmod(0o755)
    assert _snapshot(tmp_path) == before


def test_a_full_disk_while_saving_keeps_the_old_out(tokenized, saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "small"
    tokenized.select([0]).save_to_disk(str(out))
    before = _snapshot(tmp_path)
    save_to_disk = datasets.Dataset.save_to_disk

    def disk_full(self, path, **kwargs):
        save_to_disk(self, path, **kwargs)  # written, then the last write fails
        raise OSError(28, "No space left on device", str(Path(path) / "state.json"))

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", disk_full)
    assert main(["compact", str(saved), str(out), "--overwrite"]) == 2
    written = tmp_path / f".small.{os.getpid()}.partial" / "small" / "state.json"
    assert _one_line(capsys) == (f"hf-dtype compact: error: cannot write OUT {out} (No space left on device: {written}); expected "
                                 "a place this user can write, with room for the dataset. Nothing was written.\n")
    assert _snapshot(tmp_path) == before


def test_a_failed_rename_into_place_keeps_the_old_out(tokenized, saved, tmp_path, monkeypatch, capsys):
    out = tmp_path / "small"
    tokenized.select([0]).save_to_disk(str(out))
    before = _snapshot(tmp_path)
    replace = os.replace

    def refuse(source, destination):
        if Path(destination) == out and Path(source).name == "small":  # the new OUT, not the old one put back
            raise PermissionError(13, "Permission denied", str(source), None, str(destination))
        replace(source, destination)

    monkeypatch.setattr(os, "replace", refuse)
    assert main(["compact", str(saved), str(out), "--overwrite"]) == 2
    assert "(Permission denied: " in _one_line(capsys)
    assert _snapshot(tmp_path) == before


def test_an_unreadable_input_is_one_line(tokenized, tmp_path, monkeypatch, capsys):
    source = tmp_path / "rows.jsonl"
    tokenized.to_json(source)
    before = _snapshot(tmp_path)
    path_open = Path.open

    def refuse(path, *args, **kwargs):
        if path == source:
            raise PermissionError(13, "Permission denied", str(path))
        return path_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    message = f"error: {source}: cannot read it (Permission denied: {source}); expected a file or folder this user can read.\n"
    assert main(["inspect", str(source)]) == 2
    assert _one_line(capsys) == f"hf-dtype inspect: {message}"
    assert main(["compact", str(source), str(tmp_path / "small")]) == 2
    assert _one_line(capsys) == f"hf-dtype compact: {message}"
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before

def test_console_script_is_installed():
    import shutil
    import subprocess

    executable = shutil.which("hf-dtype")
    assert executable, "pip install should put hf-dtype on PATH"
    result = subprocess.run([executable, "--help"], capture_output=True, text=True, check=True)
    assert "inspect" in result.stdout and "compact" in result.stdout


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("x.jsonl", "", "JSON Lines"),
        ("x.jsonl", "\n\n", "JSON Lines"),
        ("x.json", "", "JSON (a list of objects, or one object per line)"),
        ("x.json", "[ ]\n", "JSON (a list of objects, or one object per line)"),
        ("x.csv", "input_ids,labels\n", "CSV after its header line"),
        ("x.parquet", None, "Parquet"),
    ],
)
def test_an_empty_file_is_reported_as_empty(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    if content is None:
        pq.write_table(pa.table({"input_ids": pa.array([], pa.list_(pa.int32()))}), path)
    else:
        path.write_text(content)
    message = f"error: {path} is empty; expected at least one row of {expected}.\n"
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err == f"hf-dtype inspect: {message}"
    assert main(["compact", str(path), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"hf-dtype compact: {message}"
    assert not (tmp_path / "out").exists()


def test_a_run_removes_the_staging_folders_of_killed_runs(saved, tmp_path):
    assert main(["compact", str(saved), str(tmp_path / "small")]) == 0
    dead = _dead_pid()
    stale = [tmp_path / f".small.{dead}.partial", tmp_path / f".small.{dead}.old"]
    for folder in stale:
        (folder / "tmp" / "hf_datasets-x").mkdir(parents=True)
        (folder / "tmp" / "hf_datasets-x" / "cache-0.arrow").write_bytes(b"half")
    # pid 1 is always running; the others are not staging folders of this OUT
    kept = [tmp_path / ".small.1.partial", tmp_path / f".other.{dead}.partial", tmp_path / f".small.{dead}.partial.bak"]
    for folder in kept:
        folder.mkdir()
    assert main(["compact", str(saved), str(tmp_path / "small"), "--overwrite"]) == 0
    assert not any(folder.exists() for folder in stale)
    assert all(folder.exists() for folder in kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["small", "tokenized", *(folder.name for folder in kept)])


def test_a_run_killed_while_replacing_out_gets_the_old_out_back(tokenized, saved, tmp_path, capsys):
    dead = _dead_pid()
    tokenized.save_to_disk(str(tmp_path / f".small.{dead}.old"))  # renamed aside, the new one not yet in place
    before = _digest(tmp_path / f".small.{dead}.old")
    (tmp_path / f".small.{dead}.partial").mkdir()
    assert main(["compact", str(saved), str(tmp_path / "small")]) == 2
    assert capsys.readouterr().err == f"hf-dtype compact: error: {tmp_path / 'small'} exists; pass --overwrite to replace it.\n"
    assert _digest(tmp_path / "small") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small", "tokenized"]


_PAUSED_RUN = """
import pathlib, sys, time
import hf_dtype.cli as cli

real = cli.compact

def paused(*args, **kwargs):  # compacted into datasets' temporary files, not saved yet
    result = real(*args, **kwargs)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(60)
    return result

cli.compact = paused
sys.exit(cli.main(sys.argv[2:]))
"""


def test_a_killed_compact_leaves_nothing_outside_its_staging_folder(saved, tmp_path, monkeypatch):
    temp, out, compacted = tmp_path / "temp", tmp_path / "small", tmp_path / "compacted"
    temp.mkdir()
    process = subprocess.Popen([sys.executable, "-c", _PAUSED_RUN, str(compacted), "compact", str(saved), str(out)],
                               env={**os.environ, "TMPDIR": str(temp)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not compacted.exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the run did not reach its pause"
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no finally, no atexit
        process.communicate()
    staging = tmp_path / f".small.{process.pid}.partial"
    cache_dirs = list((staging / "tmp").glob("hf_datasets-*"))
    assert len(cache_dirs) == 1 and list(cache_dirs[0].glob("cache-*.arrow"))
    assert list(temp.iterdir()) == [] and not out.exists()

    monkeypatch.setenv("TMPDIR", str(temp))
    assert main(["compact", str(saved), str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compacted", "small", "temp", "tokenized"]
    assert list(temp.iterdir()) == []
    assert hd.plan_of(datasets.load_from_disk(str(out)))["input_ids"].storage == "uint16"


def test_datasets_temporary_files_live_in_the_staging_folder(saved, tmp_path, monkeypatch):
    seen = []

    def spy(*args, **kwargs):
        result = compact(*args, **kwargs)
        seen.append((datasets.fingerprint.get_temporary_cache_files_directory(), tempfile.gettempdir(), result.cache_files))
        return result

    compact = cli.compact
    monkeypatch.setattr(cli, "compact", spy)
    def state():
        fingerprint = datasets.fingerprint
        return fingerprint._TEMP_DIR_FOR_TEMP_CACHE_FILES, tempfile.tempdir, os.environ.get("TMPDIR"), fingerprint.is_caching_enabled()

    before = state()
    # datasets makes its temporary folder once per process: each run must still get its own, in its staging folder
    for name in ("one", "two"):
        assert main(["compact", str(saved), str(tmp_path / name)]) == 0
    for (cache_dir, temp, cache_files), name in zip(seen, ("one", "two"), strict=True):
        staging_temp = tmp_path / f".{name}.{os.getpid()}.partial" / "tmp"
        assert Path(cache_dir).parent == staging_temp and Path(cache_dir).name.startswith("hf_datasets-")
        assert temp == str(staging_temp)
        assert cache_files and all(Path(file["filename"]).parent == Path(cache_dir) for file in cache_files)
    assert state() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "tokenized", "two"]


def test_out_has_the_mode_save_to_disk_gives(tokenized, saved, tmp_path):
    umask = os.umask(0o027)
    try:
        tokenized.save_to_disk(str(tmp_path / "reference"))
        assert main(["compact", str(saved), str(tmp_path / "small")]) == 0
        assert main(["compact", str(saved), str(tmp_path / "replaced")]) == 0
        assert main(["compact", str(saved), str(tmp_path / "replaced"), "--overwrite"]) == 0
    finally:
        os.umask(umask)
    reference = tmp_path / "reference"
    assert _mode(reference) == 0o750
    for out in (tmp_path / "small", tmp_path / "replaced"):
        assert _mode(out) == _mode(reference)
        assert {_mode(file) for file in out.iterdir()} == {_mode(file) for file in reference.iterdir()} == {0o640}


def test_compact_prints_the_plan_and_out_as_given(saved, tokenized, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    datasets.enable_progress_bars()
    try:
        assert main(["compact", "tokenized", "small"]) == 0
        assert datasets.is_progress_bar_enabled(), "the command puts the progress bars back as it found them"
    finally:
        datasets.disable_progress_bars()
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[:-1] == str(hd.plan_of(datasets.load_from_disk("small"))).splitlines()
    before, after = tokenized.data.nbytes, hd.compact(tokenized).data.nbytes
    assert lines[-1] == f"wrote small: {after} B of Arrow data, {after / before:.2f}x of {before / 1000:.2f} kB"
    assert captured.err == ""


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # the text, unwrapped


def test_help_says_what_each_command_does_and_takes(capsys):
    text = _help(capsys)
    assert "Per-column dtypes for Hugging Face datasets: inspect" in text
    assert "inspect per column: dtype, bytes, value range, proposed dtype, bytes saved" in text
    assert "compact write the compact dataset (OUT appears whole or not at all)" in text
    text = _help(capsys, "inspect")
    assert "Print, per column, its stored dtype, bytes and value range, the dtype that infer_plan proposes" in text
    assert "PATH a save_to_disk folder (Dataset or DatasetDict) or a .parquet/.jsonl/.json/.csv file; never modified" in text
    text = _help(capsys, "compact")
    assert ("IN a save_to_disk folder (a Dataset or a DatasetDict) or a .parquet, .jsonl, .json or .csv file; "
            "it is never modified.") in text
    assert "OUT a save_to_disk folder, written whole or not at all" in text
    assert f"repeatable. Dtypes: {', '.join(DTYPE_NAMES)} --exact" in text
    assert "a plan JSON file (default: auto)" in text and "(default: one)" in text
    assert "It must not be IN, lie inside IN, or contain IN or the working folder." in text
    assert ("An existing OUT is replaced only with --overwrite, and only if it is empty or holds what save_to_disk wrote "
            "(a Dataset or DatasetDict folder); one that holds anything else is refused, listing what would be deleted: "
            "pick another OUT or remove it by hand.") in text
    assert ("--overwrite replace an existing OUT that is empty or that save_to_disk wrote; an OUT that holds anything else "
            "is always refused (default: refuse any existing OUT)") in text
