#!/usr/bin/env python
"""Train a language model from zero: a tokenizer trained on the corpus, token blocks gathered from Arrow.

A causal LM (GPT-2 / Llama, ``--objective clm``, the default) or a masked-LM encoder (BERT / ModernBERT,
``--objective mlm``) whose output folder ``finetune.py --model_name_or_path`` fine-tunes for NER or
classification. The shape of ``accelerate``'s ``complete_nlp_example.py``, and the same script on one CPU,
one GPU or many processes::

    python scripts/pretrain.py                                   # character-level GPT on tiny Shakespeare, a few minutes
    python scripts/pretrain.py --tokenizer bpe --vocab_size 4096 # byte-level BPE instead
    python scripts/pretrain.py --objective mlm --train_file tests/data/zh_corpus_sample/train.txt \
        --validation_file tests/data/zh_corpus_sample/validation.txt   # a character-level Chinese BERT
    accelerate launch --mixed_precision bf16 scripts/pretrain.py # the launcher's precision, unless --mixed_precision is given
    torchrun --nproc_per_node 2 scripts/pretrain.py --cpu

With ``--objective mlm`` the tokenizer is BERT's (``BertTokenizerFast``: WordPiece, ``[PAD] [UNK] [CLS]
[SEP] [MASK]`` as ids 0 to 4, ``[CLS] ... [SEP]`` around each line) with a vocabulary of the characters
of the train text, so Chinese text is one token per character; each line is tokenized with its
``[CLS]``/``[SEP]`` and the lines are cut into blocks, as ``run_mlm.py`` does by default (its
``group_texts``: no padding, every position a real token), and ``hd.MaskedLM`` masks them at batch time
with ``DataCollatorForLanguageModeling``'s rules, each mask drawn from (seed, epoch, block, position): a
resumed run masks as the uninterrupted one. The validation blocks are masked the same way at every
evaluation (and on both data paths), and the validation loss is the mean over the masked tokens.

The hf_dtype lines are in ``get_dataloaders``: the tokenized lines are stored once in the smallest
dtype (``hd.compact``: uint8 for 65 characters, uint16 below 65,536 ids), and ``hd.dataloader``
cuts the blocks of ``run_clm.py``'s ``group_texts`` from them at batch time (``--packing blocks``)
or lays each batch of lines end to end (``--packing flat``). ``--plan datasets-default`` runs
``run_clm.py``'s own data path (``group_texts`` stored by a ``map``, ``with_format("torch")``,
``default_data_collator``) on the same blocks in the same order; with ``--objective mlm``,
``run_mlm.py``'s (``group_texts``, then ``DataCollatorForLanguageModeling``, which draws its masks from
torch's random stream). Packed batches need the model's cache off (``use_cache=False``): with it on,
transformers ignores ``position_ids`` when masking and the rows of a flat batch attend to each other.

It prints one line on where it runs (device, processes, mixed precision) and, every ``--logging_steps``
optimizer steps, one line with the loss, the learning rate and the tokens per second; a live bar only
when the output is a terminal, so a log redirected to a file holds plain lines, not bar frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.utils import set_seed
from console import progress_bar, runtime_line, say
from plots import save_plot
from torch.utils.data import BatchSampler, DataLoader, Sampler

import hf_dtype as hd

DEFAULT_CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "tinyshakespeare" / "input.txt"
MASKED_LM_TYPES = ("bert", "modernbert")
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0 to 4, in bert-base's order of roles
MIN_ENCODER_POSITIONS = 512  # BERT's: a fine-tuning run may feed longer rows than the pretraining blocks


class InputError(ValueError):
    """Bad input found before training: the message names what was wrong and what was expected."""


# --------------------------------------------------------------------------------------------- arguments


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except where there is none to show (None: the help says what the objective picks)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are nanoGPT's CPU recipe for tiny Shakespeare, so no arguments runs it."""
    parser = argparse.ArgumentParser(
        description="Train a language model from zero with hf_dtype's packed batches: a causal LM (--objective clm) or a masked-LM "
                    "encoder that finetune.py fine-tunes (--objective mlm). With no arguments: a 4-layer character-level GPT on the "
                    "committed tiny Shakespeare (tests/data/tinyshakespeare), offline, in a few minutes.",
        formatter_class=HelpFormatter)
    parser.add_argument("--objective", choices=["clm", "mlm"], default="clm",
                        help="clm: a causal LM (GPT-2 / Llama) predicting the next token; mlm: a masked-LM encoder (BERT / "
                             "ModernBERT) predicting masked tokens, with a BERT tokenizer of characters, for finetune.py.")
    data = parser.add_argument_group("data and tokenizer")
    data.add_argument("--train_file", default=str(DEFAULT_CORPUS), help="A text file (one row per line, line breaks kept).")
    data.add_argument("--validation_file", default=None, help="Default: the last --validation_split_percentage of the text.")
    data.add_argument("--dataset_name", default=None, help="A dataset with a 'text' column, on the Hub or in a local folder.")
    data.add_argument("--validation_split_percentage", type=float, default=10.0)
    data.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                      help="char: one id per character (mlm: a BERT WordPiece tokenizer whose vocabulary is [PAD] [UNK] [CLS] [SEP] "
                           "[MASK] and the characters of the train text); bpe: byte-level BPE trained on the text (clm only).")
    data.add_argument("--vocab_size", type=int, default=4096, help="For --tokenizer bpe.")
    data.add_argument("--packing", choices=["blocks", "flat"], default="blocks",
                      help="blocks: --block_size tokens of the lines end to end (mlm: the only one, run_mlm.py's default); flat: "
                           "each batch of lines as one row (clm only).")
    data.add_argument("--plan", choices=["compact", "datasets-default"], default="compact",
                      help="compact: hd.compact + hd.dataloader; datasets-default: run_clm.py's (run_mlm.py's) group_texts + "
                           "with_format('torch') + default_data_collator (DataCollatorForLanguageModeling).")
    data.add_argument("--mlm_probability", type=float, default=0.15,
                      help="mlm: the share of tokens chosen for the loss (80%% become [MASK], 10%% a random token, 10%% stay).")
    data.add_argument("--widen", choices=["device", "cpu"], default="device",
                      help="Widen batches to int64 on the device after the transfer, or on the CPU.")
    model = parser.add_argument_group("model")
    model.add_argument("--model_type", choices=["gpt2", "llama", *MASKED_LM_TYPES], default=None,
                       help="The architecture, built from a config (no pretrained weights): gpt2 or llama for clm (default gpt2), "
                            "bert or modernbert for mlm (default bert).")
    model.add_argument("--n_layer", type=int, default=4, help="Transformer layers (BERT's num_hidden_layers).")
    model.add_argument("--n_head", type=int, default=4, help="Attention heads (BERT's num_attention_heads).")
    model.add_argument("--n_embd", type=int, default=128,
                       help="Width (BERT's hidden_size; the feed-forward layers are 4x as wide for BERT, 1.5x for ModernBERT, as "
                            "in their own configs).")
    model.add_argument("--block_size", type=int, default=64,
                       help="Tokens per block (clm: and the model's context; mlm: the context is at least 512 positions, BERT's, "
                            "so that finetune.py's --max_length up to 512 fits).")
    model.add_argument("--dropout", type=float, default=None,
                       help="Dropout. Default: each model's own: 0.1 for bert, 0.0 for modernbert and for clm (nanoGPT's).")
    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=12,
                       help="Blocks (or lines, with --packing flat) per batch and process.")
    train.add_argument("--per_device_eval_batch_size", type=int, default=64, help="Validation blocks per batch and process.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Batches per optimizer step.")
    train.add_argument("--max_train_steps", type=int, default=2000, help="Optimizer steps.")
    train.add_argument("--max_train_minutes", type=float, default=None,
                       help="Stop once the training steps have run this long (evaluations and checkpoints not counted), checked after "
                            "each optimizer step; the final evaluation and the outputs follow as usual. The schedule is still that of "
                            "--max_train_steps; set both.")
    train.add_argument("--learning_rate", type=float, default=1e-3, help="Peak learning rate, after the warmup.")
    train.add_argument("--min_learning_rate", type=float, default=1e-4, help="Learning rate at the last step.")
    train.add_argument("--lr_scheduler_type", choices=["cosine", "linear"], default="cosine", help="Decay after the warmup.")
    train.add_argument("--num_warmup_steps", type=int, default=100, help="Steps of linear warmup.")
    train.add_argument("--weight_decay", type=float, default=0.1, help="AdamW weight decay of the matrices and embeddings.")
    train.add_argument("--adam_beta2", type=float, default=0.99, help="AdamW beta2 (beta1 is 0.9).")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping.")
    train.add_argument("--eval_every", type=int, default=500, help="Evaluate the validation loss every N optimizer steps.")
    train.add_argument("--logging_steps", type=int, default=100,
                       help="Print the mean loss, the learning rate and tokens/s every N optimizer steps.")
    train.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None,
                       help="accelerate's mixed precision. Default: the launcher's (accelerate launch --mixed_precision, or its "
                            "config), else no.")
    train.add_argument("--cpu", action="store_true", help="Train on the CPU even if an accelerator is present.")
    train.add_argument("--seed", type=int, default=1337, help="Seed of the weights, the block order and dropout.")
    run = parser.add_argument_group("checkpoints and outputs")
    run.add_argument("--output_dir", default="outputs/pretrain", help="Model, tokenizer, metrics.json, sample.txt and checkpoints.")
    run.add_argument("--checkpointing_steps", type=int, default=None, help="Save the training state every N optimizer steps.")
    run.add_argument("--resume_from_checkpoint", default=None, help="A step_N folder, or 'latest' (in --output_dir).")
    run.add_argument("--with_tracking", action="store_true", help="Log to TensorBoard under --output_dir.")
    run.add_argument("--sample_tokens", type=int, default=300,
                     help="Tokens of text to generate with the trained model (clm), or of the first validation line to mask every 7th "
                          "of and fill in (mlm); 0: no sample.")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Reject inconsistent options before anything is loaded."""
    for name in ("n_layer", "n_head", "n_embd", "block_size", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "max_train_steps", "eval_every", "logging_steps"):
        if getattr(args, name) < 1:
            raise InputError(f"--{name} must be at least 1; got {getattr(args, name)}.")
    if args.max_train_minutes is not None and not args.max_train_minutes > 0:
        raise InputError(f"--max_train_minutes must be a positive number of minutes; got {args.max_train_minutes}.")
    if args.n_embd % args.n_head:
        raise InputError(f"--n_embd {args.n_embd} must be a multiple of --n_head {args.n_head}.")
    if not 0 < args.validation_split_percentage < 100:
        raise InputError(f"--validation_split_percentage must lie in (0, 100); got {args.validation_split_percentage}.")
    if args.plan == "datasets-default" and args.packing != "blocks":
        raise InputError("--plan datasets-default is run_clm.py's data path, which makes blocks: use it with --packing blocks.")
    if args.tokenizer == "bpe" and args.vocab_size < 257:
        raise InputError(f"--vocab_size {args.vocab_size} is too small for byte-level BPE: expected at least 257 (256 bytes + 1).")
    masked = args.objective == "mlm"
    if args.model_type is None:
        args.model_type = "bert" if masked else "gpt2"
    if masked != (args.model_type in MASKED_LM_TYPES):
        expected = f"one of {list(MASKED_LM_TYPES)}" if masked else "gpt2 or llama"
        raise InputError(f"--model_type {args.model_type} does not train with --objective {args.objective}; expected {expected}.")
    if masked and args.tokenizer != "char":
        raise InputError("--objective mlm makes a BERT tokenizer of characters: use it with --tokenizer char (bpe is for clm).")
    if masked and args.packing != "blocks":
        raise InputError("--objective mlm masks blocks of tokens (run_mlm.py's default): use it with --packing blocks.")
    if not 0 < args.mlm_probability < 1:
        raise InputError(f"--mlm_probability must lie in (0, 1); got {args.mlm_probability}.")
    if args.dropout is None:
        args.dropout = 0.1 if args.model_type == "bert" else 0.0
    return args


# --------------------------------------------------------------------------------------------- data and tokenizer


def _read_text(path: str, option: str) -> datasets.Dataset:
    if not os.path.isfile(path):
        raise InputError(f"{option} {path!r} does not exist; expected a text file.")
    if os.path.getsize(path) == 0:
        raise InputError(f"{option} {path!r} is empty; expected text to train on.")
    return datasets.load_dataset("text", data_files=path, split="train", keep_linebreaks=True)


def split_by_characters(lines: datasets.Dataset, percentage: float) -> datasets.DatasetDict:
    """The last ``percentage`` of the characters as the validation split (the line there is cut in two), as nanoGPT splits."""
    text = "".join(lines["text"])
    cut = int(len(text) * (1 - percentage / 100))
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": text[:cut].splitlines(keepends=True)}),
        "validation": datasets.Dataset.from_dict({"text": text[cut:].splitlines(keepends=True)}),
    })


def load_text(args: argparse.Namespace) -> datasets.DatasetDict:
    """The train and validation text, one row per line."""
    if args.dataset_name:
        try:
            raw = datasets.load_dataset(args.dataset_name)
        except Exception as error:  # datasets raises many kinds for a name or folder it cannot read
            raise InputError(f"--dataset_name {args.dataset_name!r} cannot be loaded ({error}); expected a dataset with a "
                             "'text' column.") from None
        if "text" not in raw["train"].column_names:
            raise InputError(f"--dataset_name {args.dataset_name!r} has no 'text' column; its columns are {raw['train'].column_names}.")
        if "validation" in raw:
            return datasets.DatasetDict({"train": raw["train"], "validation": raw["validation"]})
        return split_by_characters(raw["train"], args.validation_split_percentage)
    train = _read_text(args.train_file, "--train_file")
    if args.validation_file:
        return datasets.DatasetDict({"train": train, "validation": _read_text(args.validation_file, "--validation_file")})
    return split_by_characters(train, args.validation_split_percentage)


def train_tokenizer(args: argparse.Namespace, train: datasets.Dataset) -> transformers.PreTrainedTokenizerFast:
    """A tokenizer trained on the training text with the ``tokenizers`` library: one id per character, or byte-level BPE;
    for a masked LM, BERT's tokenizer with a vocabulary of characters (``bert_char_tokenizer``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    if args.objective == "mlm":
        inputs = ["input_ids", "attention_mask"] if args.model_type == "modernbert" else None  # ModernBERT takes no token_type_ids
        return bert_char_tokenizer(train["text"], model_max_length=context_length(args), model_input_names=inputs)
    if args.tokenizer == "char":
        characters = sorted(set(chain.from_iterable(train["text"])))
        tokenizer = Tokenizer(models.WordLevel({c: i for i, c in enumerate(characters)}, unk_token=None))
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # every character a token
        tokenizer.decoder = decoders.Fuse()
        return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(train["text"], trainer=trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


def bert_char_tokenizer(lines: Iterable[str], *, model_max_length: int,
                        model_input_names: list[str] | None = None) -> transformers.PreTrainedTokenizerFast:
    """``BertTokenizerFast`` with a vocabulary of the characters of ``lines``: ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4), then
    each character, then ``##`` + each character seen inside a word.

    BERT's own pipeline, cased: ``BertNormalizer`` puts spaces around CJK characters, so Chinese text is one token a
    character, and ``BertPreTokenizer`` splits the rest at spaces and punctuation; a Latin word or a run of digits is then
    one character and its continuations (``i ##P ##h ##o ##n ##e``), as bert-base-chinese tokenizes it. Every character
    has its word-initial form, so ``is_split_into_words=True`` with one character a word (character-level NER) gives one
    token a word. Saved with ``save_pretrained``, it loads with ``AutoTokenizer.from_pretrained`` as a ``BertTokenizer(Fast)``.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    def pipeline(tokenizer: Tokenizer) -> Tokenizer:
        tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tokenizer

    alphabet = pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))  # WordPiece's trainer without merges: the characters
    alphabet.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=1, special_tokens=list(BERT_SPECIAL_TOKENS),
                                                                  show_progress=False))
    seen = [token for token in alphabet.get_vocab() if token not in BERT_SPECIAL_TOKENS]
    inside = sorted(token[2:] for token in seen if len(token) == 3 and token.startswith("##"))
    initial = sorted({*(token for token in seen if len(token) == 1), *inside})
    vocab = {token: i for i, token in enumerate([*BERT_SPECIAL_TOKENS, *initial, *(f"##{c}" for c in inside)])}
    tokenizer = pipeline(Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")))
    tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                             special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    options = {"model_input_names": model_input_names} if model_input_names else {}
    return transformers.BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=False, strip_accents=False, tokenize_chinese_chars=True,
                                          model_max_length=model_max_length, **options)


def tokenize(text: datasets.DatasetDict, tokenizer: Any) -> datasets.DatasetDict:
    """Token ids per line, as ``datasets`` stores a tokenizer's output (int32 ids, int8 attention mask).

    A line longer than the tokenizer's ``model_max_length`` is fine here (it is cut into blocks): transformers' warning that
    it would not fit the model is kept quiet.
    """
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenized = text.map(lambda batch: tokenizer(batch["text"]), batched=True, remove_columns=["text"], desc="Tokenizing")
    finally:
        transformers.logging.set_verbosity(verbosity)
    for split, part in tokenized.items():
        if sum(len(ids) for ids in part["input_ids"]) == 0:
            raise InputError(f"The {split} text holds no token; expected text.")
    return tokenized


def group_texts(examples: dict[str, list], block_size: int, labels: bool = True) -> dict[str, list]:
    """``run_clm.py``'s ``group_texts``: every column concatenated and cut into blocks, the remainder dropped; ``labels``
    the ids (``run_mlm.py``'s makes none: its collator does)."""
    concatenated = {key: list(chain.from_iterable(examples[key])) for key in examples}
    total = len(concatenated["input_ids"]) // block_size * block_size
    result = {key: [values[i:i + block_size] for i in range(0, total, block_size)] for key, values in concatenated.items()}
    if labels:
        result["labels"] = result["input_ids"].copy()
    return result


class Served:
    """The loaders of one data path, with how to widen its batches and what it stores; ``masked``: masked-LM batches."""

    def __init__(self, train: DataLoader, validation: DataLoader, order: Any, plan: hd.DtypePlan | None, stored_bytes: int,
                 tokens: int, masked: bool = False) -> None:
        self.train, self.validation, self.order, self.plan, self.masked = train, validation, order, plan, masked
        self.bytes_per_token = stored_bytes / tokens

    def widen(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.plan.widen(batch) if self.plan is not None else batch


def get_dataloaders(args: argparse.Namespace, tokenized: datasets.DatasetDict, vocab_size: int, tokenizer: Any = None) -> Served:
    """Train and validation loaders: the same blocks in the same order on either data path; validation is always in blocks
    (for a masked LM, the same masked blocks on both paths: ``hd.MaskedLM``'s, whose masks do not change between evaluations).
    A masked LM needs the ``tokenizer`` (its mask and special tokens)."""
    tokens = sum(len(ids) for ids in tokenized["train"]["input_ids"])
    masked = args.objective == "mlm"
    if args.plan == "datasets-default":
        blocks = tokenized.map(group_texts, batched=True, batch_size=None, fn_kwargs={"block_size": args.block_size, "labels": not masked},
                               desc=f"Grouping texts in blocks of {args.block_size}")
        for split, part in blocks.items():
            _enough_tokens(split, len(part), args.block_size)
        collator = (transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=args.mlm_probability) if masked
                    else transformers.default_data_collator)  # run_mlm.py's: its masks come from torch's random stream

        def loader(split: str, batch_size: int, shuffle: bool) -> tuple[DataLoader, Sampler[int]]:
            order = _block_order(blocks[split], batch_size, shuffle, args.seed)
            return DataLoader(blocks[split].with_format("torch"), batch_sampler=BatchSampler(order, batch_size, drop_last=False),
                              collate_fn=collator, generator=torch.Generator()), order

        train, order = loader("train", args.per_device_train_batch_size, shuffle=True)
        validation = (_compact_loaders(args, tokenized, vocab_size, tokenizer, "cpu")[1] if masked
                      else loader("validation", args.per_device_eval_batch_size, shuffle=False)[0])
        return Served(train, validation, order, None, blocks["train"].data.nbytes, len(blocks["train"]) * args.block_size, masked)
    train, validation, small = _compact_loaders(args, tokenized, vocab_size, tokenizer, args.widen)
    return Served(train, validation, train, train.plan, small["train"].data.column("input_ids").nbytes, tokens, masked)


def _block_order(blocks: datasets.Dataset, batch_size: int, shuffle: bool, seed: int) -> Sampler[int]:
    """The block order of an ``hd.dataloader`` over ``blocks`` (one block a row): the order the compact path reads its blocks in.

    Its sampler, not its batch sampler: a plain ``BatchSampler`` over it yields every batch of the pass, which
    ``accelerator.prepare`` then deals out to the processes once (the ``hd.dataloader``'s batch sampler deals itself out,
    and would be dealt out twice). Its state (the epoch) is what a checkpoint keeps.
    """
    plan = hd.infer_plan(blocks, derive=False)  # the rows as they are: this loader only gives its order
    return hd.dataloader(blocks, batch_size, shuffle=shuffle, seed=seed, plan=plan).batch_sampler.sampler


def _compact_loaders(args: argparse.Namespace, tokenized: datasets.DatasetDict, vocab_size: int, tokenizer: Any,
                     widen: str) -> tuple[Any, Any, datasets.DatasetDict]:
    """hf_dtype's train and validation loaders, and the compact splits they read."""
    small = hd.compact(tokenized, hd.infer_plan(tokenized, vocab_size=vocab_size))  # uint8 ids for 65 characters
    blocks = hd.Blocks(args.block_size, label_column=None)  # causal LM: the labels are the ids
    if args.objective == "mlm":  # masked LM: the labels are the chosen tokens, masked at batch time from (seed, epoch, block, position)
        blocks = hd.MaskedLM(blocks, mask_token_id=tokenizer.mask_token_id, vocab_size=vocab_size,
                             special_token_ids=tokenizer.all_special_ids, mlm_probability=args.mlm_probability)
    try:
        train = hd.dataloader(small["train"], args.per_device_train_batch_size, shuffle=True, seed=args.seed, widen=widen,
                              layout=blocks if args.packing == "blocks" else hd.Flat(label_column=None))
        validation = hd.dataloader(small["validation"], args.per_device_eval_batch_size, seed=args.seed, widen=widen, layout=blocks)
    except ValueError as error:
        raise InputError(str(error)) from None
    return train, validation, small


def _enough_tokens(split: str, blocks: int, block_size: int) -> None:
    if blocks == 0:
        raise InputError(f"The {split} text is shorter than one block of {block_size} tokens; expected a smaller --block_size.")


def context_length(args: argparse.Namespace) -> int:
    """The positions of a masked-LM encoder: the blocks', and at least BERT's 512, so that fine-tuning may feed longer rows."""
    return max(args.block_size, MIN_ENCODER_POSITIONS)


def build_masked_lm(args: argparse.Namespace, tokenizer: Any) -> transformers.PreTrainedModel:
    """A BERT (or ModernBERT) masked LM from a config sized by --n_layer / --n_head / --n_embd, no pretrained weights."""
    special = {"pad_token_id": tokenizer.pad_token_id, "cls_token_id": tokenizer.cls_token_id, "sep_token_id": tokenizer.sep_token_id}
    if args.model_type == "bert":
        config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
                                         num_attention_heads=args.n_head, intermediate_size=4 * args.n_embd,
                                         max_position_embeddings=context_length(args), hidden_dropout_prob=args.dropout,
                                         attention_probs_dropout_prob=args.dropout, pad_token_id=tokenizer.pad_token_id)
    else:
        config = transformers.ModernBertConfig(vocab_size=len(tokenizer), hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
                                               num_attention_heads=args.n_head, intermediate_size=3 * args.n_embd // 2,
                                               max_position_embeddings=context_length(args), attention_dropout=args.dropout,
                                               embedding_dropout=args.dropout, mlp_dropout=args.dropout,
                                               bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                                               sparse_prediction=True, **special)  # the head on masked tokens only: same loss
    return transformers.AutoModelForMaskedLM.from_config(config)


def build_model(args: argparse.Namespace, vocab_size: int, positions: int) -> transformers.PreTrainedModel:
    """A causal LM from a config, no pretrained weights; the cache stays off while training (see the module docstring).

    transformers picks a model's loss from its class name; ``GPT2LMHeadModel`` names none of its losses, so its
    ``loss_type`` is set here (``LlamaForCausalLM`` finds ``ForCausalLM`` itself), or every run warns that it is unrecognized.
    """
    if args.model_type == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=args.n_embd, n_layer=args.n_layer,
                                         n_head=args.n_head, resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
                                         activation_function="gelu",  # exact, one fused op, as nanoGPT's nn.GELU (gelu_new: 9)
                                         bos_token_id=0, eos_token_id=0, use_cache=False)
    else:
        config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=args.n_embd, intermediate_size=4 * args.n_embd,
                                          num_hidden_layers=args.n_layer, num_attention_heads=args.n_head,
                                          max_position_embeddings=positions, attention_dropout=args.dropout,
                                          bos_token_id=0, eos_token_id=0, use_cache=False)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.loss_type = "ForCausalLM"
    return model


