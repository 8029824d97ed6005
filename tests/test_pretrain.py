"""Tests of ``scripts/pretrain.py``: the run_clm data path and hf_dtype's give the same losses (in one process and in two),
resume, tokenizers, a time limit, the loss plot, bad input; a masked-LM BERT from zero with a BERT tokenizer of characters
(``--objective mlm``).

Offline and small: the first 30,000 characters of the committed tiny Shakespeare, or the committed Chinese corpus sample
(tests/data/zh_corpus_sample), a 1-layer model of width 32.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain  # noqa: E402
from finetune_fixtures import ZH_CORPUS, free_port, mlm_argv, reset_accelerate, subprocess_env  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "tinyshakespeare" / "input.txt"
SCRIPT = str(ROOT / "scripts" / "pretrain.py")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shakespeare.txt"
    path.write_text(CORPUS.read_text()[:30_000])
    return path


def _argv(corpus: Path, output: Path, *extra: str) -> list[str]:
    return ["--train_file", str(corpus), "--output_dir", str(output), "--n_layer", "1", "--n_head", "2", "--n_embd", "32",
            "--block_size", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--max_train_steps", "12", "--eval_every", "6", "--dropout", "0.1", "--sample_tokens", "40", *extra]  # 40 > block


def _run(corpus: Path, output: Path, *extra: str) -> dict:
    reset_accelerate()
    return pretrain.run(pretrain.parse_args(_argv(corpus, output, *extra)))


def test_run_clm_data_path_and_hf_dtype_give_identical_losses(corpus, tmp_path):
    """Same blocks in the same order, dropout on: the very same floats at every step, and the same validation loss."""
    default = _run(corpus, tmp_path / "default", "--plan", "datasets-default")
    device = _run(corpus, tmp_path / "device")
    cpu = _run(corpus, tmp_path / "cpu", "--widen", "cpu")
    assert len(default["step_losses"]) == 12
    assert device["step_losses"] == default["step_losses"] == cpu["step_losses"]
    assert device["validation_loss"] == default["validation_loss"]
    assert device["bytes_per_stored_token"] < 1.3 < 12 < default["bytes_per_stored_token"]  # uint8 ids against run_clm's 13 bytes
    assert device["plan"]["input_ids"]["storage"] == "uint8"
    written = tmp_path / "device"
    assert {"metrics.json", "loss.png", "sample.txt", "config.json", "tokenizer.json"} <= {p.name for p in written.iterdir()}
    assert device["stopped_by"] == default["stopped_by"] == "max_train_steps"


def test_loss_plot_and_the_evaluations_in_metrics_json(corpus, tmp_path):
    """loss.png beside metrics.json (a PNG); metrics.json lists each evaluation with its step and the training minutes so far."""
    metrics = _run(corpus, tmp_path / "out", "--sample_tokens", "0")
    assert (tmp_path / "out" / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    evaluations = saved["evaluations"]
    assert [e["step"] for e in evaluations] == [6, 12] and saved["stopped_by"] == "max_train_steps" and saved["steps"] == 12
    assert [e["validation_loss"] for e in evaluations] == [e["validation_loss"] for e in metrics["evaluations"]]
    assert 0 < evaluations[0]["train_minutes"] < evaluations[1]["train_minutes"] <= saved["train_seconds"] / 60 + 1e-4


def test_max_train_minutes_stops_after_the_step_that_reaches_it(corpus, tmp_path):
    """A limit shorter than one step: one step, then the final evaluation and the outputs as after --max_train_steps."""
    metrics = _run(corpus, tmp_path / "out", "--max_train_minutes", "0.00001", "--sample_tokens", "0")
    assert metrics["stopped_by"] == "max_train_minutes" and metrics["steps"] == 1 and len(metrics["step_losses"]) == 1
    assert [e["step"] for e in metrics["evaluations"]] == [1] and metrics["validation_loss"] is not None
    written = tmp_path / "out"
    assert {"metrics.json", "loss.png", "sample.txt", "config.json", "tokenizer.json"} <= {p.name for p in written.iterdir()}
    assert json.loads((written / "metrics.json").read_text())["stopped_by"] == "max_train_minutes"
    assert (written / "loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_flat_batches_train_with_the_cache_off(corpus, tmp_path):
    flat = _run(corpus, tmp_path / "flat", "--packing", "flat", "--model_type", "llama")
    assert flat["steps"] == 12 and flat["validation_loss"] < 4.2  # the validation blocks are the same as for --packing blocks
    assert flat["step_losses"][-1] < flat["step_losses"][0]


def test_resume_equals_the_uninterrupted_run(corpus, tmp_path):
    full = _run(corpus, tmp_path / "full", "--checkpointing_steps", "5")
    resumed = _run(corpus, tmp_path / "full", "--resume_from_checkpoint", "latest")  # step_10: in the second epoch
    assert resumed["step_losses"] == full["step_losses"][10:]
    assert resumed["validation_loss"] == full["validation_loss"]


def test_bpe_tokenizer_and_bits_per_character(corpus, tmp_path):
    bpe = _run(corpus, tmp_path / "bpe", "--tokenizer", "bpe", "--vocab_size", "300")
    char = _run(corpus, tmp_path / "char")
    assert bpe["vocab_size"] == 300 and bpe["plan"]["input_ids"]["storage"] == "uint16"
    assert bpe["bits_per_character"] > 0 and char["bits_per_character"] > 0


def test_tokens_per_second_and_data_wait_count_the_training_steps_only(corpus, tmp_path, monkeypatch):
    """Evaluations are timed apart (issue 13: a 40-step run reported 180 tokens/s): two evaluations slowed by 0.5 s each
    move eval_seconds, not train_seconds, tokens/s or the share of time waiting for data."""
    evaluate = pretrain.evaluate

    def slow_evaluate(*args):
        time.sleep(0.5)
        return evaluate(*args)

    monkeypatch.setattr(pretrain, "evaluate", slow_evaluate)
    start = time.perf_counter()
    metrics = _run(corpus, tmp_path / "out", "--sample_tokens", "0")
    wall = time.perf_counter() - start
    assert [evaluation["step"] for evaluation in metrics["evaluations"]] == [6, 12]
    assert all(evaluation["seconds"] >= 0.5 for evaluation in metrics["evaluations"])
    assert metrics["eval_seconds"] == pytest.approx(sum(evaluation["seconds"] for evaluation in metrics["evaluations"]))
    assert metrics["train_seconds"] + metrics["eval_seconds"] < wall
    assert metrics["train_seconds"] < wall - 1.0
    assert metrics["tokens_per_second"] == pytest.approx(12 * 8 * 32 / metrics["train_seconds"])  # 12 steps of 8 blocks of 32


def test_log_redirected_to_a_file_has_plain_lines_only(corpus, tmp_path):
    """Output to a file (issue 13: 3,900 bar frames in a default run): no carriage return, one line on where the run runs,
    a step line every --logging_steps steps and one per evaluation, and no transformers warning about loss_type."""
    log = tmp_path / "log.txt"
    with open(log, "w", encoding="utf-8") as file:
        done = subprocess.run([sys.executable, SCRIPT, *_argv(corpus, tmp_path / "out", "--logging_steps", "4")], stdout=file,
                              stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE_ENV}, timeout=300)
    text = log.read_text(encoding="utf-8")
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert "loss_type" not in text
    lines = text.splitlines()
    assert re.fullmatch(r"device \S+, 1 process, mixed precision no \(from the default\)", lines[0]), lines[0]
    steps = [line for line in lines if line.startswith("step ")]
    train, validation = r"  loss \d\.\d{4}  lr \d\.\d\de-\d\d  [\d,]+ tokens/s", r"  validation loss \d\.\d{4}  \(\d+\.\d s\)"
    expected = [f"step  4/12{train}", f"step  6/12{validation}", f"step  8/12{train}", f"step 12/12{train}", f"step 12/12{validation}"]
    assert len(steps) == len(expected) and all(re.fullmatch(e, line) for e, line in zip(expected, steps, strict=True)), steps
    summary = next(line for line in lines if line.startswith("validation loss"))
    assert re.match(r"validation loss \d\.\d{4} .* after 12 steps: training \d+\.\d s, [\d,]+ tokens/s, .*; 2 evaluation", summary)
    assert lines[-1] == f"model, tokenizer, metrics.json, loss.png and sample.txt in {tmp_path / 'out'}"


def test_mixed_precision_is_the_launchers_unless_the_flag_is_given(corpus, tmp_path, monkeypatch, capsys):
    """`accelerate launch --mixed_precision bf16 pretrain.py` sets ACCELERATE_MIXED_PRECISION: the run takes it (the flag's
    old default 'no' overrode it) and says so first; --mixed_precision, when given, wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    launched = _run(corpus, tmp_path / "launched", "--cpu", "--max_train_steps", "2", "--sample_tokens", "0")
    assert launched["mixed_precision"] == "bf16"
    assert capsys.readouterr().out.splitlines()[0] == "device cpu, 1 process, mixed precision bf16 (from accelerate launch)"
    flagged = _run(corpus, tmp_path / "flagged", "--cpu", "--max_train_steps", "2", "--sample_tokens", "0", "--mixed_precision", "no")
    assert flagged["mixed_precision"] == "no"
    assert capsys.readouterr().out.splitlines()[0] == "device cpu, 1 process, mixed precision no (from --mixed_precision)"


