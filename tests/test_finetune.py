"""Tests of ``scripts/finetune.py``: parity of the data paths, resume, multi-process evaluation, bad input.

Offline and small: a 2-layer BERT of hidden size 32 with the MiniLM tokenizer, 40 training sentences,
``max_length`` 32. Runs go through ``finetune.run`` in this process, except the command line and
multi-process ones, which run the script in a subprocess.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytest.register_assert_rewrite("finetune_fixtures")  # it is imported here before pytest_plugins loads it

# isort: off
from finetune_fixtures import ROOT, SCRIPTS, free_port, ner_argv, parse, read_jsonl, subprocess_env, write_jsonl  # noqa: E402
import finetune  # noqa: E402  (scripts/ is on sys.path once finetune_fixtures is imported)
from finetune_data import CONLL_LABELS, InputError, label_space, tokenize_datasets  # noqa: E402
# isort: on

pytest_plugins = ["finetune_fixtures"]  # tiny_model_dir, ner_files, classification_files

SCRIPT = str(SCRIPTS / "finetune.py")


def run(argv: list[str]) -> dict:
    return finetune.run(parse(argv))


# --------------------------------------------------------------------------------------------- parity


def test_data_paths_give_identical_losses_and_predictions(tiny_model_dir, ner_files, tmp_path):
    """datasets-default, compact widened on the device, compact widened on the CPU, a plan file, the classic path:
    same rows in the same order and the same padding, so the very same floats at every step."""
    argv = ner_argv(tiny_model_dir, ner_files, test=True)
    default = run([*argv, "--plan", "datasets-default"])
    device = run([*argv, "--plan", "compact", "--widen", "device"])
    cpu = run([*argv, "--plan", "compact", "--widen", "cpu"])
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(device["plan"]))
    from_file = run([*argv, "--plan", str(plan_file)])
    classic = run([*argv, "--plan", "datasets-default", "--data_path", "classic"])

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


def test_metrics_json_and_saved_model(tiny_model_dir, ner_files, tmp_path):
    """The output folder holds a loadable model with the label names, the tokenizer, metrics.json and TensorBoard events."""
    out = tmp_path / "out"
    metrics = run([*ner_argv(tiny_model_dir, ner_files), "--output_dir", str(out), "--with_tracking"])
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("step_losses", "epochs", "validation", "train_rows_per_s", "data_wait_seconds", "data_wait_share", "peak_rss_bytes",
                "dataset_bytes", "plan_bytes_saved", "bytes_per_batch", "plan"):
        assert key in saved, key
    assert saved["step_losses"] == metrics["step_losses"]
    assert [epoch["epoch"] for epoch in saved["epochs"]] == [0, 1]
    assert {"precision", "recall", "f1", "per_type"} <= set(saved["validation"])
    assert 0 <= saved["data_wait_share"] <= 1
    assert saved["peak_rss_bytes"] > 0
    assert list(out.glob("finetune/events.out.tfevents*")), sorted(p.name for p in out.rglob("*"))

    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out)
    assert [config.id2label[i] for i in range(config.num_labels)] == CONLL_LABELS
    assert AutoTokenizer.from_pretrained(out).vocab_size == 30522
    again = run([*ner_argv(out, ner_files), "--eval_only", "--output_dir", str(tmp_path / "eval")])
    assert again["validation"] == metrics["validation"]
    assert again["predictions"]["validation"] == metrics["predictions"]["validation"]


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


# --------------------------------------------------------------------------------------------- resume


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["step_3", "epoch_0"])
def test_resume_from_checkpoint_equals_uninterrupted_run(tiny_model_dir, ner_files, tmp_path, checkpoint):
    """A run resumed from a checkpoint of the uninterrupted run (mid-epoch: step_3 of 5; or after epoch 0) ends
    with the same losses, the same model and the same scores: state, schedule, RNG and data order all restored."""
    every = "3" if checkpoint.startswith("step") else "epoch"
    full_dir = tmp_path / "full"
    argv = ner_argv(tiny_model_dir, ner_files, "--gradient_accumulation_steps", "1")
    full = run([*argv, "--checkpointing_steps", every, "--output_dir", str(full_dir)])
    assert (full_dir / checkpoint).is_dir()

    resumed = run([*argv, "--resume_from_checkpoint", str(full_dir / checkpoint), "--output_dir", str(tmp_path / "resumed")])
    assert resumed["resumed_from"] == str(full_dir / checkpoint)
    assert resumed["step_losses"] == full["step_losses"]
    assert resumed["completed_steps"] == full["completed_steps"] == 10
    assert resumed["validation"] == full["validation"]
    assert resumed["predictions"] == full["predictions"]


@pytest.mark.slow
def test_resume_latest_with_gradient_accumulation(tiny_model_dir, ner_files, tmp_path):
    """'latest' picks the furthest checkpoint of --output_dir; gradient accumulation (5 batches per epoch, 2 per step,
    so 3 optimizer steps per epoch, the last of one batch) resumes on the right batch."""
    argv = ner_argv(tiny_model_dir, ner_files, "--gradient_accumulation_steps", "2")
    full = run([*argv, "--checkpointing_steps", "2", "--output_dir", str(tmp_path / "full")])
    assert full["completed_steps"] == 6
    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    for name in ("step_2", "step_4"):
        shutil.copytree(tmp_path / "full" / name, resume_dir / name)
    resumed = run([*argv, "--resume_from_checkpoint", "latest", "--output_dir", str(resume_dir)])
    assert resumed["resumed_from"] == str(resume_dir / "step_4")
    assert resumed["step_losses"] == full["step_losses"]
    assert resumed["validation"] == full["validation"]


# --------------------------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_torchrun_two_processes_evaluates_each_example_once(tiny_model_dir, ner_files, tmp_path):
    """torchrun --nproc_per_node 2 (gloo on CPU) trains and evaluates; its evaluation of the final model equals
    a single-process evaluation of the saved model (20 rows in batches of 8: the repeated rows are dropped)."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), SCRIPT,
               *ner_argv(tiny_model_dir, ner_files, test=True), "--cpu", "--output_dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2
    assert metrics["completed_steps"] == 6  # 40 rows over 2 processes in batches of 8: 3 steps per epoch
    assert len(json.loads((out / "predictions_validation.json").read_text())) == 20

    single = run([*ner_argv(out, ner_files, test=True), "--eval_only", "--output_dir", str(tmp_path / "single")])
    assert single["num_processes"] == 1
    for split in ("validation", "test"):
        assert single[split] == metrics[split]
        assert single["predictions"][split] == json.loads((out / f"predictions_{split}.json").read_text())


