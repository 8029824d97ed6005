"""What ``finetune.py`` prints and writes: the plan, step and epoch lines, ``metrics.json``, predictions, the model.

It prints one line on where it runs, one every ``--logging_steps`` optimizer steps and one per epoch;
live bars only on a terminal (``console.py``), so a log redirected to a file holds plain lines.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator
from console import say
from finetune_data import EVAL_SPLITS, Dataloaders, PreparedData
from finetune_eval import main_score
from plots import save_plot, score_curve

__all__ = ["TrainLog", "describe_plan", "epoch_line", "quiet_libraries", "run_metrics", "save_outputs", "step_line", "summarize",
           "train_metrics"]


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


def step_line(losses: Sequence[float], step: int, max_steps: int, steps_per_epoch: int, lr: float) -> str:
    """``step 10/96  epoch 0.31  loss 0.8123  lr 2.97e-04``: the mean of ``losses``, those since the last step line (as
    Trainer logs)."""
    return (f"step {step:>{len(str(max_steps))}}/{max_steps}  epoch {step / steps_per_epoch:.2f}  "
            f"loss {sum(losses) / len(losses):.4f}  lr {lr:.2e}")


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

