"""Tests for the one storage -> compute conversion: what leaves the library is the caller's to modify, and every
integer is served or refused with its column, row and value."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch

import hf_dtype as hd
from hf_dtype.serving import pad_batch

PLAN = {
    "input_ids": {"storage": "uint16", "pad": 0},
    "scores": {"storage": "float32", "compute": "float32"},  # storage = compute: once served as a view of the buffer
    "weights": {"storage": "bfloat16", "compute": "bfloat16"},  # bits viewed as bfloat16: once a view too
    "label": {"storage": "int8"},
    "attention_mask": {"derived": "ones", "compute": "bool"},
}


def _raw() -> datasets.Dataset:
    return datasets.Dataset.from_dict({
        "input_ids": [[101, 7, 102], [101, 8, 9, 102]],
        "scores": [[0.5, 1.5, 2.5], [3.0, 4.0, 5.0, 6.0]],
        "weights": [[0.25, 0.5, 1.0], [2.0, 4.0, 8.0, 16.0]],
        "label": [1, 0],
    })


def _outputs(ds: datasets.Dataset) -> list:
    """Everything a user can get out of the library for ``ds``: formatter rows, slices, index lists (torch, numpy),
    set_format columns, DtypeTransform, loader batches (both widen modes), the collator."""
    plan = hd.plan_of(ds)
    out = []
    for backend in ("torch", "numpy"):
        formatted = ds.with_format("hf_dtype", backend=backend)
        out += [formatted[0], formatted[0:2], formatted[[1, 0]], {"column": formatted["scores"]}]
        out.append(ds.with_transform(hd.DtypeTransform(plan, backend=backend))[0:2])
    for widen in ("device", "cpu"):
        out.append(next(iter(hd.dataloader(ds, 2, widen=widen))))
        out.append(hd.dataloader(ds, 2, widen=widen).dataset[1])
        out.append(next(iter(hd.dataloader(ds.to_iterable_dataset(), 2, widen=widen))))  # a stream of the same rows
    rows = [{name: value for name, value in row.items() if name != "attention_mask"} for row in ds.with_format("numpy")]
    out.append(hd.PaddingCollator(plan)(rows))
    out.append(pad_batch(rows, plan, widen="device"))
    return out


def _bump(value) -> None:
    """Change, in place, every tensor or array inside ``value``."""
    if isinstance(value, torch.Tensor):  # flip every bit (torch has no add for its unsigned dtypes)
        value.logical_not_() if value.dtype == torch.bool else value.reshape(-1).view(torch.uint8).bitwise_not_()
    elif isinstance(value, np.ndarray) and value.dtype != object:
        np.logical_not(value, out=value) if value.dtype == bool else np.invert(value.view(np.uint8), out=value.view(np.uint8))
    elif isinstance(value, dict):
        for item in value.values():
            _bump(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _bump(item)


def test_modifying_what_is_served_leaves_the_dataset_unchanged():
    ds = hd.compact(_raw(), PLAN)
    before = ds.with_format("hf_dtype", backend="numpy")[:]
    for output in _outputs(ds):
        _bump(output)
    after = ds.with_format("hf_dtype", backend="numpy")[:]
    for name in before:
        for got, expected in zip(after[name], before[name], strict=True):
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_modifying_what_is_served_from_a_memory_map_neither_crashes_nor_changes_it(tmp_path):
    """After load_from_disk the buffers are a read-only memory map: a view written to would crash the process."""
    hd.compact(_raw(), PLAN).save_to_disk(str(tmp_path / "saved"))
    script = textwrap.dedent(f"""
        import sys, datasets, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_convert import _bump, _outputs
        ds = datasets.load_from_disk({str(tmp_path / "saved")!r})
        before = ds.with_format("hf_dtype", backend="numpy")[:]
        for output in _outputs(ds):
            _bump(output)
        after = ds.with_format("hf_dtype", backend="numpy")[:]
        assert all(np.array_equal(a, b) for name in before for a, b in zip(after[name], before[name]))
        print("unchanged")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and "unchanged" in done.stdout, (done.returncode, done.stderr[-2000:])


