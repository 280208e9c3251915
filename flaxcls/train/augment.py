"""On-device batch augmentation inside the jitted step: mixup, CutMix and random erasing.

Each takes a PRNG key and the batch (NHWC images in the compute dtype, after normalisation;
one-hot targets) and pairs or draws within the batch it is given: under ``bn_stats="device"``
that is each device's share.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


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


def cutmix(
    rng: jax.Array, images: jax.Array, labels_onehot: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array]:
    """Pastes one box of the reversed batch into every example (CutMix, Yun et al. 2019).

    ``lam ~ Beta(alpha, alpha)`` sets the box's sides to ``floor(side * sqrt(1 - lam))`` around
    a uniform centre, clipped to the image (as timm's ``rand_bbox``). The targets are mixed by
    the area actually pasted: ``t * (1 - a) + t[::-1] * a``, ``a`` the box's share of the image
    after clipping, so each example's label weights are its pixels' shares exactly.
    """
    lam_key, y_key, x_key = jax.random.split(rng, 3)
    lam = jax.random.beta(lam_key, alpha, alpha, dtype=jnp.float32)
    h, w = images.shape[1], images.shape[2]
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(h * ratio).astype(jnp.int32)
    cut_w = jnp.floor(w * ratio).astype(jnp.int32)
    cy = jax.random.randint(y_key, (), 0, h)
    cx = jax.random.randint(x_key, (), 0, w)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, h), jnp.clip(cy + cut_h // 2, 0, h)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, w), jnp.clip(cx + cut_w // 2, 0, w)
    rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    mixed = jnp.where(box[None, :, :, None], images[::-1], images)
    pasted = ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (h * w)
    targets = (1.0 - pasted) * labels_onehot + pasted * labels_onehot[::-1]
    return mixed, targets.astype(labels_onehot.dtype)


def mix_batch(
    rng: jax.Array, images: jax.Array, labels_onehot: jax.Array, *, mixup_alpha: float,
    cutmix_alpha: float, prob: float = 1.0, switch_prob: float = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Mixup or CutMix for the whole batch (timm's batch mode): with chance ``prob`` the batch
    is mixed; with both on, CutMix with chance ``switch_prob`` and mixup otherwise. Only mixup,
    always (the 2019 recipes), is ``mixup`` itself, the same numbers as before CutMix."""
    if cutmix_alpha <= 0 and prob >= 1:
        return mixup(rng, images, labels_onehot, mixup_alpha)
    mix_key, cut_key, which_key, apply_key = jax.random.split(rng, 4)
    out_images, out_targets = images, labels_onehot
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(which_key) < switch_prob
        mu = mixup(mix_key, images, labels_onehot, mixup_alpha)
        cm = cutmix(cut_key, images, labels_onehot, cutmix_alpha)
        out_images = jnp.where(use_cutmix, cm[0], mu[0])
        out_targets = jnp.where(use_cutmix, cm[1], mu[1])
    elif cutmix_alpha > 0:
        out_images, out_targets = cutmix(cut_key, images, labels_onehot, cutmix_alpha)
    elif mixup_alpha > 0:
        out_images, out_targets = mixup(mix_key, images, labels_onehot, mixup_alpha)
    if prob < 1:
        mixed = jax.random.uniform(apply_key) < prob
        out_images = jnp.where(mixed, out_images, images)
        out_targets = jnp.where(mixed, out_targets, labels_onehot)
    return out_images, out_targets


ERASING_MODES = ("pixel", "const")


def random_erasing(
    rng: jax.Array, images: jax.Array, *, prob: float, mode: str = "pixel", max_count: int = 1,
    area: tuple[float, float] = (0.02, 1 / 3), aspect: tuple[float, float] = (0.3, 1 / 0.3),
    attempts: int = 10,
) -> jax.Array:
    """Random Erasing (Zhong et al. 2017) per example, on normalised images.

    With chance ``prob`` an example gets between 1 and ``max_count`` boxes (uniform). Each box
    takes ``attempts`` tries (the first that fits is used; none fits: no box) at an area
    fraction uniform in ``area`` (divided by the count) and an aspect ratio h/w log-uniform in
    ``aspect``; sides ``round(sqrt(area * aspect))`` and ``round(sqrt(area / aspect))``,
    strictly inside the image, at a uniform position. The box is filled with per-pixel
    standard normal noise (``pixel``: random values in the normalised space) or zeros
    (``const``: the data set's mean colour). timm's ``RandomErasing`` draws the same way.
    """
    if mode not in ERASING_MODES:
        raise ValueError(f"random erasing mode {mode!r}: must be one of {ERASING_MODES}")
    b, h, w = images.shape[0], images.shape[1], images.shape[2]
    keys = jax.random.split(rng, 7)
    shape = (b, max_count, attempts)
    count = jax.random.randint(keys[0], (b,), 1, max_count + 1)
    target = jax.random.uniform(keys[1], shape, minval=area[0], maxval=area[1])
    target = target * (h * w) / count[:, None, None]
    log_ratio = jax.random.uniform(keys[2], shape, minval=math.log(aspect[0]),
                                   maxval=math.log(aspect[1]))
    ratio = jnp.exp(log_ratio)
    box_h = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)
    box_w = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
    fits = (box_h < h) & (box_w < w) & (box_h > 0) & (box_w > 0)
    first = jnp.argmax(fits, axis=-1)  # the first attempt that fits (0 when none does)

    def pick(x: jax.Array) -> jax.Array:
        return jnp.take_along_axis(x, first[..., None], axis=-1)[..., 0]

    box_h, box_w, found = pick(box_h), pick(box_w), pick(fits)
    top = jnp.floor(jax.random.uniform(keys[3], (b, max_count)) * (h - box_h + 1))
    left = jnp.floor(jax.random.uniform(keys[4], (b, max_count)) * (w - box_w + 1))
    top, left = top.astype(jnp.int32), left.astype(jnp.int32)
    used = found & (jnp.arange(max_count)[None, :] < count[:, None])
    erased = jax.random.uniform(keys[5], (b,)) < prob
    used = used & erased[:, None]
    rows = jnp.arange(h)[None, None, :, None]
    cols = jnp.arange(w)[None, None, None, :]
    inside = ((rows >= top[..., None, None]) & (rows < (top + box_h)[..., None, None])
              & (cols >= left[..., None, None]) & (cols < (left + box_w)[..., None, None]))
    mask = jnp.any(inside & used[..., None, None], axis=1)[..., None]  # [b, h, w, 1]
    if mode == "pixel":
        fill = jax.random.normal(keys[6], images.shape, dtype=images.dtype)
    else:
        fill = jnp.zeros((), images.dtype)
    return jnp.where(mask, fill, images)
