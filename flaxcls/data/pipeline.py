"""tf.data train and eval streams of uint8 batches: per-process shards, resumable, deterministic.

A `Source` gives the key batches (which examples, in which order, with which augmentation
seeds: `flaxcls.data.keys`); this module decodes and transforms them, each batch as its own
small dataset, so a batch is a pure function of the source, the `InputSpec` and the step, and an
unreadable example never shifts another batch.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from flaxcls.data import ops
from flaxcls.data.sources import EVAL, TRAIN, DataError, Shard, Source, Split

if TYPE_CHECKING:
    from flaxcls.specs import InputSpec

tf = ops.tf
log = logging.getLogger(__name__)

MAX_NAMED_SKIPS = 100  # skipped examples remembered by name on the iterator
MAX_EMPTY_BATCHES = 10  # train batches in a row without one readable image: something is wrong


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Numpy batches from a tf.data stream, counting examples that could not be read.

    `num_skipped` is the number of examples dropped so far because their file was unreadable or
    not a decodable image; `skipped` names the first MAX_NAMED_SKIPS of them. In a train batch the
    gaps are filled with copies of other examples of the same batch (so batch k is still built from
    the examples of step k); a batch with no readable example at all is dropped. In an eval batch
    a skipped example becomes padding with mask False. Each skip is logged (the first few with
    the source's reason); MAX_EMPTY_BATCHES dropped train batches in a row raise DataError.
    """

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], source: Source, split: Split):
        self._batches = batches
        self._source = source
        self._split = split
        self._train = split == TRAIN
        self._empty_run = 0
        self.num_skipped = 0
        self.skipped: list[str] = []
        self._yielded = 0  # batches handed out
        # (batches handed out, num_skipped then), for skipped_in_first; read from another thread
        self._marks: collections.deque[tuple[int, int]] = collections.deque()
        self._through = 0

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
            self._yielded += 1
            self._marks.append((self._yielded, self.num_skipped))
            out = {"image": b["image"], "label": b["label"]}
            if not self._train:
                out["mask"] = b["mask"]
            return out

    def skipped_in_first(self, batches: int) -> int:
        """Examples skipped while the first ``batches`` batches were built: what a consumer
        that has used that many batches has missed, however far ahead of it the reading
        runs (``num_skipped`` counts the batches read ahead too). Asked with non-decreasing
        ``batches``."""
        while self._marks and self._marks[0][0] <= batches:
            self._through = self._marks.popleft()[1]
        return self._through

    def _record(self, expected: np.ndarray, valid: np.ndarray, missing: int) -> None:
        self.num_skipped += missing
        gone = sorted(set(expected[expected >= 0].tolist()) - set(valid.tolist()))
        names = [self._source.describe(self._split, i) for i in gone]
        room = MAX_NAMED_SKIPS - len(self.skipped)
        self.skipped.extend(names[:max(room, 0)])
        reason = ""
        if gone and len(self.skipped) <= 5:
            why = self._source.explain(self._split, gone[0])
            reason = f" (first: {why})" if why else ""
        log.warning("Skipped %d unreadable image(s) in this batch, %d in this run so far: %s%s",
                    missing, self.num_skipped, ", ".join(names[:5]), reason)


# ----------------------------------------------------------------------------- public entry points


