"""tf.data train and eval streams of uint8 batches: per-process shards, resumable, deterministic.

The train order is decided on index tensors before anything is read: epoch e is a stateless
permutation seeded from (random_seed, e), the same on every process; process p takes positions
p, p + P, ... of it, so the processes' local batches together form each global batch.
Augmentation seeds come from (random_seed, epoch, position), so a stream is a pure function of
the config and the start step. Record shards (data_source='records', from flaxcls.data.rewrite)
have no random access: process p reads shards p, p + P, ... in a stateless per-epoch order
through a seeded shuffle buffer, again a pure function of the config, the process and the step.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from flaxcls.data import ops
from flaxcls.data.sources import (
    DataError,
    FileSource,
    RecordSource,
    TfdsSource,
    resolve_source,
)
from flaxcls.preprocessing import is_resolved, resolve_preprocessing

tf = ops.tf
log = logging.getLogger(__name__)

MAX_NAMED_SKIPS = 100  # skipped examples remembered by name on the iterator
MAX_EMPTY_BATCHES = 10  # train batches in a row without one readable image: something is wrong
_eval_cache: dict[tuple, tuple[Any, list[dict[str, np.ndarray]]]] = {}
_SHUFFLE_STREAM = 1 << 62  # keeps shuffle seeds apart from augmentation seeds
_NO_END = 1 << 62


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Numpy batches from a tf.data stream, counting examples that could not be read.

    `num_skipped` is the number of examples dropped so far because their file was unreadable or
    not a decodable image; `skipped` names the first MAX_NAMED_SKIPS of them. In a train batch the
    gaps are filled with copies of other examples of the same batch (so batch k is still built from
    the examples of step k); a batch with no readable example at all is dropped. In an eval batch
    a skipped example becomes padding with mask False. Each skip is logged (the first few with
    the decoder's reason); MAX_EMPTY_BATCHES dropped train batches in a row raise DataError.
    """

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], describe: Callable[[int], str],
                 *, train: bool, explain: Callable[[int], str] | None = None):
        self._batches = batches
        self._describe = describe
        self._explain = explain
        self._train = train
        self._empty_run = 0
        self.num_skipped = 0
        self.skipped: list[str] = []

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            b = next(self._batches)
            expected, valid = b["expected"], b["valid"]
            n = int(np.count_nonzero(valid >= 0))
            missing = int(np.count_nonzero(expected >= 0)) - n
            if missing > 0:
                self._record(expected, valid, missing)
            if self._train and n == 0:
                self._empty_run += 1
                if self._empty_run >= MAX_EMPTY_BATCHES:
                    raise DataError(
                        f"{self._empty_run} train batches in a row had no readable image "
                        f"({self.num_skipped} skipped so far, e.g. {self.skipped[:3]}); "
                        f"check the files and the transform settings")
                continue
            self._empty_run = 0
            out = {"image": b["image"], "label": b["label"]}
            if not self._train:
                out["mask"] = b["mask"]
            return out

    def _record(self, expected: np.ndarray, valid: np.ndarray, missing: int) -> None:
        self.num_skipped += missing
        gone = sorted(set(expected[expected >= 0].tolist()) - set(valid.tolist()))
        names = [self._describe(i) for i in gone]
        room = MAX_NAMED_SKIPS - len(self.skipped)
        self.skipped.extend(names[:max(room, 0)])
        reason = ""
        if self._explain is not None and gone and len(self.skipped) <= 5:
            reason = f" (first: {self._explain(gone[0])})"
        log.warning("Skipped %d unreadable image(s) in this batch, %d in this run so far: %s%s",
                    missing, self.num_skipped, ", ".join(names[:5]), reason)


def _file_reason(split) -> Callable[[int], str]:
    """Re-reads one skipped file eagerly to surface the error that tf.data swallowed."""

    def explain(i: int) -> str:
        try:
            ops.decode_rgb(tf.io.read_file(str(split.paths[i])))
        except (tf.errors.OpError, ValueError) as e:  # the decoder's message is the point
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        return "decodes when read alone; the transform failed on it"

    return explain


