"""Tests of the CUDA paths: storage dtypes widened on the GPU, pinned ``non_blocking`` transfers, ``hd.dataloader(pin_memory=True)``,
``accelerate`` on one GPU, and bf16 autocast in ``finetune.py`` and ``pretrain.py``.

They run only where CUDA is available and are skipped elsewhere (CI has no GPU). Each compares what the GPU gives
with the CPU's answer for the same batch: the values must be exact, since widening is a lossless cast.
"""

from __future__ import annotations

import math

import datasets
import pytest
import torch

import hf_dtype as hd

pytest.register_assert_rewrite("finetune_fixtures")  # it is imported here before pytest_plugins loads it

# isort: off
from finetune_fixtures import ROOT, ner_argv, parse, reset_accelerate  # noqa: E402
import finetune  # noqa: E402  (scripts/ is on sys.path once finetune_fixtures is imported)
import pretrain  # noqa: E402
# isort: on

pytest_plugins = ["finetune_fixtures"]  # tiny_model_dir, ner_files

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.usefixtures("fresh_accelerate_state")]  # no device or precision left by an earlier test

DEVICE = torch.device("cuda")

ROWS = {  # three rows of lengths 3, 1 and 2 in every sequence column; the extremes of each storage dtype
    "input_ids": [[101, 65535, 102], [0], [30521, 7]],
    "char_ids": [[0, 255, 64], [1], [2, 3]],
    "labels": [[-100, 127, -128], [0], [8, -100]],
    "flags": [[True, False, True], [False], [True, True]],
    "scores": [[0.5, -1.25, 3.0], [2.0], [1e30, 0.0625]],
    "weights": [[0.5, 1.5, -2.0], [0.25], [-0.0, 65280.0]],  # each a bfloat16 value: stored exactly
    "positions": [[0, 1, 32767], [0], [0, 1]],
    "rating": [3, 0, 255],
}
PLAN = {
    "input_ids": {"storage": "uint16", "compute": "int64", "pad": 0},
    "char_ids": {"storage": "uint8", "compute": "int64", "pad": 0},
    "labels": {"storage": "int8", "compute": "int64", "pad": -100},
    "flags": {"storage": "bool", "compute": "int64", "pad": 0},
    "scores": {"storage": "bfloat16", "compute": "float32", "pad": 0.0},  # bf16 bits (uint16 in Arrow) to float32
    "weights": {"storage": "bfloat16", "compute": "bfloat16", "pad": 0.0},  # bf16 bits viewed as bfloat16
    "positions": {"storage": "uint16", "compute": "int16", "pad": 0},  # a narrower compute dtype: range-checked on the device
    "rating": {"storage": "uint8", "compute": "int64"},
    "attention_mask": {"derived": "ones", "compute": "bool"},
    "token_type_ids": {"derived": "zeros", "compute": "int64"},
}
STORAGE = {"input_ids": torch.uint16, "char_ids": torch.uint8, "labels": torch.int8, "flags": torch.bool, "scores": torch.bfloat16,
           "weights": torch.bfloat16, "positions": torch.uint16, "rating": torch.uint8, "attention_mask": torch.bool,
           "token_type_ids": torch.bool}


@pytest.fixture(scope="module")
def small() -> datasets.Dataset:
    """Every storage dtype in one compact dataset, with the two derived masks."""
    return hd.compact(datasets.Dataset.from_dict(ROWS), PLAN)


@pytest.fixture(scope="module")
def tokens() -> datasets.Dataset:
    """Rows of token ids for blocks and flat batches: 40 rows of 1 to 12 ids below 300 (uint16 storage)."""
    rows = [[(7 * row + i) % 300 for i in range(1 + row % 12)] for row in range(40)]
    return hd.compact(datasets.Dataset.from_dict({"input_ids": rows}), {"input_ids": "uint16"})


