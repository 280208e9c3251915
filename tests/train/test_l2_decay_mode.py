"""l2_decay_mode="loss" (L2 term in the objective) trains exactly like the default "optimizer"
mode (decay added to the gradient inside the optimizer); only the speed may differ."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import linen as nn

from flaxcls import parallel
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.specs import Specs, StepSpec
from flaxcls.train import builder, optim


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
    c.crop_size = c.resize_short_size = 8
    mesh = parallel.make_mesh(jax.devices()[:1])
    trainer = builder.build(Specs.from_config(c), mesh, steps_per_epoch=1, model=_ConvBNNet())
    state, step, metrics = trainer.init_state(), trainer.train_step, trainer.zeros_metrics()
    rng = np.random.RandomState(0)
    for _ in range(steps):
        batch = parallel.host_to_global({
            "image": rng.randint(0, 256, (8, 8, 8, 3)).astype(np.uint8),
            "label": rng.randint(0, 3, (8,)).astype(np.int32)}, mesh)
        state, metrics = step(state, metrics, batch)
    return jax.device_get(state.params), float(metrics["loss"])


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.heavy
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

    def penalty():  # as the step computes it from its spec
        spec = StepSpec.from_config(c)
        return float(optim.l2_penalty(params, spec.l2_loss, spec.l2_exclude_bn_bias))

    assert penalty() == pytest.approx(0.5 * 0.1 * (16.0 + 3.0))
    c.l2_decay_exclude_bn_bias = True
    assert penalty() == pytest.approx(0.5 * 0.1 * 16.0)
    c.l2_decay_mode = "optimizer"
    assert penalty() == 0.0


def test_bad_l2_decay_mode_names_the_field():
    c = default_config()
    c.l2_decay_mode, c.data_dir = "weights", "x"
    with pytest.raises(ConfigError, match=r"^config\.l2_decay_mode='weights': must be one of"):
        validate(c)
