"""hf_dtype: per-column data types for Hugging Face ``datasets``, from disk to the model.

Store each column in the smallest dtype that holds it (checked Arrow casts), serve it in the dtype
the model needs (the ``"hf_dtype"`` format or ``DtypeTransform``), and batch it straight from the
Arrow buffers (``dataloader``, ``PaddingCollator``).
"""

from .compact import compact
from .dtypes import LossyCastError
from .infer import infer_plan
from .layouts import Blocks, Flat, Padded
from .loader import dataloader
from .masking import MaskedLM
from .plan import ColumnDtype, DtypePlan
from .recording import plan_of
from .serving import DtypeTransform, PaddingCollator

__all__ = [
    "Blocks",
    "ColumnDtype",
    "DtypePlan",
    "DtypeTrainer",
    "DtypeTransform",
    "Flat",
    "LossyCastError",
    "MaskedLM",
    "Padded",
    "PaddingCollator",
    "compact",
    "dataloader",
    "infer_plan",
    "plan_of",
]

__version__ = "0.2.0"


def __getattr__(name: str):
    """``DtypeTrainer`` is imported on first use: ``transformers.Trainer`` takes seconds to import."""
    if name == "DtypeTrainer":
        from .trainer import DtypeTrainer

        return DtypeTrainer
    raise AttributeError(f"module 'hf_dtype' has no attribute {name!r}")