def moved(batch: dict, non_blocking: bool = False) -> dict:
    """Every tensor of ``batch`` on the GPU (other values, e.g. flat batches' ``max_length_q``, as they are)."""
    return {name: value.to(DEVICE, non_blocking=non_blocking) if torch.is_tensor(value) else value for name, value in batch.items()}


def assert_same(got: dict, expected: dict) -> None:
    """Same columns, and each tensor of the same dtype and values, ``got``'s on the GPU."""
    assert set(got) == set(expected)
    for name, value in expected.items():
        if not torch.is_tensor(value):
            assert got[name] == value, name
            continue
        assert got[name].dtype == value.dtype, name
        assert got[name].device.type == DEVICE.type, name
        assert torch.equal(got[name].cpu(), value.cpu()), name


# --------------------------------------------------------------------------------------------- widening on the device


def test_batches_cross_in_their_storage_dtypes(small):
    batch = next(iter(hd.dataloader(small, 3, widen="device")))
    assert {name: value.dtype for name, value in batch.items()} == STORAGE
    on_gpu = moved(batch)
    assert all(value.device.type == DEVICE.type for value in on_gpu.values())
    assert {name: value.dtype for name, value in on_gpu.items()} == STORAGE


@pytest.mark.parametrize("column", sorted(STORAGE))
def test_every_storage_dtype_widens_on_the_gpu_exactly_as_on_the_cpu(small, column):
    """uint16 (65535 stays 65535), uint8, int8 (-128 and the -100 pad), bool, bfloat16 bits, derived masks: the GPU's
    ``plan.widen`` equals the CPU's, value for value, and equals the batch served in compute dtypes (``widen="cpu"``)."""
    loader = hd.dataloader(small, 3, widen="device")
    host = next(iter(loader))
    on_cpu = loader.plan.widen(host)
    on_gpu = loader.plan.widen(moved(host))
    served = next(iter(hd.dataloader(small, 3, widen="cpu")))
    assert on_gpu[column].device.type == DEVICE.type  # widened where it is, not on the way back
    assert on_gpu[column].dtype == on_cpu[column].dtype == served[column].dtype
    assert torch.equal(on_gpu[column].cpu(), on_cpu[column])
    assert torch.equal(on_cpu[column], served[column])


def test_the_extremes_survive_the_gpu(small):
    loader = hd.dataloader(small, 3, widen="device")
    batch = loader.plan.widen(moved(next(iter(loader))))
    assert batch["input_ids"][0].tolist() == [101, 65535, 102]
    assert batch["char_ids"][0].tolist() == [0, 255, 64]
    assert batch["labels"].tolist() == [[-100, 127, -128], [0, -100, -100], [8, -100, -100]]
    assert batch["scores"].dtype == torch.float32 and batch["scores"][2, 0].item() == torch.tensor(1e30).bfloat16().float().item()
    assert batch["weights"].dtype == torch.bfloat16 and batch["weights"][2, 1].item() == 65280.0
    assert math.copysign(1.0, batch["weights"][2, 0].item()) == -1.0  # -0.0 keeps its sign bit
    assert batch["attention_mask"].tolist() == [[True] * 3, [True, False, False], [True, True, False]]
    assert batch["token_type_ids"].dtype == torch.int64 and not batch["token_type_ids"].any()
    assert batch["rating"].tolist() == [3, 0, 255]


@pytest.mark.parametrize(("storage", "compute", "value", "match"), [
    ("uint16", "int16", 40000, r"'ids'.*value 40000 does not fit int16"),
    ("int16", "int8", -300, r"'ids'.*value -300 does not fit int8"),
])
def test_a_narrower_compute_dtype_is_range_checked_on_the_gpu(storage, compute, value, match):
    """Lossless or loud on the device too: a value the compute dtype cannot hold is an error, never a wrapped number."""
    plan = {"ids": {"storage": storage, "compute": compute, "pad": 0}}
    small = hd.compact(datasets.Dataset.from_dict({"ids": [[1, 2], [value]]}), plan)
    loader = hd.dataloader(small, 2, widen="device")
    batch = moved(next(iter(loader)))
    with pytest.raises(hd.LossyCastError, match=match):
        loader.plan.widen(batch)
    fits = hd.dataloader(hd.compact(datasets.Dataset.from_dict({"ids": [[1, 2], [3]]}), plan), 2, widen="device")
    widened = fits.plan.widen(moved(next(iter(fits))))
    assert widened["ids"].dtype == getattr(torch, compute) and widened["ids"].tolist() == [[1, 2], [3, 0]]


