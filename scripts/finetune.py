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

This file holds what ``complete_nlp_example.py`` holds: the loaders, the model and optimizer, the training
loop with its checkpoints, ``training_function`` and ``main``. Its helpers sit beside it, as ``utils_qa.py``
sits beside transformers' question-answering example: ``finetune_args.py`` (the options and their checks),
``finetune_data.py`` (load, check, tokenize), ``finetune_eval.py`` (the scores), ``finetune_report.py`` (what
is printed and written), with ``console.py``, ``ner_decoding.py`` and ``plots.py``; copy them together.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from console import progress_bar, runtime_line, say
from finetune_args import check_args, find_checkpoint, parse_args
from finetune_data import EVAL_SPLITS, Dataloaders, InputError, PreparedData, leaf_feature, prepare_data, unknown_warning
from finetune_eval import evaluate, main_score
from finetune_report import (
    TrainLog,
    describe_plan,
    epoch_line,
    quiet_libraries,
    run_metrics,
    save_outputs,
    step_line,
    summarize,
    train_metrics,
)
from torch.utils.data import BatchSampler, DataLoader
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    get_scheduler,
)

import hf_dtype as hd

# --------------------------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------------------------- training


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
        log.validation = evaluate(accelerator, model, eval_dataloaders["validation"], loaders.widen, args.task, data.labels.names,
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
            metrics[split], predictions[split] = evaluate(accelerator, model, dataloader, loaders.widen, args.task, data.labels.names,
                                                          split, args.ner_decoding)
    written = save_outputs(args, accelerator, model, data, metrics, predictions)
    summarize(accelerator, metrics, args.task, args.output_dir, written)
    accelerator.end_training()
    metrics["predictions"] = predictions
    return metrics


# --------------------------------------------------------------------------------------------- command line


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
