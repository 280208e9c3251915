"""The input pipeline: data set sources, image ops and tf.data train/eval streams of uint8 batches.

`dataset_info` needs no tensorflow for list files and class folders; `train_iterator`,
`eval_iterator` and the ops import it (with the GPU hidden from it) on first use.
"""

from __future__ import annotations

from typing import Any

from flaxcls.data.sources import DataError, DatasetInfo, dataset_info

__all__ = [
    "DataError",
    "DatasetInfo",
    "dataset_info",
    "eval_iterator",
    "train_iterator",
    "write_digits_dataset",
]

_LAZY = {"train_iterator": "pipeline", "eval_iterator": "pipeline",
         "write_digits_dataset": "digits"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"flaxcls.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'flaxcls.data' has no attribute {name!r}")
