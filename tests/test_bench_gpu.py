"""Tests of ``scripts/bench_gpu.py``: its logic runs on the CPU (``--device cpu --quick``) and writes every figure.

One quick run on the committed samples (the tiny BERT of ``finetune_fixtures`` as ``finetune.py``'s model, few
batches and steps) serves the tests of its report; the figures of a CPU run say nothing about a GPU, so the tests
check the report's shape, that every figure is a positive number, and what is exact: the bytes of a batch.
"""

from __future__ import annotations

import json

import pytest

pytest.register_assert_rewrite("finetune_fixtures")  # it is imported here before pytest_plugins loads it

# isort: off
from finetune_fixtures import ROOT  # noqa: E402
import bench_gpu  # noqa: E402  (scripts/ is on sys.path once finetune_fixtures is imported)
# isort: on

pytest_plugins = ["finetune_fixtures"]  # tiny_model_dir

CASES = {"conll2003_padded_b32", "shakespeare_blocks_12x64", "shakespeare_blocks_8x1024"}
RUNS = {"datasets-default/no", "compact/no"}


@pytest.fixture(scope="module")
def report(tiny_model_dir, tmp_path_factory) -> dict:
    """The JSON of one quick CPU run (with ``--study``, which the CPU skips)."""
    path = tmp_path_factory.mktemp("bench_gpu") / "gpu.json"
    payload = bench_gpu.main(["--device", "cpu", "--quick", "--batch_sizes", "32", "--batches", "4", "--model_name_or_path",
                              str(tiny_model_dir), "--study", "--output_json", str(path)])
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(payload))
    return written


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_report_names_the_device_and_its_software(report):
    assert report["benchmark"] == "bench_gpu" and report["quick"] is True
    assert report["command"].startswith("python scripts/bench_gpu.py --device cpu --quick")
    device = report["device"]
    assert device["type"] == "cpu" and device["device"] == "cpu" and device["name"]
    assert device["torch"] and device["accelerate"] and "cuda" in device
    assert report["settings"]["timer"] == "time.perf_counter"
    assert {"machine", "code", "load_average_at_start", "load_average_at_end"} <= set(report)


def test_every_transfer_figure_is_a_positive_number(report):
    assert set(report["transfer"]) == CASES
    import torch

    for case in report["transfer"].values():
        assert set(case["methods"]) == set(bench_gpu.TRANSFERS)
        for key, method in case["methods"].items():
            assert method["batches"] == 4
            assert all(_positive(method[name]) for name in ("bytes_per_batch", "s_per_batch", "gb_per_s"))
            assert all(_positive(value) for value in method["s_per_batch_rounds"])
            # memory is pinned only where there is a GPU to pin it for: the report says what the batches were
            assert method["pinned"] is (key.endswith("_pinned") and torch.cuda.is_available())
            assert method["non_blocking"] is key.endswith("_pinned")
        assert _positive(case["widen"]["device_s_per_batch"]) and _positive(case["widen"]["cpu_s_per_batch"])
        assert _positive(case["storage_transfer_plus_widen_s_per_batch"])
        assert case["same_values_as_int64"] is True
        assert set(case["widen"]["dtypes"].values()) == {"int64"}


def _itemsizes(dtypes: dict[str, str]) -> int:
    import torch

    return sum(getattr(torch, name).itemsize for name in dtypes.values())


def test_storage_batches_cross_in_fewer_bytes_by_their_dtypes(report):
    """The same rows padded alike: the bytes ratio is exactly that of the dtypes' sizes (CoNLL: uint16 + int8 + bool + bool
    against four int64, 5/32; blocks: the storage columns against run_clm.py's three int64 columns)."""
    conll = report["transfer"]["conll2003_padded_b32"]
    assert conll["methods"]["storage_pinned"]["dtypes"] == {"input_ids": "uint16", "token_type_ids": "bool", "attention_mask": "bool",
                                                             "labels": "int8"}
    assert conll["bytes_ratio"] == pytest.approx(5 / 32)
    for case in report["transfer"].values():
        methods = case["methods"]
        expected = _itemsizes(methods["storage_pinned"]["dtypes"]) / _itemsizes(methods["int64_pinned"]["dtypes"])
        assert case["bytes_ratio"] == pytest.approx(expected) and case["bytes_ratio"] < 0.2
        assert methods["storage_pageable"]["bytes_per_batch"] == methods["storage_pinned"]["bytes_per_batch"]
        assert set(methods["int64_pageable"]["dtypes"].values()) == {"int64"}


