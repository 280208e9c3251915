"""Losses and their on-device helpers: cross entropy, label smoothing, top-k, finiteness."""

from __future__ import annotations

from functools import reduce
from typing import Any

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, labels_onehot: jax.Array) -> jax.Array:
    """Per-example ``-sum(target * log_softmax(logits))``, computed in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(labels_onehot.astype(jnp.float32) * log_probs, axis=-1)


def onehot(labels: jax.Array, num_classes: int, smoothing: float = 0.0) -> jax.Array:
    """float32 one-hot targets; with ``smoothing`` = eps: ``(1 - eps) * onehot + eps / num_classes``.

    Labels outside ``[0, num_classes)`` (e.g. the padding of an eval batch) give an all-zero row
    before smoothing.
    """
    hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if smoothing:
        hot = (1.0 - smoothing) * hot + smoothing / num_classes
    return hot


def distillation(student_logits: jax.Array, teacher_logits: jax.Array, kind: str,
                 temperature: float = 1.0) -> jax.Array:
    """Per-example distillation loss of the student against the teacher (float32), both
    softened at ``temperature`` T and scaled by T^2 (Hinton et al.) so its gradient keeps its
    size as T changes:

    - ``kl`` (and ``soft_hard``'s soft part): the cross-entropy of the student against the
      teacher's softmax, ``-sum(p_t * log p_s)``: the KL divergence plus the teacher's entropy,
      which does not depend on the student (the same gradient);
    - ``js``: the Jensen-Shannon divergence ``(KL(p_s || m) + KL(p_t || m)) / 2`` with
      ``m = (p_s + p_t) / 2``, symmetric and bounded (PaddleClas's SSLD loss).
    """
    t = jnp.float32(temperature)
    log_ps = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
    log_pt = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
    if kind == "js":
        log_m = jnp.logaddexp(log_ps, log_pt) - jnp.log(2.0)
        loss = 0.5 * (jnp.sum(jnp.exp(log_ps) * (log_ps - log_m), axis=-1)
                      + jnp.sum(jnp.exp(log_pt) * (log_pt - log_m), axis=-1))
    else:
        loss = -jnp.sum(jnp.exp(log_pt) * log_ps, axis=-1)
    return loss * t * t


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per example, 1.0 where ``labels`` is among the ``k`` largest logits, else 0.0.

    Ties are broken toward the lower class index, as ``jax.lax.top_k`` does; a NaN logit for the
    label counts as wrong. No sort: the label's rank is counted directly.
    """
    labels = labels.astype(jnp.int32)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    index = jnp.arange(logits.shape[-1])
    ahead = (logits > label_logit) | ((logits == label_logit) & (index < labels[:, None]))
    rank = jnp.sum(ahead, axis=-1)
    return ((rank < k) & ~jnp.isnan(label_logit[:, 0])).astype(jnp.float32)


def all_finite(tree: Any) -> jax.Array:
    """A bool scalar: no inf or NaN in any leaf (reduced on device, no host sync)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return reduce(jnp.logical_and, leaves, jnp.array(True))
