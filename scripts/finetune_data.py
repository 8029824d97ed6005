"""Data for ``finetune.py``: load and check the raw splits, build the label list, tokenize.

Everything here runs before training and fails with one clear line (``InputError``) on bad input:
a missing file, a column that does not exist, a label outside the label list, an empty split, a row
longer than the model's positions. The loaders (the data paths) are made in ``finetune.py``.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import ClassLabel, Dataset, DatasetDict, load_dataset
from torch.utils.data import DataLoader
from transformers import AutoConfig, AutoTokenizer

import hf_dtype as hd

__all__ = [
    "CONLL_LABELS",
    "DEFAULT_DATA_DIR",
    "Dataloaders",
    "EVAL_SPLITS",
    "InputError",
    "LabelSpace",
    "PreparedData",
    "check_columns",
    "data_columns",
    "label_space",
    "leaf_feature",
    "load_raw_datasets",
    "prepare_data",
    "tokenize_datasets",
    "unknown_token_share",
    "unknown_warning",
]

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
"""The label order of the Hugging Face ``conll2003`` dataset, used when the data's labels are CoNLL's."""

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data" / "conll2003_sample"
"""The committed CoNLL-2003 sample that ``finetune.py`` trains on when no data is given."""

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
UNKNOWN_WARNING_SHARE = 0.2
"""The share of [UNK] among the train tokens above which ``finetune.py`` warns that the model's vocabulary misses the text."""


class InputError(ValueError):
    """Bad input found before training: the message names what was wrong and what was expected."""


# --------------------------------------------------------------------------------------------- loading


def _file_splits(args: Any) -> dict[str, str]:
    files = {"train": args.train_file, "validation": args.validation_file, "test": args.test_file}
    return {split: path for split, path in files.items() if path}


def _has_examples(path: str, builder: str) -> bool:
    """Whether a file holds an example: a row (Parquet, from its footer), a non-blank line (after the header, for CSV / TSV).
    A file that is not Parquet is left to the loader, whose error names it."""
    if builder == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows > 0
        except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
            return True
    needed = 2 if builder == "csv" else 1  # a CSV / TSV header alone holds no example
    found = 0
    with open(path, "rb") as file:
        for line in file:
            found += bool(line.strip())
            if found >= needed:
                return True
    return False


