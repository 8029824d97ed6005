"""hf_dtype: per-column data types for Hugging Face ``datasets``, from disk to the model.

Store each column in the smallest dtype that holds it (checked Arrow casts), serve it in the dtype
the model needs (the ``"hf_dtype"`` format or ``DtypeTransform``), and pad batches straight from
the Arrow buffers.
"""

from .batching import PaddingCollator, pad_batch
from .casting import LossyCastError
from .dtypes import canonical_dtype
from .formatting import DtypeTransform, HfDtypeFormatter
from .inference import infer_plan
from .loading import dataloader
from .plan import ColumnDtype, DtypePlan
from .recording import plan_of
from .storage import compact

__all__ = [
    "ColumnDtype",
    "DtypePlan",
    "DtypeTransform",
    "HfDtypeFormatter",
    "LossyCastError",
    "PaddingCollator",
    "canonical_dtype",
    "compact",
    "dataloader",
    "infer_plan",
    "pad_batch",
    "plan_of",
]

__version__ = "0.1.0"
