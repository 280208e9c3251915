"""Learning-rate schedules against hand-computed values, and the optimizer against Paddle's update."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxcls.config import ConfigError, default_config, validate
from flaxcls.specs import OptimSpec
from flaxcls.train import optim

SPE = 10  # steps per epoch; num_epochs=10 -> 100 steps in all


def cfg(**overrides):
    c = default_config()
    c.lr, c.num_epochs, c.batch_size = 0.1, 10, 256
    c.update(overrides)
    return c


def schedule_of(config, steps_per_epoch=SPE, global_batch_size=None):
    return optim.make_schedule(OptimSpec.from_config(config), steps_per_epoch,
                               global_batch_size or config.batch_size)


def lr_at(config, steps, **kw):
    schedule = schedule_of(config, **kw)
    return [float(schedule(s)) for s in steps]


CASES = [
    # (lr_strategy, other config fields, {step: expected lr})
    ("piecewise_decay", {"step_epochs": (3, 6, 9)},
     {0: 0.1, 29: 0.1, 30: 0.01, 59: 0.01, 60: 1e-3, 90: 1e-4, 120: 1e-4}),
    ("piecewise_decay", {"step_epochs": (3, 6), "decay_rate": 0.5},
     {29: 0.1, 30: 0.05, 60: 0.025}),
    # Warm-up 2 epochs = 20 steps; piecewise boundaries stay at absolute epochs.
    ("piecewise_decay_warmup", {"warm_up_epochs": 2.0, "step_epochs": (3, 6)},
     {0: 0.0, 10: 0.05, 19: 0.095, 20: 0.1, 29: 0.1, 30: 0.01, 60: 1e-3}),
    ("cosine_decay", {},
     {0: 0.1, 25: 0.05 * (1 + math.cos(math.pi / 4)), 50: 0.05, 100: 0.0, 130: 0.0}),
    # Cosine over the 80 steps after warm-up: t = step - 20.
    ("cosine_decay_warmup", {"warm_up_epochs": 2.0},
     {0: 0.0, 5: 0.025, 10: 0.05, 20: 0.1, 40: 0.05 * (1 + math.cos(math.pi / 4)), 60: 0.05,
      100: 0.0}),
    ("linear_decay", {"end_lr": 0.01}, {0: 0.1, 50: 0.055, 100: 0.01, 150: 0.01}),
    ("linear_decay_warmup", {"end_lr": 0.01, "warm_up_epochs": 2.0},
     {10: 0.05, 20: 0.1, 60: 0.055, 100: 0.01}),
    # Period 2.4 epochs = 24 steps, staircase.
    ("exponential_decay", {"decay_rate": 0.97, "decay_epochs": 2.4},
     {0: 0.1, 23: 0.1, 24: 0.097, 47: 0.097, 48: 0.1 * 0.97**2, 100: 0.1 * 0.97**4}),
    ("exponential_decay_warmup", {"decay_rate": 0.97, "decay_epochs": 2.4, "warm_up_epochs": 2.0},
     {10: 0.05, 20: 0.1, 43: 0.1, 44: 0.097, 68: 0.1 * 0.97**2}),
    ("constant", {}, {0: 0.1, 57: 0.1, 1000: 0.1}),
    ("constant_warmup", {"warm_up_epochs": 0.5}, {0: 0.0, 2: 0.04, 5: 0.1, 99: 0.1}),
    # A plain strategy with warm_up_epochs > 0 warms up too.
    ("cosine_decay", {"warm_up_epochs": 2.0}, {10: 0.05, 20: 0.1, 60: 0.05}),
]


@pytest.mark.parametrize("strategy,overrides,expected", CASES,
                         ids=[f"{i}-{c[0]}" for i, c in enumerate(CASES)])
def test_schedule_values(strategy, overrides, expected):
    got = lr_at(cfg(lr_strategy=strategy, **overrides), list(expected))
    np.testing.assert_allclose(got, list(expected.values()), rtol=1e-5, atol=1e-7)


def test_schedule_jits_and_takes_step_arrays():
    schedule = schedule_of(cfg(lr_strategy="cosine_decay_warmup", warm_up_epochs=2.0))
    steps = jnp.array([0, 10, 60, 100], jnp.int32)
    got = jax.jit(schedule)(steps)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, [0.0, 0.05, 0.05, 0.0], atol=1e-7)


def test_lr_scales_with_global_batch():
    c = cfg(lr_strategy="constant", lr_base_batch_size=256)
    assert lr_at(c, [0], global_batch_size=1024) == pytest.approx([0.4])
    assert lr_at(c, [0]) == pytest.approx([0.1])  # default: config.batch_size (256)
    c.lr_base_batch_size = 0
    assert lr_at(c, [0], global_batch_size=1024) == pytest.approx([0.1])
    c = cfg(lr_strategy="cosine_decay_warmup", warm_up_epochs=2.0, lr_base_batch_size=128)
    assert lr_at(c, [20, 60], global_batch_size=512) == pytest.approx([0.4, 0.2])


def test_schedule_config_errors():
    """Checked with the other fields before a job starts (config.validate), and again by the
    schedule where the epoch length matters."""
    cases = [(cfg(lr_strategy="cosine_decay_warmup"), "warm_up_epochs"),
             (cfg(lr_strategy="cosine_decay", warm_up_epochs=10.0), "warm_up_epochs"),
             (cfg(lr_strategy="poly_decay"), "lr_strategy"),
             (cfg(lr_strategy="exponential_decay", decay_epochs=0.0), "decay_epochs")]
    for c, field in cases:
        c.data_dir = "x"
        with pytest.raises(ConfigError, match=rf"^config\.{field}="):
            validate(c)
    with pytest.raises(ConfigError, match="warm_up_epochs"):
        schedule_of(cfg(lr_strategy="cosine_decay_warmup"))
    with pytest.raises(ConfigError, match="warm_up_epochs"):
        schedule_of(cfg(lr_strategy="cosine_decay", warm_up_epochs=10.0))
    # 0.05 epochs of 10 steps round to no warm-up step at all: only the epoch length tells.
    with pytest.raises(ConfigError, match="warm_up_epochs.*at least one warm-up step"):
        schedule_of(cfg(lr_strategy="cosine_decay_warmup", warm_up_epochs=0.04))


def paddle_momentum_l2(params, grads_seq, lrs, mu, l2, nesterov, decay_mask=None):
    """The 2019 fluid Momentum update with an L2Decay regularizer, written out in numpy."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    for g_t, lr in zip(grads_seq, lrs):
        for k, value in p.items():
            decay = l2 if decay_mask is None or decay_mask[k] else 0.0
            g = np.asarray(g_t[k], np.float64) + decay * value
            vel[k] = mu * vel[k] + g
            p[k] = value - lr * ((g + mu * vel[k]) if nesterov else vel[k])
    return p


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("exclude", [False, True])
def test_optimizer_matches_paddle_momentum_l2(nesterov, exclude):
    c = cfg(lr_strategy="linear_decay", end_lr=0.0, momentum_rate=0.9, l2_decay=0.01,
            nesterov=nesterov, num_epochs=1)
    c.l2_decay_exclude_bn_bias = exclude
    schedule = schedule_of(c)  # 0.1, 0.09, 0.08 for steps 0, 1, 2
    tx = optim.make_optimizer(OptimSpec.from_config(c), schedule)
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(2, 3)).astype(np.float32),
              "bias": rng.normal(size=(3,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
                 for _ in range(3)]

    p = jax.tree.map(jnp.asarray, params)
    state = tx.init(p)

    @jax.jit
    def update(p, state, g):
        updates, state = tx.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for g in grads_seq:
        p, state = update(p, state, g)

    mask = {"kernel": True, "bias": False} if exclude else None
    want = paddle_momentum_l2(params, grads_seq, [0.1, 0.09, 0.08], 0.9, 0.01, nesterov, mask)
    for k in params:
        np.testing.assert_allclose(p[k], want[k], rtol=1e-5, atol=1e-6)
    assert float(optim.learning_rate_of(state)) == pytest.approx(0.08)


def test_original_with_warmup_spelling_is_accepted():
    from flaxcls.config import validate

    a, b = default_config(), default_config()
    for c, name in ((a, "cosine_decay_warmup"), (b, "cosine_decay_with_warmup")):
        c.lr_strategy, c.warm_up_epochs, c.num_epochs, c.data_dir = name, 2.0, 10, "x"
        validate(c)
    sa, sb = schedule_of(a, 100, 256), schedule_of(b, 100, 256)
    for step in (0, 50, 199, 200, 500, 999):
        assert float(sa(step)) == float(sb(step))