def _load_file(split: str, path: str) -> Dataset:
    """One split from a JSON Lines / JSON / CSV / TSV / Parquet file (TSV read with quoting off, as GLUE's SST-2 needs).

    Parquet written by ``datasets`` keeps its features: a ``ClassLabel`` column gives the label names.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in _BUILDERS:
        raise InputError(f"--{split}_file {path!r}: unknown file type {suffix!r}; expected one of {sorted(_BUILDERS)}.")
    if not os.path.isfile(path):
        raise InputError(f"--{split}_file {path!r} does not exist; expected a {', '.join(sorted(_BUILDERS))} file.")
    if not _has_examples(path, _BUILDERS[suffix]):
        raise InputError(f"--{split}_file {path!r} is empty; expected at least one example.")
    options: dict[str, Any] = {"keep_default_na": False} if suffix in (".csv", ".tsv") else {}  # a sentence "NA" stays text
    if suffix == ".tsv":
        options.update(delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        return load_dataset(_BUILDERS[suffix], data_files={split: path}, split=split, **options)
    except Exception as error:  # datasets raises many types here (DatasetGenerationError, ValueError, StopIteration)
        cause = error.__cause__ or error
        name = "Parquet" if _BUILDERS[suffix] == "parquet" else _BUILDERS[suffix].upper()
        raise InputError(f"--{split}_file {path!r} cannot be read as {name}: {cause}".rstrip(". ") + ".") from None


def load_raw_datasets(args: Any) -> DatasetDict:
    """The raw splits, from ``--dataset_name`` (the Hub or a local folder) or from ``--*_file`` arguments.

    With neither, the committed CoNLL-2003 sample (train and validation). Only ``train``, ``validation`` and ``test`` are kept;
    every split kept must hold at least one example.
    """
    files = _file_splits(args)
    if args.dataset_name and files:
        raise InputError("Give either --dataset_name or --train_file/--validation_file/--test_file, not both.")
    if args.dataset_name:
        try:
            loaded = load_dataset(args.dataset_name, args.dataset_config_name)
        except Exception as error:
            raise InputError(
                f"--dataset_name {args.dataset_name!r} cannot be loaded: {error}".rstrip(". ")
                + "; expected a dataset on the Hub or a local folder of data files."
            ) from None
        raw = DatasetDict({split: loaded[split] for split in SPLITS if split in loaded})
        if not raw:
            raise InputError(f"--dataset_name {args.dataset_name!r} has splits {sorted(loaded)}; expected some of {list(SPLITS)}.")
    else:
        if not files:
            files = {"train": str(DEFAULT_DATA_DIR / "train.jsonl"), "validation": str(DEFAULT_DATA_DIR / "validation.jsonl")}
        for split, path in files.items():  # every path checked before anything is read
            if not os.path.isfile(path):
                raise InputError(f"--{split}_file {path!r} does not exist; expected a {', '.join(sorted(_BUILDERS))} file.")
        raw = DatasetDict({split: _load_file(split, path) for split, path in files.items()})
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise InputError(f"The {split} split is empty; expected at least one example.")
    return raw


# --------------------------------------------------------------------------------------------- columns


def data_columns(args: Any, raw: DatasetDict) -> tuple[str, str | None, str]:
    """``(text column, text pair column or None, label column)``, the defaults filled in from the data."""
    columns = next(iter(raw.values())).column_names
    if args.task == "ner":
        return args.text_column_name or "tokens", None, args.label_column_name or "ner_tags"
    text, pair = args.text_column_name, args.text_pair_column_name
    if text is None:
        text = next((name for name in ("text", "sentence", "sentence1") if name in columns), "text")
        if pair is None and text == "sentence1" and "sentence2" in columns:
            pair = "sentence2"
    return text, pair, args.label_column_name or "label"


def check_columns(raw: DatasetDict, names: Iterable[str | None]) -> None:
    """Every named column is in every split."""
    for split, dataset in raw.items():
        missing = [name for name in names if name is not None and name not in dataset.column_names]
        if missing:
            raise InputError(
                f"The {split} split has no column {missing[0]!r}; its columns are {dataset.column_names} "
                f"(choose them with --text_column_name / --text_pair_column_name / --label_column_name)."
            )


# --------------------------------------------------------------------------------------------- labels


@dataclass
class LabelSpace:
    """The label list and how raw label values (strings, or ids) map to its indices."""

    names: list[str]
    to_id: dict[Any, int] = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def leaf_feature(feature: Any) -> Any:
    """The feature of one value of a column: a ``Value`` or ``ClassLabel``, under any nesting of lists."""
    while hasattr(feature, "feature"):
        feature = feature.feature
    return feature


def _values(dataset: Dataset, column: str, sequence: bool) -> set:
    values = dataset.unique(column) if not sequence else {value for row in dataset[column] for value in row}
    return set(values)


def _is_default_label2id(label2id: Mapping[str, int] | None) -> bool:
    return not label2id or all(name == f"LABEL_{i}" for name, i in label2id.items())


def label_space(raw: DatasetDict, column: str, *, sequence: bool, model_label2id: Mapping[str, int] | None = None,
                source_split: str | None = None) -> LabelSpace:
    """The label list, and a check that every split's labels are in it.

    The list comes from a ``ClassLabel`` feature if the data has one; else from the model's own
    ``label2id`` (a model already fine-tuned on these labels keeps its ids); else from the values
    of ``source_split`` (default: train), in CoNLL's order when they are CoNLL's labels, sorted otherwise.
    """
    source_split = source_split or ("train" if "train" in raw else next(iter(raw)))
    leaf = leaf_feature(raw[source_split].features[column])
    if isinstance(leaf, ClassLabel):
        space = LabelSpace(list(leaf.names), {i: i for i in range(leaf.num_classes)})
        space.to_id.update({name: i for i, name in enumerate(leaf.names)})
    else:
        seen = _values(raw[source_split], column, sequence)
        if None in seen:
            raise InputError(f"The {source_split} split has empty (null) values in label column {column!r}; expected a label in every row.")
        if model_label2id and not _is_default_label2id(model_label2id) and {str(v) for v in seen} <= set(model_label2id):
            names = sorted(model_label2id, key=model_label2id.get)
        elif all(isinstance(v, str) for v in seen) and seen <= set(CONLL_LABELS):
            names = list(CONLL_LABELS)
        else:
            try:
                names = [str(v) for v in sorted(seen)]
            except TypeError:
                raise InputError(f"Label column {column!r} mixes value types ({sorted({type(v).__name__ for v in seen})}); "
                                 "expected all strings or all integers.") from None
        position = {name: i for i, name in enumerate(names)}
        space = LabelSpace(names, {value: position[str(value)] for value in seen | {n for n in names}})
        for value in list(space.to_id):  # ids written as ints in the data map to the names "0", "1", ...
            if isinstance(value, str) and value.lstrip("-").isdigit():
                space.to_id.setdefault(int(value), space.to_id[value])
    for split, dataset in raw.items():
        outside = sorted(map(str, _values(dataset, column, sequence) - set(space.to_id)))
        if outside:
            raise InputError(
                f"The {split} split has label(s) {outside[:5]} in column {column!r} that are not in the label list "
                f"{space.names} (taken from the {source_split} split); expected only those labels."
            )
    return space


# --------------------------------------------------------------------------------------------- tokenization


def _b_to_i(names: Sequence[str]) -> list[int]:
    """For each label, the label of a continuation sub-token: B-X becomes I-X where I-X exists (as run_ner does)."""
    index = {name: i for i, name in enumerate(names)}
    return [index.get("I-" + name[2:], i) if name.startswith("B-") else i for i, name in enumerate(names)]


def tokenize_datasets(raw: DatasetDict, tokenizer: Any, labels: LabelSpace, *, task: str, text_column: str,
                      pair_column: str | None, label_column: str, max_length: int, label_all_tokens: bool = False) -> DatasetDict:
    """Tokenized splits with ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``labels`` only.

    NER: the first sub-token of each word carries the word's label and the others -100 (ignored by
    the loss and by seqeval), or all of them with ``label_all_tokens`` (B- turned into I-).
    """
    to_id = labels.to_id
    if task == "ner":
        if not getattr(tokenizer, "is_fast", False):
            raise InputError(f"NER needs a fast tokenizer (for word ids); {type(tokenizer).__name__} is not one.")
        continuation = _b_to_i(labels.names)

        def tokenize(examples: dict[str, list]) -> dict[str, list]:
            encoded = tokenizer(examples[text_column], truncation=True, max_length=max_length, is_split_into_words=True)
            all_labels = []
            for i, word_labels in enumerate(examples[label_column]):
                previous, row = None, []
                for word in encoded.word_ids(batch_index=i):
                    if word is None:
                        row.append(-100)
                    elif word != previous:
                        row.append(to_id[word_labels[word]])
                    else:
                        row.append(continuation[to_id[word_labels[word]]] if label_all_tokens else -100)
                    previous = word
                all_labels.append(row)
            encoded["labels"] = all_labels
            return encoded
    else:

        def tokenize(examples: dict[str, list]) -> dict[str, list]:
            texts = (examples[text_column],) if pair_column is None else (examples[text_column], examples[pair_column])
            encoded = tokenizer(*texts, truncation=True, max_length=max_length)
            encoded["labels"] = [to_id[value] for value in examples[label_column]]
            return encoded

    tokenized = DatasetDict({
        split: dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, desc=f"Tokenizing {split}")
        for split, dataset in raw.items()
    })
    for split, dataset in tokenized.items():
        if task == "ner" and not any(label != -100 for row in dataset["labels"] for label in row):
            raise InputError(f"The {split} split has no labelled token after tokenization; expected words with labels.")
    return tokenized


def unknown_token_share(dataset: Dataset, tokenizer: Any) -> float | None:
    """The share of the unknown token among the tokens of ``dataset``'s ``input_ids`` that the text made (the other special
    tokens left out), or None if the tokenizer has no unknown token or the split no token.

    A model cannot tell the words that became [UNK] apart: with MiniLM's English vocabulary, 61% of the characters of the
    People's Daily NER sample are [UNK] (57% of Weibo NER's), and NER fine-tuned on them scores an entity F1 near 0.
    """
    unknown = tokenizer.unk_token_id
    if unknown is None:
        return None
    ids = pc.list_flatten(dataset.data.column("input_ids")).to_numpy()
    made = ids[~np.isin(ids, [i for i in tokenizer.all_special_ids if i != unknown])]
    return float((made == unknown).mean()) if len(made) else None


# --------------------------------------------------------------------------------------------- the whole preparation


@dataclass
class PreparedData:
    """The tokenized splits and what was learnt while making them."""

    tokenized: DatasetDict
    labels: LabelSpace
    tokenizer: Any
    unknown_share: float | None = None  # the share of [UNK] among the tokens of the first split (train when training)


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer; a path that is not a model fails here, before any data work."""
    expected = "expected a folder with config.json, weights and a tokenizer (as save_pretrained writes) or a Hub model id"
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise InputError(f"--model_name_or_path {path!r} is not a model: it holds no weights ({', '.join(WEIGHT_FILES)}); {expected}.")
    try:
        AutoConfig.from_pretrained(path)
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--model_name_or_path {path!r} is not a model ({reason}); {expected}.") from None