# --------------------------------------------------------------------------------------------- pinned memory, non_blocking


@pytest.mark.parametrize("layout", ["padded", "blocks", "flat"])
def test_pin_memory_loader_batches_are_pinned_and_cross_non_blocking_equal(small, tokens, layout):
    options = {"padded": {}, "blocks": {"layout": hd.Blocks(8)}, "flat": {"layout": hd.Flat(return_flash_attn_kwargs=True)}}
    dataset = small if layout == "padded" else tokens
    pinned_loader = hd.dataloader(dataset, 4, widen="device", pin_memory=True, **options[layout])
    pageable_loader = hd.dataloader(dataset, 4, widen="device", **options[layout])
    for pinned, pageable in zip(pinned_loader, pageable_loader, strict=True):
        tensors = {name: value for name, value in pinned.items() if torch.is_tensor(value)}
        assert tensors and all(value.is_pinned() for value in tensors.values())
        assert not any(value.is_pinned() for value in pageable.values() if torch.is_tensor(value))
        on_gpu = pinned_loader.plan.widen(moved(pinned, non_blocking=True), non_blocking=True)
        torch.cuda.synchronize()
        assert_same(on_gpu, pinned_loader.plan.widen(pageable))


def test_non_blocking_copies_of_a_large_pinned_batch_are_complete():
    """A batch large enough that the copy outlasts its launch: the widened values read after it are the host's."""
    plan = hd.DtypePlan.from_dict({"input_ids": {"storage": "uint16", "compute": "int64"},
                                   "labels": {"storage": "int8", "compute": "int64"}})
    generator = torch.Generator().manual_seed(0)
    host = {"input_ids": torch.randint(0, 65536, (256, 2048), generator=generator, dtype=torch.int32).to(torch.uint16).pin_memory(),
            "labels": torch.randint(-100, 9, (256, 2048), generator=generator, dtype=torch.int8).pin_memory()}
    widened = plan.widen(moved(host, non_blocking=True), non_blocking=True)
    assert torch.equal(widened["input_ids"].cpu(), host["input_ids"].to(torch.int64))
    assert torch.equal(widened["labels"].cpu(), host["labels"].to(torch.int64))


# --------------------------------------------------------------------------------------------- accelerate on one GPU


@pytest.mark.parametrize("pin_memory", [False, True])
def test_accelerate_moves_storage_batches_to_the_gpu(small, tokens, pin_memory, fresh_accelerate_state):
    """``accelerator.prepare`` on one GPU: the batches arrive on the GPU in storage dtypes and widen there to the CPU's values."""
    from accelerate import Accelerator

    cases = ((small, {}), (tokens, {"layout": hd.Blocks(8)}))
    expected = {}  # made before the Accelerator exists: the CPU's widened batches
    for index, (dataset, options) in enumerate(cases):
        loader = hd.dataloader(dataset, 4, widen="device", **options)
        expected[index] = [loader.plan.widen(batch) for batch in loader]
    accelerator = Accelerator()
    assert accelerator.device.type == DEVICE.type
    for index, (dataset, options) in enumerate(cases):
        prepared = accelerator.prepare(hd.dataloader(dataset, 4, widen="device", pin_memory=pin_memory, **options))
        got = list(prepared)
        assert len(got) == len(expected[index])
        for batch, reference in zip(got, expected[index], strict=True):
            assert all(value.device.type == DEVICE.type for value in batch.values() if torch.is_tensor(value))
            assert batch["input_ids"].dtype == torch.uint16
            assert_same(prepared.plan.widen(batch), reference)