def make_optimizer(model: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices and embeddings only (2-D parameters), as nanoGPT decays; the fused kernel
    where torch has one (a third of the update time of the default on 2 CPU cores)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, args.adam_beta2), fused=fused)


def make_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace, processes: int) -> Any:
    """Linear warmup, then cosine (or linear) decay to ``--min_learning_rate`` at ``--max_train_steps``."""
    total, warmup = args.max_train_steps * processes, args.num_warmup_steps * processes  # the prepared scheduler steps per process
    floor = args.min_learning_rate / args.learning_rate

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if args.lr_scheduler_type == "cosine" else 1 - progress
        return floor + (1 - floor) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------- evaluation and sampling


def evaluate(model: torch.nn.Module, served: Served, accelerator: Accelerator) -> float:
    """The mean loss per predicted token over every validation block, each block counted once over all processes: every
    next token (causal LM), or the masked tokens (masked LM, whose labels are -100 elsewhere)."""
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for batch in served.validation:
            batch = served.widen(batch)
            logits, labels = model(input_ids=batch["input_ids"]).logits.float(), batch["labels"]
            if not served.masked:  # a causal LM's logits at position t predict the token at t + 1
                logits, labels = logits[:, :-1], labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # 0 where -100
            block_sums, block_counts = accelerator.gather_for_metrics((per_token.sum(dim=1), (labels != -100).sum(dim=1)))
            sums.append(block_sums)  # gather_for_metrics drops the blocks repeated to even out the processes
            counts.append(block_counts)
    model.train()
    return (torch.cat(sums).sum() / torch.cat(counts).sum()).item()


