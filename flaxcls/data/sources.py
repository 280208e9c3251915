"""Data set sources: the `Source` interface every kind of data set implements, and `open_source`,
which resolves a `DataSpec` to one (list files, class folders, record shards or a TFDS builder)
and validates it before training.

A kind is one `Source` subclass (`file_source`, `record_source`, `tfds_source`): it owns its
sizes, the tf.data streams of key batches the pipeline decodes (`train_keys`, `eval_keys`), the
names of its examples and its own warnings. Nothing here imports tensorflow: list files and class
folders are read without it; the key streams and TFDS import it when they are used.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import numpy as np

    from flaxcls.specs import DataSpec, InputSpec

log = logging.getLogger(__name__)

MAX_REPORTED = 20  # problems listed in one DataError message
# TFDS names the ImageNet-style held-out split "validation"; the original flag value is "val".
SPLIT_ALIASES = {"val": ("validation",), "validation": ("val",), "eval": ("validation", "val")}
Split = Literal["train", "eval"]  # a split's role in the run, whatever the data set calls it
TRAIN: Split = "train"
EVAL: Split = "eval"


class DataError(ValueError):
    """The data set on disk does not match what the config says; the message names file and line."""


@dataclasses.dataclass
class DatasetInfo:
    num_train: int  # the epoch length: config.total_images when > 0, else the train split's size
    num_eval: int  # examples in the eval split
    num_classes: int
    class_names: list[str] | None  # folder names for class folders, else None


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of each global batch: positions index, index + count, ... of it."""

    index: int  # process index
    count: int  # process count
    global_batch: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"process_index={self.index} must be in [0, {self.count})")
        if self.global_batch < 1 or self.global_batch % self.count:
            raise ValueError(f"global_batch_size={self.global_batch} must be a positive multiple "
                             f"of the process count {self.count}")

    @property
    def local_batch(self) -> int:
        return self.global_batch // self.count


class Source(abc.ABC):
    """One data set, resolved and validated once; the pipeline asks it for everything it needs.

    Its sizes are plain attributes. `train_keys` and `eval_keys` give tf.data datasets of key
    batches: dicts of [local_batch] tensors "key" (a file path when `keys_are_paths`, else the
    encoded image), "label" (int32), "index" (int64; the example's number for `describe`, -1 for
    eval padding) and "seed" (int64 [local_batch, 2], the augmentation seeds). The streams must
    be pure functions of their arguments: the train stream is resumed by rebuilding it.

    Subclasses implement `train_keys`, `eval_keys` and `describe`; `explain`, `read_error` and
    `input_warnings` are optional; a kind `open_source` knows also has `from_spec(DataSpec)`.
    `flaxcls.data.keys` has the shared orders (a seeded permutation per epoch over random-access
    keys, padded eval batches).
    """

    kind: ClassVar[str] = ""  # what data_source would name it
    keys_are_paths: ClassVar[bool] = False  # keys are file paths to read, not encoded images
    # train_keys honours spec.repeated_augmentation (needs random access to the examples)
    repeats_examples: ClassVar[bool] = False

    def __init__(self, *, train_size: int, num_eval: int, num_classes: int,
                 class_names: list[str] | None, total_images: int = 0,
                 eval_looked_for: str = "an eval split"):
        self.train_size = int(train_size)  # examples in the train split
        self.num_eval = int(num_eval)  # examples in the eval split; 0 when there is none
        self.num_classes = int(num_classes)
        self.class_names = class_names
        self.total_images = int(total_images)  # > 0: the epoch length, whatever is on disk
        self.eval_looked_for = eval_looked_for  # named by the error when num_eval is 0
        # Decoded eval passes, replayed by the pipeline when cache_eval is set; they live (and
        # go) with the source, keyed by the batch layout and the eval transform.
        self.eval_cache: dict[tuple, list[dict[str, np.ndarray]]] = {}
        self._warned: set[str] = set()

    @property
    def num_train(self) -> int:
        """The epoch length: total_images when > 0 (like the original flag), else the train
        split's size."""
        return self.total_images if self.total_images > 0 else self.train_size

    @abc.abstractmethod
    def train_keys(self, spec: InputSpec, shard: Shard, *, steps_per_epoch: int,
                   start_epoch: int, skip: int) -> Iterator[Any]:
        """The train key batches of process `shard.index` from batch `skip` of epoch
        `start_epoch` on, never ending: tf.data datasets read one after another (usually one;
        one per epoch where the reader must be remade each epoch). Epoch e has steps_per_epoch
        batches; skipped batches are never decoded. Errors in the data set (too few shards for
        the processes) are raised when the first dataset is made."""

    @abc.abstractmethod
    def eval_keys(self, spec: InputSpec, shard: Shard) -> Any:
        """The eval key batches of process `shard.index` (a tf.data dataset): every example once
        over all processes, ceil(num_eval / global_batch) batches on each, padded with
        index -1."""

    @abc.abstractmethod
    def describe(self, split: Split, index: int) -> str:
        """Names example `index` of a split (its file, or shard and record) for the user."""

    def explain(self, split: Split, index: int) -> str | None:
        """Why an example that could not be decoded failed, when the source can tell."""
        return None

    def read_error(self, split: Split, error: Exception) -> DataError | None:
        """A DataError naming what is damaged for a tensorflow error that ended a stream, or
        None to let the error through as it is."""
        return None

    def input_warnings(self, spec: InputSpec, split: Split) -> list[str]:
        """What the run loses by reading this data set with `spec` (images stored smaller than
        they are resized to, say); one message each."""
        return []

    def warn(self, spec: InputSpec, split: Split) -> list[str]:
        """Logs `input_warnings` not logged by this source before (once per run, not at every
        evaluation) and returns them all."""
        messages = self.input_warnings(spec, split)
        for message in messages:
            if message not in self._warned:
                self._warned.add(message)
                log.warning("%s", message)
        return messages

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(train={self.train_size}, eval={self.num_eval}, "
                f"classes={self.num_classes})")


