"""``DtypeTrainer``: the same losses as a stock ``Trainer`` with ``DataCollatorForTokenClassification``, resume, streams.

A 1-layer BERT of width 32 (built from a config, dropout off where losses are compared across data paths: a stock
``DataLoader`` draws its workers' seed from torch's global generator at every epoch, which shifts dropout; hd's
loader has its own generator), on the 40 first sentences of the committed CoNLL-2003 sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, DataCollatorForTokenClassification, Trainer, TrainingArguments

import hf_dtype as hd
from hf_dtype.fetch import BatchFetcher

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(scope="module")
def ner(tokenizer) -> datasets.Dataset:
    rows = [json.loads(line) for line in (ROOT / "tests/data/conll2003_sample/train.jsonl").read_text().splitlines()[:40]]
    tags = [[NAMES.index(t) for t in r["ner_tags"]] for r in rows]
    raw = datasets.Dataset.from_dict({"tokens": [r["tokens"] for r in rows], "tags": tags})

    def encode(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=48)
        encoded["labels"] = [[-100 if w is None or w == p else tags[w] for p, w in zip([None, *encoded.word_ids(i)], encoded.word_ids(i),
                                                                                     strict=False)]
                             for i, tags in enumerate(batch["tags"])]
        return encoded

    return raw.map(encode, batched=True, remove_columns=["tokens", "tags"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _model(dropout: float) -> BertForTokenClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=9)
    return BertForTokenClassification(config)


def _args(output: Path, **extra) -> TrainingArguments:
    options = dict(output_dir=str(output), per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=2,
                   learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], seed=7, use_cpu=True, disable_tqdm=True)
    return TrainingArguments(**{**options, **extra})


def _losses(trainer: Trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_the_same_losses_as_a_stock_trainer_with_the_token_classification_collator(ner, tokenizer, tmp_path):
    stock = Trainer(model=_model(0.0), args=_args(tmp_path / "stock"), train_dataset=ner, eval_dataset=ner,
                    data_collator=DataCollatorForTokenClassification(tokenizer))
    stock.train()
    small = hd.compact(ner, vocab_size=tokenizer.vocab_size)
    fast = hd.DtypeTrainer(model=_model(0.0), args=_args(tmp_path / "fast"), train_dataset=small, eval_dataset=small)
    fast.train()
    assert len(_losses(fast)) == 10 and _losses(fast) == _losses(stock)  # same rows, same order, same padding
    assert fast.evaluate()["eval_loss"] == stock.evaluate()["eval_loss"]
    np.testing.assert_array_equal(fast.predict(small).predictions, stock.predict(ner).predictions)


def test_a_dataset_without_a_plan_is_batched_with_an_inferred_one(ner, tokenizer, tmp_path):
    """A tokenized dataset never compacted: the plan is inferred (masks kept as stored), not a transformers traceback."""
    assert hd.plan_of(ner) is None
    plain = hd.DtypeTrainer(model=_model(0.0), args=_args(tmp_path / "plain", max_steps=4), train_dataset=ner, processing_class=tokenizer)
    plain.train()
    small = hd.DtypeTrainer(model=_model(0.0), args=_args(tmp_path / "small", max_steps=4), train_dataset=hd.compact(ner))
    small.train()
    assert _losses(plain) == _losses(small)
    given = hd.DtypeTrainer(model=_model(0.0), args=_args(tmp_path / "given"), train_dataset=ner,
                            data_collator=DataCollatorForTokenClassification(tokenizer))
    assert not isinstance(given.get_train_dataloader().dataset, BatchFetcher)  # a collator given is used, by Trainer's own loader


def test_resume_from_checkpoint_equals_the_uninterrupted_run(ner, tokenizer, tmp_path):
    small = hd.compact(ner, vocab_size=tokenizer.vocab_size)
    full = hd.DtypeTrainer(model=_model(0.1), args=_args(tmp_path / "run", save_strategy="steps", save_steps=3), train_dataset=small)
    full.train()
    resumed = hd.DtypeTrainer(model=_model(0.1), args=_args(tmp_path / "run"), train_dataset=small)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-6"))  # epoch 2, one step in
    assert _losses(resumed) == _losses(full)  # the first 6 from the checkpoint's log history, the last 4 trained again


def test_a_stream_trains_through_the_same_trainer(ner, tokenizer, tmp_path):
    small = hd.compact(ner, vocab_size=tokenizer.vocab_size)
    stream = small.to_iterable_dataset(num_shards=4)
    trainer = hd.DtypeTrainer(model=_model(0.0), args=_args(tmp_path / "stream", max_steps=5), train_dataset=stream)
    trainer.train()
    assert len(_losses(trainer)) == 5 and all(np.isfinite(_losses(trainer)))


def test_an_sst2_label_column_and_remove_unused_columns(tokenizer, tmp_path):
    from transformers import BertForSequenceClassification

    raw = datasets.Dataset.from_dict({"sentence": ["a fine film", "dull", "a great ride", "bad"] * 4, "label": [1, 0, 1, 0] * 4,
                                      "idx": list(range(16))},
                                     features=datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                                                 "label": datasets.ClassLabel(names=["negative", "positive"])}))
    small = hd.compact(raw.map(lambda b: tokenizer(b["sentence"]), batched=True))  # idx is planned too, and not a forward argument
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=37, num_labels=2))
    trainer = hd.DtypeTrainer(model=model, args=_args(tmp_path / "sst2", num_train_epochs=1), train_dataset=small)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "idx" not in batch and "label" not in batch and batch["labels"].dtype == torch.int64  # on the CPU: widened there
    stored = hd.DtypeTrainer(model=model, args=_args(tmp_path / "sst2"), train_dataset=small, dataloader_options={"widen": "device"})
    assert next(iter(stored.get_train_dataloader()))["labels"].dtype == torch.int8  # storage dtypes, widened in _prepare_inputs
    trainer.train()
    assert all(np.isfinite(_losses(trainer)))


@pytest.mark.slow
def test_two_processes_under_torchrun(ner, tokenizer, tmp_path):
    small = hd.compact(ner, vocab_size=tokenizer.vocab_size)
    small.save_to_disk(str(tmp_path / "data"))
    script = tmp_path / "train.py"
    script.write_text(f"""
import datasets, torch, json, hf_dtype as hd
from transformers import BertConfig, BertForTokenClassification, TrainingArguments
torch.manual_seed(0)
model = BertForTokenClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=37, num_labels=9))
args = TrainingArguments(output_dir={str(tmp_path / "out")!r}, per_device_train_batch_size=4, num_train_epochs=1, logging_steps=1,
                         save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, ddp_backend="gloo")
small = datasets.load_from_disk({str(tmp_path / "data")!r})
trainer = hd.DtypeTrainer(model=model, args=args, train_dataset=small, eval_dataset=small)
trainer.train()
metrics = trainer.evaluate()
if trainer.is_world_process_zero():
    json.dump({{"steps": trainer.state.global_step, "eval_loss": metrics["eval_loss"], "world": args.world_size}},
              open({str(tmp_path / "metrics.json")!r}, "w"))
""")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(_free_port()), str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["world"] == 2 and metrics["steps"] == 5  # 40 rows over 2 processes in batches of 4