def test_data_wait_of_both_scripts_on_both_data_paths(report):
    for script in ("finetune", "pretrain"):
        runs = report["data_wait"][script]["runs"]
        assert set(runs) == RUNS
        for run in runs.values():
            assert run["steps"] == 2 and run["warmup_steps"] == 0 and 0 < run["data_wait_share"] < 1
            assert all(_positive(run[key]) for key in ("wait_s_per_step", "step_s", "rows_per_s", "tokens_per_s", "bytes_per_batch"))
            assert run["wait_s_per_step"] < run["step_s"]
        default, compact = runs["datasets-default/no"], runs["compact/no"]
        assert set(default["batch_dtypes"].values()) == {"int64"}
        assert compact["batch_dtypes"]["input_ids"] in ("uint8", "uint16")
        assert compact["bytes_per_batch"] < default["bytes_per_batch"] / 4
    assert report["data_wait"]["finetune"]["model"] == "tiny_bert0"  # the folder's name: no path of this machine in the report
    assert report["data_wait"]["finetune"]["rows"] == 500


def test_the_study_is_skipped_on_the_cpu(report):
    assert report["study"] == {"status": bench_gpu.SKIPPED_ON_CPU}


def test_study_needs_the_flag_on_a_gpu():
    import torch

    args = bench_gpu.parse_args(["--quick"])
    assert bench_gpu.run_study(args, torch.device("cuda")) == {"status": "not run: pass --study"}


def test_precisions_default_to_bf16_too_where_the_gpu_has_it():
    args = bench_gpu.parse_args([])
    assert bench_gpu.precisions_for(args, {"bf16_supported": True}) == ["no", "bf16"]
    assert bench_gpu.precisions_for(args, {"type": "cpu"}) == ["no"]
    assert bench_gpu.precisions_for(bench_gpu.parse_args(["--mixed_precision", "fp16"]), {"bf16_supported": True}) == ["fp16"]


def test_same_values_sees_a_difference():
    import torch

    reference = [{"input_ids": torch.tensor([[1, 2]]), "labels": torch.tensor([[0, -100]])}]
    assert bench_gpu.same_values([{"input_ids": torch.tensor([[1, 2]]), "labels": torch.tensor([[0, -100]])}], reference)
    assert not bench_gpu.same_values([{"input_ids": torch.tensor([[1, 3]]), "labels": torch.tensor([[0, -100]])}], reference)
    assert not bench_gpu.same_values([{"input_ids": torch.tensor([[1, 2]], dtype=torch.int32)}], reference)  # dtype too
    assert not bench_gpu.same_values([], reference)


def test_missing_data_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match=r"no data file at .*conll2003/train\.jsonl; pass --data_dir"):
        bench_gpu.main(["--device", "cpu", "--data_dir", str(tmp_path), "--output_json", str(tmp_path / "gpu.json")])
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.parametrize("option", ["--steps", "--batches", "--repeats"])
def test_counts_must_be_positive(option, capsys):
    with pytest.raises(SystemExit):
        bench_gpu.parse_args([option, "0"])
    assert f"{option} must be at least 1; got 0" in capsys.readouterr().err


def test_quick_reads_the_committed_samples(tmp_path):
    args = bench_gpu.parse_args(["--quick", "--data_dir", str(tmp_path)])
    assert bench_gpu.conll_dir(args) == ROOT / "tests" / "data" / "conll2003_sample"
    text = bench_gpu.shakespeare_file(args, tmp_path).read_text(encoding="utf-8")
    assert text.count("\n") == bench_gpu.QUICK_LINES and text.startswith("First Citizen:")
