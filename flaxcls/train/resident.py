"""The train batch drawn inside the jitted step from a device-resident split
(``flaxcls.data.resident``): shuffle, gather, random crop with padding and flip, on the device.

Batch ``k`` of epoch ``e`` is positions ``k*B .. (k+1)*B`` of a permutation of the split drawn
from ``(seed, e)``, and its augmentation from ``(seed, step)``: a pure function of the step, so
a resumed run sees the same images, augmented the same way. An epoch is ``n // B`` steps (the
last partial batch is dropped, as streaming does).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from flaxcls.parallel import DATA_AXIS

SHUFFLE, AUGMENT = 0, 1  # streams folded into the seed's key


def make_batch_fn(*, num_examples: int, batch_size: int, seed: int, padding: int, flip: bool,
                  mesh: Mesh) -> Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]:
    """``(data, step) -> {"image": uint8 [B, S, S, 3], "label": int32 [B]}`` sharded over the
    batch: ``data`` replicated ``{"image", "label"}``, ``step`` the optimizer step (int32)."""
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{num_examples} examples make no batch of {batch_size}")
    base = jax.random.key(seed)
    spread = NamedSharding(mesh, P(DATA_AXIS))

    def batch_fn(data: dict[str, jax.Array], step: jax.Array) -> dict[str, jax.Array]:
        epoch, k = step // steps_per_epoch, step % steps_per_epoch
        order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(base, SHUFFLE),
                                                          epoch), num_examples)
        idx = jax.lax.dynamic_slice(order, (k * batch_size,), (batch_size,))
        idx = jax.lax.with_sharding_constraint(idx, spread)
        images = jnp.take(data["image"], idx, axis=0)
        labels = jnp.take(data["label"], idx, axis=0)
        key = jax.random.fold_in(jax.random.fold_in(base, AUGMENT), step)
        images = crop_and_flip(images, key, padding=padding, flip=flip)
        return {"image": jax.lax.with_sharding_constraint(images, spread),
                "label": jax.lax.with_sharding_constraint(labels, spread)}

    return batch_fn


def crop_and_flip(images: jax.Array, key: jax.Array, *, padding: int, flip: bool) -> jax.Array:
    """Per image: a random ``S x S`` window of the image zero-padded by ``padding`` on each side
    (a translation by up to ``padding`` pixels; torchvision's ``RandomCrop(S, padding)``), then a
    horizontal mirror with chance 1/2 when ``flip``."""
    n, size = images.shape[0], images.shape[1]
    crop_key, flip_key = jax.random.split(key)
    if padding:
        shifts = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
        padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

        def window(img: jax.Array, shift: jax.Array) -> jax.Array:
            return jax.lax.dynamic_slice(img, (shift[0], shift[1], 0), (size, size, 3))

        images = jax.vmap(window)(padded, shifts)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return images


def abstract_data(data: dict[str, Any]) -> dict[str, Any]:
    """ShapeDtypeStructs of the resident arrays (for lowering the step without them)."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding),
                        data)
