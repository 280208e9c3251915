"""Losses and their on-device helpers: cross entropy, label smoothing, mixup, top-k, fp16 loss scaling."""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


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


def mixup(
    rng: jax.Array, images: jax.Array, labels_onehot: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Mixes each example with its partner in the reversed batch, one ``lam ~ Beta(alpha, alpha)``.

    Returns ``lam * x + (1 - lam) * x[::-1]`` for both images and targets. Mixing the targets is
    the 2019 loss ``lam * CE(a) + (1 - lam) * CE(b)``, since cross entropy is linear in them.
    """
    lam = jax.random.beta(rng, alpha, alpha, dtype=jnp.float32)
    mixed = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * images[::-1]
    targets = lam * labels_onehot + (1.0 - lam) * labels_onehot[::-1]
    return mixed, targets.astype(labels_onehot.dtype)


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


def select_tree(pred: jax.Array, on_true: Any, on_false: Any) -> Any:
    """``on_true`` where the scalar ``pred`` holds, else ``on_false``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


@struct.dataclass
class DynamicScale:
    """Dynamic loss scaling for float16 training; a pytree that lives in the train state.

    A step whose gradients are not all finite is skipped and the scale divided by ``factor``;
    after ``growth_interval`` finite steps in a row the scale is multiplied by ``factor``.
    Everything stays on device, so it runs inside one ``jax.jit`` over a sharded batch.
    """

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32 scalar: finite steps since the scale last changed
    growth_interval: int = struct.field(pytree_node=False, default=2000)
    factor: float = struct.field(pytree_node=False, default=2.0)
    min_scale: float = struct.field(pytree_node=False, default=1.0)
    max_scale: float = struct.field(pytree_node=False, default=2.0**24)

    @classmethod
    def create(cls, initial_scale: float = 2.0**15, **static: Any) -> DynamicScale:
        return cls(scale=jnp.asarray(initial_scale, jnp.float32),
                   good_steps=jnp.zeros((), jnp.int32), **static)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss.astype(jnp.float32) * self.scale

    def unscale(self, grads: Any) -> Any:
        inv = 1.0 / self.scale
        return jax.tree.map(lambda g: (g.astype(jnp.float32) * inv).astype(g.dtype), grads)

    def update(self, finite: jax.Array) -> DynamicScale:
        """The scale for the next step, given whether this step's gradients were finite."""
        good = self.good_steps + 1
        grow = good >= self.growth_interval
        grown = jnp.where(grow, jnp.minimum(self.scale * self.factor, self.max_scale), self.scale)
        shrunk = jnp.maximum(self.scale / self.factor, self.min_scale)
        return self.replace(
            scale=jnp.where(finite, grown, shrunk),
            good_steps=jnp.where(finite & ~grow, good, 0).astype(jnp.int32),
        )

    select = staticmethod(select_tree)

    def value_and_grad(
        self, fn: Callable[..., Any], has_aux: bool = False
    ) -> Callable[..., tuple[DynamicScale, jax.Array, Any, Any]]:
        """Wraps ``fn(params, ...) -> loss [, aux]``; the result returns
        ``(new_scale, finite, value, grads)`` with the loss and grads unscaled.
        Apply the update only where ``finite`` (see ``select``)."""

        def scaled(*args: Any) -> Any:
            out = fn(*args)
            if has_aux:
                return self.scale_loss(out[0]), out
            return self.scale_loss(out), out

        def wrapped(*args: Any) -> tuple[DynamicScale, jax.Array, Any, Any]:
            grads, value = jax.grad(scaled, has_aux=True)(*args)
            grads = self.unscale(grads)
            finite = all_finite(grads)
            return self.update(finite), finite, value, grads

        return wrapped
