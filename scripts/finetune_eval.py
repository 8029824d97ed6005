"""Scores of ``finetune.py``: entity F1 for NER (seqeval, CoNLL's evaluation), accuracy and F1 for classification.

Each example counts once over all processes (``gather_for_metrics``), and NER labels are decoded under
the IOB2 rules (``ner_decoding.py``) unless asked otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from console import progress_bar
from ner_decoding import iob2_transitions, iob2_viterbi
from torch.utils.data import DataLoader

__all__ = ["classification_metrics", "evaluate", "main_score", "ner_metrics"]


def ner_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, Any]:
    """seqeval entity-level precision / recall / F1 (CoNLL evaluation), token accuracy, and the per-type report."""
    from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    return {
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(gold, predicted)),
        "per_type": {name: {key: float(value) for key, value in scores.items()} for name, scores in report.items()},
    }


def classification_metrics(predicted: np.ndarray, gold: np.ndarray, num_labels: int) -> dict[str, Any]:
    """Accuracy and F1 (of the positive class for two labels, macro-averaged for more)."""
    from sklearn.metrics import f1_score

    average = "binary" if num_labels == 2 else "macro"
    return {
        "accuracy": float((predicted == gold).mean()) if len(gold) else 0.0,
        "f1": float(f1_score(gold, predicted, average=average, labels=list(range(num_labels)) if average == "macro" else None,
                             zero_division=0)),
    }


def sentence_labels(batches: list[np.ndarray], gold: list[np.ndarray], names: Sequence[str]) -> list[list[str]]:
    """One list of label names per sentence, at its labelled positions (gold is not -100)."""
    return [[names[i] for i in row[labels != -100]] for batch, gold_batch in zip(batches, gold, strict=True)
            for row, labels in zip(batch, gold_batch, strict=True)]


def evaluate(accelerator: Accelerator, model: torch.nn.Module, dataloader: DataLoader, widen: Callable[[Mapping[str, Any]], Any], task: str,
             names: Sequence[str], desc: str, decoding: str = "iob2") -> tuple[dict[str, Any], list]:
    """Scores of ``model`` on ``dataloader``, each example counted once over all processes, and the predictions; ``widen``
    turns a batch into the model's dtypes (``plan.widen`` for compact batches).

    NER labels are decoded under the IOB2 rules (``ner_decoding.iob2_viterbi``) when ``decoding`` is "iob2" and the
    label names are an IOB2 scheme, the argmax's scores then beside them under "argmax"; else each token's argmax.

    NER rows have a different padded length on each process: they are padded to a common length (with
    -100, ignored) before ``gather_for_metrics``, which also drops the rows repeated to even out the last batch.
    """
    model.eval()
    transitions = iob2_transitions(names) if task == "ner" and decoding == "iob2" else None
    predictions, argmaxes, references = [], [], []
    for batch in progress_bar(accelerator, iterable=dataloader, desc=desc, leave=False):
        batch = widen(batch)  # hf_dtype: compute dtypes, on the device
        with torch.no_grad():
            logits = model(**batch).logits
        gold = batch["labels"]
        predicted = argmax = logits.argmax(dim=-1)
        if transitions is not None:
            predicted = iob2_viterbi(logits.float().log_softmax(dim=-1), gold != -100, *transitions)
        if task == "ner":
            predicted, argmax, gold = (accelerator.pad_across_processes(t, dim=1, pad_index=-100) for t in (predicted, argmax, gold))
        predicted, argmax, gold = accelerator.gather_for_metrics((predicted, argmax, gold))
        predictions.append(predicted.cpu().numpy())
        argmaxes.append(argmax.cpu().numpy())
        references.append(gold.cpu().numpy())
    if task == "ner":  # label names at the labelled positions only, one list per sentence
        gold_names = sentence_labels(references, references, names)
        predicted_names = sentence_labels(predictions, references, names)
        metrics = ner_metrics(predicted_names, gold_names)
        if transitions is not None:  # what the constrained decoding changed
            metrics["argmax"] = {k: v for k, v in ner_metrics(sentence_labels(argmaxes, references, names), gold_names).items()
                                 if k != "per_type"}
        return metrics, predicted_names
    predicted = np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64)
    gold = np.concatenate(references) if references else np.zeros(0, dtype=np.int64)
    return classification_metrics(predicted, gold, len(names)), [names[i] for i in predicted]


def main_score(task: str) -> str:
    """The score a run is judged by: entity F1 for NER, accuracy for classification."""
    return "f1" if task == "ner" else "accuracy"