# --------------------------------------------------------------------------------------------- bf16 autocast in the scripts


BUILD_MODEL = finetune.build_model


def _finetune(argv: list[str], monkeypatch, dtypes: set) -> dict:
    """``finetune.run`` with a hook that records the dtype of the classifier's output (bfloat16 under autocast)."""

    def hooked(args, data, accelerator):
        model = BUILD_MODEL(args, data, accelerator)
        model.classifier.register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        return model

    monkeypatch.setattr(finetune, "build_model", hooked)
    reset_accelerate()
    return finetune.run(parse(argv))


def test_finetune_bf16_autocast_on_the_gpu(tiny_model_dir, ner_files, tmp_path, monkeypatch):
    """``finetune.py --mixed_precision bf16`` on the GPU: the forward pass runs in bf16, training stays finite and close to fp32,
    and both data paths (compact batches widened on the GPU, datasets' int64 batches) train alike."""
    argv = ner_argv(tiny_model_dir, ner_files, test=True)
    fp32_dtypes, bf16_dtypes, default_dtypes = set(), set(), set()
    fp32 = _finetune([*argv, "--output_dir", str(tmp_path / "fp32")], monkeypatch, fp32_dtypes)
    bf16 = _finetune([*argv, "--output_dir", str(tmp_path / "bf16"), "--mixed_precision", "bf16"], monkeypatch, bf16_dtypes)
    default = _finetune([*argv, "--output_dir", str(tmp_path / "default"), "--mixed_precision", "bf16", "--plan", "datasets-default"],
                        monkeypatch, default_dtypes)

    assert fp32_dtypes == {torch.float32} and bf16_dtypes == default_dtypes == {torch.bfloat16}
    assert bf16["mixed_precision"] == "bf16" and bf16["batch_dtypes"]["input_ids"] == "uint16"
    assert len(bf16["step_losses"]) == len(fp32["step_losses"]) == 10
    assert all(math.isfinite(loss) for loss in bf16["step_losses"] + default["step_losses"])
    assert bf16["step_losses"] != fp32["step_losses"]  # autocast changed the arithmetic
    assert max(abs(a - b) for a, b in zip(bf16["step_losses"], fp32["step_losses"], strict=True)) < 0.1
    assert max(abs(a - b) for a, b in zip(bf16["step_losses"], default["step_losses"], strict=True)) < 1e-2
    assert 0 <= bf16["validation"]["f1"] <= 1 and 0 <= bf16["test"]["f1"] <= 1
    assert bf16["bytes_per_batch"] < default["bytes_per_batch"] / 4


def test_pretrain_bf16_on_the_gpu_gives_the_same_losses_on_both_data_paths(tmp_path):
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text((ROOT / "tests" / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:30_000], encoding="utf-8")
    common = ["--train_file", str(corpus), "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--block_size", "32",
              "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_train_steps", "12", "--eval_every", "6",
              "--sample_tokens", "8", "--mixed_precision", "bf16"]
    reset_accelerate()
    compact = pretrain.run(pretrain.parse_args([*common, "--output_dir", str(tmp_path / "compact")]))
    reset_accelerate()
    default = pretrain.run(pretrain.parse_args([*common, "--output_dir", str(tmp_path / "default"), "--plan", "datasets-default"]))
    assert len(compact["step_losses"]) == len(default["step_losses"]) == 12
    assert all(math.isfinite(loss) for loss in compact["step_losses"])
    assert max(abs(a - b) for a, b in zip(compact["step_losses"], default["step_losses"], strict=True)) < 1e-2
    assert math.isfinite(compact["validation_loss"]) and abs(compact["validation_loss"] - default["validation_loss"]) < 1e-2
    assert compact["bytes_per_batch"] < default["bytes_per_batch"] / 4
