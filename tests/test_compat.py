"""Each private name of another library that ``hf_dtype._compat`` reaches still exists and means what it meant.

One test per helper: when an upgrade of ``datasets``, ``accelerate`` or ``transformers`` removes or
changes one of these names, the failure names the helper to mend.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from datasets.distributed import split_dataset_by_node

import hf_dtype as hd
from hf_dtype import _compat


def test_accelerate_state_is_seen_without_being_made(fresh_accelerate_state):
    from accelerate import Accelerator

    assert not _compat.accelerate_is_set_up() and _compat.accelerate_device() is None
    accelerator = Accelerator(cpu=True)
    assert _compat.accelerate_is_set_up() and _compat.accelerate_device() == accelerator.device


def test_accelerate_loaders_lists_the_loader_being_iterated(fresh_accelerate_state):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    data = hd.compact(datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]] * 4}))
    loader = accelerator.prepare(hd.dataloader(data, 2))
    assert loader not in _compat.accelerate_loaders()
    iterator = iter(loader)
    next(iterator)
    assert loader in _compat.accelerate_loaders()


def test_self_prepared_loaders_are_handed_back_and_saved(tmp_path, fresh_accelerate_state):
    """accelerate keeps a loader marked prepared as it is, and save_state / load_state call its state_dict."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    accelerator = Accelerator(cpu=True)
    data = hd.compact(datasets.Dataset.from_dict({"input_ids": [[1, 2], [3]] * 4}))
    loader = hd.dataloader(data, 2, shuffle=True)
    assert isinstance(loader, _compat.SelfPrepared) and accelerator.prepare(loader) is loader
    loader.set_epoch(3)
    accelerator.save_state(str(tmp_path / "state"))
    AcceleratorState._reset_state(True)  # a new process, as a resumed run is
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    again = accelerator.prepare(hd.dataloader(data, 2, shuffle=True))
    accelerator.load_state(str(tmp_path / "state"))
    assert again.state_dict()["epoch"] == 3


def test_stream_split_reads_split_dataset_by_node():
    stream = datasets.Dataset.from_dict({"x": list(range(8))}).to_iterable_dataset(num_shards=4)
    assert _compat.stream_split(stream) is None
    assert _compat.stream_split(split_dataset_by_node(stream, rank=1, world_size=2)) == (1, 2)


def test_indices_mapping_is_the_row_positions_a_dataset_shows():
    data = datasets.Dataset.from_dict({"x": list(range(8))})
    assert _compat.indices_mapping(data) is None
    assert _compat.indices_mapping(data.select([5, 2])).column(0).to_pylist() == [5, 2]


def test_the_formatter_is_registered():
    data = hd.compact(datasets.Dataset.from_dict({"x": [1, 2]}))
    assert data.with_format("hf_dtype")[0]["x"].dtype == torch.int64


def test_signature_columns_are_the_models_arguments(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                     intermediate_size=8))
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))
    assert {"input_ids", "attention_mask", "labels", "label"} <= set(_compat.signature_columns(trainer))


def test_temporary_cache_dir_is_made_again_and_put_back():
    import datasets.fingerprint

    before = datasets.fingerprint.get_temporary_cache_files_directory()
    with _compat.temporary_cache_dir():
        inside = datasets.fingerprint.get_temporary_cache_files_directory()
        assert inside != before
    assert datasets.fingerprint.get_temporary_cache_files_directory() == before


@pytest.mark.parametrize("module", ["batching", "cli", "convert", "fetch", "infer", "layouts", "loader", "packing", "plan", "ragged",
                                    "serving", "staging", "compact", "streams", "trainer"])
def test_no_other_module_reaches_a_private_name_of_another_library(module):
    from pathlib import Path

    text = (Path(hd.__file__).parent / f"{module}.py").read_text()
    for name in ("_shared_state", "dataloader_references", "._distributed", "._indices", "_TEMP_DIR_FOR_TEMP_CACHE_FILES",
                 "_register_formatter", "_signature_columns", "_is_accelerate_prepared", "_reset_state"):
        assert name not in text, f"{module}.py reaches {name}: route it through hf_dtype/_compat.py"


@pytest.mark.parametrize("layout", [hd.Padded(), hd.Flat(), hd.Blocks(4), "stream"])
def test_lean_batches_are_the_batches_of_torchs_single_process_iterator(layout):
    """Without workers both loaders skip torch's per-batch bookkeeping: the same batches, pass after pass, and the same state."""
    from torch.utils.data import DataLoader

    rows = datasets.Dataset.from_dict({"input_ids": [[i + 1] * (1 + i % 5) for i in range(22)], "idx": list(range(22))})
    data = hd.compact(rows)
    if layout == "stream":
        options: dict = {"shuffle": True, "buffer_size": 8}
        ours, torchs = (hd.dataloader(data.to_iterable_dataset(num_shards=2), 4, **options) for _ in range(2))
    else:
        ours, torchs = (hd.dataloader(data, 4, layout=layout, columns=["input_ids"], shuffle=True, seed=3) for _ in range(2))
    assert _compat.lean_batches(ours) is not None
    for epoch in range(2):
        ours.set_epoch(epoch)
        torchs.set_epoch(epoch)
        mine, theirs = list(ours), list(DataLoader.__iter__(torchs))
        assert len(mine) == len(theirs) > 1
        for a, b in zip(mine, theirs, strict=True):
            assert type(a) is type(b) and a.plan == b.plan is not None and list(a) == list(b)
            assert all(torch.equal(a[name], b[name]) and a[name].dtype == b[name].dtype for name in a)
    assert ours.state_dict() == torchs.state_dict()
    assert _compat.lean_batches(hd.dataloader(data, 4, num_workers=1)) is None
