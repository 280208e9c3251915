"""Losses against numpy, mixup and top-k by hand, and dynamic loss scaling inside jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcls.train import losses
from flaxcls.train.loss_scale import LossScale


def test_onehot_smoothing_sums_to_one():
    t = losses.onehot(jnp.array([0, 3, 9]), 10, smoothing=0.1)
    assert t.dtype == jnp.float32
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t[1, 3], 0.9 + 0.01, rtol=1e-6)
    np.testing.assert_allclose(t[1, 0], 0.01, rtol=1e-6)
    np.testing.assert_array_equal(losses.onehot(jnp.array([2]), 4), [[0, 0, 1, 0]])


def test_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 11)) * 3
    target = np.asarray(losses.onehot(jnp.arange(6), 11, smoothing=0.1), np.float64)
    z = logits - logits.max(-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    want = -(target * log_p).sum(-1)
    got = losses.cross_entropy(jnp.asarray(logits, jnp.float32), jnp.asarray(target))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Low-precision logits are promoted: the result is float32 and close to the same value.
    got16 = losses.cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(target))
    assert got16.dtype == jnp.float32
    np.testing.assert_allclose(got16, want, rtol=0.05)


def test_topk_correct_by_hand_and_against_lax_top_k():
    logits = jnp.array([[0.1, 0.5, 0.2, 0.9],
                        [1.0, 1.0, 0.0, 0.0],   # tie: top_k ranks class 0 first
                        [0.0, 0.0, 0.0, jnp.nan]])
    labels = jnp.array([1, 1, 3])
    np.testing.assert_array_equal(losses.topk_correct(logits, labels, 1), [0, 0, 0])
    np.testing.assert_array_equal(losses.topk_correct(logits, labels, 2), [1, 1, 0])
    np.testing.assert_array_equal(losses.topk_correct(logits, labels, 4), [1, 1, 0])

    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.integers(0, 4, size=(64, 10)), jnp.float32)  # many ties
    labels = jnp.asarray(rng.integers(0, 10, size=64))
    for k in (1, 3, 5):
        top = jax.lax.top_k(logits, k)[1]
        want = jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)
        np.testing.assert_array_equal(losses.topk_correct(logits, labels, k), want)


def test_all_finite():
    assert bool(losses.all_finite({"a": jnp.ones(3), "b": [jnp.zeros((2, 2))]}))
    assert not bool(losses.all_finite({"a": jnp.ones(3), "b": [jnp.array([0.0, jnp.inf])]}))
    assert not bool(losses.all_finite(jnp.array([jnp.nan])))


def _sgd_step(ds, params, x):
    """One jitted fp16-style step: scaled loss, unscaled grads, update skipped if not finite."""

    def loss_fn(p):
        return jnp.sum(p["w"] * x)

    scaled_grads = jax.grad(lambda p: ds.scale_loss(loss_fn(p)))(params)
    grads = ds.unscale(scaled_grads)
    finite = losses.all_finite(grads)
    stepped = jax.tree.map(lambda p, g: jnp.where(finite, p - 0.1 * g, p), params, grads)
    return ds.update(finite), finite, loss_fn(params), stepped


def test_loss_scale_skips_non_finite_steps_and_halves():
    ds = LossScale.create(1024.0, growth_interval=3)
    params = {"w": jnp.ones(3)}
    step = jax.jit(_sgd_step)
    x = jnp.array([1.0, 2.0, 3.0])

    ds1, finite, loss, p1 = step(ds, params, x)
    assert bool(finite) and float(loss) == pytest.approx(6.0)  # loss comes back unscaled
    np.testing.assert_allclose(p1["w"], 1.0 - 0.1 * x, rtol=1e-6)  # grads come back unscaled
    assert float(ds1.scale) == 1024.0 and int(ds1.good_steps) == 1

    ds2, finite, _, p2 = step(ds1, p1, jnp.array([1.0, jnp.inf, 3.0]))
    assert not bool(finite)
    np.testing.assert_array_equal(p2["w"], p1["w"])  # step skipped
    assert float(ds2.scale) == 512.0 and int(ds2.good_steps) == 0


def test_loss_scale_grows_after_growth_interval_good_steps():
    ds = LossScale.create(8.0, growth_interval=3)
    update = jax.jit(lambda d, f: d.update(f))
    true = jnp.array(True)
    for expected_scale, expected_good in [(8.0, 1), (8.0, 2), (16.0, 0), (16.0, 1)]:
        ds = update(ds, true)
        assert (float(ds.scale), int(ds.good_steps)) == (expected_scale, expected_good)
    ds = update(ds, jnp.array(False))
    assert (float(ds.scale), int(ds.good_steps)) == (8.0, 0)
    # The scale never falls below min_scale.
    tiny = LossScale.create(1.0)
    assert float(tiny.update(jnp.array(False)).scale) == 1.0
    assert LossScale.create().growth_interval == 2000


def test_loss_scale_manual_api_matches_train_step_usage():
    ds = LossScale.create(4.0)
    assert float(ds.scale_loss(jnp.float32(2.0))) == 8.0
    grads = ds.unscale({"w": jnp.array([8.0, 4.0], jnp.float16)})
    assert grads["w"].dtype == jnp.float16
    np.testing.assert_array_equal(grads["w"], [2.0, 1.0])
