"""What the example scripts print: the start line, the progress bar (on a terminal only) and plain log lines.

Shared by ``finetune.py`` and ``pretrain.py`` (copy it along with them).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm

__all__ = ["progress_bar", "runtime_line", "say"]


def runtime_line(accelerator: Accelerator, flag: str | None) -> str:
    """``device cpu, 1 process, mixed precision bf16 (from accelerate launch)``: where the run runs, in which precision, and
    who chose it: ``--mixed_precision``, else the launcher (``accelerate launch`` sets ``ACCELERATE_MIXED_PRECISION``)."""
    source = "--mixed_precision" if flag else "accelerate launch" if "ACCELERATE_MIXED_PRECISION" in os.environ else "the default"
    processes = accelerator.num_processes
    return (f"device {accelerator.device.type}, {processes} process{'es' if processes > 1 else ''}, "
            f"mixed precision {accelerator.mixed_precision} (from {source})")


def progress_bar(accelerator: Accelerator, **options: Any) -> tqdm:
    """A live bar on the main process when stderr is a terminal, none otherwise: a log redirected to a file gets the plain
    step lines instead of carriage-return frames (``TQDM_DISABLE=1`` turns the bar off on a terminal too)."""
    shown = accelerator.is_local_main_process and sys.stderr.isatty()
    return tqdm(**options) if shown else tqdm(disable=True, **options)


def say(accelerator: Accelerator, line: str) -> None:
    """One line from the main process, above the live bar if one shows, flushed at once so that a redirected log is current."""
    if accelerator.is_local_main_process:
        tqdm.write(line)
        sys.stdout.flush()