# ----------------------------------------------------------------------------- public entry points


_warned: set[str] = set()


def warn_if_records_are_too_small(src: RecordSource, config, *, train: bool) -> str | None:
    """Logs (and returns) a warning when `flaxcls.data.rewrite` bounded a split's images below
    what the run resizes them to: every train crop upscaled (bound under crop_size), or eval
    images upscaled before the centre crop (shorter side under resize_short_size)."""
    settings = src.settings
    key, side_key, need, field = (
        ("max_side", "side", int(config.crop_size), "crop_size") if train else
        ("eval_max_side", "eval_side", int(config.resize_short_size), "resize_short_size"))
    bound, side = settings.get(key), settings.get(side_key, "longer" if train else "shorter")
    if not bound or int(bound) >= need:
        return None
    split, flag = ("train", "--max-side") if train else ("eval", "--eval-max-side")
    message = (f"{src.data_dir}: the {split} images were rewritten with their {side} side at "
               f"most {bound} px, below config.{field}={need} for {config.model}, so they are "
               f"upscaled; rewrite with {flag} {need} (or `--model {config.model}`) to keep "
               f"the original detail")
    if message not in _warned:  # once per run, not at every evaluation
        _warned.add(message)
        log.warning("%s", message)
    return message


def train_iterator(config, *, global_batch_size: int, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """Infinite stream of {"image": uint8 [B, crop, crop, 3], "label": int32 [B]}, B = global/P.

    Batch k of this stream is global step start_step + k; skipped steps are never decoded.
    """
    config = _with_preprocessing(config)
    src = resolve_source(config)
    lb = _local_batch(global_batch_size, process_index, process_count)
    num_train = len(src.train) if isinstance(src, FileSource) else src.num_train
    if config.total_images > 0:
        num_train = int(config.total_images)
    steps_per_epoch = num_train // global_batch_size
    if steps_per_epoch < 1:
        raise DataError(f"{num_train} train examples make no full batch of "
                        f"global_batch_size={global_batch_size} (config.batch_size)")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    start_epoch, skip = divmod(start_step, steps_per_epoch)
    transform = _train_transform(config)
    shard = _Shard(process_index, process_count, global_batch_size, lb)
    if isinstance(src, FileSource):
        batches = _file_train_batches(src, config, shard, steps_per_epoch, start_epoch, skip)
        ds = _decode_batches(batches, transform, lb, config, train=True, read_files=True)
        return BatchIterator(ds.as_numpy_iterator(), _file_namer(src.train), train=True,
                             explain=_file_reason(src.train))
    if isinstance(src, RecordSource):
        warn_if_records_are_too_small(src, config, train=True)
        batches = _record_train_batches(src, config, shard, steps_per_epoch, start_epoch, skip)
        ds = _decode_batches(batches, transform, lb, config, train=True, read_files=False)
        return BatchIterator(_naming_corrupt_shards(ds.as_numpy_iterator(), src.train.files),
                             src.train.locate, train=True)
    epochs = (_decode_batches(
        _tfds_train_batches(src, config, shard, steps_per_epoch, epoch,
                            skip if epoch == start_epoch else 0),
        transform, lb, config, train=True, read_files=False).as_numpy_iterator()
        for epoch in itertools.count(start_epoch))
    return BatchIterator(itertools.chain.from_iterable(epochs),
                         lambda i: f"{src.name}[{src.train_split}] example #{i}", train=True)


def eval_iterator(config, *, global_batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> BatchIterator:
    """One pass: {"image", "label", "mask"} batches; every example once over all processes.

    Every process yields ceil(num_eval / global_batch_size) batches; padding has mask False.
    """
    config = _with_preprocessing(config)
    src = resolve_source(config)
    lb = _local_batch(global_batch_size, process_index, process_count)
    if (src.eval is None) if isinstance(src, (FileSource, RecordSource)) \
            else (src.eval_split is None):
        raise DataError(f"no eval data: looked for {src.eval_looked_for}")
    shard = _Shard(process_index, process_count, global_batch_size, lb)
    num_eval = len(src.eval) if isinstance(src, FileSource) else src.num_eval
    transform = eval_transform_fn(config)
    if isinstance(src, FileSource):
        batches = _padded_eval_batches(src, num_eval, shard)
        describe, explain = _file_namer(src.eval), _file_reason(src.eval)
    elif isinstance(src, RecordSource):
        warn_if_records_are_too_small(src, config, train=False)
        batches = _record_eval_batches(src, num_eval, shard)
        describe, explain = src.eval.locate, None
    else:
        batches = _tfds_eval_batches(src, num_eval, shard)
        describe, explain = lambda i: f"{src.name}[{src.eval_split}] example #{i}", None
    key = None
    if config.cache_eval:
        # id(src) is stable: the cache keeps src alive, and resolve_source memoises it.
        key = (id(src), global_batch_size, process_index, process_count, config.crop_size,
               config.resize_short_size, ops.resize_method(config.interpolation))
        if key in _eval_cache:
            return BatchIterator(iter(_eval_cache[key][1]), describe, train=False)
    ds = _decode_batches(batches, transform, lb, config, train=False,
                         read_files=isinstance(src, FileSource))
    stream: Iterator[dict[str, np.ndarray]] = ds.as_numpy_iterator()
    if key is not None:
        stream = _caching(stream, key, src)
    return BatchIterator(stream, describe, train=False, explain=explain)


def _with_preprocessing(config, fields: tuple[str, ...] = ("crop_size", "resize_short_size",
                                                           "interpolation")):
    """`config` itself when the preprocessing fields the pipeline reads are set (a run resolves
    them first); else a copy with the unset ones filled from the model's ModelCfg, as a run
    would."""
    if is_resolved(config, fields):
        return config
    config = copy.deepcopy(config)
    resolve_preprocessing(config)
    return config


def _caching(stream: Iterator[dict[str, np.ndarray]], key: tuple, src):
    kept = []
    for batch in stream:
        kept.append(batch)
        yield batch
    _eval_cache[key] = (src, kept)  # only a complete pass is replayed by later calls


# ----------------------------------------------------------------------------- helpers


class _Shard:
    def __init__(self, index: int, count: int, global_batch: int, local_batch: int):
        self.index, self.count, self.global_batch, self.local_batch = (
            index, count, global_batch, local_batch)


def _local_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, {process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                         f"the process count {process_count}")
    return global_batch_size // process_count


def _file_namer(split) -> Callable[[int], str]:
    return lambda i: str(split.paths[i])


def _threads(config) -> int:
    """config.reader_thread, or (0) every CPU this process may use. A fixed count, not
    tf.data.AUTOTUNE: each batch is its own small dataset, too short-lived for the tuner."""
    if config.reader_thread > 0:
        return int(config.reader_thread)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def epoch_order(num_examples: int, length: int, seed: int, epoch: Any) -> Any:
    """The example indices of one epoch (int64 [length]): a stateless permutation seeded from
    (seed, epoch), followed by fresh permutations if the epoch (total_images) is longer than
    the data set. A pure function of its arguments, so identical on every process."""
    reps = -(-length // num_examples)
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64) + _SHUFFLE_STREAM])
    if reps == 1:
        return tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), key)[:length]
    # One sort of random keys per repetition: a permutation each, without an op per repetition.
    keys = tf.random.stateless_uniform([reps, num_examples], key, minval=None, maxval=None,
                                       dtype=tf.int64)
    return tf.cast(tf.reshape(tf.argsort(keys, axis=-1, stable=True), [-1])[:length], tf.int64)


