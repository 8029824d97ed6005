"""PNG plots of training runs, from their ``metrics.json``: one call for the scripts, one command for comparing runs.

``save_plot`` draws curves (matplotlib, no display needed) and writes the PNG atomically;
``finetune.py`` and ``pretrain.py`` call it to put ``f1.png`` / ``loss.png`` next to ``metrics.json``.
The command draws the validation score of several fine-tuning runs against training minutes, e.g.
the pretrained and the randomly initialised model side by side:

    python scripts/plots.py outputs/ner_zh outputs/ner_zh_scratch --output outputs/f1_minutes.png
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

Curve = tuple[Sequence[float], Sequence[float]]


def save_plot(path: str | os.PathLike, curves: Mapping[str, Curve], *, xlabel: str, ylabel: str, title: str) -> str:
    """Draw each named ``(x, y)`` curve with its points marked; write ``path`` (PNG) atomically and return it."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server or in CI
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, (x, y) in curves.items():
        axes.plot(x, y, marker="o" if len(x) <= 50 else None, markersize=3, label=label)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    if len(curves) > 1:
        axes.legend()
    figure.tight_layout()
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, format="png")
    plt.close(figure)
    os.replace(partial, path)
    return str(path)


def score_curve(metrics: Mapping, score: str) -> Curve:
    """(training minutes, validation ``score``) at each evaluation of a ``finetune.py`` run, from minute 0."""
    points = [(0.0, 0.0)] + [(entry["train_minutes"], entry["validation"][score]) for entry in metrics.get("evaluations", [])]
    return [m for m, _ in points], [s for _, s in points]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Validation score against training minutes, for finetune.py runs.")
    parser.add_argument("runs", nargs="+", help="finetune.py output folders (each with its metrics.json).")
    parser.add_argument("--labels", nargs="+", help="A legend label per run (default: the folder names).")
    parser.add_argument("--output", required=True, help="The PNG to write.")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        parser.error(f"--labels: expected one label per run ({len(args.runs)}); got {len(args.labels)}.")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    curves, score = {}, "f1"
    for i, run in enumerate(args.runs):
        metrics_file = Path(run) / "metrics.json"
        if not metrics_file.is_file():
            raise SystemExit(f"plots.py: error: {run!r} has no metrics.json: expected a finetune.py --output_dir.")
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        score = "f1" if metrics["task"] == "ner" else "accuracy"
        curves[args.labels[i] if args.labels else Path(run).name] = score_curve(metrics, score)
    print(save_plot(args.output, curves, xlabel="training minutes", ylabel=f"validation {score}", title=f"validation {score}"))


if __name__ == "__main__":
    main()
