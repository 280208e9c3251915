"""A prepared TFDS builder as a data set (`config.tfds_name`); never downloads.

Each epoch shuffles the files and a buffer with seeds from (seed, epoch), the same on every
process: each reads all records but decodes only its own positions.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from flaxcls.data.sources import EVAL, SPLIT_ALIASES, TRAIN, DataError, Shard, Source, Split

if TYPE_CHECKING:
    from flaxcls.specs import DataSpec, InputSpec


class TfdsSource(Source):
    """The train and eval splits of one TFDS builder (made once: each one rereads its metadata)."""

    kind = "tfds"

    def __init__(self, name: str, builder: Any, train_split: str, eval_split: str | None, *,
                 num_classes: int, class_names: list[str] | None, total_images: int = 0,
                 eval_looked_for: str):
        image_key, label_key = builder.info.supervised_keys or ("image", "label")
        splits = builder.info.splits
        super().__init__(train_size=splits[train_split].num_examples,
                         num_eval=splits[eval_split].num_examples if eval_split else 0,
                         num_classes=num_classes, class_names=class_names,
                         total_images=total_images, eval_looked_for=eval_looked_for)
        self.name, self.builder = name, builder  # the name as configured (with a version, say)
        self.train_split, self.eval_split = train_split, eval_split
        self.image_key, self.label_key = image_key, label_key

    @classmethod
    def from_spec(cls, spec: DataSpec) -> TfdsSource:
        name, data_dir = spec.tfds_name, spec.data_dir or None
        if not name:
            raise DataError("config.tfds_name is empty: data_source='tfds' needs a TFDS name")
        builder = _builder(name, data_dir)
        if not builder.is_prepared():
            raise DataError(
                f"TFDS data set {name!r} is not prepared in data_dir={builder.data_dir!r} "
                f"(config.data_dir={spec.data_dir!r}); flaxcls never downloads: prepare it "
                f"first, e.g. `tfds build {name} --data_dir=<data_dir> "
                f"--manual_dir=<where the archives are>`")
        image_key, label_key = builder.info.supervised_keys or ("image", "label")
        features = builder.info.features
        for key in (image_key, label_key):
            if key not in features:
                raise DataError(f"TFDS data set {name!r} has no feature {key!r} "
                                f"(features: {list(features)})")
        train_split = _split_name(builder, spec.train_split)
        if train_split is None:
            raise DataError(f"TFDS data set {name!r} has no split {spec.train_split!r} "
                            f"(config.train_split; splits: {list(builder.info.splits)})")
        eval_split = _split_name(builder, spec.eval_split)
        label = features[label_key]
        num_classes = int(getattr(label, "num_classes", 0) or spec.num_classes)
        if num_classes > spec.num_classes:
            raise DataError(f"TFDS data set {name!r} has {num_classes} classes but "
                            f"config.num_classes={spec.num_classes}")
        names = list(label.names) if hasattr(label, "names") and label.names else None
        looked_for = (f"split {spec.eval_split!r} (config.eval_split; "
                      f"splits: {list(builder.info.splits)})")
        return cls(name, builder, train_split, eval_split, num_classes=num_classes, class_names=names,
                   total_images=spec.total_images, eval_looked_for=looked_for)

    def _split(self, split: Split) -> str:
        if split == TRAIN:
            return self.train_split
        if self.eval_split is None:
            raise DataError(f"no eval data: looked for {self.eval_looked_for}")
        return self.eval_split

    def _read(self, split: str, shuffle_seed: int | None) -> Any:
        import tensorflow_datasets as tfds

        from flaxcls.data.keys import tf

        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                                     read_config=read_config,
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: (ex[self.image_key], tf.cast(ex[self.label_key], tf.int32)))

    def train_keys(self, spec: InputSpec, shard: Shard, *, steps_per_epoch: int,
                   start_epoch: int, skip: int) -> Iterator[Any]:
        """One dataset per epoch: the file shuffle seed of a TFDS read is a Python int."""
        for epoch in itertools.count(start_epoch):
            yield self._epoch(spec, shard, steps_per_epoch, epoch,
                              skip if epoch == start_epoch else 0)

    def _epoch(self, spec: InputSpec, shard: Shard, steps_per_epoch: int, epoch: int,
               skip: int) -> Any:
        from flaxcls.data.keys import aug_seeds

        seed = spec.seed
        epoch_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch]).generate_state(1)[0])
        ds = self._read(self.train_split, epoch_seed)
        if spec.reader_buf_size > 1:
            ds = ds.shuffle(int(spec.reader_buf_size), seed=epoch_seed)
        ds = ds.repeat().take(steps_per_epoch * shard.global_batch).enumerate()
        ds = ds.skip(skip * shard.global_batch)  # encoded records only: nothing is decoded
        ds = ds.filter(lambda pos, ex: pos % shard.count == shard.index)
        ds = ds.map(lambda pos, ex: {"key": ex[0], "label": ex[1], "index": pos,
                                     "seed": aug_seeds(seed, epoch, pos)})
        return ds.batch(shard.local_batch, drop_remainder=True)

    def eval_keys(self, spec: InputSpec, shard: Shard) -> Any:
        from flaxcls.data.keys import sequential_eval_batches

        return sequential_eval_batches(self._read(self._split(EVAL), None), self.num_eval,
                                       shard)

    def describe(self, split: Split, index: int) -> str:
        """The split and the position in its (shuffled) read order: TFDS examples have no path."""
        return f"{self.name}[{self._split(split)}] example #{index}"


def _builder(name: str, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds

    from flaxcls.data import ops  # noqa: F401  (hides the GPU from tensorflow)

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown or unreadable names
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]  # not the full list
        raise DataError(f"config.tfds_name={name!r}: no such TFDS data set "
                        f"(config.data_dir={data_dir!r}): {first_line}") from e


def _split_name(builder: Any, wanted: str) -> str | None:
    splits = builder.info.splits
    for name in (wanted, *SPLIT_ALIASES.get(wanted, ())):
        if name in splits:
            return name
    return None