def _aug_seeds(seed: int, epoch: Any, position: Any) -> Any:
    """Per-example stateless seed [.., 2]: (random_seed, epoch * 2**32 + position in epoch)."""
    position = tf.cast(position, tf.int64)
    second = tf.cast(epoch, tf.int64) * (1 << 32) + position
    return tf.stack([tf.fill(tf.shape(position), tf.constant(seed, tf.int64)), second], -1)


def _file_train_batches(src: FileSource, config, shard: _Shard, steps_per_epoch: int,
                        start_epoch: int, skip: int):
    """Batches of {"key": path, "label", "index", "seed"} ([local_batch] each), never ending.

    Only index tensors exist before the interleave, so the skipped steps cost nothing.
    """
    seed, n, lb = int(config.random_seed or 0), len(src.train), shard.local_batch
    length = steps_per_epoch * shard.global_batch
    positions = tf.range(shard.index, length, shard.count, dtype=tf.int64)
    paths, labels = tf.constant(src.train.paths), tf.constant(src.train.labels)

    def epoch_batches(epoch, first_batch=0):
        indices = tf.gather(epoch_order(n, length, seed, epoch), positions)
        rows = (tf.reshape(indices, [-1, lb])[first_batch:],
                tf.reshape(positions, [-1, lb])[first_batch:])
        return tf.data.Dataset.from_tensor_slices(rows).map(lambda idx, pos: {
            "key": tf.gather(paths, idx), "label": tf.gather(labels, idx), "index": idx,
            "seed": _aug_seeds(seed, epoch, pos)})

    first = epoch_batches(tf.constant(start_epoch, tf.int64), skip)
    later = tf.data.Dataset.range(start_epoch + 1, _NO_END).flat_map(epoch_batches)
    return first.concatenate(later)


