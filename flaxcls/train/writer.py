"""Where metrics go: the console, ``metrics.jsonl`` in the workdir and TensorBoard event files.

Only process 0 writes; every other process's writer is silent.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax

log = logging.getLogger("flaxcls")


class MetricWriter:
    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(  # noqa: SIM115 - lives as long as the writer
            os.path.join(workdir, "metrics.jsonl"), "a", buffering=1
        )
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:  # optional: JSON lines are the record
                log.info("tensorboardX not installed: no TensorBoard event files")

    def write(self, split: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": int(step), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in values.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, int | float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _plain(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 6)
    return v
