"""Tests of ``scripts/finetune.py``: parity of the data paths, resume, multi-process evaluation, outputs, bad input.

Offline and small: a 2-layer BERT of hidden size 32 (dropout 0.1, as BERT's default) with the MiniLM tokenizer,
40 training sentences, ``max_length`` 32. Runs go through ``finetune.run`` in this process, except the command
line and multi-process ones, which run the script in a subprocess. Every test runs in its own temporary folder,
so the default output folder lands there. ``-m "not slow"`` is the quick check; the slow tests (resume,
several processes) run in CI.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.register_assert_rewrite("finetune_fixtures")  # it is imported here before pytest_plugins loads it

# isort: off
from finetune_fixtures import (  # noqa: E402
    PEOPLES_DAILY,
    ROOT,
    SCRIPTS,
    SHOPPING_REVIEWS,
    free_port,
    ner_argv,
    parse,
    read_jsonl,
    reset_accelerate,
    subprocess_env,
    write_jsonl,
)
import finetune  # noqa: E402  (scripts/ is on sys.path once finetune_fixtures is imported)
import study_support  # noqa: E402
from finetune_data import CONLL_LABELS, InputError, label_space, tokenize_datasets  # noqa: E402
# isort: on

pytest_plugins = ["finetune_fixtures"]  # tiny_model_dir, char_bert_dir, char_modernbert_dir, ner_files, classification_files

SCRIPT = str(SCRIPTS / "finetune.py")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Each test in its own folder: a run without --output_dir writes to ./outputs/finetune there."""
    monkeypatch.chdir(tmp_path)


def run(argv: list[str], make_dataloaders=finetune.get_dataloaders) -> dict:
    reset_accelerate()
    return finetune.run(parse(argv), make_dataloaders)


