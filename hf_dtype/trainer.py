"""``DtypeTrainer``: ``transformers.Trainer`` fed by ``hd.dataloader``, the one documented change for Trainer users.

It overrides the three loader methods (the documented way to change Trainer's loaders) and
``_prepare_inputs``: batches are gathered from the Arrow buffers of a compacted ``Dataset`` or
stream, cross to the device in their storage dtypes and are widened there. Trainer's semantics are
kept: the row order of ``data_seed`` (else ``seed``) and the epoch, which is the order of Trainer's
own seedable sampler; ``set_epoch`` and ``resume_from_checkpoint`` (its ``skip_first_batches``);
gradient accumulation; evaluation and prediction; ``remove_unused_columns`` (only the columns the
model's ``forward`` takes are batched); several processes (``accelerator.prepare`` shards the
loader; a stream is split by ``hd.dataloader`` itself). Other datasets go to Trainer's own loaders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
import transformers

from .loader import dataloader
from .plan import DtypePlan
from .recording import plan_of

__all__ = ["DtypeTrainer"]


class DtypeTrainer(transformers.Trainer):
    """A ``Trainer`` whose loaders are ``hd.dataloader``s; no ``data_collator`` is needed.

    Args:
        *args, **kwargs: those of ``transformers.Trainer``.
        dataloader_options: more arguments of ``hd.dataloader`` (``pad_to_multiple_of``, ``widen``,
            ``packing``, ``block_size``, ``plan``, ...); batch sizes, seeds, workers and pinning come
            from ``TrainingArguments``.
    """

    def __init__(self, *args: Any, dataloader_options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dataloader_options = dict(dataloader_options or {})
        self._served = DtypePlan()  # the entries of every batch served so far, to widen them on the device

    def _fast(self, dataset: Any) -> bool:
        has_plan = self.dataloader_options.get("plan") is not None or plan_of(dataset) is not None
        return isinstance(dataset, (datasets.Dataset, datasets.IterableDataset)) and has_plan

    def _loader(self, dataset: Any, batch_size: int, *, training: bool) -> Any:
        args = self.args
        options = dict(self.dataloader_options)
        if args.remove_unused_columns and options.get("packing") is None and "columns" not in options:
            self._set_signature_columns_if_needed()
            plan = DtypePlan(options["plan"]) if options.get("plan") is not None else plan_of(dataset)
            names = set(dataset.column_names or []) | set(plan.derived)
            options["columns"] = [name for name in plan if name in names and name in self._signature_columns]
        workers = args.dataloader_num_workers
        loader = dataloader(
            dataset, batch_size, shuffle=training, drop_last=training and args.dataloader_drop_last,
            seed=args.data_seed if args.data_seed is not None else args.seed, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=args.dataloader_prefetch_factor, **options,
        )
        self._served = self._served.update(loader.plan.columns)
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> Any:
        if self.train_dataset is None or not self._fast(self.train_dataset):
            return super().get_train_dataloader()
        return self._loader(self.train_dataset, self._train_batch_size, training=True)

    def get_eval_dataloader(self, eval_dataset: str | Any | None = None) -> Any:
        chosen = self.eval_dataset[eval_dataset] if isinstance(eval_dataset, str) else eval_dataset or self.eval_dataset
        if chosen is None or not self._fast(chosen):
            return super().get_eval_dataloader(eval_dataset)
        return self._loader(chosen, self.args.eval_batch_size, training=False)

    def get_test_dataloader(self, test_dataset: Any) -> Any:
        if not self._fast(test_dataset):
            return super().get_test_dataloader(test_dataset)
        return self._loader(test_dataset, self.args.eval_batch_size, training=False)

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """On the device: the storage dtypes widened to compute dtypes (int64 ids and labels for the model)."""
        inputs = super()._prepare_inputs(inputs)
        return self._served.widen(inputs) if len(self._served) else inputs

