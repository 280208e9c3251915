"""Stochastic depth (``drop_path_rate``): rates linear in depth, per-example drops in training,
the identity at eval, and the models it applies to."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import check_random_in_training_only

import flaxcls
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.models.layers import DropPath, drop_path_rates
from flaxcls.registry import get_model_cfg

RESIDUAL_FAMILIES = {"resnet", "cifar", "resnext", "se_resnext", "resnext_wsl", "mobilenet_v2",
                     "mobilenet_v3", "darknet", "xception"}


# Members of those families without residual blocks (the CIFAR speed-run net).
NO_RESIDUAL = {"SpeedNet_cifar", "SpeedNet_cifar_x0_5"}


def test_rates_are_linear_in_depth():
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.3, 1) == [0.3]
    assert drop_path_rates(0.0, 3) == [0.0, 0.0, 0.0]


def test_drop_path_drops_whole_examples_and_keeps_the_expectation():
    x = jnp.ones((4000, 3, 3, 2))
    layer = DropPath(0.25)
    assert np.array_equal(layer.apply({}, x, train=False), x)  # eval: the identity
    y = np.asarray(layer.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    per_example = y.reshape(len(y), -1)
    assert np.all(per_example.min(1) == per_example.max(1))  # all of an example or nothing
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean(per_example[:, 0] == 0) - 0.25) < 0.03
    assert abs(y.mean() - 1.0) < 0.05


@pytest.mark.parametrize("name, overrides", [
    pytest.param("ResNet_tiny", {}, id="ResNet_tiny"),
    pytest.param("MobileNetV2_x0_25", {}, id="MobileNetV2", marks=pytest.mark.heavy),
    pytest.param("DarkNet53", {"stage_sizes": (1, 1, 2, 1, 1)}, id="DarkNet53",
                 marks=pytest.mark.heavy),
    pytest.param("Xception41", {"middle_blocks": 2}, id="Xception41", marks=pytest.mark.heavy),
])
def test_drop_path_is_the_identity_at_eval_and_random_in_training(name, overrides):
    check_random_in_training_only(
        flaxcls.create_model(name, num_classes=10, **overrides),
        flaxcls.create_model(name, num_classes=10, drop_path_rate=0.5, **overrides))


def _config(model: str, rate: float):
    c = default_config()
    c.model, c.drop_path_rate = model, rate
    return c


@pytest.mark.parametrize("name", flaxcls.list_models())
def test_every_model_with_residual_blocks_takes_a_rate_and_others_refuse(name):
    """Through the config, as ``--config.drop_path_rate=0.1`` on the command line."""
    if get_model_cfg(name).family in RESIDUAL_FAMILIES and name not in NO_RESIDUAL:
        validate(_config(name, 0.1), need_data=False)
        assert flaxcls.create_model(name, drop_path_rate=0.1).drop_path_rate == 0.1
    else:
        with pytest.raises(ConfigError, match=r"^config\.drop_path_rate=0.1: .* has no residual"):
            validate(_config(name, 0.1), need_data=False)


def test_a_rate_outside_0_1_names_the_field():
    with pytest.raises(ConfigError, match=r"^config\.drop_path_rate=1.0: must be in \[0, 1\)"):
        validate(_config("ResNet50", 1.0), need_data=False)
