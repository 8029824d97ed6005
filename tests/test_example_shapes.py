"""The one-line change, in the shapes of the scripts users have.

Small copies of the lines that matter of transformers' ``run_ner_no_trainer.py`` /
``run_glue_no_trainer.py`` and accelerate's ``complete_nlp_example.py`` (``run_clm_no_trainer.py``'s
blocks are in ``test_packing.py``): the collator swap gives the stock losses bit for bit; the loader
swap runs with no other line (``seed=None`` as the scripts pass it, no ``plan.widen``,
``batch.to(device)`` whose result is not used, ``gather_for_metrics``), and a plan that names some
columns still batches the others.
"""

from __future__ import annotations

import datasets
import pytest
import torch
from conftest import SENTENCES, tokenize_ner
from torch.utils.data import DataLoader
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
)

import hf_dtype as hd

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)  # dropout 0.1


@pytest.fixture(scope="module")
def ner(tokenizer) -> datasets.Dataset:
    return tokenize_ner(tokenizer, SENTENCES * 4)


def _losses(model: torch.nn.Module, loader, steps: int, *, accelerator=None) -> list[float]:
    """run_*_no_trainer's loop: the batch goes to the model as it comes (accelerate placed it), dropout on."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if accelerator is not None:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    losses = []
    while len(losses) < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward() if accelerator is None else accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


def _model(cls=BertForTokenClassification, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(BertConfig(**TINY, **config))


def test_the_collator_swap_gives_the_stock_losses_bit_for_bit(ner, tokenizer):
    """run_ner_no_trainer: DataLoader(train, shuffle=True, collate_fn=...): only the collator changes."""
    runs = []
    for collator in (DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8),
                     hd.PaddingCollator(hd.infer_plan(ner), pad_to_multiple_of=8)):
        model = _model(num_labels=9)
        torch.manual_seed(42)  # the sampler's order and dropout both draw from torch's global generator
        runs.append(_losses(model, DataLoader(ner, batch_size=4, shuffle=True, collate_fn=collator), 12))
    assert runs[0] == runs[1]


def test_the_loader_swap_runs_as_the_scripts_write_it(ner, fresh_accelerate_state):
    """hd.dataloader(..., seed=args.seed) with the scripts' default seed None, under accelerate.prepare, no other line."""
    from accelerate import Accelerator

    small = hd.compact(ner)
    losses = _losses(_model(num_labels=9), hd.dataloader(small, 4, shuffle=True, seed=None), 12, accelerator=Accelerator(cpu=True))
    assert len(losses) == 12 and all(loss == loss for loss in losses)


def test_a_plain_loop_without_accelerate_gets_compute_dtypes(ner):
    """Without accelerate nothing moves or widens the batch: the default widen="auto" serves the compute dtypes."""
    small = hd.compact(ner)
    batch = next(iter(hd.dataloader(small, 4)))
    assert {value.dtype for value in batch.values()} == {torch.int64}
    assert _model(num_labels=9)(**batch).loss.isfinite()


def test_seed_none_draws_a_seed_once_from_the_global_generator(ner):
    small = hd.compact(ner)

    def order(seed_of_torch: int) -> list[list[int]]:
        """The first row of two epochs of a loader made after ``torch.manual_seed(seed_of_torch)``."""
        torch.manual_seed(seed_of_torch)
        loader = hd.dataloader(small, 5, shuffle=True, seed=None)
        return [next(iter(loader))["input_ids"][0].tolist() for _ in range(2)]

    assert order(1) == order(1) and order(1) != order(2)
    assert len(list(hd.dataloader(small, 5, seed=None))) == 5  # shuffle=False: the seed is not used, and None is fine


def test_batch_to_moves_and_widens_in_place_as_batch_encoding_does(ner):
    small = hd.compact(ner)
    batch = next(iter(hd.dataloader(small, 4, widen="device")))
    assert batch["input_ids"].dtype == torch.uint16 and batch["attention_mask"].dtype == torch.bool
    stored = {name: value.clone() for name, value in batch.items()}
    assert batch.to("cpu") is batch  # complete_nlp_example: batch.to(accelerator.device), the result unused
    assert {name: value.dtype for name, value in batch.items()} == {name: torch.int64 for name in batch}
    assert all(torch.equal(batch[name], value.long()) for name, value in stored.items())


def test_complete_nlp_example_evaluation_with_gather_for_metrics(tokenizer, fresh_accelerate_state):
    """complete_nlp_example's evaluation: batch.to(device), argmax, gather_for_metrics; SST-2's ``label`` column."""
    from accelerate import Accelerator

    raw = datasets.Dataset.from_dict({"sentence": ["a fine film", "dull", "a great ride", "bad", "fine"] * 3, "label": [1, 0, 1, 0, 1] * 3})
    encoded = raw.map(lambda batch: tokenizer(batch["sentence"], truncation=True), batched=True, remove_columns=["sentence"])
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(_model(BertForSequenceClassification, num_labels=2))
    eval_dataloader = accelerator.prepare(hd.dataloader(hd.compact(encoded), 4))
    model.eval()
    predictions, references = [], []
    for batch in eval_dataloader:
        batch.to(accelerator.device)
        with torch.no_grad():
            outputs = model(**batch)
        gathered = accelerator.gather_for_metrics((outputs.logits.argmax(dim=-1), batch["labels"]))
        predictions += gathered[0].tolist()
        references += gathered[1].tolist()
    assert references == encoded["label"] and len(predictions) == len(encoded)


def test_a_plan_that_names_some_columns_batches_the_others_too(ner, tokenizer):
    """A hand-written plan of input_ids and labels: attention_mask (and token_type_ids) are batched as stored."""
    plan = {"input_ids": {"storage": "uint16", "pad": 0}, "labels": {"storage": "int8", "pad": -100}}
    small = hd.compact(ner, plan)
    expected = DataCollatorForTokenClassification(tokenizer)([ner[i] for i in range(6)])
    for batch in (next(iter(hd.dataloader(small, 6))), hd.PaddingCollator(plan)([small[i] for i in range(6)])):
        assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
        for name, value in expected.items():
            assert torch.equal(batch[name], value), name


def test_glue_shape_label_is_batched_as_labels(tokenizer):
    """run_glue_no_trainer renames label to labels itself; a dataset that kept ``label`` gets ``labels`` in batches too."""
    raw = datasets.Dataset.from_dict({"sentence": ["a fine film", "dull", "a great ride", "bad"], "label": [1, 0, 1, 0]})
    encoded = raw.map(lambda batch: tokenizer(batch["sentence"], truncation=True), batched=True, remove_columns=["sentence"])
    batch = next(iter(hd.dataloader(hd.compact(encoded), 4, layout=hd.Padded(pad_to_multiple_of=8))))
    expected = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)([encoded[i] for i in range(4)])
    assert set(batch) == set(expected) and all(torch.equal(batch[name], expected[name]) for name in expected)