def run_script(argv: list[str], cwd: Path, *, launcher: tuple[str, ...] = (), timeout: int = 300) -> subprocess.CompletedProcess:
    """``python [launcher] scripts/finetune.py ARGV`` in ``cwd``, offline."""
    command = [sys.executable, *launcher, SCRIPT, *argv]
    return subprocess.run(command, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------- parity


def test_data_paths_give_identical_losses_and_predictions(tiny_model_dir, ner_files, tmp_path):
    """datasets-default, compact widened on the device, compact widened on the CPU, a plan file, the study's classic path:
    same rows in the same order and the same padding, so the very same floats at every step (dropout on)."""
    argv = ner_argv(tiny_model_dir, ner_files, test=True)
    default = run([*argv, "--plan", "datasets-default"])
    device = run([*argv, "--plan", "compact", "--widen", "device"])
    cpu = run([*argv, "--plan", "compact", "--widen", "cpu"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(device["plan"]))
    from_file = run([*argv, "--plan", str(plan_file)])
    classic = run([*argv, "--plan", "datasets-default"], study_support.classic_dataloaders)

    assert len(default["step_losses"]) == 10  # 40 rows / 8 per batch * 2 epochs
    for other in (device, cpu, from_file, classic):
        assert other["step_losses"] == default["step_losses"]
        assert other["predictions"] == default["predictions"]
        assert other["validation"] == default["validation"]
        assert other["test"] == default["test"]

    assert default["batch_dtypes"] == dict.fromkeys(["input_ids", "token_type_ids", "attention_mask", "labels"], "int64")
    assert device["batch_dtypes"]["input_ids"] == "uint16" and device["batch_dtypes"]["labels"] == "int8"
    assert cpu["batch_dtypes"]["input_ids"] == "int64"
    assert device["bytes_per_batch"] < default["bytes_per_batch"] / 4
    assert device["plan_bytes_saved"] == default["dataset_bytes"] - device["dataset_bytes"] > 0
    assert default["plan"] is None and device["plan"]["input_ids"]["storage"] == "uint16"
    assert device["plan"]["attention_mask"]["derived"] == "ones"
    assert device["train_rows_seen"] == 80 and device["train_rows_per_s"] > 0


def test_plan_file_naming_input_ids_alone(tiny_model_dir, ner_files, tmp_path):
    """A plan of input_ids alone (issue 13, 0b: it ended in a TypeError, the batches held no labels, so no loss): the other
    columns are kept as datasets stores them and reach the model padded as the collator pads them, so the run trains as
    the default path does, and the bytes saved are those of input_ids alone (int32 -> uint16: 2 bytes a token)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"input_ids": {"storage": "uint16", "compute": "int64", "pad": 0}}))
    argv = ner_argv(tiny_model_dir, ner_files, "--num_train_epochs", "1")
    default = run([*argv, "--plan", "datasets-default"])
    partial = run([*argv, "--plan", str(plan)])
    assert partial["step_losses"] == default["step_losses"]
    assert partial["validation"] == default["validation"]
    assert partial["batch_dtypes"] == {"input_ids": "uint16", "token_type_ids": "int8", "attention_mask": "int8", "labels": "int64"}
    assert partial["plan"]["labels"] == {"storage": "int64", "pad": -100}
    tokens = sum(len(row) for row in finetune.prepare_data(finetune.check_args(parse(argv))).tokenized["train"]["input_ids"])
    assert partial["plan_bytes_saved"] == 2 * tokens


def test_group_by_length_eval_steps_plots_and_a_time_limit(tiny_model_dir, ner_files, tmp_path):
    """--group_by_length: both data paths take the grouped order, so their losses are equal; --eval_steps scores
    validation every N steps with the training minutes, drawn in f1.png; plots.py draws runs side by side;
    --max_train_minutes stops early and says so."""
    import plots

    argv = ner_argv(tiny_model_dir, ner_files, "--max_length", "96", "--group_by_length", "--eval_steps", "2")
    grouped = run([*argv, "--output_dir", str(tmp_path / "grouped")])
    default = run([*argv, "--plan", "datasets-default", "--output_dir", str(tmp_path / "default")])
    plain = run(ner_argv(tiny_model_dir, ner_files, "--max_length", "96", "--output_dir", str(tmp_path / "plain")))
    assert grouped["step_losses"] == default["step_losses"] != plain["step_losses"]  # less padding: test_length_grouping.py
    assert grouped["loss_weighting"] == default["loss_weighting"] == "token" and plain["loss_weighting"] == "batch"
    per_batch = run([*argv, "--loss_weighting", "batch", "--output_dir", str(tmp_path / "per_batch")])
    assert per_batch["step_losses"] != grouped["step_losses"]
    trainers = run([*argv, "--grouped_batch_order", "longest_first", "--output_dir", str(tmp_path / "trainers")])
    assert grouped["grouped_batch_order"] == "shuffled" and trainers["grouped_batch_order"] == "longest_first"
    assert trainers["step_losses"] != grouped["step_losses"] and plain["grouped_batch_order"] is None
    evaluations = grouped["evaluations"]
    assert [entry["step"] for entry in evaluations] == [2, 4, 5, 6, 8, 10]  # every 2 steps, and each epoch's end (5 steps)
    minutes = [entry["train_minutes"] for entry in evaluations]
    assert minutes == sorted(minutes) and minutes[-1] <= grouped["train_seconds"] / 60 + 1e-3
    assert evaluations[-1]["validation"]["f1"] == grouped["validation"]["f1"]
    assert (tmp_path / "grouped" / "f1.png").read_bytes().startswith(b"\x89PNG")
    assert not (tmp_path / "plain" / "f1.png").exists() or plain["evaluations"]
    plots.main([str(tmp_path / "grouped"), str(tmp_path / "default"), "--output", str(tmp_path / "both.png")])
    assert (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit, match=r"has no metrics\.json"):
        plots.main([str(tmp_path), "--output", str(tmp_path / "none.png")])

    stopped = run([*argv, "--max_train_minutes", "1e-6", "--output_dir", str(tmp_path / "stopped")])
    assert stopped["stopped_by"] == "max_train_minutes" and stopped["completed_steps"] == 1
    assert grouped["stopped_by"] == "max_train_steps" and grouped["completed_steps"] == 10


def test_token_weighted_loss_weighs_every_labelled_token_alike():
    """A batch's loss is its summed cross-entropy over the mean labelled tokens of a batch (the split's labelled tokens
    per row times the batch size): a short-row batch counts for its tokens, not as much as a long-row one."""
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=generator)
    labels = torch.tensor([[0, 1, -100, -100, -100], [2, 1, 0, 1, 2]])
    per_token = torch.nn.functional.cross_entropy(logits.view(-1, 3), labels.view(-1), ignore_index=-100, reduction="none")
    assert torch.allclose(finetune.token_weighted_loss(logits, labels, 3.5), per_token.sum() / 3.5)
    rows = Dataset.from_dict({"labels": [[-100, 1, 2, -100], [-100, 0, -100], [-100, 1, 1, 1, -100]]})
    assert finetune.labelled_tokens_per_batch(rows, 4) == 6 / 3 * 4


def test_bf16_products_on_float32_kernels_train_like_torchs_own_bf16(tiny_model_dir):
    """The study's bf16 on a CPU without bf16 instructions: a bf16 GEMM's result up to the order of the sums, forward and
    backward, so three bf16-autocast steps land far closer to torch's own bf16 kernels than float32 does."""
    import copy

    import torch
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(0)
    base = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=5)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randint(1000, 2000, (8, 16), generator=generator), torch.randint(0, 5, (8, 16), generator=generator))
               for _ in range(3)]

    def losses(autocast: bool, kernels: study_support.Bf16MatmulsOnFloat32Kernels | None = None) -> torch.Tensor:
        model, out = copy.deepcopy(base), []
        model.eval()  # no dropout: the three runs differ by their arithmetic alone
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for input_ids, labels in batches:
            with kernels or contextlib.nullcontext(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = model(input_ids=input_ids, labels=labels).loss
            with kernels or contextlib.nullcontext():
                loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            out.append(loss.item())
        return torch.tensor(out, dtype=torch.float64)

    kernels = study_support.Bf16MatmulsOnFloat32Kernels()
    native, emulated, float32 = losses(True), losses(True, kernels), losses(False)
    assert kernels.calls >= 3 * 2 * 13  # forward and backward products of every step, not the forward alone
    assert (emulated - native).abs().max() < (float32 - native).abs().max() / 4

    a = torch.randn(64, 48, generator=generator).bfloat16()
    b = torch.randn(48, 40, generator=generator).bfloat16()
    with study_support.Bf16MatmulsOnFloat32Kernels():
        product = a @ b
    assert product.dtype == torch.bfloat16 and torch.equal(product, (a.float() @ b.float()).bfloat16())
    assert torch.allclose(product.float(), (a @ b).float(), rtol=2**-7, atol=1e-2)

def test_from_scratch_keeps_the_architecture_and_draws_new_weights(tiny_model_dir, ner_files, tmp_path):
    """--from_scratch: the model of the folder's config, seeded random weights (the baseline of what pretraining gives)."""
    argv = ner_argv(tiny_model_dir, ner_files, "--num_train_epochs", "1")
    pretrained = run([*argv, "--output_dir", str(tmp_path / "pretrained")])
    scratch = run([*argv, "--from_scratch", "--output_dir", str(tmp_path / "scratch")])
    again = run([*argv, "--from_scratch", "--output_dir", str(tmp_path / "again")])
    assert scratch["from_scratch"] and not pretrained["from_scratch"]
    assert scratch["num_parameters"] == pretrained["num_parameters"]
    assert scratch["step_losses"] == again["step_losses"] != pretrained["step_losses"]
    with pytest.raises(InputError, match="--from_scratch trains new weights"):
        run([*argv, "--from_scratch", "--eval_only"])


def test_mixed_precision_is_the_launchers_unless_the_flag_is_given(tiny_model_dir, ner_files, monkeypatch, capsys):
    """`accelerate launch --mixed_precision bf16 finetune.py` sets ACCELERATE_MIXED_PRECISION=bf16: the run trains in bf16
    (the flag's old default 'no' overrode it) and says so in its first line; --mixed_precision, when given, wins."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    argv = ner_argv(tiny_model_dir, ner_files, "--max_train_steps", "1", "--cpu")
    assert run(argv)["mixed_precision"] == "bf16"
    assert capsys.readouterr().out.splitlines()[0] == "device cpu, 1 process, mixed precision bf16 (from accelerate launch)"
    assert run([*argv, "--mixed_precision", "no"])["mixed_precision"] == "no"
    assert capsys.readouterr().out.splitlines()[0] == "device cpu, 1 process, mixed precision no (from --mixed_precision)"


def test_metrics_json_and_saved_model(tiny_model_dir, ner_files, tmp_path):
    """The output folder holds a loadable model with the label names, the tokenizer, metrics.json, the predictions and
    TensorBoard events; --eval_only on the saved model gives the same scores and predictions."""
    out = tmp_path / "out"
    metrics = run([*ner_argv(tiny_model_dir, ner_files), "--output_dir", str(out), "--with_tracking"])
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("step_losses", "epochs", "validation", "train_rows_per_s", "dataset_bytes", "plan_bytes_saved", "bytes_per_batch",
                "plan", "batch_dtypes"):
        assert key in saved, key
    assert saved["step_losses"] == metrics["step_losses"]
    assert [epoch["epoch"] for epoch in saved["epochs"]] == [0, 1]
    assert saved["epochs"][-1]["validation"] == {key: value for key, value in saved["validation"].items() if key != "per_type"}
    assert {"precision", "recall", "f1", "per_type"} <= set(saved["validation"])
    assert json.loads((out / "predictions_validation.json").read_text()) == metrics["predictions"]["validation"]
    assert list(out.glob("finetune/events.out.tfevents*")), sorted(p.name for p in out.rglob("*"))

    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out)
    assert [config.id2label[i] for i in range(config.num_labels)] == CONLL_LABELS
    assert AutoTokenizer.from_pretrained(out).vocab_size == 30522
    again = run([*ner_argv(out, ner_files), "--eval_only", "--output_dir", str(tmp_path / "eval")])
    assert again["validation"] == metrics["validation"]
    assert again["predictions"]["validation"] == metrics["predictions"]["validation"]
    assert (tmp_path / "eval" / "eval_metrics.json").is_file()
    argmax = run([*ner_argv(out, ner_files), "--eval_only", "--ner_decoding", "argmax", "--output_dir", str(tmp_path / "argmax")])
    assert metrics["ner_decoding"] == "iob2" and argmax["ner_decoding"] == "argmax" and "argmax" not in argmax["validation"]
    assert metrics["validation"]["argmax"] == {k: v for k, v in argmax["validation"].items() if k != "per_type"}


def test_classification_text_and_tsv(tiny_model_dir, classification_files):
    """Sequence classification from JSON Lines (string labels, sorted) and from GLUE-style TSV (id labels, quoting off)."""
    common = ["--task", "classification", "--model_name_or_path", str(tiny_model_dir), "--max_length", "32",
              "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--seed", "3"]
    jsonl = run([*common, "--train_file", str(classification_files["train"]), "--validation_file", str(classification_files["validation"])])
    assert jsonl["labels"] == ["other", "person"]
    assert {"accuracy", "f1"} <= set(jsonl["validation"])
    assert len(jsonl["predictions"]["validation"]) == 24
    assert jsonl["plan"]["labels"]["storage"] in ("bool", "int8", "uint8")

    tsv = run([*common, "--train_file", str(classification_files["train_tsv"]), "--validation_file",
               str(classification_files["validation_tsv"]), "--plan", "datasets-default"])
    assert tsv["labels"] == ["0", "1"]
    assert tsv["rows"] == {"train": 48, "validation": 24}
    # the same sentences and labels (other=0, person=1), the same order: the same losses
    assert tsv["step_losses"] == jsonl["step_losses"]


def test_local_dataset_folder_through_load_dataset(tiny_model_dir, ner_files, tmp_path):
    """--dataset_name takes what load_dataset takes; offline, a local folder of train/validation files."""
    folder = tmp_path / "conll_folder"
    folder.mkdir()
    for split in ("train", "validation"):
        shutil.copy(ner_files[split], folder / f"{split}.jsonl")
    metrics = run(["--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(folder), "--max_length", "32",
                   "--max_train_steps", "2", "--per_device_train_batch_size", "8"])
    assert metrics["rows"] == {"train": 40, "validation": 20}
    assert metrics["completed_steps"] == 2


# --------------------------------------------------------------------------------------------- Chinese, from zero

PEOPLES_DAILY_TAGS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


@pytest.mark.parametrize("encoder", ["char_bert_dir", "char_modernbert_dir"])
def test_ner_with_the_char_encoder_from_pretrain_on_a_hub_layout_folder(encoder, request, tmp_path, capsys):
    """`finetune.py --model_name_or_path <pretrain.py --objective mlm output> --dataset_name <Parquet folder>`, no other
    option, for a BERT and a ModernBERT: the label names are the ClassLabel's, every character is one token (so one
    prediction a character), no [UNK]."""
    out, model = tmp_path / "ner", request.getfixturevalue(encoder)
    metrics = run(["--model_name_or_path", str(model), "--dataset_name", str(PEOPLES_DAILY), "--output_dir", str(out),
                   "--max_length", "256", "--max_train_steps", "3", "--per_device_eval_batch_size", "64"])
    assert metrics["labels"] == PEOPLES_DAILY_TAGS
    assert metrics["rows"] == {"train": 200, "validation": 50, "test": 50}
    assert metrics["unknown_token_share"] == 0.0  # the pretraining text holds every train character
    assert "warning:" not in capsys.readouterr().out
    saved = json.loads((out / "metrics.json").read_text())
    assert {"f1", "precision", "recall", "accuracy"} <= set(saved["validation"]) and 0.0 <= saved["validation"]["f1"] <= 1.0
    from datasets import load_dataset

    sentences = load_dataset(str(PEOPLES_DAILY), split="validation")["tokens"]
    assert [len(row) for row in metrics["predictions"]["validation"]] == [len(row) for row in sentences]
    assert {tag for row in metrics["predictions"]["validation"] for tag in row} <= set(PEOPLES_DAILY_TAGS)
    for row in metrics["predictions"]["validation"]:  # decoded under the IOB2 rules: every I-X continues an X
        assert all(not tag.startswith("I-") or before[2:] == tag[2:] for before, tag in zip(["O", *row[:-1]], row, strict=True)), row


@pytest.mark.parametrize("encoder", ["char_bert_dir", "char_modernbert_dir"])
def test_classification_with_the_char_encoder_on_a_hub_layout_folder(encoder, request, tmp_path):
    """Shopping reviews (text + ClassLabel negative/positive): accuracy in metrics.json, the label names the ClassLabel's."""
    out, model = tmp_path / "reviews", request.getfixturevalue(encoder)
    metrics = run(["--task", "classification", "--model_name_or_path", str(model), "--dataset_name", str(SHOPPING_REVIEWS),
                   "--output_dir", str(out), "--max_length", "64", "--max_train_steps", "3"])
    assert metrics["labels"] == ["negative", "positive"]
    saved = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "f1"} <= set(saved["validation"]) and len(metrics["predictions"]["validation"]) == 50
    assert set(metrics["predictions"]["validation"]) <= {"negative", "positive"}
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(out).id2label == {0: "negative", 1: "positive"}


