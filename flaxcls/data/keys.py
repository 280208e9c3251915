"""The orders sources build their key streams from: which example each process reads at each
step, and with which augmentation seed; tf.data, but nothing is decoded here.

Over random-access keys (a list of paths or encoded images) epoch e is a stateless permutation
seeded from (seed, e), the same on every process; process p takes positions p, p + P, ... of it,
so the processes' local batches together form each global batch. Augmentation seeds come from
(seed, epoch, position), so a stream is a pure function of the spec, the process and the start
step, and the batches before the start step are skipped as index tensors, never read.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from flaxcls.data import ops
from flaxcls.data.sources import Shard

tf = ops.tf

SHUFFLE_STREAM = 1 << 62  # keeps shuffle seeds apart from augmentation seeds
NO_END = 1 << 62  # the last epoch of a never-ending stream


def epoch_order(num_examples: int, length: int, seed: int, epoch: Any, repeats: int = 1) -> Any:
    """The example indices of one epoch (int64 [length]): a stateless permutation seeded from
    (seed, epoch), followed by fresh permutations if the epoch (total_images) is longer than
    the data set. A pure function of its arguments, so identical on every process.

    ``repeats`` > 1 (repeated augmentation, as DeiT's and torchvision's RA sampler): the first
    ``length / repeats`` indices of that order, each ``repeats`` times in a row; the epoch keeps
    its length, and each copy, at its own position, gets its own augmentation seed."""
    if repeats > 1:
        unique = epoch_order(num_examples, -(-length // repeats), seed, epoch)
        return tf.repeat(unique, repeats)[:length]
    reps = -(-length // num_examples)
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64) + SHUFFLE_STREAM])
    if reps == 1:
        return tf.random.experimental.stateless_shuffle(
            tf.range(num_examples, dtype=tf.int64), key)[:length]
    # One sort of random keys per repetition: a permutation each, without an op per repetition.
    keys = tf.random.stateless_uniform([reps, num_examples], key, minval=None, maxval=None,
                                       dtype=tf.int64)
    return tf.cast(tf.reshape(tf.argsort(keys, axis=-1, stable=True), [-1])[:length], tf.int64)


def aug_seeds(seed: int, epoch: Any, position: Any) -> Any:
    """Per-example stateless seed [.., 2]: (seed, epoch * 2**32 + position in epoch)."""
    position = tf.cast(position, tf.int64)
    second = tf.cast(epoch, tf.int64) * (1 << 32) + position
    return tf.stack([tf.fill(tf.shape(position), tf.constant(seed, tf.int64)), second], -1)


def indexed_train_batches(keys: np.ndarray, labels: np.ndarray, shard: Shard, *,
                          steps_per_epoch: int, start_epoch: int, skip: int, seed: int,
                          repeats: int = 1) -> Any:
    """Train batches of {"key": keys[i], "label", "index": i, "seed"} over random-access keys
    (a string array: paths or encoded images) and their int32 labels, never ending.

    Only index tensors exist before the keys are gathered, so the skipped steps cost nothing.
    """
    n, lb = len(keys), shard.local_batch
    length = steps_per_epoch * shard.global_batch
    positions = tf.range(shard.index, length, shard.count, dtype=tf.int64)
    keys, labels = tf.constant(keys), tf.constant(labels)

    def epoch_batches(epoch, first_batch=0):
        indices = tf.gather(epoch_order(n, length, seed, epoch, repeats), positions)
        rows = (tf.reshape(indices, [-1, lb])[first_batch:],
                tf.reshape(positions, [-1, lb])[first_batch:])
        return tf.data.Dataset.from_tensor_slices(rows).map(lambda idx, pos: {
            "key": tf.gather(keys, idx), "label": tf.gather(labels, idx), "index": idx,
            "seed": aug_seeds(seed, epoch, pos)})

    first = epoch_batches(tf.constant(start_epoch, tf.int64), skip)
    later = tf.data.Dataset.range(start_epoch + 1, NO_END).flat_map(epoch_batches)
    return first.concatenate(later)


def indexed_eval_batches(keys: np.ndarray, labels: np.ndarray, shard: Shard) -> Any:
    """Eval batches over random-access keys: example i at global position i, padded to whole
    global batches with index -1; this process's positions."""
    num_eval = len(keys)
    num_batches = math.ceil(num_eval / shard.global_batch)
    padded = np.full(num_batches * shard.global_batch, -1, np.int64)
    padded[:num_eval] = np.arange(num_eval)
    local = padded[shard.index::shard.count].reshape(num_batches, shard.local_batch)
    keys, labels = tf.constant(keys), tf.constant(labels)

    def fields(idx):
        safe = tf.maximum(idx, 0)
        return {"key": tf.gather(keys, safe), "label": tf.gather(labels, safe), "index": idx,
                "seed": tf.zeros([shard.local_batch, 2], tf.int64)}

    return tf.data.Dataset.from_tensor_slices(local).map(fields)


def sequential_eval_batches(examples: Any, num_eval: int, shard: Shard) -> Any:
    """Eval batches from a dataset of (key, int32 label) read in order (record files, a TFDS
    split): example k at global position k, padded to whole global batches with index -1.
    Every process reads every record but keeps only its positions."""
    total = math.ceil(num_eval / shard.global_batch) * shard.global_batch
    padding = tf.data.Dataset.from_tensors((tf.constant(b""), tf.constant(0, tf.int32)))
    ds = examples.concatenate(padding.repeat(total - num_eval))
    ds = ds.enumerate().filter(lambda pos, ex: pos % shard.count == shard.index)
    ds = ds.map(lambda pos, ex: {"key": ex[0], "label": ex[1],
                                 "index": tf.where(pos < num_eval, pos, tf.constant(-1, tf.int64)),
                                 "seed": tf.zeros([2], tf.int64)})
    return ds.batch(shard.local_batch, drop_remainder=True)
