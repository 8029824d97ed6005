"""``DtypeTrainer``: ``transformers.Trainer`` fed by ``hd.dataloader``, the one documented change for Trainer users.

It overrides the three loader methods (the documented way to change Trainer's loaders) and
``_prepare_inputs``: batches are gathered from the Arrow buffers of a compacted ``Dataset`` or
stream, cross to the device in their storage dtypes and are widened there. Trainer's semantics are
kept: the row order of ``data_seed`` (else ``seed``) and the epoch, which is the order of Trainer's
own seedable sampler (``train_sampling_strategy`` ``"sequential"`` keeps the dataset's order,
``"group_by_length"`` groups the seeded order as ``LengthGroupedSampler`` does); ``set_epoch`` and
``resume_from_checkpoint`` (its ``skip_first_batches``); gradient accumulation; evaluation and
prediction; ``remove_unused_columns`` (only the columns the model's ``forward`` takes are
batched); several processes (``accelerator.prepare`` shards the
loader; a stream is split by ``hd.dataloader`` itself). A ``Dataset`` without a recorded plan gets
one inferred (``infer_plan``, masks kept as stored) unless a ``data_collator`` was given; other
datasets, and a stream without a plan, go to Trainer's own loaders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, cast

import datasets
import transformers

from ._compat import signature_columns
from .infer import infer_plan
from .layouts import Padded
from .loader import dataloader
from .plan import DtypePlan, as_plan
from .recording import plan_of

logger = logging.getLogger(__name__)

__all__ = ["DtypeTrainer"]


class DtypeTrainer(transformers.Trainer):
    """A ``Trainer`` whose loaders are ``hd.dataloader``s; no ``data_collator`` is needed.

    Args:
        *args, **kwargs: those of ``transformers.Trainer``.
        dataloader_options: more arguments of ``hd.dataloader`` (``layout=hd.Padded(pad_to_multiple_of=8)``,
            ``widen``, ``plan``, ``columns``, ...); batch sizes, seeds, workers and pinning come from ``TrainingArguments``.
    """

    def __init__(self, *args: Any, dataloader_options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self._collator_given = (args[2] if len(args) > 2 else kwargs.get("data_collator")) is not None
        super().__init__(*args, **kwargs)
        self.dataloader_options = dict(dataloader_options or {})
        self._served = DtypePlan()  # the entries of every batch served so far, to widen them on the device

    def _plan(self, dataset: Any) -> DtypePlan | None:
        """The plan to batch ``dataset`` with: given, recorded, or inferred for a ``Dataset`` (None: Trainer's own loader)."""
        plan = as_plan(self.dataloader_options.get("plan"))
        if plan is None and isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)):
            plan = plan_of(dataset)
            if plan is None and isinstance(dataset, datasets.Dataset) and not self._collator_given:
                logger.info("The dataset has no recorded plan: batching it with one inferred from its values (hd.compact(dataset) "
                            "would store it in those dtypes, and save the inference).")
                pad = getattr(getattr(self, "processing_class", None), "pad_token_id", None)
                plan = infer_plan(dataset, derive=False, pad_token_id=pad)
        return plan

    def _fast(self, dataset: Any) -> bool:
        return self._plan(dataset) is not None

    def _loader(self, dataset: Any, batch_size: int, *, training: bool) -> Any:
        args = self.args
        plan = self._plan(dataset)
        assert plan is not None  # the get_*_dataloader methods check _fast first
        options = {**self.dataloader_options, "plan": plan}
        strategy = _sampling_strategy(args) if training else "sequential"
        if strategy == "group_by_length" and isinstance(dataset, datasets.Dataset):
            layout = options.get("layout", Padded())
            if not isinstance(layout, Padded):
                raise ValueError(f"train_sampling_strategy='group_by_length' groups padded rows; the layout is {layout!r}.")
            options["layout"] = Padded(**{**layout._options(), "group_by_length": True})
        elif strategy == "group_by_length":  # as Trainer does: a stream's order is the one its rows arrive in
            logger.warning("train_sampling_strategy='group_by_length' is ignored for a stream: its rows come in the order they arrive.")
        elif strategy not in ("random", "sequential", "group_by_length"):
            raise ValueError(f"DtypeTrainer's loaders take train_sampling_strategy 'random', 'sequential' or 'group_by_length'; "
                             f"got {strategy!r} (use transformers.Trainer for it).")
        if args.remove_unused_columns and isinstance(options.get("layout", Padded()), Padded) and "columns" not in options:
            taken = signature_columns(self)
            names = [*(dataset.column_names or []), *(name for name in plan.derived if name not in (dataset.column_names or []))]
            options["columns"] = [name for name in names if name in taken]
        workers = args.dataloader_num_workers
        loader = dataloader(
            dataset, batch_size, shuffle=training and strategy != "sequential", drop_last=training and args.dataloader_drop_last,
            seed=args.data_seed if args.data_seed is not None else args.seed, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor, **options,
        )
        self._served = self._served | loader.plan.columns
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> Any:
        """``hd.dataloader`` over the train dataset (shuffled by ``data_seed``, else ``seed``), prepared by accelerate."""
        if self.train_dataset is None or not self._fast(self.train_dataset):
            return super().get_train_dataloader()
        return self._loader(self.train_dataset, self._train_batch_size, training=True)

    def get_eval_dataloader(self, eval_dataset: str | Any | None = None) -> Any:
        """``hd.dataloader`` over the eval dataset (or the one ``eval_dataset`` names, or is), in order."""
        # a name picks one of the eval datasets given as a dict, as Trainer's own get_eval_dataloader does
        named = cast("Mapping[str, Any]", self.eval_dataset)
        chosen = named[eval_dataset] if isinstance(eval_dataset, str) else eval_dataset or self.eval_dataset
        if chosen is None or not self._fast(chosen):
            return super().get_eval_dataloader(eval_dataset)
        return self._loader(chosen, self.args.eval_batch_size, training=False)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        """``hd.dataloader`` over ``test_dataset``, in order."""
        if not self._fast(test_dataset):
            return super().get_test_dataloader(test_dataset)
        return self._loader(test_dataset, self.args.eval_batch_size, training=False)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device: the storage dtypes widened to compute dtypes (int64 ids and labels for the model)."""
        inputs = super()._prepare_inputs(inputs)
        return self._served.widen(inputs) if len(self._served) else inputs


def _sampling_strategy(args: transformers.TrainingArguments) -> str:
    """``train_sampling_strategy``, or what older ``TrainingArguments`` said with ``group_by_length``."""
    strategy = getattr(args, "train_sampling_strategy", None)
    if strategy is None:
        return "group_by_length" if getattr(args, "group_by_length", False) else "random"
    return str(strategy)