def test_parquet_files_keep_their_class_labels(char_bert_dir, tmp_path):
    """--train_file / --validation_file as Parquet (written by datasets: the ClassLabel feature travels in the file);
    a Parquet file with no row is the usual one-line error."""
    data = PEOPLES_DAILY / "data"
    argv = ["--model_name_or_path", str(char_bert_dir), "--train_file", str(data / "train-00000-of-00001.parquet"), "--validation_file",
            str(data / "validation-00000-of-00001.parquet"), "--max_length", "64", "--max_train_steps", "1"]
    metrics = run(argv)
    assert metrics["labels"] == PEOPLES_DAILY_TAGS and metrics["rows"] == {"train": 200, "validation": 50}
    from datasets import load_dataset

    empty = tmp_path / "empty.parquet"
    load_dataset(str(PEOPLES_DAILY), split="train").select([]).to_parquet(empty)
    with pytest.raises(InputError, match=r"--validation_file '.*empty\.parquet' is empty; expected at least one example"):
        run([*argv[:4], "--validation_file", str(empty)])
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(InputError, match=r"--train_file '.*text\.parquet' cannot be read as Parquet: "):
        run([*argv[:2], "--train_file", str(tmp_path / "text.parquet")])


def test_unknown_tokens_warning_with_the_english_minilm_tokenizer(tiny_model_dir, capsys):
    """The MiniLM tokenizer (English, uncased) makes 61% of the People's Daily characters [UNK] (60.6% of the tokens
    kept by --max_length 64): one line says so, names the share and what to use instead; metrics.json records the share."""
    metrics = run(["--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(PEOPLES_DAILY), "--max_length", "64",
                   "--max_train_steps", "1"])
    assert metrics["unknown_token_share"] == pytest.approx(0.606, abs=1e-3)
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, warnings
    assert re.fullmatch(r"warning: 60\.6% of the train tokens are \[UNK\] \(unknown to the tokenizer of .*\), so the model cannot "
                        r"tell them apart; fine-tune a model whose vocabulary covers the text, e\.g\. one pretrained on it with "
                        r"scripts/pretrain\.py --objective mlm\.", warnings[0]), warnings[0]