@pytest.mark.parametrize(("extra", "match"), [
    (["--block_size", "100000"], r"block_size 100000 is larger than the token stream of 'input_ids'"),
    (["--n_embd", "30", "--n_head", "4"], r"--n_embd 30 must be a multiple of --n_head 4"),
    (["--plan", "datasets-default", "--packing", "flat"], r"--plan datasets-default is run_clm.py's data path"),
    (["--resume_from_checkpoint", "latest"], r"--resume_from_checkpoint latest: no step_N folder"),
    (["--max_train_minutes", "0"], r"--max_train_minutes must be a positive number of minutes; got 0.0"),
])
def test_bad_options_are_one_clear_error(corpus, tmp_path, extra, match):
    with pytest.raises(pretrain.InputError, match=match):
        _run(corpus, tmp_path / "bad", *extra)


def test_empty_and_missing_text_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(pretrain.InputError, match=r"--train_file '.*empty.txt' is empty; expected text to train on"):
        _run(empty, tmp_path / "out")
    with pytest.raises(pretrain.InputError, match=r"--train_file '.*nope.txt' does not exist; expected a text file"):
        _run(tmp_path / "nope.txt", tmp_path / "out")


@pytest.mark.slow
def test_torchrun_two_processes_give_the_same_losses_on_both_data_paths(corpus, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU): the run_clm data path deals the blocks out to the processes once, as
    hf_dtype's loader does, so the losses are the very same floats at every step; a --max_train_minutes not reached
    leaves the run to --max_train_steps, every process stopping at the same step."""
    runs = {}
    for plan, extra in (("compact", ()), ("datasets-default", ("--max_train_minutes", "60"))):
        out = tmp_path / plan
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                   "--master_port", str(free_port()), SCRIPT, *_argv(corpus, out, "--cpu", "--max_train_steps", "6", "--eval_every", "3",
                                                                     "--sample_tokens", "0", "--plan", plan, *extra)]
        done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(), timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[plan] = json.loads((out / "metrics.json").read_text())
    compact, default = runs["compact"], runs["datasets-default"]
    assert compact["num_processes"] == default["num_processes"] == 2
    assert len(compact["step_losses"]) == 6 and default["step_losses"] == compact["step_losses"]
    assert default["validation_loss"] == compact["validation_loss"]
    assert default["stopped_by"] == "max_train_steps"


def test_help_shows_the_defaults_and_the_committed_corpus():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert "committed tiny Shakespeare" in text and "--max_train_steps MAX_TRAIN_STEPS Optimizer steps. (default: 2000)" in text


@pytest.mark.parametrize(("extra", "dropout"), [([], 0.0), (["--objective", "mlm"], 0.1),
                                              (["--objective", "mlm", "--model_type", "modernbert"], 0.0)])
def test_dropout_defaults_to_each_models_own(extra, dropout):
    """nanoGPT trains without dropout, BERT's config has 0.1, ModernBERT's 0.0."""
    assert pretrain.check_args(pretrain.parse_args(extra)).dropout == dropout


# --------------------------------------------------------------------------------------------- masked LM (--objective mlm)


def _run_mlm(output: Path, *extra: str) -> dict:
    reset_accelerate()
    return pretrain.run(pretrain.parse_args(mlm_argv(output, *extra)))


def test_masked_lm_bert_from_zero_trains_and_saves_what_auto_classes_load(tmp_path):
    """A BERT from a config sized by --n_layer/--n_head/--n_embd, its loss over the masked tokens finite and falling; the
    folder loads with AutoTokenizer (a BertTokenizer of characters) and as a BERT for token classification."""
    import torch
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    metrics = _run_mlm(tmp_path / "bert")
    losses = metrics["step_losses"]
    assert len(losses) == 12 and all(torch.isfinite(torch.tensor(losses)))
    assert 7.0 < losses[0] < 8.0  # about ln(vocabulary) = ln(1,834): the untrained model guesses evenly
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05
    assert [e["step"] for e in metrics["evaluations"]] == [6, 12] and 6.0 < metrics["validation_loss"] < 8.0
    assert metrics["objective"] == "mlm" and metrics["model_type"] == "bert" and metrics["bits_per_character"] is None
    assert metrics["plan"]["input_ids"]["storage"] == "uint16" and metrics["plan"]["labels"]["pad"] == -100
    assert "masked tokens right" in metrics["sample"]

    config = AutoConfig.from_pretrained(tmp_path / "bert")
    assert (config.model_type, config.architectures, config.num_hidden_layers, config.hidden_size) == ("bert", ["BertForMaskedLM"], 1, 32)
    assert config.max_position_embeddings == 512 and config.hidden_dropout_prob == 0.1  # BERT's, so finetune.py --max_length fits
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "bert")
    assert type(tokenizer).__name__ in ("BertTokenizer", "BertTokenizerFast") and tokenizer.is_fast
    assert len(tokenizer) == metrics["vocab_size"] == config.vocab_size
    model = AutoModelForTokenClassification.from_pretrained(tmp_path / "bert", num_labels=7)
    assert type(model).__name__ == "BertForTokenClassification"


def test_bert_char_tokenizer_round_trip():
    """[PAD] [UNK] [CLS] [SEP] [MASK] are ids 0-4; Chinese text is one token a character between [CLS] and [SEP]; a Latin
    word is its characters as WordPiece continuations; character lists (NER) give one token a character; the folder that
    save_pretrained writes loads with AutoTokenizer and tokenizes every line as the tokenizer made in memory."""
    import tempfile

    from transformers import AutoTokenizer

    bang, year = "\uff01", "\uff11\uff19\uff19\uff18"  # full-width ! and 1998, as the newspaper writes them
    lines = [*(ZH_CORPUS / "train.txt").read_text(encoding="utf-8").splitlines(), f"这个 iPhone 很好{bang}{year}年"]
    made = pretrain.bert_char_tokenizer(lines, model_max_length=512)
    with tempfile.TemporaryDirectory() as folder:
        made.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.convert_ids_to_tokens(range(5)) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id) == (
        0, 1, 2, 3, 4)
    assert [tokenizer(line)["input_ids"] for line in lines] == [made(line)["input_ids"] for line in lines]
    assert tokenizer.tokenize("中共中央总书记") == list("中共中央总书记")
    assert tokenizer.tokenize(lines[-1]) == [*"这个", "i", "##P", "##h", "##o", "##n", "##e", *"很好", bang, year[0],
                                             *(f"##{digit}" for digit in year[1:]), "年"]
    encoded = tokenizer("江泽民")
    assert encoded["input_ids"][0] == 2 and encoded["input_ids"][-1] == 3 and len(encoded["input_ids"]) == 5
    characters = [list("江泽民发表讲话"), list("iPhone")]  # 'P' is only ever inside a word in the text: it has its own id too
    words = tokenizer(characters, is_split_into_words=True)
    for i, row in enumerate(characters):
        assert words.word_ids(i) == [None, *range(len(row)), None]
        assert tokenizer.unk_token_id not in words["input_ids"][i]
    assert all(tokenizer.unk_token_id not in ids for ids in tokenizer(lines)["input_ids"])
    assert tokenizer.tokenize("中文鱻") == ["中", "文", "[UNK]"]  # a character the text never had


def test_masked_lm_resume_equals_the_uninterrupted_run(tmp_path):
    """Masks drawn from (seed, epoch, block, position): the resumed run (step 10, in the second epoch) masks as the
    uninterrupted one did, so the losses and the validation loss are the very same floats."""
    full = _run_mlm(tmp_path / "full", "--checkpointing_steps", "5")
    resumed = _run_mlm(tmp_path / "full", "--resume_from_checkpoint", "latest")
    assert resumed["step_losses"] == full["step_losses"][10:]
    assert resumed["validation_loss"] == full["validation_loss"]


def test_masked_lm_run_mlm_data_path_and_modernbert(tmp_path):
    """--plan datasets-default: run_mlm.py's group_texts + DataCollatorForLanguageModeling (int64 blocks of every column),
    validated on the same masked blocks; --model_type modernbert trains too, its tokenizer without token_type_ids, its head
    on the masked tokens only (sparse_prediction), and loads for token classification (finetune.py)."""
    import torch
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForTokenClassification, AutoTokenizer

    default = _run_mlm(tmp_path / "default", "--plan", "datasets-default", "--max_train_steps", "4", "--sample_tokens", "0")
    assert len(default["step_losses"]) == 4 and 7.0 < default["validation_loss"] < 8.0
    assert default["plan"] is None and default["bytes_per_stored_token"] > 6  # int32 ids, int8 masks and types, against 2 compact
    modern = _run_mlm(tmp_path / "modern", "--model_type", "modernbert", "--max_train_steps", "4", "--sample_tokens", "0")
    assert modern["model_type"] == "modernbert" and 7.0 < modern["validation_loss"] < 8.0
    config = AutoConfig.from_pretrained(tmp_path / "modern")
    assert config.model_type == "modernbert" and config.sparse_prediction
    assert "token_type_ids" not in AutoTokenizer.from_pretrained(tmp_path / "modern")("中文")
    tagger = AutoModelForTokenClassification.from_pretrained(tmp_path / "modern", num_labels=7)
    assert type(tagger).__name__ == "ModernBertForTokenClassification"

    sparse = AutoModelForMaskedLM.from_pretrained(tmp_path / "modern").eval()  # the head on masked tokens only: the same loss
    dense = AutoModelForMaskedLM.from_pretrained(tmp_path / "modern", sparse_prediction=False).eval()
    ids = torch.randint(5, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) < 0.3, ids, -100)
    with torch.no_grad():
        torch.testing.assert_close(sparse(input_ids=ids, labels=labels).loss, dense(input_ids=ids, labels=labels).loss)


@pytest.mark.parametrize(("extra", "match"), [
    (["--model_type", "gpt2"], r"--model_type gpt2 does not train with --objective mlm; expected one of \['bert', 'modernbert'\]"),
    (["--tokenizer", "bpe"], r"--objective mlm makes a BERT tokenizer of characters: use it with --tokenizer char"),
    (["--packing", "flat"], r"--objective mlm masks blocks of tokens \(run_mlm.py's default\): use it with --packing blocks"),
    (["--mlm_probability", "0"], r"--mlm_probability must lie in \(0, 1\); got 0.0"),
])
def test_masked_lm_bad_options_are_one_clear_error(tmp_path, extra, match):
    with pytest.raises(pretrain.InputError, match=match):
        _run_mlm(tmp_path / "bad", *extra)


def test_causal_lm_with_an_encoder_is_one_clear_error(corpus, tmp_path):
    with pytest.raises(pretrain.InputError, match=r"--model_type bert does not train with --objective clm; expected gpt2 or llama"):
        _run(corpus, tmp_path / "bad", "--model_type", "bert")
