"""On-device batch augmentation (flaxcls.train.augment): mixup, CutMix, random erasing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcls.train import augment, losses


def test_mixup_is_a_convex_combination_with_the_reversed_batch():
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(4, 5, 5, 3)), jnp.float32)
    labels = losses.onehot(jnp.array([0, 1, 2, 3]), 4)
    key = jax.random.key(7)
    mixed, mixed_labels = jax.jit(augment.mixup, static_argnums=3)(key, images, labels, 0.2)
    lam = float(jax.random.beta(key, 0.2, 0.2, dtype=jnp.float32))
    assert 0.0 <= lam <= 1.0
    np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(mixed_labels[0], [lam, 0, 0, 1 - lam], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mixed_labels.sum(-1), 1.0, rtol=1e-6)
    # Every mixed pixel lies between the two originals.
    lo, hi = jnp.minimum(images, images[::-1]), jnp.maximum(images, images[::-1])
    assert bool(jnp.all((mixed >= lo - 1e-6) & (mixed <= hi + 1e-6)))


def test_mixup_keeps_low_precision_images():
    images = jnp.ones((2, 3, 3, 3), jnp.bfloat16)
    mixed, _ = augment.mixup(jax.random.key(0), images, losses.onehot(jnp.array([0, 1]), 2), 1.0)
    assert mixed.dtype == jnp.bfloat16


def _distinct_batch(n: int = 8, size: int = 12, classes: int = 10):
    """Example i is the constant image i + 1 with label i: a pixel tells whose it is."""
    images = jnp.broadcast_to(jnp.arange(1, n + 1, dtype=jnp.float32)[:, None, None, None],
                              (n, size, size, 3))
    return images, losses.onehot(jnp.arange(n), classes, 0.0)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 5.0])
def test_cutmix_label_weight_is_the_pasted_area_per_example(alpha):
    """Each example's label weights are its own and its partner's shares of its pixels."""
    images, targets = _distinct_batch()
    n, size = images.shape[0], images.shape[1]
    boxes = set()
    for seed in range(20):
        mixed, mixed_targets = jax.jit(augment.cutmix, static_argnums=3)(
            jax.random.key(seed), images, targets, alpha)
        mixed, mixed_targets = np.asarray(mixed), np.asarray(mixed_targets)
        for i in range(n):
            partner = n - 1 - i
            own = np.sum(mixed[i, :, :, 0] == i + 1)
            pasted = np.sum(mixed[i, :, :, 0] == partner + 1)
            assert own + pasted == size * size  # every pixel is one or the other, unblended
            # the pixels' shares, to the last bit of float32 (XLA may divide by multiplying
            # with the reciprocal, numpy divides)
            area = np.float32(pasted) / np.float32(size * size)
            weight = mixed_targets[i, partner]
            assert abs(weight - area) <= np.spacing(area), (seed, i, weight, area)
            assert mixed_targets[i, i] == np.float32(1) - weight
            assert mixed_targets[i].sum() == pytest.approx(1.0, abs=1e-6)
        boxes.add(int(pasted))
    assert len(boxes) > 3  # the box's size and place vary with the key


def test_mix_batch_chooses_per_batch():
    images, targets = _distinct_batch()
    key = jax.random.key(3)
    # Only mixup, always: the numbers of the 2019 mixup, bit for bit.
    a = augment.mix_batch(key, images, targets, mixup_alpha=0.2, cutmix_alpha=0.0)
    b = augment.mixup(key, images, targets, 0.2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # Never mixed.
    out = augment.mix_batch(key, images, targets, mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.0)
    np.testing.assert_array_equal(out[0], images)
    np.testing.assert_array_equal(out[1], targets)
    # Both on: switch 1 is CutMix (whole pixels), switch 0 is mixup (blended pixels).
    kinds = set()
    for seed in range(12):
        for switch in (0.0, 1.0, 0.5):
            out, _ = augment.mix_batch(jax.random.key(seed), images, targets, mixup_alpha=1.0,
                                      cutmix_alpha=1.0, switch_prob=switch)
            whole = np.isin(np.asarray(out), np.arange(1, 9)).all()
            if switch == 1.0:
                assert whole
            elif switch == 0.0:
                assert not whole
            else:
                kinds.add(bool(whole))
    assert kinds == {True, False}  # 0.5: some batches of each


def _erase(seed, images, **kw):
    fn = jax.jit(lambda key, x: augment.random_erasing(key, x, **kw))
    return np.asarray(fn(jax.random.key(seed), images))


def _boxes(out: np.ndarray, images: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Per example, (top, left, height, width) of the region that changed (or zeros)."""
    boxes = []
    for a, b in zip(out, images):
        changed = np.any(a != b, axis=-1)
        if not changed.any():
            boxes.append((0, 0, 0, 0))
            continue
        rows, cols = np.nonzero(changed.any(1))[0], np.nonzero(changed.any(0))[0]
        boxes.append((rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    return boxes


def test_random_erasing_boxes_follow_the_paper():
    """prob 1, one box: every example gets one filled rectangle inside the image whose area
    and aspect are within the ranges (up to the rounding of its sides); const mode fills
    zeros (the mean colour after normalisation), nothing outside the box changes."""
    size, n = 32, 64
    images = jnp.asarray(np.random.RandomState(0).uniform(1, 2, (n, size, size, 3)), jnp.float32)
    out = _erase(0, images, prob=1.0, mode="const", area=(0.1, 0.3), aspect=(0.5, 2.0))
    for i, (top, left, h, w) in enumerate(_boxes(out, np.asarray(images))):
        assert h > 0 and w > 0, i
        assert top + h <= size and left + w <= size
        region = out[i, top:top + h, left:left + w]
        assert np.all(region == 0.0), i  # a full rectangle of the fill
        outside = np.ones((size, size), bool)
        outside[top:top + h, left:left + w] = False
        np.testing.assert_array_equal(out[i][outside], np.asarray(images)[i][outside])
        # sides are round(sqrt(area * aspect)) etc.: area and aspect up to that rounding
        assert 0.1 * size**2 - (h + w + 1) <= h * w <= 0.3 * size**2 + (h + w + 1), (h, w)
        assert 0.5 * (w - 1) / (w + 1) <= h / w <= 2.0 * (w + 1) / max(w - 1, 1), (h, w)


def test_random_erasing_probability_count_noise_and_identity():
    size, n = 24, 256
    images = jnp.ones((n, size, size, 3), jnp.float32) * 3.0
    # prob 0: the identity
    np.testing.assert_array_equal(_erase(1, images, prob=0.0), np.asarray(images))
    # prob 0.5: about half the examples erased
    out = _erase(1, images, prob=0.5)
    erased = np.any(out != 3.0, axis=(1, 2, 3))
    assert 0.35 < erased.mean() < 0.65
    # pixel mode: normal noise, varying within the box
    noise = out[erased][out[erased] != 3.0]
    assert abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2
    # the same key gives the same boxes; another key others
    np.testing.assert_array_equal(out, _erase(1, images, prob=0.5))
    assert not np.array_equal(out, _erase(2, images, prob=0.5))
    # up to 3 boxes: more pixels erased on average than with one, never more than 3 regions
    one = np.mean(_erase(3, images, prob=1.0, mode="const") == 0)
    three = np.mean(_erase(3, images, prob=1.0, mode="const", max_count=3) == 0)
    assert three != one
    # bfloat16 images stay bfloat16
    assert augment.random_erasing(jax.random.key(0), images.astype(jnp.bfloat16),
                                  prob=1.0).dtype == jnp.bfloat16