RECORDS_INDEX = "records.json"  # written last by `python -m flaxcls.data.rewrite`
RECORDS_FORMAT = "flaxcls-records-v1"

# data_source -> the module and class of that kind, imported when used
_KINDS = {
    "list": ("flaxcls.data.file_source", "ListSource"),
    "folder": ("flaxcls.data.file_source", "FolderSource"),
    "records": ("flaxcls.data.record_source", "RecordSource"),
    "tfds": ("flaxcls.data.tfds_source", "TfdsSource"),
}


def open_source(spec: DataSpec) -> Source:
    """The data set `spec` describes, resolved (data_source='auto': list files, else class
    folders, else record shards) and validated; DataError naming the file, line or config
    field otherwise. Call it once and pass the source along: it keeps what it read."""
    kind = spec.data_source
    if kind != "tfds":
        if not spec.data_dir:
            raise DataError("config.data_dir is empty: set it to the folder holding the list "
                            "files or the class folders (or use data_source='tfds')")
        if kind == "auto":
            kind = _detect(spec)
    if kind not in _KINDS:
        raise DataError(f"config.data_source={spec.data_source!r}: must be auto, list, folder, "
                        f"records or tfds")
    module, name = _KINDS[kind]
    source = getattr(importlib.import_module(module), name).from_spec(spec)
    if spec.unlabeled:
        if not hasattr(source, "add_unlabeled"):
            raise DataError(f"config.distill_unlabeled={spec.unlabeled!r}: needs list files or "
                            f"class folders, not a {kind} data set")
        added = source.add_unlabeled(spec.unlabeled)
        log.info("distill_unlabeled: %d images without labels join the %d of the train split "
                 "(%s)", added, source.train_size - added, spec.unlabeled)
    return source


def dataset_info(spec: DataSpec) -> DatasetInfo:
    """The sizes and classes of `open_source(spec)`."""
    src = open_source(spec)
    return DatasetInfo(src.num_train, src.num_eval, src.num_classes, src.class_names)


def _detect(spec: DataSpec) -> str:
    data_dir = spec.data_dir
    train_list = os.path.join(data_dir, spec.train_list)
    train_root = os.path.join(data_dir, spec.train_split)
    records_index = os.path.join(data_dir, RECORDS_INDEX)
    if os.path.isfile(train_list):
        return "list"
    if os.path.isdir(train_root):
        return "folder"
    if os.path.isfile(records_index):
        return "records"
    if not os.path.isdir(data_dir):
        raise DataError(f"config.data_dir={data_dir!r} does not exist (or is not a folder)")
    raise DataError(
        f"config.data_dir={data_dir!r}: found neither a list file {train_list!r} "
        f"(config.train_list) nor a class-folder tree {train_root + os.sep!r} "
        f"(config.train_split) nor a record index {records_index!r}")


def raise_problems(problems: list[str], what: str) -> None:
    """One DataError listing the first MAX_REPORTED `problems` found in `what`, if any."""
    if not problems:
        return
    shown = "\n  ".join(problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    raise DataError(f"{len(problems)} problem(s) in {what}:\n  {shown}{more}")
