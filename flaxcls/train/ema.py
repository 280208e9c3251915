"""The exponential moving average of the weights, updated inside the jitted train step.

Every ``ema_every_steps`` optimizer steps, each parameter and BatchNorm statistic moves
``ema = d * ema + (1 - d) * value`` (float32, on the device, replicated like the weights).
``d`` is ``ema_decay``, or with ``ema_warmup`` ``min(ema_decay, (1 + k) / (10 + k))`` at the
``k``-th update (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so early
averages are not dominated by the random initialisation. With ``ema_every_steps = N`` the
decay is per update: over the same steps the average reaches back ``N`` times as far (timm's
and torchvision's recipes that update every few steps scale the decay the same way).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from flaxcls.specs import StepSpec


def decay_at(updates: jax.Array, spec: StepSpec) -> jax.Array:
    """The decay of the ``updates``-th update (1-based), float32."""
    d = jnp.float32(spec.ema_decay)
    if not spec.ema_warmup:
        return d
    k = updates.astype(jnp.float32)
    return jnp.minimum(d, (1.0 + k) / (10.0 + k))


def update(ema: dict[str, Any], params: Any, batch_stats: Any, step: jax.Array,
           spec: StepSpec) -> dict[str, Any]:
    """The EMA after optimizer step ``step`` (1-based: the step just taken): moved towards
    ``params``/``batch_stats`` when ``step`` is a multiple of ``ema_every_steps``, else as is."""
    every = spec.ema_every_steps
    due = step % every == 0
    d = decay_at(step // every, spec)
    new = {"params": params, "batch_stats": batch_stats}

    def one(e, v):
        moved = d * e + (1.0 - d) * v.astype(e.dtype)
        return jnp.where(due, moved, e) if every > 1 else moved

    return jax.tree.map(one, ema, new)