def sample(model: torch.nn.Module, tokenizer: Any, tokens: int, seed: int, context: int) -> str:
    """``tokens`` tokens generated from a newline, each sampled at temperature 0.8 among the 200 likeliest with the last
    ``context`` tokens as context (as nanoGPT's sample.py generates: the model has no positions beyond its block)."""
    model.eval()
    ids = tokenizer("\n", return_tensors="pt")["input_ids"].to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        for _ in range(tokens):
            logits = model(input_ids=ids[:, -context:]).logits[:, -1].float() / 0.8
            threshold = torch.topk(logits, min(200, logits.shape[-1])).values[:, -1:]
            probabilities = torch.softmax(logits.masked_fill(logits < threshold, -float("inf")), dim=-1)
            ids = torch.cat([ids, torch.multinomial(probabilities, 1, generator=generator)], dim=1)
    return tokenizer.decode(ids[0].tolist())


# --------------------------------------------------------------------------------------------- console


def quiet_libraries() -> None:
    """No progress bars from datasets (loading, tokenizing) or transformers (saving): the run's own lines tell its progress."""
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()




# --------------------------------------------------------------------------------------------- training


def _checkpoint(args: argparse.Namespace) -> tuple[str | None, int]:
    """The folder to resume from and the optimizer steps done there."""
    path = args.resume_from_checkpoint
    if path == "latest":
        found = [entry for entry in Path(args.output_dir).glob("step_*") if entry.name[5:].isdigit()]
        if not found:
            raise InputError(f"--resume_from_checkpoint latest: no step_N folder in {args.output_dir!r}.")
        path = str(max(found, key=lambda entry: int(entry.name[5:])))
    name = Path(path).name
    if not Path(path).is_dir() or not name.startswith("step_") or not name[5:].isdigit():
        raise InputError(f"--resume_from_checkpoint {path!r}: expected a step_N folder saved by this script, or 'latest'.")
    return path, int(name[5:])


