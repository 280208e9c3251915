"""The ResNet family (ResNet, _vc, _vd, ResNet_tiny): parameter counts of the builds without a
fixture, stage geometry, Paddle's shortcut quirks, BatchNorm momentum and the initialisers. The
generic checks (ModelCfg, counts against the fixtures, forward/backward) are in test_models.py,
logits parity in tests/convert/test_paddle_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import (
    count,
    features_of,
    outputs_of,
    params_of,
    random_variables,
    variables_of,
)

import flaxcls

# Models the 2019 code defines but that have no fixture: expected (trainable, BN running-stat)
# counts, derived from the fixtures by reasoning.
# * vd vs plain stem: 7x7x3x64 conv + BN(64) is replaced by 3x3 convs 3->32, 32->32, 32->64 + BN
#   (32, 32, 64): trainable +(864 + 9216 + 18432 + 2*128) - (9408 + 2*64) = +19,232, running stats
#   +2*128 - 2*64 = +128 (ResNet50_vd - ResNet50 in the fixtures shows the same +19,232 / +128).
#   The vd avg-down shortcut only adds a parameter-free pool, so ResNet18/34_vd = ResNet18/34 +
#   that.
# * vc = the same deep stem with plain shortcuts, so ResNet101/152_vc have the counts of
#   ResNet101/152_vd (fixtures), exactly as ResNet50_vc and ResNet50_vd agree.
DERIVED_COUNTS = {
    "ResNet18_vd": (11_693_736 + 19_232, 9_728 + 128),
    "ResNet34_vd": (21_801_896 + 19_232, 17_152 + 128),
    "ResNet101_vc": (44_568_392, 105_472),
    "ResNet152_vc": (60_212_040, 151_552),
}



@pytest.mark.parametrize("name", sorted(DERIVED_COUNTS))
def test_derived_param_counts(name):
    variables = variables_of(name)
    assert (count(variables["params"]), count(variables["batch_stats"])) == DERIVED_COUNTS[name]


@pytest.mark.parametrize(
    "name", [n for n in flaxcls.list_models() if flaxcls.get_model_cfg(n).family == "resnet"])
def test_stage_maps(name):
    feats = features_of(name)
    assert {"stem", "stage1", "stage2", "stage3", "stage4"} <= set(feats)
    assert feats["pooled"] == feats["stage4"][:1] + feats["stage4"][3:]
    if flaxcls.get_model_cfg(name).input_size == 224:
        assert feats["stem"][1:3] == (56, 56)
        assert [feats[f"stage{i}"][1] for i in range(1, 5)] == [56, 28, 14, 7]


def test_resnet50_feature_widths():
    _, feats = outputs_of("ResNet50", batch=2)
    assert feats["stem"].shape == (2, 56, 56, 64)
    assert [feats[f"stage{i}"].shape[-1] for i in range(1, 5)] == [256, 512, 1024, 2048]
    assert feats["pooled"].shape == (2, 2048)


def test_paddle_first_block_projection_quirk():
    # resnet.py projects the very first block even though 64 -> 64, stride 1 (res2a_branch1).
    params = params_of("ResNet18")
    assert params["stage1_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 64)
    assert "shortcut_conv" not in params["stage1_block1"]
    # vd: stage-2+ first blocks keep a 1x1 stride-1 conv, after the avg pool.
    vd = params_of("ResNet50_vd")
    assert vd["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert vd["stem_conv1"]["kernel"].shape == (3, 3, 3, 32)


def test_odd_input_sizes_give_ceil_mode_maps():
    feats = features_of("ResNet18_vd", 72, num_classes=5)
    assert [feats[f"stage{i}"][1] for i in range(1, 5)] == [18, 9, 5, 3]


def test_batchnorm_momentum_is_paddles():
    model = flaxcls.create_model("ResNet_tiny")
    x = np.random.RandomState(3).standard_normal((4, 32, 32, 3)).astype(np.float32)
    variables = random_variables(model, 32)
    _, state = jax.jit(
        lambda v, x: model.apply(
            v,
            x,
            train=True,
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=lambda mdl, _: mdl.name == "stem_conv1",
        )
    )(variables, x)
    conv_out = state["intermediates"]["stem_conv1"]["__call__"][0]
    expected = 0.1 * np.asarray(conv_out).mean(axis=(0, 1, 2))  # 0.9 * 0 + 0.1 * batch mean
    np.testing.assert_allclose(state["batch_stats"]["stem_bn1"]["mean"], expected, atol=1e-6)


def test_init_distributions():
    model = flaxcls.create_model("ResNet_tiny")
    # The rbg key only makes the compile quick; the initialisers are the model's own.
    key = jax.random.key(0, impl="rbg")
    params = jax.jit(model.init)(key, jnp.zeros((1, 32, 32, 3)))["params"]
    # He-normal, fan_in = 3 * 3 * 128 (Paddle's MSRA default for conv).
    kernel = np.asarray(params["stage4_block0"]["conv2"]["kernel"])
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 128)), rel=0.05)
    assert abs(kernel.mean()) < 0.1 * kernel.std()
    # Head: Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) as the 2019 fc, zero bias.
    head = np.asarray(params["head"]["kernel"])
    assert np.abs(head).max() <= 1 / np.sqrt(128)
    assert head.std() == pytest.approx(1 / np.sqrt(3 * 128), rel=0.05)
    assert not np.any(np.asarray(params["head"]["bias"]))
    # BN starts at identity: no zero-init of the last gamma (not in the original).
    assert np.all(np.asarray(params["stage1_block0"]["bn2"]["scale"]) == 1.0)