def train_iterator(source: Source, spec: InputSpec, *, global_batch_size: int,
                   start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> BatchIterator:
    """Infinite stream of {"image": uint8 [B, crop, crop, 3], "label": int32 [B]}, B = global/P.

    Batch k of this stream is global step start_step + k; skipped steps are never decoded. An
    epoch is source.num_train // global_batch_size steps.
    """
    shard = Shard(process_index, process_count, global_batch_size)
    num_train = source.num_train
    steps_per_epoch = num_train // global_batch_size
    if steps_per_epoch < 1:
        raise DataError(f"{num_train} train examples make no full batch of "
                        f"global_batch_size={global_batch_size} (config.batch_size)")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    start_epoch, skip = divmod(start_step, steps_per_epoch)
    if spec.repeated_augmentation > 1 and not source.repeats_examples:
        raise DataError(f"config.repeated_augmentation={spec.repeated_augmentation}: needs list "
                        f"files or class folders, not data_source={source.kind!r} (its train "
                        "stream is read in order)")
    source.warn(spec, TRAIN)
    transform = _train_transform(spec)
    datasets = source.train_keys(spec, shard, steps_per_epoch=steps_per_epoch,
                                 start_epoch=start_epoch, skip=skip)

    def decoded(keys) -> Iterator[dict[str, np.ndarray]]:
        return _decode_batches(keys, transform, shard.local_batch, spec, train=True,
                               read_files=source.keys_are_paths).as_numpy_iterator()

    # The first dataset now: the source's errors surface here and reading starts at once.
    first = decoded(next(datasets))
    stream = itertools.chain(first, itertools.chain.from_iterable(map(decoded, datasets)))
    return BatchIterator(_naming_read_errors(stream, source, TRAIN), source, TRAIN)


def eval_iterator(source: Source, spec: InputSpec, *, global_batch_size: int,
                  process_index: int = 0, process_count: int = 1) -> BatchIterator:
    """One pass: {"image", "label", "mask"} batches; every example once over all processes.

    Every process yields ceil(num_eval / global_batch_size) batches; padding has mask False.
    With spec.cache_eval the decoded pass is kept on the source and replayed by later calls.
    """
    shard = Shard(process_index, process_count, global_batch_size)
    if not source.num_eval:
        raise DataError(f"no eval data: looked for {source.eval_looked_for}")
    source.warn(spec, EVAL)
    key = None
    if spec.cache_eval:
        key = (global_batch_size, process_index, process_count, spec.eval_crop_size,
               spec.resize_short_size, ops.resize_method(spec.interpolation))
        if key in source.eval_cache:
            return BatchIterator(iter(source.eval_cache[key]), source, EVAL)
    ds = _decode_batches(source.eval_keys(spec, shard), eval_transform_fn(spec),
                         shard.local_batch, spec, train=False, read_files=source.keys_are_paths)
    stream = _naming_read_errors(ds.as_numpy_iterator(), source, EVAL)
    if key is not None:
        stream = _caching(stream, source.eval_cache, key)
    return BatchIterator(stream, source, EVAL)


def _naming_read_errors(stream: Iterator[dict[str, np.ndarray]], source: Source, split: Split):
    """Re-raises a read error that ended the stream as the source's DataError, when it has one
    (a damaged record shard, named)."""
    op_error = tf.errors.OpError  # bound now: the module may be gone when this is closed
    try:
        yield from stream
    except op_error as e:
        named = source.read_error(split, e)
        if named is None:
            raise
        raise named from e


def _caching(stream: Iterator[dict[str, np.ndarray]], cache: dict, key: tuple):
    kept = []
    for batch in stream:
        kept.append(batch)
        yield batch
    cache[key] = kept  # only a complete pass is replayed by later calls


# ----------------------------------------------------------------------------- transforms


def _threads(spec: InputSpec) -> int:
    """spec.reader_thread, or (0) every CPU this process may use. A fixed count, not
    tf.data.AUTOTUNE: each batch is its own small dataset, too short-lived for the tuner."""
    if spec.reader_thread > 0:
        return int(spec.reader_thread)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _train_transform(spec: InputSpec) -> Callable:
    crop, area = spec.crop_size, (spec.lower_scale, 1.0)
    ratio = (spec.lower_ratio, spec.upper_ratio)
    method = ops.resize_method(spec.interpolation)
    policy = None
    if spec.auto_augment:
        from flaxcls.data import autoaugment

        parsed = autoaugment.parse(spec.auto_augment)

        def policy(image, seed):
            return autoaugment.apply(image, seed, parsed, spec.fill)

    def transform(data, seed):
        return ops.train_transform(data, seed, crop_size=crop, area_range=area,
                                   aspect_ratio_range=ratio, method=method,
                                   flip=spec.random_flip, rotate_degrees=spec.rotate_degrees,
                                   jitter=spec.jitter, policy=policy)

    return transform


def eval_transform_fn(spec: InputSpec) -> Callable:
    """``(encoded bytes, seed) -> uint8 [crop, crop, 3]``: the one eval transform (resize the
    short side, centre crop) that eval, infer and export all use, from the spec's resolved
    preprocessing (`InputSpec.for_eval` makes one from preprocessing values alone)."""
    crop, short = spec.eval_crop_size, spec.resize_short_size
    method = ops.resize_method(spec.interpolation)
    return lambda data, seed: ops.eval_transform(data, crop_size=crop, resize_short_size=short,
                                                 method=method)


def _decode_batches(batches, transform: Callable, lb: int, spec: InputSpec, *, train: bool,
                    read_files: bool):
    """Batches of keys -> batches of images, each batch decoded as its own small dataset so an
    unreadable example can be dropped (ignore_errors) without shifting any other batch."""
    crop = spec.crop_size if train else spec.eval_crop_size
    threads = _threads(spec)

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