def _padded_eval_batches(src: FileSource, num_eval: int, shard: _Shard):
    num_batches = math.ceil(num_eval / shard.global_batch)
    padded = np.full(num_batches * shard.global_batch, -1, np.int64)
    padded[:num_eval] = np.arange(num_eval)
    local = padded[shard.index::shard.count].reshape(num_batches, shard.local_batch)
    paths, labels = tf.constant(src.eval.paths), tf.constant(src.eval.labels)

    def fields(idx):
        safe = tf.maximum(idx, 0)
        return {"key": tf.gather(paths, safe), "label": tf.gather(labels, safe), "index": idx,
                "seed": tf.zeros([shard.local_batch, 2], tf.int64)}

    return tf.data.Dataset.from_tensor_slices(local).map(fields)


def _tfds_read(src: TfdsSource, split: str, shuffle_seed: int | None):
    import tensorflow_datasets as tfds

    builder = src.builder()
    read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
    ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                            read_config=read_config,
                            decoders={src.image_key: tfds.decode.SkipDecoding()})
    return ds.map(lambda ex: (ex[src.image_key], tf.cast(ex[src.label_key], tf.int32)))


def _tfds_train_batches(src: TfdsSource, config, shard: _Shard, steps_per_epoch: int,
                        epoch: int, skip: int):
    """One epoch of a TFDS split: file shuffle + buffer shuffle seeded from (seed, epoch), the same
    on every process (each reads all records, but decodes only its own)."""
    seed = int(config.random_seed or 0)
    epoch_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch]).generate_state(1)[0])
    ds = _tfds_read(src, src.train_split, epoch_seed)
    if config.reader_buf_size > 1:
        ds = ds.shuffle(int(config.reader_buf_size), seed=epoch_seed)
    ds = ds.repeat().take(steps_per_epoch * shard.global_batch).enumerate()
    ds = ds.skip(skip * shard.global_batch)  # encoded records only: nothing is decoded
    ds = ds.filter(lambda pos, ex: pos % shard.count == shard.index)
    ds = ds.map(lambda pos, ex: {"key": ex[0], "label": ex[1], "index": pos,
                                 "seed": _aug_seeds(seed, epoch, pos)})
    return ds.batch(shard.local_batch, drop_remainder=True)


_RECORD_FEATURES = {"image": "string", "label": "int64", "index": "int64"}


def _parse_records(serialized) -> dict:
    """Serialized examples [n] -> {"image": bytes [n], "label": int32 [n], "index": int64 [n]}."""
    spec = {k: tf.io.FixedLenFeature([], getattr(tf, v)) for k, v in _RECORD_FEATURES.items()}
    ex = tf.io.parse_example(serialized, spec)
    return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int32), "index": ex["index"]}


