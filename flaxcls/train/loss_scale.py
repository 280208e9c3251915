"""Dynamic loss scaling for float16 training: a pytree that lives in the train state."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LossScale:
    """The float16 loss scale and its bookkeeping.

    The step multiplies the loss by ``scale`` before differentiating and divides the gradients
    by it after; a step whose gradients are not all finite is skipped and the scale divided by
    ``factor``; after ``growth_interval`` finite steps in a row the scale is multiplied by
    ``factor``. Everything stays on device, so it runs inside one ``jax.jit`` over a sharded
    batch, and it is saved and resumed with the rest of the train state.
    """

    scale: jax.Array  # float32 scalar
    good_steps: jax.Array  # int32 scalar: finite steps since the scale last changed
    growth_interval: int = struct.field(pytree_node=False, default=2000)
    factor: float = struct.field(pytree_node=False, default=2.0)
    min_scale: float = struct.field(pytree_node=False, default=1.0)
    max_scale: float = struct.field(pytree_node=False, default=2.0**24)

    @classmethod
    def create(cls, initial_scale: float = 2.0**15, **static: Any) -> LossScale:
        return cls(scale=jnp.asarray(initial_scale, jnp.float32),
                   good_steps=jnp.zeros((), jnp.int32), **static)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss.astype(jnp.float32) * self.scale

    def unscale(self, grads: Any) -> Any:
        inv = 1.0 / self.scale
        return jax.tree.map(lambda g: (g.astype(jnp.float32) * inv).astype(g.dtype), grads)

    def update(self, finite: jax.Array) -> LossScale:
        """The scale for the next step, given whether this step's gradients were finite."""
        good = self.good_steps + 1
        grow = good >= self.growth_interval
        grown = jnp.where(grow, jnp.minimum(self.scale * self.factor, self.max_scale), self.scale)
        shrunk = jnp.maximum(self.scale / self.factor, self.min_scale)
        return self.replace(
            scale=jnp.where(finite, grown, shrunk),
            good_steps=jnp.where(finite & ~grow, good, 0).astype(jnp.int32),
        )