def prepare_data(args: argparse.Namespace) -> PreparedData:
    """Load, check and tokenize the data; every check of the input runs here, before training."""
    tokenizer = load_tokenizer(args.model_name_or_path)
    raw = load_raw_datasets(args)
    if args.eval_only:
        raw = DatasetDict({split: part for split, part in raw.items() if split != "train"})
        if not raw:
            raise InputError("--eval_only needs a validation or test split; only a train split was given.")
    elif "train" not in raw:
        raise InputError(f"Training needs a train split; the data has {sorted(raw)} (give --train_file, or --eval_only).")
    text, pair, label = data_columns(args, raw)
    check_columns(raw, (text, pair, label))
    config = AutoConfig.from_pretrained(args.model_name_or_path)
    model_label2id = getattr(config, "label2id", None)
    labels = label_space(raw, label, sequence=args.task == "ner", model_label2id=model_label2id)
    tokenized = tokenize_datasets(raw, tokenizer, labels, task=args.task, text_column=text, pair_column=pair, label_column=label,
                                  max_length=args.max_length, label_all_tokens=args.label_all_tokens)
    check_positions(args, tokenized, getattr(config, "max_position_embeddings", None))
    return PreparedData(tokenized, labels, tokenizer, unknown_token_share(next(iter(tokenized.values())), tokenizer))