def _read_shards(files, cycle: int):
    """Records of `files` (a string tensor), `cycle` files read at a time, one record from each
    in turn; the order is a function of the file order only."""
    return tf.data.Dataset.from_tensor_slices(files).interleave(
        lambda f: tf.data.TFRecordDataset(f), cycle_length=cycle,
        block_length=1, num_parallel_calls=cycle, deterministic=True)


def _record_train_batches(src: RecordSource, config, shard: _Shard, steps_per_epoch: int,
                          start_epoch: int, skip: int):
    """Batches of {"key": encoded image, "label", "index", "seed"} from this process's shards
    (shard i belongs to process i % P), never ending.

    Epoch e reads the shards in a stateless order seeded from (random_seed, e), `cycle` at a
    time, through a shuffle buffer of reader_buf_size seeded the same way; the stream is a pure
    function of the config and the process. Skipped steps are read but not decoded.
    """
    files = src.train.files[shard.index::shard.count]
    if not files:
        raise DataError(f"{src.data_dir}: {len(src.train.files)} train record shard(s) for "
                        f"{shard.count} processes; every process reads its own shards: rewrite "
                        f"with --shards >= {shard.count}")
    seed, lb = int(config.random_seed or 0), shard.local_batch
    length = steps_per_epoch * lb  # examples per process per epoch
    # A buffer beyond the process's records buys nothing and costs time at every epoch start.
    own = sum(src.train.counts[shard.index::shard.count])
    buf = min(int(config.reader_buf_size), own)
    names, cycle = tf.constant(list(files)), min(len(files), 8)

    def epoch_batches(epoch, first_batch=0):
        key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64) + _SHUFFLE_STREAM])
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
            pos = (first_pos + k * lb + tf.range(lb, dtype=tf.int64)) * shard.count + shard.index
            return {"key": ex["image"], "label": ex["label"], "index": ex["index"],
                    "seed": _aug_seeds(seed, epoch, pos)}

        return ds.enumerate().map(fields)

    first = epoch_batches(tf.constant(start_epoch, tf.int64), skip)
    later = tf.data.Dataset.range(start_epoch + 1, _NO_END).flat_map(epoch_batches)
    return first.concatenate(later)


def _record_eval_batches(src: RecordSource, num_eval: int, shard: _Shard):
    total = math.ceil(num_eval / shard.global_batch) * shard.global_batch
    ds = tf.data.TFRecordDataset(list(src.eval.files), buffer_size=1 << 20).batch(256).map(
        _parse_records).unbatch().map(lambda ex: (ex["image"], ex["label"]))
    padding = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(0, tf.int32)))
    ds = ds.concatenate(padding.repeat(total - num_eval))
    ds = ds.enumerate().filter(lambda pos, ex: pos % shard.count == shard.index)
    ds = ds.map(lambda pos, ex: {"key": ex[0], "label": ex[1],
                                 "index": tf.where(pos < num_eval, pos, tf.constant(-1, tf.int64)),
                                 "seed": tf.zeros([2], tf.int64)})
    return ds.batch(shard.local_batch, drop_remainder=True)


def _naming_corrupt_shards(stream: Iterator[dict[str, np.ndarray]], files: tuple[str, ...]):
    """Re-raises a record read error as a DataError naming the damaged shard file."""
    data_loss = tf.errors.DataLossError  # bound now: the module may be gone when this is closed
    try:
        yield from stream
    except data_loss as e:
        raise DataError(_find_corrupt_shard(files, e)) from e


def _find_corrupt_shard(files: tuple[str, ...], error: Exception) -> str:
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


def _tfds_eval_batches(src: TfdsSource, num_eval: int, shard: _Shard):
    total = math.ceil(num_eval / shard.global_batch) * shard.global_batch
    padding = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(0, tf.int32)))
    ds = _tfds_read(src, src.eval_split, None).concatenate(padding.repeat(total - num_eval))
    ds = ds.enumerate().filter(lambda pos, ex: pos % shard.count == shard.index)
    ds = ds.map(lambda pos, ex: {"key": ex[0], "label": ex[1],
                                 "index": tf.where(pos < num_eval, pos, tf.constant(-1, tf.int64)),
                                 "seed": tf.zeros([2], tf.int64)})
    return ds.batch(shard.local_batch, drop_remainder=True)