# --- integers at the ends of their range ---------------------------------------------------------


def test_large_non_negative_integers_are_planned_as_int64_and_served():
    stamps = [1_700_000_000_000_000_000, 2**40 + 1, 0]  # nanosecond timestamps, above 2**40
    ds = datasets.Dataset.from_dict({"stamp": stamps, "ids": [[2**62, 5], [7], [2**41]]})
    plan = hd.infer_plan(ds)
    assert plan["stamp"].storage == "int64" and plan["ids"].storage == "int64"  # uint64 would not serve
    small = hd.compact(ds, plan)
    assert small.with_format("hf_dtype")[:]["stamp"].tolist() == stamps
    for widen in ("device", "cpu"):
        batch = plan.widen(next(iter(hd.dataloader(small, 3, widen=widen))))
        assert batch["stamp"].dtype == torch.int64 and batch["stamp"].tolist() == stamps
        assert batch["ids"][0].tolist() == [2**62, 5]


def test_integers_beyond_int64_are_left_out_of_the_plan_and_refused_by_name(caplog):
    huge = datasets.Dataset(pa.table({"hash": pa.array([5, 2**63 + 7], pa.uint64())}))
    assert "hash" not in hd.infer_plan(huge)
    assert "beyond int64" in caplog.text
    plan = {"hash": "uint64"}
    with pytest.raises(hd.LossyCastError, match=r"Column 'hash', row 1: value 9223372036854775815 does not fit int64"):
        huge.with_format("hf_dtype", plan=plan)[:]
    with pytest.raises(hd.LossyCastError, match=r"Column 'hash', row 1: value 9223372036854775815 does not fit int64"):
        next(iter(hd.dataloader(huge, 2, plan=plan, widen="cpu")))
    device = next(iter(hd.dataloader(huge, 2, plan=plan, widen="device")))
    assert device["hash"].dtype == torch.uint64  # storage dtype: nothing lost on the way
    with pytest.raises(hd.LossyCastError, match=r"Column 'hash', row 1 of the batch: value 9223372036854775815 does not fit int64"):
        hd.DtypePlan.from_dict(plan).widen(device)


def test_an_unplanned_uint64_column_batched_by_the_loader_is_never_wrapped():
    """A column outside the plan that the loader is asked for: storage dtype (exact) on the device, refused when widened."""
    huge = datasets.Dataset(pa.table({"hash": pa.array([5, 2**63 + 7], pa.uint64()), "ids": [[1, 2], [3]]}))
    plan = {"ids": "uint8"}
    for dataset in (huge, huge.to_iterable_dataset()):
        loader = hd.dataloader(dataset, 2, plan=plan, columns=["ids", "hash"], widen="device")
        batch = next(iter(loader))
        assert batch["hash"].dtype == torch.uint64 and batch["hash"].tolist() == [5, 2**63 + 7]
        with pytest.raises(hd.LossyCastError, match=r"Column 'hash', row 1 of the batch: value 9223372036854775815 does not fit int64"):
            loader.plan.widen(batch)
        with pytest.raises(hd.LossyCastError, match=r"Column 'hash', row 1( of stream batch 0)?: value 9223372036854775815 does not fit"):
            next(iter(hd.dataloader(dataset, 2, plan=plan, columns=["ids", "hash"], widen="cpu")))


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"])
def test_the_ends_of_every_integer_range_round_trip(dtype):
    info = np.iinfo(dtype)
    ds = datasets.Dataset.from_dict({"x": [[int(info.min), int(info.max)]]})
    plan = hd.infer_plan(ds)
    small = hd.compact(ds, plan)
    for widen in ("device", "cpu"):
        batch = plan.widen(next(iter(hd.dataloader(small, 1, widen=widen))))
        assert batch["x"].tolist() == [[int(info.min), int(info.max)]]
    assert small.with_format("hf_dtype")[0]["x"].tolist() == [int(info.min), int(info.max)]
