"""Resuming in accelerate's own shape gives the uninterrupted run's rows and losses.

The training loop below is ``accelerate``'s ``examples/complete_nlp_example.py``: no ``set_epoch``
call, ``accelerator.save_state`` at step or epoch checkpoints, and on resume ``load_state`` then
``skip_first_batches`` for the steps already done in the epoch, and ``batch.to(accelerator.device)``
whose result it does not use. The loader swap is the only change: ``save_state`` / ``load_state``
carry the loader's epoch without ``register_for_checkpointing`` (which still works). A tiny BERT with
dropout on makes the losses depend on the torch random stream too, not only on the rows.
"""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import hf_dtype as hd

EPOCHS, BATCH = 3, 4


@pytest.fixture(scope="module")
def ner_data(tokenizer) -> datasets.Dataset:
    rng = np.random.default_rng(9)
    vocabulary = ["the", "European", "Commission", "said", "on", "Thursday", "it", "disagreed", "with", "German", "advice"]
    words = [[vocabulary[j] for j in rng.integers(0, len(vocabulary), n)] for n in rng.integers(1, 12, 22)]
    tags = [rng.integers(0, 9, len(row)).tolist() for row in words]
    raw = datasets.Dataset.from_dict({"tokens": words, "ner_tags": tags, "idx": list(range(22))})

    def encode(batch):
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True)
        encoded["labels"] = [[-100 if w is None else t[w] for w in encoded.word_ids(i)] for i, t in enumerate(batch["ner_tags"])]
        return encoded

    return hd.compact(raw.map(encode, batched=True, remove_columns=["tokens", "ner_tags"]))


def _train(data: datasets.Dataset, tmp_path, *, save_at: str | None = None, resume_from: str | None = None,
           registered: bool = False) -> dict:
    """complete_nlp_example's loop; returns the loss and the row ids of every step, by epoch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import set_seed
    from transformers import BertConfig, BertForTokenClassification

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True)
    set_seed(42)
    train_dataloader = hd.dataloader(data, BATCH, shuffle=True, seed=42, columns=["input_ids", "attention_mask", "labels", "idx"])
    if registered:  # not needed, and harmless: the loader's state is saved once more as a custom object
        accelerator.register_for_checkpointing(train_dataloader)
    model = BertForTokenClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                                  vocab_size=30522, num_labels=9))  # dropout 0.1
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)

    starting_epoch, resume_step, overall_step = 0, None, 0
    if resume_from:
        accelerator.load_state(str(tmp_path / resume_from))
        kind, number = resume_from.split("_")
        if kind == "epoch":
            starting_epoch = int(number) + 1
        else:
            resume_step = int(number)
            starting_epoch = resume_step // len(train_dataloader)
            resume_step -= starting_epoch * len(train_dataloader)
    seen: dict[int, list] = {}
    for epoch in range(starting_epoch, EPOCHS):
        model.train()
        if resume_from and epoch == starting_epoch and resume_step is not None:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
            overall_step += resume_step
        else:
            active_dataloader = train_dataloader
        for batch in active_dataloader:
            batch.to(accelerator.device)  # as complete_nlp_example writes it: moves (and widens) the batch in place
            ids = batch.pop("idx")
            loss = model(**batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            overall_step += 1
            seen.setdefault(epoch, []).append((round(loss.item(), 6), ids.tolist()))
            if save_at == f"step_{overall_step}":
                accelerator.save_state(str(tmp_path / save_at))
        if save_at == f"epoch_{epoch}":
            accelerator.save_state(str(tmp_path / save_at))
    accelerator.end_training()
    return seen


@pytest.mark.parametrize("registered", [False, True])
@pytest.mark.parametrize("checkpoint", ["step_14", "epoch_1"])  # 22 rows / 4 = 6 steps an epoch: step 14 is mid epoch 2
def test_resume_in_accelerates_example_shape_equals_the_uninterrupted_run(ner_data, tmp_path, checkpoint, registered,
                                                                          fresh_accelerate_state):
    full = _train(ner_data, tmp_path, save_at=checkpoint, registered=registered)
    resumed = _train(ner_data, tmp_path, resume_from=checkpoint, registered=registered)
    assert 2 in resumed and full[1] != full[2]  # epochs see different orders
    done_in_epoch_2 = 14 - 12 if checkpoint.startswith("step") else 0
    assert resumed[2] == full[2][done_in_epoch_2:]  # the same rows and, with dropout on, the same losses


def test_iterating_the_loader_leaves_torchs_global_random_state_alone(ner_data, fresh_accelerate_state):
    """A DataLoader draws its workers' base seed from torch's global generator unless it has its own: that draw would
    shift dropout after a resume."""
    from accelerate import Accelerator

    loader = hd.dataloader(ner_data, BATCH, shuffle=True)
    state = torch.get_rng_state()
    list(loader)
    list(Accelerator(cpu=True).prepare(hd.dataloader(ner_data, BATCH, shuffle=True)))
    assert torch.equal(torch.get_rng_state(), state)


def test_state_dict_names_the_epoch_to_resume_in(ner_data):
    loader = hd.dataloader(ner_data, BATCH, shuffle=True, seed=3)
    assert loader.state_dict() == {"epoch": 0, "seed": 3, "rows": 22}
    iterator = iter(loader)
    next(iterator)
    assert loader.state_dict()["epoch"] == 0  # mid-epoch: resume in it
    list(iterator)
    assert loader.state_dict()["epoch"] == 1  # done: resume in the next
    again = hd.dataloader(ner_data, BATCH, shuffle=True, seed=3)
    again.load_state_dict(loader.state_dict())
    fresh = hd.dataloader(ner_data, BATCH, shuffle=True, seed=3)
    fresh.set_epoch(1)
    assert [b["idx"].tolist() for b in again] == [b["idx"].tolist() for b in fresh]
    with pytest.raises(ValueError, match=r"saved loader state is of seed 3 over 22 rows; this loader has seed 4 over 22 rows"):
        hd.dataloader(ner_data, BATCH, shuffle=True, seed=4).load_state_dict(loader.state_dict())
