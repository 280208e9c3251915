"""l2_decay_mode="loss" (L2 term in the objective) trains exactly like the default "optimizer"
mode (decay added to the gradient inside the optimizer); only the speed may differ."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import linen as nn

from flaxcls import parallel
from flaxcls.config import ConfigError, default_config
from flaxcls.train import optim
from flaxcls.train.state import create_train_state
from flaxcls.train.step import TRAIN_METRICS, make_train_step, zeros_metrics


class _ConvBNNet(nn.Module):
    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def _train(mode: str, steps: int = 3, exclude: bool = False):
    c = default_config()
    c.num_classes, c.batch_size, c.lr, c.l2_decay, c.momentum_rate = 3, 8, 0.5, 0.05, 0.9
    c.lr_strategy, c.l2_decay_mode = "constant", mode
    c.l2_decay_exclude_bn_bias = exclude
    mesh = parallel.make_mesh(jax.devices()[:1])
    model = _ConvBNNet()
    tx = optim.make_optimizer(c, c.lr)
    state = create_train_state(model, tx, image_size=8, seed=0, mesh=mesh)
    step = make_train_step(model, tx, c, mesh)
    metrics = zeros_metrics(TRAIN_METRICS, mesh)
    rng = np.random.RandomState(0)
    for _ in range(steps):
        batch = parallel.host_to_global({
            "image": rng.randint(0, 256, (8, 8, 8, 3)).astype(np.uint8),
            "label": rng.randint(0, 3, (8,)).astype(np.int32)}, mesh)
        state, metrics = step(state, metrics, batch)
    return jax.device_get(state.params), float(metrics["loss"])


@pytest.mark.parametrize("exclude", [False, True])
def test_l2_in_loss_equals_l2_in_optimizer(exclude):
    p_opt, loss_opt = _train("optimizer", exclude=exclude)
    p_loss, loss_loss = _train("loss", exclude=exclude)
    for a, b in zip(jax.tree.leaves(p_opt), jax.tree.leaves(p_loss)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    # The reported loss is the data loss in both modes (the L2 term is not added to it).
    assert loss_opt == pytest.approx(loss_loss, rel=1e-5)


def test_l2_penalty_value_and_mask():
    c = default_config()
    c.l2_decay, c.l2_decay_mode = 0.1, "loss"
    params = {"kernel": np.full((2, 2), 2.0, np.float32), "bias": np.ones(3, np.float32)}
    assert float(optim.l2_penalty(params, c)) == pytest.approx(0.5 * 0.1 * (16.0 + 3.0))
    c.l2_decay_exclude_bn_bias = True
    assert float(optim.l2_penalty(params, c)) == pytest.approx(0.5 * 0.1 * 16.0)
    c.l2_decay_mode = "optimizer"
    assert float(optim.l2_penalty(params, c)) == 0.0


def test_bad_l2_decay_mode_names_the_field():
    c = default_config()
    c.l2_decay_mode = "weights"
    with pytest.raises(ConfigError, match="l2_decay_mode"):
        optim.make_optimizer(c, 0.1)