@pytest.mark.slow
def test_accelerate_launch(tiny_model_dir, ner_files, tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT,
               *ner_argv(tiny_model_dir, ner_files, "--max_train_steps", "2"), "--output_dir", str(tmp_path / "out")]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation: {" in done.stdout
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["completed_steps"] == 2


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
    out = tmp_path / "out"
    command = [sys.executable, SCRIPT, *ner_argv(tiny_model_dir, ner_files), "--label_column_name", "tags", "--output_dir", str(out)]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("finetune.py: error: The train split has no column 'tags'")
    assert "Traceback" not in done.stderr
    assert not out.exists()


def test_bad_options(tiny_model_dir, ner_files, tmp_path):
    with pytest.raises(InputError, match=r"--plan 'nope' is neither 'datasets-default', 'compact' nor an existing plan JSON file"):
        run([*ner_argv(tiny_model_dir, ner_files), "--plan", "nope"])
    with pytest.raises(InputError, match=r"--checkpointing_steps 'often': expected a number of steps or 'epoch'"):
        run([*ner_argv(tiny_model_dir, ner_files), "--checkpointing_steps", "often", "--output_dir", str(tmp_path)])
    with pytest.raises(InputError, match=r"--resume_from_checkpoint latest: no step_N or epoch_N checkpoint folder"):
        run([*ner_argv(tiny_model_dir, ner_files), "--resume_from_checkpoint", "latest", "--output_dir", str(tmp_path)])