# --------------------------------------------------------------------------------------------- the command line


def test_help_shows_defaults_and_the_sample():
    done = run_script(["--help"], ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    text = " ".join(done.stdout.split())
    assert "With no arguments: fine-tunes the pretrained all-MiniLM-L6-v2 on the committed CoNLL-2003 sample" in text
    assert "tests/data/conll2003_sample" in text
    for default in ("(default: outputs/finetune)", "(default: compact)", "(default: 0.0003)", "(default: 3)", "(default: 42)"):
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text


def test_run_without_output_dir_writes_to_the_default_folder_and_logs_plain_lines(tiny_model_dir, ner_files, tmp_path):
    """In a fresh folder: outputs/finetune gets metrics.json, the model and the predictions. Its output, to pipes (not a
    terminal), is plain lines (issue 13): where it runs first, a step line every --logging_steps steps, one aligned line per
    epoch, one line on the new classifier head instead of transformers' load report, and where things went; no bar frame."""
    done = run_script([*ner_argv(tiny_model_dir, ner_files, "--num_train_epochs", "1", "--logging_steps", "2")], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stdout + done.stderr
    assert re.fullmatch(r"device \S+, 1 process, mixed precision no \(from the default\)", done.stdout.splitlines()[0])
    steps = [line for line in done.stdout.splitlines() if line.startswith("step ")]
    assert [line.split("  ")[:2] for line in steps] == [["step 2/5", "epoch 0.40"], ["step 4/5", "epoch 0.80"]], steps
    assert all(re.fullmatch(r"step \d/5  epoch \d\.\d\d  loss \d\.\d{4}  lr \d\.\d\de-\d\d", line) for line in steps), steps
    out = tmp_path / "outputs" / "finetune"
    for name in ("metrics.json", "f1.png", "predictions_validation.json", "config.json", "model.safetensors", "tokenizer.json"):
        assert (out / name).is_file(), name
    lines = done.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 1 and re.fullmatch(r"epoch 1/1  train loss \d+\.\d{4}  validation f1 \d\.\d{4}  \(\d+\.\d s\)", epochs[0]), lines
    assert lines[-1] == (f"saved in {Path('outputs', 'finetune')}: metrics.json, f1.png, predictions_validation.json, "
                         "the model and its tokenizer")
    assert any(line.endswith("new classifier head for 9 labels (classifier.bias, classifier.weight)") for line in lines)
    assert "LOAD REPORT" not in done.stdout + done.stderr


# --------------------------------------------------------------------------------------------- resume


def resumed_equals(full: dict, resumed: dict, checkpoint: Path) -> None:
    """The resumed run continues the uninterrupted one exactly: the same later losses, model and scores."""
    assert resumed["resumed_from"] == str(checkpoint)
    assert resumed["completed_steps"] == full["completed_steps"]
    assert resumed["step_losses"] == full["step_losses"][resumed["resumed_at_step"]:]
    assert resumed["validation"] == full["validation"]
    assert resumed["predictions"] == full["predictions"]


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["compact", "datasets-default"])
def test_resume_mid_epoch_as_complete_nlp_example(tiny_model_dir, ner_files, tmp_path, plan):
    """The shape of accelerate's complete_nlp_example: no set_epoch call, load_state and skip_first_batches on resume,
    dropout on. A checkpoint in epoch 2 of 3 (step 7 of 15, two batches in) resumes to the uninterrupted run's losses,
    step for step, on both data paths: the loader's state (its epoch) is saved with the checkpoint."""
    assert ".set_epoch(" not in Path(SCRIPT).read_text()
    argv = ner_argv(tiny_model_dir, ner_files, "--num_train_epochs", "3", "--plan", plan)
    full = run([*argv, "--checkpointing_steps", "7", "--output_dir", str(tmp_path / "full")])
    assert full["completed_steps"] == 15
    checkpoint = tmp_path / "full" / "step_7"
    resumed = run([*argv, "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "resumed")])
    assert resumed["resumed_at_step"] == 7 and [epoch["epoch"] for epoch in resumed["epochs"]] == [1, 2]
    resumed_equals(full, resumed, checkpoint)


@pytest.mark.slow
def test_resume_latest_epoch_checkpoint(tiny_model_dir, ner_files, tmp_path):
    """'latest' picks the furthest checkpoint of --output_dir; an epoch-end checkpoint resumes at the next epoch."""
    argv = ner_argv(tiny_model_dir, ner_files, "--num_train_epochs", "3")
    full = run([*argv, "--checkpointing_steps", "epoch", "--output_dir", str(tmp_path / "full")])
    resume_dir = tmp_path / "resume"
    for name in ("epoch_0", "epoch_1"):
        shutil.copytree(tmp_path / "full" / name, resume_dir / name)
    resumed = run([*argv, "--resume_from_checkpoint", "latest", "--output_dir", str(resume_dir)])
    assert resumed["resumed_at_step"] == 10 and len(resumed["step_losses"]) == 5
    resumed_equals(full, resumed, resume_dir / "epoch_1")


@pytest.mark.slow
def test_resume_with_gradient_accumulation(tiny_model_dir, ner_files, tmp_path):
    """5 batches per epoch, 2 per optimizer step: 3 steps per epoch, the last of one batch; step 4 is one step into
    epoch 2, so the resumed run skips 2 batches."""
    argv = ner_argv(tiny_model_dir, ner_files, "--gradient_accumulation_steps", "2", "--plan", "datasets-default")
    full = run([*argv, "--checkpointing_steps", "2", "--output_dir", str(tmp_path / "full")])
    assert full["completed_steps"] == 6
    checkpoint = tmp_path / "full" / "step_4"
    resumed = run([*argv, "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "resumed")])
    resumed_equals(full, resumed, checkpoint)


# --------------------------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_torchrun_two_processes_and_accelerate_launch_evaluation(tiny_model_dir, ner_files, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) trains and evaluates, each example once (20 rows in batches of 8 over 2
    processes: the repeated rows are dropped); `accelerate launch` evaluating the saved model in one process agrees."""
    out = tmp_path / "ddp"
    torchrun = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()))
    done = run_script([*ner_argv(tiny_model_dir, ner_files, test=True), "--cpu", "--output_dir", str(out)], ROOT, launcher=torchrun)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["completed_steps"] == 6  # 40 rows over 2 processes in batches of 8: 3 steps per epoch
    assert len(json.loads((out / "predictions_validation.json").read_text())) == 20
    assert done.stdout.count("epoch 2/2  train loss") == 1  # printed by the main process only
    assert done.stdout.splitlines()[0] == "device cpu, 2 processes, mixed precision no (from the default)"

    single = tmp_path / "single"
    launch = ("-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no")
    done = run_script([*ner_argv(out, ner_files, test=True), "--eval_only", "--output_dir", str(single)], ROOT, launcher=launch)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[0] == "device cpu, 1 process, mixed precision no (from accelerate launch)"
    evaluated = json.loads((single / "eval_metrics.json").read_text())
    assert evaluated["num_processes"] == 1
    for split in ("validation", "test"):
        assert evaluated[split] == metrics[split]
        predictions = json.loads((out / f"predictions_{split}.json").read_text())
        assert json.loads((single / f"eval_predictions_{split}.json").read_text()) == predictions


# --------------------------------------------------------------------------------------------- labels and alignment


def test_label_alignment_first_subtoken_and_label_all_tokens(tiny_model_dir):
    """'Fischler' splits into sub-tokens: only the first carries B-PER, or all of them with B- turned to I-."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = DatasetDict({"train": Dataset.from_dict({"tokens": [["Fischler", "said"]], "ner_tags": [["B-PER", "O"]]})})
    labels = label_space(raw, "ner_tags", sequence=True)
    assert labels.names == CONLL_LABELS
    pieces = tokenizer.tokenize("Fischler")
    assert len(pieces) > 1

    def aligned(all_tokens: bool) -> list[int]:
        out = tokenize_datasets(raw, tokenizer, labels, task="ner", text_column="tokens", pair_column=None, label_column="ner_tags",
                                max_length=32, label_all_tokens=all_tokens)
        return out["train"][0]["labels"]

    b_per, i_per, o = CONLL_LABELS.index("B-PER"), CONLL_LABELS.index("I-PER"), CONLL_LABELS.index("O")
    continuation = len(pieces) - 1
    assert aligned(False) == [-100, b_per, *[-100] * continuation, o, -100]
    assert aligned(True) == [-100, b_per, *[i_per] * continuation, o, -100]


def test_label_list_sorted_when_not_conll():
    from datasets import Dataset, DatasetDict

    raw = DatasetDict({"train": Dataset.from_dict({"ner_tags": [["O", "B-X"], ["I-X", "O"]]})})
    assert label_space(raw, "ner_tags", sequence=True).names == ["B-X", "I-X", "O"]
    ints = DatasetDict({"train": Dataset.from_dict({"label": [2, 0, 1, 0]})})
    space = label_space(ints, "label", sequence=False)
    assert space.names == ["0", "1", "2"] and space.to_id[2] == 2


# --------------------------------------------------------------------------------------------- bad input


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if training starts: the errors below must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(finetune, "train", refuse)


def _with(files: dict, **replace) -> dict:
    return {**files, **replace}


def test_missing_file(tiny_model_dir, ner_files, tmp_path, no_training):
    files = _with(ner_files, validation=tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match=r"--validation_file '.*nope\.jsonl' does not exist; expected a .*jsonl.* file"):
        run(ner_argv(tiny_model_dir, files))


def test_label_column_that_does_not_exist(tiny_model_dir, ner_files, no_training):
    with pytest.raises(InputError, match=r"The train split has no column 'tags'; its columns are \['id', 'tokens', 'ner_tags'\]"):
        run([*ner_argv(tiny_model_dir, ner_files), "--label_column_name", "tags"])


def test_label_outside_the_label_list(tiny_model_dir, ner_files, tmp_path, no_training):
    rows = read_jsonl(ner_files["validation"])
    rows[3]["ner_tags"][0] = "B-FOOD"
    files = _with(ner_files, validation=write_jsonl(tmp_path / "validation.jsonl", rows))
    with pytest.raises(InputError, match=r"The validation split has label\(s\) \['B-FOOD'\] .* not in the label list \['O', 'B-PER'"):
        run(ner_argv(tiny_model_dir, files))


@pytest.mark.parametrize("content", ["", "\n", "text,label\n"])
def test_empty_split(tiny_model_dir, ner_files, tmp_path, no_training, content):
    suffix = ".csv" if content.startswith("text") else ".jsonl"
    files = _with(ner_files, train=tmp_path / f"train{suffix}")
    files["train"].write_text(content)
    with pytest.raises(InputError, match=r"(--train_file .* is empty|The train split is empty); expected at least one example"):
        run(ner_argv(tiny_model_dir, files))


@pytest.mark.parametrize("kind", ["empty folder", "no weights", "not a path"])
def test_model_path_that_is_not_a_model(tiny_model_dir, ner_files, tmp_path, no_training, kind):
    model = tmp_path / "model"
    if kind == "no weights":
        shutil.copytree(tiny_model_dir, model, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    elif kind == "empty folder":
        model.mkdir()
    else:
        model = tmp_path / "does" / "not" / "exist"
    with pytest.raises(InputError, match=r"--model_name_or_path '.*' is not a model.*; expected a folder with config\.json"):
        run(ner_argv(model, ner_files))


def test_plan_file_that_does_not_fit(tiny_model_dir, ner_files, tmp_path, no_training):
    """A hand-written plan that would lose token ids (int8 cannot hold them) is refused, naming the file, the column and the value."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"input_ids": {"storage": "int8", "compute": "int64", "pad": 0}}))
    with pytest.raises(InputError, match=r"--plan '.*plan\.json' does not fit the tokenized data: .*'input_ids'.*int8"):
        run([*ner_argv(tiny_model_dir, ner_files), "--plan", str(plan)])


def test_command_line_error_is_one_line_before_training(tiny_model_dir, ner_files, tmp_path):
    done = run_script([*ner_argv(tiny_model_dir, ner_files), "--label_column_name", "tags"], tmp_path, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune.py: error: The train split has no column 'tags'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_bad_options(tiny_model_dir, ner_files, tmp_path):
    with pytest.raises(InputError, match=r"--plan 'nope' is neither 'datasets-default', 'compact' nor an existing plan JSON file"):
        run([*ner_argv(tiny_model_dir, ner_files), "--plan", "nope"])
    run([*ner_argv(tiny_model_dir, ner_files), "--max_length", "128", "--max_train_steps", "1"])  # every row fits 64 positions
    with pytest.raises(InputError, match=r"The train split has rows of 128 tokens, longer than the 64 positions of .* "
                                          r"\(max_position_embeddings\); expected --max_length 64 or less"):
        run(["--model_name_or_path", str(tiny_model_dir), "--dataset_name", str(PEOPLES_DAILY), "--max_length", "128"])
    with pytest.raises(InputError, match=r"--loss_weighting token weighs labelled tokens; --task classification"):
        finetune.check_args(parse(["--task", "classification", "--loss_weighting", "token"]))
    with pytest.raises(InputError, match=r"--checkpointing_steps 'often': expected a number of steps or 'epoch'"):
        run([*ner_argv(tiny_model_dir, ner_files), "--checkpointing_steps", "often"])
    with pytest.raises(InputError, match=r"--resume_from_checkpoint latest: no step_N or epoch_N checkpoint folder"):
        run([*ner_argv(tiny_model_dir, ner_files), "--resume_from_checkpoint", "latest", "--output_dir", str(tmp_path)])
    with pytest.raises(InputError, match=r"--resume_from_checkpoint '.*': expected a folder named step_N or epoch_N"):
        (tmp_path / "checkpoint").mkdir()
        run([*ner_argv(tiny_model_dir, ner_files), "--resume_from_checkpoint", str(tmp_path / "checkpoint")])