def training_function(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate every ``--eval_every`` steps, sample, save; return the metrics."""
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision,
                              gradient_accumulation_steps=args.gradient_accumulation_steps,
                              log_with="tensorboard" if args.with_tracking else None, project_dir=args.output_dir)
    quiet_libraries()
    say(accelerator, runtime_line(accelerator, args.mixed_precision))
    set_seed(args.seed)
    resume = _checkpoint(args) if args.resume_from_checkpoint else (None, 0)
    with accelerator.main_process_first():
        text = load_text(args)
        tokenizer = train_tokenizer(args, text["train"])
        tokenized = tokenize(text, tokenizer)
        served = get_dataloaders(args, tokenized, len(tokenizer), tokenizer)
    if args.objective == "mlm":
        model = build_masked_lm(args, tokenizer)
    else:
        longest = max(len(ids) for ids in tokenized["train"]["input_ids"]) if args.packing == "flat" else 0  # a flat row: a whole line
        model = build_model(args, len(tokenizer), max(args.block_size, longest))
    optimizer = make_optimizer(model, args, accelerator.device)
    accelerator.register_for_checkpointing(served.order)  # the data order's epoch is part of a checkpoint
    model, optimizer, train_loader, served.validation = accelerator.prepare(model, optimizer, served.train, served.validation)
    scheduler = accelerator.prepare(make_scheduler(optimizer, args, accelerator.num_processes))
    if args.with_tracking:
        accelerator.init_trackers("pretrain", {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    completed = 0
    if resume[0]:
        accelerator.load_state(resume[0])
        completed = resume[1]
        say(accelerator, f"resumed from {resume[0]} at step {completed}")
    log = train(args, accelerator, model, optimizer, scheduler, train_loader, served, completed)
    metrics = {
        "validation_loss": log.evaluations[-1]["validation_loss"] if log.evaluations else None, "evaluations": log.evaluations,
        "steps": log.completed, "stopped_by": log.stopped_by,  # "max_train_steps" or "max_train_minutes"
        "step_losses": log.step_losses, "mixed_precision": accelerator.mixed_precision,
        "train_seconds": log.train_seconds, "eval_seconds": log.eval_seconds, "checkpoint_seconds": log.checkpoint_seconds,
        "tokens_per_second": log.tokens * accelerator.num_processes / log.train_seconds, "data_wait_share": log.wait / log.train_seconds,
        "bytes_per_stored_token": served.bytes_per_token, "bytes_per_batch": log.batch_bytes, "vocab_size": len(tokenizer),
        "num_parameters": sum(p.numel() for p in model.parameters()), "num_processes": accelerator.num_processes,
        "plan": served.plan.to_dict() if served.plan else None,
    }
    metrics["objective"], metrics["model_type"] = args.objective, args.model_type
    metrics["bits_per_character"] = (None if args.objective == "mlm"  # a loss over masked tokens is no measure of the text's entropy
                                     else _bits_per_character(metrics["validation_loss"], tokenized["validation"], text["validation"]))
    save_outputs(args, accelerator, model, tokenizer, metrics, next((line for line in text["validation"]["text"] if line.strip()), ""))
    accelerator.end_training()
    return metrics


@dataclass
class TrainLog:
    """What the training loop saw: the loss of each optimizer step, the evaluations, why it stopped, and the data path's figures.

    Its clocks keep evaluations and checkpoints apart from the training steps: tokens/s and the share of time
    waiting for data are over the training steps alone.
    """

    completed: int
    step_losses: list[float] = field(default_factory=list)
    evaluations: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str | None = None  # "max_train_steps" or "max_train_minutes", once the loop has stopped
    wait: float = 0.0  # seconds spent waiting for a batch
    tokens: int = 0  # tokens trained on by this process
    batch_bytes: int = 0  # bytes of the last batch, as it crossed to the device
    eval_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    train_seconds: float = 0.0  # the training steps' share of the loop, set when it ends
    started: float = field(default_factory=time.perf_counter)
    logged: tuple[int, int, float] = (0, 0, 0.0)  # len(step_losses), tokens and training seconds at the last step line

    def training_seconds(self) -> float:
        """Seconds spent in training steps so far: the loop's time less its evaluations and checkpoints."""
        return time.perf_counter() - self.started - self.eval_seconds - self.checkpoint_seconds


def train(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, optimizer: Any, scheduler: Any,
          train_loader: Any, served: Served, completed: int) -> TrainLog:
    """Optimizer steps until ``--max_train_steps`` (or ``--max_train_minutes``), over as many passes as it takes; a resumed
    run skips what its epoch did."""
    log = TrainLog(completed)
    skip = completed * args.gradient_accumulation_steps % len(train_loader)
    progress = progress_bar(accelerator, total=args.max_train_steps, initial=completed, desc="train")
    model.train()
    while log.stopped_by is None and log.completed < args.max_train_steps:
        loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        skip, micro_losses, asked = 0, [], time.perf_counter()
        for batch in loader:
            log.wait += time.perf_counter() - asked
            log.batch_bytes = sum(value.nbytes for value in batch.values() if torch.is_tensor(value))
            with accelerator.accumulate(model):
                batch = served.widen(batch)
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            log.tokens += batch["input_ids"].numel()
            micro_losses.append(loss.detach().float())
            if accelerator.sync_gradients:
                log.completed += 1
                log.step_losses.append(accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item())
                micro_losses.clear()
                progress.update(1)
                progress.set_postfix(loss=f"{log.step_losses[-1]:.4f}")
                log.stopped_by = _stop_reason(args, accelerator, log)
                _after_step(args, accelerator, model, served, scheduler, log)
                if log.stopped_by is not None:
                    break
            asked = time.perf_counter()
    log.stopped_by = log.stopped_by or "max_train_steps"  # a run resumed at its last step trains none
    log.train_seconds = log.training_seconds()
    progress.close()
    return log


def _stop_reason(args: argparse.Namespace, accelerator: Accelerator, log: TrainLog) -> str | None:
    """``"max_train_steps"`` or ``"max_train_minutes"`` when the step just done is the last, else None.

    The clock is the training steps' (``log.training_seconds``); with several processes the slowest one's decides, so that
    all of them stop after the same step.
    """
    if log.completed >= args.max_train_steps:
        return "max_train_steps"
    if args.max_train_minutes is None:
        return None
    seconds = log.training_seconds()
    if accelerator.num_processes > 1:
        seconds = accelerator.gather(torch.tensor([seconds], device=accelerator.device)).max().item()
    return "max_train_minutes" if seconds >= 60 * args.max_train_minutes else None


def _after_step(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, served: Served, scheduler: Any,
                log: TrainLog) -> None:
    """Tracking, the step line, evaluation and checkpoints, as the step count asks (and the final evaluation after the last
    step); evaluations and checkpoints timed apart."""
    step = log.completed
    if args.with_tracking:
        accelerator.log({"train/loss": log.step_losses[-1], "train/lr": scheduler.get_last_lr()[0]}, step=step)
    if step % args.logging_steps == 0:
        _log_step(args, accelerator, scheduler, log)
    if step % args.eval_every == 0 or log.stopped_by is not None:
        _log_evaluation(args, accelerator, model, served, log)
    if args.checkpointing_steps and step % args.checkpointing_steps == 0:
        start = time.perf_counter()
        accelerator.save_state(os.path.join(args.output_dir, f"step_{step}"))
        log.checkpoint_seconds += time.perf_counter() - start


def _step_label(args: argparse.Namespace, step: int) -> str:
    return f"step {step:>{len(str(args.max_train_steps))}}/{args.max_train_steps}"


def _log_step(args: argparse.Namespace, accelerator: Accelerator, scheduler: Any, log: TrainLog) -> None:
    """``step  100/2000  loss 2.4567  lr 1.00e-03  14,321 tokens/s``: the mean loss and the speed since the last step line."""
    losses, tokens, seconds = log.logged
    now = log.training_seconds()
    loss = sum(log.step_losses[losses:]) / (len(log.step_losses) - losses)
    rate = (log.tokens - tokens) * accelerator.num_processes / (now - seconds)
    log.logged = (len(log.step_losses), log.tokens, now)
    say(accelerator, f"{_step_label(args, log.completed)}  loss {loss:.4f}  lr {scheduler.get_last_lr()[0]:.2e}  {rate:,.0f} tokens/s")


def _log_evaluation(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, served: Served, log: TrainLog) -> None:
    """``step  500/2000  validation loss 1.9912  (4.1 s)``, recorded with the training minutes so far and the time it took."""
    minutes = log.training_seconds() / 60
    start = time.perf_counter()
    loss = evaluate(model, served, accelerator)
    seconds = time.perf_counter() - start
    log.eval_seconds += seconds
    log.evaluations.append({"step": log.completed, "train_minutes": round(minutes, 4), "validation_loss": loss, "seconds": seconds})
    say(accelerator, f"{_step_label(args, log.completed)}  validation loss {loss:.4f}  ({seconds:.1f} s)")
    if args.with_tracking:
        accelerator.log({"validation/loss": loss}, step=log.completed)


def _bits_per_character(loss: float | None, tokenized: datasets.Dataset, text: datasets.Dataset) -> float | None:
    """Nats per token into bits per character: the figure that compares tokenizers."""
    if loss is None:
        return None
    tokens = sum(len(ids) for ids in tokenized["input_ids"])
    characters = sum(len(line) for line in text["text"])
    return loss * tokens / characters / math.log(2)


def fill_mask_sample(model: torch.nn.Module, tokenizer: Any, text: str, tokens: int, every: int = 7) -> str:
    """The first ``tokens`` tokens of ``text`` with every ``every``-th one masked, and as the model fills them in (argmax):
    a glance at what a masked LM learnt, where a causal LM writes a sample."""
    model.eval()
    ids = tokenizer(text, truncation=True, max_length=min(tokens, model.config.max_position_embeddings),
                    return_tensors="pt")["input_ids"].to(model.device)
    positions = torch.arange(1, ids.shape[1] - 1, every, device=model.device)  # never [CLS] or [SEP]
    masked = ids.clone()
    masked[0, positions] = tokenizer.mask_token_id
    with torch.no_grad():
        filled = masked.clone()
        filled[0, positions] = model(input_ids=masked).logits[0, positions].argmax(dim=-1)

    def show(row: torch.Tensor) -> str:
        return "".join(token.removeprefix("##") for token in tokenizer.convert_ids_to_tokens(row[1:-1].tolist()))

    right = int((filled[0, positions] == ids[0, positions]).sum())
    return (f"text:   {show(ids[0])}\nmasked: {show(masked[0])}\nfilled: {show(filled[0])}\n"
            f"({right} of {len(positions)} masked tokens right)")


def save_loss_plot(path: str | os.PathLike, metrics: dict[str, Any], title: str) -> str:
    """``loss.png``: the loss of each optimizer step and the validation loss of each evaluation against the step, from the
    ``metrics`` of a run (a resumed run's steps start where it resumed)."""
    losses, evaluations = metrics["step_losses"], metrics["evaluations"]
    first = metrics["steps"] - len(losses)
    curves = {"train": (list(range(first + 1, metrics["steps"] + 1)), losses),
              "validation": ([e["step"] for e in evaluations], [e["validation_loss"] for e in evaluations])}
    return save_plot(path, curves, xlabel="optimizer step", ylabel="loss", title=title)


def save_outputs(args: argparse.Namespace, accelerator: Accelerator, model: torch.nn.Module, tokenizer: Any,
                 metrics: dict[str, Any], validation_text: str = "") -> None:
    """Model, tokenizer, ``metrics.json``, ``loss.png`` and a sample in ``--output_dir`` (generated by a causal LM;
    ``validation_text`` with masks filled in by a masked LM); the scores and the sample printed."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        if not args.sample_tokens:
            metrics["sample"] = ""
        elif args.objective == "mlm":
            metrics["sample"] = fill_mask_sample(unwrapped, tokenizer, validation_text, args.sample_tokens)
        else:
            context = unwrapped.config.max_position_embeddings if args.model_type == "llama" else unwrapped.config.n_positions
            metrics["sample"] = sample(unwrapped, tokenizer, args.sample_tokens, args.seed, context)
        os.makedirs(args.output_dir, exist_ok=True)
        unwrapped.save_pretrained(args.output_dir)
        tokenizer.save_pretrained(args.output_dir)
        Path(args.output_dir, "metrics.json").write_text(json.dumps(metrics, indent=2))
        Path(args.output_dir, "sample.txt").write_text(metrics["sample"])
        loss = "masked-token loss" if args.objective == "mlm" else "loss per token"
        save_loss_plot(Path(args.output_dir, "loss.png"), metrics, f"{args.model_type} from zero: {loss}")
        bits = metrics["bits_per_character"]
        measure = "masked tokens" if bits is None else f"{bits:.3f} bits per character"
        timed_out = " (--max_train_minutes reached)" if metrics["stopped_by"] == "max_train_minutes" else ""
        print(f"validation loss {metrics['validation_loss']:.4f} ({measure}) after {metrics['steps']} steps{timed_out}: "
              f"training {metrics['train_seconds']:.1f} s, {metrics['tokens_per_second']:,.0f} tokens/s, "
              f"{metrics['data_wait_share']:.1%} of it waiting for data; {len(metrics['evaluations'])} evaluation(s) "
              f"{metrics['eval_seconds']:.1f} s; {metrics['bytes_per_stored_token']:.2f} bytes per stored token")
        print(f"sample:\n{metrics['sample']}")
        print(f"model, tokenizer, metrics.json, loss.png and sample.txt in {args.output_dir}")
    accelerator.wait_for_everyone()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Check ``args`` and run; raises ``InputError`` (a ValueError) on bad input, before training."""
    return training_function(check_args(args))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except InputError as error:
        raise SystemExit(f"pretrain.py: error: {error}") from None


if __name__ == "__main__":
    main()
