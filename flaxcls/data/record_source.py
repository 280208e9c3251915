"""Record shards as a data set: the TFRecord files of (encoded JPEG, label, index) and their
records.json that `python -m flaxcls.data.rewrite` writes.

Shards have no random access: process p reads shards p, p + P, ... in a stateless per-epoch order
through a seeded shuffle buffer, so the train stream is still a pure function of the spec, the
process and the start step. The index is read without tensorflow; the streams import it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flaxcls.data.sources import (
    EVAL,
    RECORDS_FORMAT,
    RECORDS_INDEX,
    SPLIT_ALIASES,
    TRAIN,
    DataError,
    Shard,
    Source,
    Split,
    raise_problems,
)

if TYPE_CHECKING:
    from flaxcls.specs import DataSpec, InputSpec

log = logging.getLogger(__name__)

_RECORD_FEATURES = {"image": "string", "label": "int64", "index": "int64"}


@dataclasses.dataclass(frozen=True)
class RecordSplit:
    """One split as TFRecord shards of (encoded JPEG, label, index); record k of the split is the
    example with index k, shards hold consecutive runs of it."""

    name: str
    files: tuple[str, ...]  # full paths
    counts: tuple[int, ...]  # records per shard

    def __len__(self) -> int:
        return sum(self.counts)

    def locate(self, index: int) -> str:
        """'<shard file> record #k' for an example index of this split."""
        for path, count in zip(self.files, self.counts):
            if index < count:
                return f"{path} record #{index}"
            index -= count
        return f"{self.name} example #{index} (past the last shard)"


class RecordSource(Source):
    """Sharded record files written by `python -m flaxcls.data.rewrite`, described by records.json."""

    kind = "records"

    def __init__(self, data_dir: str, train: RecordSplit, eval: RecordSplit | None, *,
                 num_classes: int, class_names: list[str] | None, settings: dict,
                 total_images: int = 0, eval_looked_for: str):
        super().__init__(train_size=len(train), num_eval=len(eval) if eval is not None else 0,
                         num_classes=num_classes, class_names=class_names,
                         total_images=total_images, eval_looked_for=eval_looked_for)
        self.data_dir, self.train, self.eval = data_dir, train, eval
        self.settings = settings  # the rewrite's settings (the bounds on the image sides)

    @classmethod
    def from_spec(cls, spec: DataSpec) -> RecordSource:
        data_dir = spec.data_dir
        index = read_records_index(data_dir)
        path = os.path.join(data_dir, RECORDS_INDEX)
        splits = index["splits"]

        def find(wanted: str) -> str | None:
            return next((n for n in (wanted, *SPLIT_ALIASES.get(wanted, ())) if n in splits),
                        None)

        train_name, eval_name = find(spec.train_split), find(spec.eval_split)
        if train_name is None:
            raise DataError(f"{path}: no split {spec.train_split!r} (config.train_split; "
                            f"splits: {list(splits)})")
        if index["num_classes"] > spec.num_classes:
            raise DataError(f"{path}: {index['num_classes']} classes but "
                            f"config.num_classes={spec.num_classes}")
        problems: list[str] = []
        train = _record_split(data_dir, path, train_name, splits[train_name], problems)
        evals = None
        if eval_name is not None:
            evals = _record_split(data_dir, path, eval_name, splits[eval_name], problems)
        raise_problems(problems, f"the record shards of {path}")
        if not len(train):
            raise DataError(f"{path}: split {train_name!r} has no examples")
        if evals is None:
            log.warning("%s: no split %r (config.eval_split): evaluation is not possible.", path,
                        spec.eval_split)
        names = index.get("classes")
        return cls(data_dir, train, evals, num_classes=int(index["num_classes"]),
                   class_names=list(names) if names else None,
                   settings=dict(index.get("settings") or {}), total_images=spec.total_images,
                   eval_looked_for=f"split {spec.eval_split!r} in {path} (config.eval_split)")

    def split(self, split: Split) -> RecordSplit:
        if split == TRAIN:
            return self.train
        if self.eval is None:
            raise DataError(f"no eval data: looked for {self.eval_looked_for}")
        return self.eval

    def train_keys(self, spec: InputSpec, shard: Shard, *, steps_per_epoch: int,
                   start_epoch: int, skip: int) -> Iterator[Any]:
        """Batches of {"key": encoded image, "label", "index", "seed"} from this process's shards
        (shard i belongs to process i % P), never ending.

        Epoch e reads the shards in a stateless order seeded from (seed, e), `cycle` at a time,
        through a shuffle buffer of reader_buf_size seeded the same way. Skipped steps are read
        but not decoded.
        """
        from flaxcls.data.keys import NO_END, SHUFFLE_STREAM, aug_seeds, tf

        files = self.train.files[shard.index::shard.count]
        if not files:
            raise DataError(f"{self.data_dir}: {len(self.train.files)} train record shard(s) for "
                            f"{shard.count} processes; every process reads its own shards: "
                            f"rewrite with --shards >= {shard.count}")
        seed, lb = spec.seed, shard.local_batch
        length = steps_per_epoch * lb  # examples per process per epoch
        # A buffer beyond the process's records buys nothing and costs time at every epoch start.
        own = sum(self.train.counts[shard.index::shard.count])
        buf = min(int(spec.reader_buf_size), own)
        names, cycle = tf.constant(list(files)), min(len(files), 8)

        def epoch_batches(epoch, first_batch=0):
            key = tf.stack([tf.constant(seed, tf.int64),
                            tf.cast(epoch, tf.int64) + SHUFFLE_STREAM])
            order = tf.random.experimental.stateless_shuffle(tf.range(len(files)), key)
            ds = _read_shards(tf.gather(names, order), cycle)
            if buf > 1:
                buffer_seed = tf.random.stateless_uniform([], key, minval=None, maxval=None,
                                                          dtype=tf.int64)
                ds = ds.shuffle(buf, seed=buffer_seed)
            ds = ds.repeat().take(length).batch(lb, drop_remainder=True).skip(first_batch)
            first_pos = tf.cast(first_batch * lb, tf.int64)

            def fields(k, serialized):
                ex = _parse_records(serialized)
                # Positions in the global epoch order: this process's examples are p, p + P, ...
                pos = (first_pos + k * lb + tf.range(lb, dtype=tf.int64)) * shard.count \
                    + shard.index
                return {"key": ex["image"], "label": ex["label"], "index": ex["index"],
                        "seed": aug_seeds(seed, epoch, pos)}

            return ds.enumerate().map(fields)

        first = epoch_batches(tf.constant(start_epoch, tf.int64), skip)
        later = tf.data.Dataset.range(start_epoch + 1, NO_END).flat_map(epoch_batches)
        yield first.concatenate(later)

    def eval_keys(self, spec: InputSpec, shard: Shard) -> Any:
        from flaxcls.data.keys import sequential_eval_batches, tf

        split = self.split(EVAL)
        ds = tf.data.TFRecordDataset(list(split.files), buffer_size=1 << 20).batch(256).map(
            _parse_records).unbatch().map(lambda ex: (ex["image"], ex["label"]))
        return sequential_eval_batches(ds, len(split), shard)

    def describe(self, split: Split, index: int) -> str:
        return self.split(split).locate(index)

    def read_error(self, split: Split, error: Exception) -> DataError | None:
        """A damaged shard (same size, so records.json did not catch it) ends the stream with a
        DataLossError; this names the file."""
        from flaxcls.data.keys import tf

        if not isinstance(error, tf.errors.DataLossError):
            return None
        return DataError(_find_corrupt_shard(self.split(split).files, error))

    def input_warnings(self, spec: InputSpec, split: Split) -> list[str]:
        """When `flaxcls.data.rewrite` bounded a split's images below what the run resizes them
        to: every train crop upscaled (bound under crop_size), or eval images upscaled before
        the centre crop (shorter side under resize_short_size)."""
        train = split == TRAIN
        key, side_key, need, field = (
            ("max_side", "side", spec.crop_size, "crop_size") if train else
            ("eval_max_side", "eval_side", spec.resize_short_size, "resize_short_size"))
        bound = self.settings.get(key)
        side = self.settings.get(side_key, "longer" if train else "shorter")
        if not bound or int(bound) >= need:
            return []
        flag = "--max-side" if train else "--eval-max-side"
        message = (f"{self.data_dir}: the {split} images were rewritten with their {side} side "
                   f"at most {bound} px, below config.{field}={need} for {spec.model}, so they "
                   f"are upscaled; rewrite with {flag} {need} (or `--model {spec.model}`) to "
                   f"keep the original detail")
        return [message]


def read_records_index(data_dir: str) -> dict:
    """The parsed records.json of `data_dir`; DataError naming the file when absent or malformed."""
    path = os.path.join(data_dir, RECORDS_INDEX)
    if not os.path.isfile(path):
        raise DataError(f"record index {path!r} not found (config.data_dir={data_dir!r}, "
                        f"data_source='records'); write one with "
                        f"`python -m flaxcls.data.rewrite --src <images> --out {data_dir}`")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a valid record index: {e}") from e
    if not isinstance(index, dict) or index.get("format") != RECORDS_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DataError(f"{path}: format {found!r}, expected {RECORDS_FORMAT!r}")
    for field, kind in (("splits", dict), ("num_classes", int)):
        if not isinstance(index.get(field), kind):
            raise DataError(f"{path}: field {field!r} is missing or not a {kind.__name__}")
    return index


def _record_split(data_dir: str, path: str, name: str, entry: Any,
                  problems: list[str]) -> RecordSplit:
    files, counts = [], []
    shards = entry.get("shards") if isinstance(entry, dict) else None
    if not isinstance(shards, list) or not shards:
        problems.append(f"{path}: split {name!r} has no 'shards' list")
        return RecordSplit(name, (), ())
    for i, shard in enumerate(shards):
        try:
            file, count, size = str(shard["file"]), int(shard["count"]), int(shard["bytes"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: splits.{name}.shards[{i}] needs 'file', 'count' and 'bytes'")
            continue
        full = os.path.join(data_dir, file)
        try:
            actual = os.path.getsize(full)
        except OSError:
            problems.append(f"{full}: shard {i} of split {name!r} is missing")
            continue
        if actual != size:
            problems.append(f"{full}: {actual} bytes, but {path} says {size} "
                            f"(truncated or replaced; rewrite the data set)")
            continue
        files.append(full)
        counts.append(count)
    return RecordSplit(name, tuple(files), tuple(counts))


# ----------------------------------------------------------------------------- reading (tf)


def _parse_records(serialized) -> dict:
    """Serialized examples [n] -> {"image": bytes [n], "label": int32 [n], "index": int64 [n]}."""
    from flaxcls.data.keys import tf

    spec = {k: tf.io.FixedLenFeature([], getattr(tf, v)) for k, v in _RECORD_FEATURES.items()}
    ex = tf.io.parse_example(serialized, spec)
    return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32), "index": ex["index"]}


def _read_shards(files, cycle: int):
    """Records of `files` (a string tensor), `cycle` files read at a time, one record from each
    in turn; the order is a function of the file order only."""
    from flaxcls.data.keys import tf

    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f), cycle_length=cycle,
        block_length=1, num_parallel_calls=cycle, deterministic=True)


def _find_corrupt_shard(files: tuple[str, ...], error: Exception) -> str:
    from flaxcls.data.keys import tf

    for path in files:
        count = 0
        try:
            for _ in tf.data.TFRecordDataset(path):
                count += 1
        except tf.errors.OpError as e:
            first = str(e).strip().splitlines()[0][:200]
            return (f"{path}: damaged record file after {count} good records ({first}); "
                    f"rewrite the data set (python -m flaxcls.data.rewrite)")
    first = str(error).strip().splitlines()[0][:200]
    return f"reading the record shards ({', '.join(files[:3])}, ...) failed: {first}"
