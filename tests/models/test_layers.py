"""The Paddle pooling and padding rules of ``flaxcls.models.layers`` that every family builds on:
pools against Paddle's pool2d loop, the max pool's scatter-free gradient against JAX's own."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcls.models import layers


def _reference_pool(x, window, stride, pad, ceil_mode, kind, exclusive=True):
    """Paddle's pool2d loop (NHWC, numpy): windows clipped to the input; ceil adds partial ones."""
    n, h, w, c = x.shape

    def out_len(size):
        span = size + 2 * pad - window
        return (-(-span // stride) if ceil_mode else span // stride) + 1

    out = np.zeros((n, out_len(h), out_len(w), c), np.float64)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            h0, w0 = i * stride - pad, j * stride - pad
            h1, w1 = min(h0 + window, h), min(w0 + window, w)
            cells = x[:, max(h0, 0) : h1, max(w0, 0) : w1, :]
            if kind == "max":
                out[:, i, j] = cells.max(axis=(1, 2))
            else:
                denom = cells.shape[1] * cells.shape[2] if exclusive else window * window
                out[:, i, j] = cells.sum(axis=(1, 2)) / denom
    return out


@pytest.mark.parametrize(
    "size,window,stride,pad,ceil_mode",
    [
        (7, 2, 2, 0, True),
        (8, 2, 2, 0, True),
        (7, 3, 2, 1, False),
        (6, 3, 1, 1, False),
        (9, 3, 2, 1, True),
        (5, 3, 2, 0, False),
    ],
)
def test_pools_follow_paddle(size, window, stride, pad, ceil_mode):
    x = np.random.RandomState(0).standard_normal((2, size, size, 3)).astype(np.float32) - 3.0
    got = layers.max_pool(jnp.asarray(x), window, stride, pad, ceil_mode)
    np.testing.assert_allclose(
        got, _reference_pool(x, window, stride, pad, ceil_mode, "max"), rtol=1e-6
    )
    for exclusive in (True, False):
        got = layers.avg_pool(jnp.asarray(x), window, stride, pad, ceil_mode, exclusive)
        want = _reference_pool(x, window, stride, pad, ceil_mode, "avg", exclusive)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _jax_max_pool(x, window, stride, pad, ceil_mode):
    """JAX's own differentiable max pool (its gradient is a select_and_scatter)."""
    (wh, ww), (sh, sw), (ph, pw) = layers._pair(window), layers._pair(stride), layers._pair(pad)
    _, pads_h = layers._pool_geometry(x.shape[1], wh, sh, ph, ceil_mode)
    _, pads_w = layers._pool_geometry(x.shape[2], ww, sw, pw, ceil_mode)
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, wh, ww, 1), (1, sh, sw, 1), ((0, 0), pads_h, pads_w, (0, 0))
    )


@pytest.mark.parametrize(
    "size,window,stride,pad,ceil_mode",
    [(7, 2, 2, 0, True), (8, 2, 2, 0, False), (7, 3, 2, 1, False), (6, 3, 1, 1, False),
     (9, 3, 2, 1, True), (5, 3, 2, 0, False), (10, 3, 2, 0, True)],
)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_gradient_equals_jax_select_and_scatter(size, window, stride, pad, ceil_mode,
                                                         ties):
    rng = np.random.RandomState(1)
    x = rng.standard_normal((2, size, size + 1, 3)).astype(np.float32)
    if ties:  # like a ReLU output: windows full of equal zeros and ones
        x = np.maximum(np.round(x), 0.0)
    x = jnp.asarray(x)
    out = layers.max_pool(x, window, stride, pad, ceil_mode)
    np.testing.assert_array_equal(out, _jax_max_pool(x, window, stride, pad, ceil_mode))
    g = jnp.asarray(rng.randint(-3, 4, size=out.shape).astype(np.float32))
    ours = jax.grad(lambda v: jnp.sum(layers.max_pool(v, window, stride, pad, ceil_mode) * g))(x)
    want = jax.grad(lambda v: jnp.sum(_jax_max_pool(v, window, stride, pad, ceil_mode) * g))(x)
    np.testing.assert_array_equal(ours, want)


def test_max_pool_gradient_has_no_scatter_and_keeps_dtype():
    x = jnp.asarray(np.random.RandomState(2).standard_normal((2, 12, 12, 4)), jnp.bfloat16)

    def loss(v):
        return jnp.sum(layers.max_pool(v, 3, 2, padding=1).astype(jnp.float32) ** 2)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(x))
    assert "select_and_scatter" not in jaxpr and "scatter" not in jaxpr
    ours = jax.grad(loss)(x)
    assert ours.dtype == jnp.bfloat16
    want = jax.grad(lambda v: jnp.sum(_jax_max_pool(v, 3, 2, 1, False).astype(jnp.float32) ** 2))(x)
    np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(want, np.float32))


def test_avg_down_pool_last_cell_is_the_single_valid_value():
    x = jnp.arange(49, dtype=jnp.float32).reshape(1, 7, 7, 1)
    y = layers.avg_pool(x, 2, 2, ceil_mode=True, exclusive=True)
    assert y.shape == (1, 4, 4, 1)
    assert float(y[0, 3, 3, 0]) == 48.0  # the bottom-right window holds one valid cell


def test_max_pool_padding_never_wins():
    x = -jnp.ones((1, 4, 4, 1))
    assert float(layers.max_pool(x, 3, 2, padding=1).max()) == -1.0


def test_symmetric_padding_is_never_same():
    assert layers.symmetric_padding(7) == ((3, 3), (3, 3))
    assert layers.symmetric_padding((1, 3)) == ((0, 0), (1, 1))