def check_positions(args: argparse.Namespace, tokenized: DatasetDict, positions: int | None) -> None:
    """Every tokenized row fits the model's positions: a longer one would fail inside the model's embeddings, mid-run."""
    if positions is None:
        return
    for split, dataset in tokenized.items():
        longest = max(len(ids) for ids in dataset["input_ids"]) if len(dataset) else 0
        if longest > positions:
            raise InputError(f"The {split} split has rows of {longest} tokens, longer than the {positions} positions of "
                             f"{args.model_name_or_path} (max_position_embeddings); expected --max_length {positions} or less.")


def unknown_warning(args: argparse.Namespace, data: PreparedData) -> str | None:
    """One line when more than ``UNKNOWN_WARNING_SHARE`` of the tokens are [UNK]: the model sees one token for all of them,
    as MiniLM's English vocabulary sees most Chinese characters."""
    if data.unknown_share is None or data.unknown_share <= UNKNOWN_WARNING_SHARE:
        return None
    split = next(iter(data.tokenized))
    return (f"warning: {data.unknown_share:.1%} of the {split} tokens are {data.tokenizer.unk_token} (unknown to the tokenizer of "
            f"{args.model_name_or_path}), so the model cannot tell them apart; fine-tune a model whose vocabulary covers the text, "
            "e.g. one pretrained on it with scripts/pretrain.py --objective mlm.")


@dataclass
class Dataloaders:
    """The loaders of one data path, and how its batches become the model's inputs."""

    train: DataLoader | None
    eval: dict[str, DataLoader]
    train_bytes: int | None  # Arrow bytes of the train split as this path stores it
    plan: hd.DtypePlan | None = None
    widen_on_device: bool = False

    def widen(self, batch: Mapping[str, Any]) -> Mapping[str, Any]:
        """The batch in the model's dtypes: ``plan.widen`` for batches served in storage dtypes, else as is."""
        return self.plan.widen(batch) if self.widen_on_device else batch

