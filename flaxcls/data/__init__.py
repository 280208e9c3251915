"""The input pipeline: data set sources, image ops and tf.data train/eval streams of uint8 batches.

    source = open_source(specs.data)  # once: resolves and validates the data set
    batches = train_iterator(source, specs.input, global_batch_size=..., start_step=...)

`open_source` needs no tensorflow for list files and class folders; `train_iterator`,
`eval_iterator`, the key streams and the ops import it (with the GPU hidden from it) on first use.
"""

from __future__ import annotations

from typing import Any

from flaxcls.data.sources import DataError, DatasetInfo, Shard, Source, dataset_info, open_source

__all__ = [
    "DataError",
    "DatasetInfo",
    "Shard",
    "Source",
    "dataset_info",
    "eval_iterator",
    "open_source",
    "train_iterator",
    "write_digits_dataset",
]

_LAZY = {"train_iterator": "pipeline", "eval_iterator": "pipeline",
         "write_digits_dataset": "digits"}
# Submodules reached as attributes (`data.pipeline.eval_transform_fn`) without importing them
# (and tensorflow) with the package.
_SUBMODULES = ("augment_policy", "augment_space", "autoaugment", "digits", "file_source", "keys",
               "ops", "pipeline", "record_source", "rewrite", "tfds_source")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(f"flaxcls.data.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"flaxcls.data.{name}")
    raise AttributeError(f"module 'flaxcls.data' has no attribute {name!r}")
