"""Tests of ``scripts/pretrain.py``: the run_clm data path and hf_dtype's give the same losses, resume, tokenizers, bad input.

Offline and small: the first 30,000 characters of the committed tiny Shakespeare, a 1-layer model of width 32.
"""

from __future__ import annotations

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
from finetune_fixtures import reset_accelerate  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "tinyshakespeare" / "input.txt"
SCRIPT = str(ROOT / "scripts" / "pretrain.py")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


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
    assert {"metrics.json", "sample.txt", "config.json", "tokenizer.json"} <= {p.name for p in written.iterdir()}


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


def test_help_shows_the_defaults_and_the_committed_corpus():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "pretrain.py"), "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert "committed tiny Shakespeare" in text and "--max_train_steps MAX_TRAIN_STEPS Optimizer steps. (default: 2000)" in text