# ----------------------------------------------------------------------------- transforms


def _train_transform(config) -> Callable:
    jitter = (config.brightness, config.contrast, config.saturation, config.hue) \
        if config.color_jitter else None
    crop, area = int(config.crop_size), (float(config.lower_scale), 1.0)
    ratio = (float(config.lower_ratio), float(config.upper_ratio))
    method = ops.resize_method(config.interpolation)
    rotate = float(config.rotate_degrees) if config.rotate else 0.0

    def transform(data, seed):
        return ops.train_transform(data, seed, crop_size=crop, area_range=area,
                                   aspect_ratio_range=ratio, method=method,
                                   flip=bool(config.random_flip), rotate_degrees=rotate,
                                   jitter=jitter)

    return transform


def eval_transform_fn(config) -> Callable:
    """``(encoded bytes, seed) -> uint8 [crop, crop, 3]``: the one eval transform (resize the
    short side, centre crop) that eval, infer and export all use, from the config's resolved
    preprocessing (`flaxcls.preprocessing.resolve_preprocessing`)."""
    config = _with_preprocessing(config)
    crop, short = int(config.crop_size), int(config.resize_short_size)
    method = ops.resize_method(config.interpolation)
    return lambda data, seed: ops.eval_transform(data, crop_size=crop, resize_short_size=short,
                                                 method=method)


def _decode_batches(batches, transform: Callable, lb: int, config, *, train: bool,
                    read_files: bool):
    """Batches of keys -> batches of images, each batch decoded as its own small dataset so an
    unreadable example can be dropped (ignore_errors) without shifting any other batch."""
    crop = int(config.crop_size)
    threads = _threads(config)

    def load(ex):
        data = tf.io.read_file(ex["key"]) if read_files else ex["key"]
        return transform(data, ex["seed"]), ex["label"], ex["index"]

    empty = tf.data.Dataset.from_tensors((tf.zeros([0, crop, crop, 3], tf.uint8),
                                          tf.zeros([0], tf.int32), tf.zeros([0], tf.int64)))

    def fill(expected):
        def fn(images, labels, index):
            n = tf.shape(labels)[0]
            valid = tf.pad(index, [[0, lb - n]], constant_values=-1)
            if train:  # repeat the batch's readable examples into the gaps
                take = tf.range(lb) % tf.maximum(n, 1)
                images, labels = tf.cond(
                    n == lb, lambda: (images, labels),  # the usual case: no copy
                    lambda: tf.cond(n > 0, lambda: (tf.gather(images, take),
                                                    tf.gather(labels, take)),
                                    lambda: (tf.zeros([lb, crop, crop, 3], tf.uint8),
                                             tf.zeros([lb], tf.int32))))
                mask = tf.ones([lb], tf.bool)
            else:  # gaps and padding are masked out
                images, labels = tf.cond(
                    n == lb, lambda: (images, labels),
                    lambda: (tf.pad(images, [[0, lb - n], [0, 0], [0, 0], [0, 0]]),
                             tf.pad(labels, [[0, lb - n]])))
                mask = tf.range(lb) < n
            return {"image": tf.ensure_shape(images, (lb, crop, crop, 3)),
                    "label": tf.ensure_shape(labels, (lb,)), "mask": mask,
                    "valid": valid, "expected": expected}
        return fn

    def decode_batch(batch):
        ds = tf.data.Dataset.from_tensor_slices(batch)
        if not train:
            ds = ds.filter(lambda ex: ex["index"] >= 0)
        ds = ds.map(load, num_parallel_calls=threads, deterministic=True)
        ds = ds.ignore_errors().batch(lb).concatenate(empty).take(1)
        return ds.map(fill(batch["index"]))

    # Two batches in flight keep every thread busy through a batch's tail; more when batches are
    # small next to the thread count.
    cycle = max(2, min(16, -(-2 * threads // lb)))
    ds = batches.interleave(decode_batch, cycle_length=cycle, num_parallel_calls=cycle,
                            deterministic=True)
    ds = ds.prefetch(2)
    options = tf.data.Options()
    options.deterministic = True
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)
