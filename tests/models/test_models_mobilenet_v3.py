"""MobileNetV3 large and small (PaddleClas 2.x ``legendary_models/mobilenet_v3.py``): the width
rule, the block table's geometry, SE widths and Paddle's hardsigmoid, where the shortcuts sit,
parameter counts (the two fixtures; the other widths from the block table and PaddleClas's
documented sizes), the state-dict map's keys, the SSLD names, what the config accepts, and
stochastic depth and a train step. The generic checks (ModelCfg, accuracies, name maps, a
forward/backward of the family's representative, the README row) are in test_models.py; logits
parity in tests/convert/test_mobilenet_v3_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from model_checks import (
    abstract_variables,
    check_random_in_training_only,
    count,
    features_of,
    params_of,
    train_step_checks,
    variables_of,
)
from reference import PADDLECLAS_FIXTURES, load_manifest

import flaxcls
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.convert import paddle as converter
from flaxcls.models import mobilenet_v3
from flaxcls.models.layers import DropPath
from flaxcls.registry import PADDLECLAS_ALIASES

SCALES = {"x0_35": 0.35, "x0_5": 0.5, "x0_75": 0.75, "x1_0": 1.0, "x1_25": 1.25}
NAMES = [f"MobileNetV3_{size}_{w}" for size in ("large", "small") for w in SCALES]
# "Params(M)" of PaddleClas's MobileNetV3.md (PaddlePaddle/PaddleClas @ d178931fc,
# docs/zh_CN/models/ImageNet1k/MobileNetV3.md, table 1.2). Given to 0.01 M and not exactly
# rounded (large_x1_0: 5.47 there, 5,480,206 in PaddleClas's own model, the fixture's count).
DOCUMENTED_MILLIONS = {
    "MobileNetV3_large_x1_25": 7.44, "MobileNetV3_large_x1_0": 5.47,
    "MobileNetV3_large_x0_75": 3.91, "MobileNetV3_large_x0_5": 2.67,
    "MobileNetV3_large_x0_35": 2.10, "MobileNetV3_small_x1_25": 3.62,
    "MobileNetV3_small_x1_0": 2.94, "MobileNetV3_small_x0_75": 2.37,
    "MobileNetV3_small_x0_5": 1.90, "MobileNetV3_small_x0_35": 1.66,
}


def _manifest(name: str) -> dict:
    return load_manifest(name, PADDLECLAS_FIXTURES)


def _split(name: str) -> tuple[str, float]:
    _, size, width = name.split("_", 2)
    return size, SCALES[width]


def _table_counts(size: str, scale: float) -> tuple[int, int]:
    """(trainable, BN statistics) from the block table: stem 3x3 conv + BN; per unit c -> e -> o
    (e the expanded width) c e + k^2 e + e o conv values and BNs over e, e, o, and with SE
    e (e // 4) + e // 4 + (e // 4) e + e; the last 1x1 conv + BN to L; the head conv L x 1280
    (no bias) and the fc 1280 x 1000 + 1000."""
    d = mobilenet_v3.make_divisible
    units = {"large": mobilenet_v3.LARGE, "small": mobilenet_v3.SMALL}[size]
    c = d(16 * scale)
    params, stats = 27 * c + 2 * c, 2 * c
    for k, expanded, out, se, _, _ in units:
        e, o = d(expanded * scale), d(out * scale)
        params += c * e + k * k * e + e * o + 2 * (e + e + o)
        stats += 2 * (e + e + o)
        if se:
            r = e // 4
            params += e * r + r + r * e + e
        c = o
    last = d({"large": 960, "small": 576}[size] * scale)
    params += c * last + 2 * last + last * 1280 + 1280 * 1000 + 1000
    return params, stats + 2 * last


# ------------------------------------------------------------------------ widths and counts


def test_make_divisible_is_paddleclas_rounding():
    d = mobilenet_v3.make_divisible
    assert d(16) == 16 and d(16 * 0.35) == 8 and d(16 * 1.25) == 24  # at least 8; 20 -> 24
    assert d(72 * 0.35) == 24 and d(88 * 0.35) == 32 and d(120 * 0.35) == 40  # 25.2, 30.8, 42
    assert d(40 * 0.35) == 16 and d(48 * 0.35) == 16 and d(24 * 0.5) == 16  # halves round up
    assert d(960 * 0.35) == 336 and d(576 * 1.25) == 720
    assert d(100) == 104 and d(99.9) == 96 and d(10) == 16  # 8 < 0.9 * 10: one step up


@pytest.mark.parametrize("name", ["MobileNetV3_large_x1_0", "MobileNetV3_small_x1_0"])
def test_counts_and_state_dict_keys_match_paddleclas(name):
    manifest = _manifest(name)
    variables = variables_of(name)
    assert count(variables["params"]) == manifest["total_params_trainable"]
    assert count(variables["batch_stats"]) == manifest["total_bn_stat_values"]
    assert _table_counts(*_split(name)) == (manifest["total_params_trainable"],
                                            manifest["total_bn_stat_values"])
    mapping = converter.state_dict_name_map(name)
    assert set(mapping) == {key for key, _, _ in manifest["params"]}
    assert len(mapping) == manifest["num_param_tensors"] == len(jax.tree.leaves(variables))


@pytest.mark.parametrize("name", NAMES)
def test_counts_of_every_width(name):
    variables = variables_of(name)
    params, stats = count(variables["params"]), count(variables["batch_stats"])
    assert (params, stats) == _table_counts(*_split(name))
    assert abs(params / 1e6 - DOCUMENTED_MILLIONS[name]) < 0.011


def test_widths_follow_the_block_table():
    params = params_of("MobileNetV3_large_x1_0")
    assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
    # The expand conv exists where the expansion equals the input width (16 -> 16).
    assert params["block0"]["expand_conv"]["kernel"].shape == (1, 1, 16, 16)
    assert params["block3"]["dw_conv"]["kernel"].shape == (5, 5, 1, 72)
    assert params["block3"]["project_conv"]["kernel"].shape == (1, 1, 72, 40)
    assert params["last_conv"]["kernel"].shape == (1, 1, 160, 960)
    assert "bias" not in params["head_conv"]  # PaddleClas's last_conv: bias_attr=False
    assert params["head_conv"]["kernel"].shape == (1, 1, 960, 1280)
    assert params["head"]["kernel"].shape == (1280, 1000)
    # 0.35: every width through make_divisible, except the head conv (1280 at every scale).
    small = params_of("MobileNetV3_small_x0_35")
    assert small["stem_conv"]["kernel"].shape == (3, 3, 3, 8)
    assert small["block1"]["expand_conv"]["kernel"].shape == (1, 1, 8, 24)
    assert small["last_conv"]["kernel"].shape == (1, 1, 32, 200)  # 576 * 0.35 = 201.6
    assert small["head_conv"]["kernel"].shape == (1, 1, 200, 1280)


def test_se_squeezes_to_a_quarter_without_rounding():
    params = params_of("MobileNetV3_small_x1_0")
    se = params["block0"]["se"]  # 16 channels -> 4 (make_divisible would give 8)
    assert se["reduce"]["kernel"].shape == (1, 1, 16, 4) and se["reduce"]["bias"].shape == (4,)
    assert se["expand"]["kernel"].shape == (1, 1, 4, 16) and se["expand"]["bias"].shape == (16,)
    large = params_of("MobileNetV3_large_x0_35")
    assert large["block3"]["se"]["reduce"]["kernel"].shape == (1, 1, 24, 6)  # 24 // 4
    with_se = [i for i, u in enumerate(mobilenet_v3.LARGE) if u.se]
    assert [i for i in range(15) if "se" in params_of("MobileNetV3_large_x1_0")[f"block{i}"]] \
        == with_se == [3, 4, 5, 10, 11, 12, 13, 14]


def test_activations_are_paddles():
    x = jnp.array([-4.0, -2.5, -1.0, 0.0, 1.0, 2.5, 4.0])
    np.testing.assert_allclose(mobilenet_v3.paddle_hardsigmoid(x),
                               [0.0, 0.0, 0.3, 0.5, 0.7, 1.0, 1.0], atol=1e-7)
    # Not relu6(x + 3) / 6 (slope 1/6), which other zoos' MobileNetV3 use.
    assert not np.allclose(mobilenet_v3.paddle_hardsigmoid(x), jax.nn.hard_sigmoid(x))
    np.testing.assert_allclose(jax.nn.hard_swish(x), x * np.clip(x + 3, 0, 6) / 6, atol=1e-7)


@pytest.mark.parametrize("name,expected", [
    ("MobileNetV3_large_x1_0", {"stem": (112, 16), "stage1": (112, 16), "stage2": (56, 24),
                                "stage3": (28, 40), "stage4": (14, 112), "stage5": (7, 160),
                                "last": (7, 960)}),
    ("MobileNetV3_small_x1_0", {"stem": (112, 16), "stage1": (56, 16), "stage2": (28, 24),
                                "stage3": (14, 48), "stage4": (7, 96), "last": (7, 576)}),
])
def test_feature_map_geometry(name, expected):
    feats = features_of(name)
    assert {k: (v[1], v[-1]) for k, v in feats.items() if k != "pooled"} == expected
    assert feats["pooled"] == (1, 1280)  # after the head conv: what the fc sees


def test_stages_are_paddleclas_stage_patterns():
    assert mobilenet_v3.stage_ends(mobilenet_v3.LARGE) == [0, 2, 5, 11, 14]
    assert mobilenet_v3.stage_ends(mobilenet_v3.SMALL) == [0, 2, 7, 10]


def _residual_units(name: str) -> list[int]:
    """The units that add their input (and so hold a DropPath call)."""
    found = []

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, DropPath):
            found.append(int(context.module.parent.name.removeprefix("block")))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        abstract_variables(flaxcls.create_model(name), 64)
    return sorted(found)


def test_shortcuts_where_stride_1_and_widths_match():
    assert _residual_units("MobileNetV3_large_x1_0") == [0, 2, 4, 5, 7, 8, 9, 11, 13, 14]
    assert _residual_units("MobileNetV3_small_x1_0") == [2, 4, 5, 7, 9, 10]
    # At 0.35 small's unit 6 maps 40 -> 48 as 16 -> 16: PaddleClas compares the scaled widths.
    assert _residual_units("MobileNetV3_small_x0_35") == [2, 4, 5, 6, 7, 9, 10]


# ------------------------------------------------------------------------ names and config


def test_registered_names_and_ssld_aliases():
    family = [n for n in flaxcls.list_models() if flaxcls.get_model_cfg(n).family == "mobilenet_v3"]
    assert sorted(family) == sorted(NAMES)
    for alias, base in (("MobileNetV3_large_x1_0_ssld", "MobileNetV3_large_x1_0"),
                        ("MobileNetV3_small_x1_0_ssld", "MobileNetV3_small_x1_0"),
                        ("MobileNetV3_small_x0_35_ssld", "MobileNetV3_small_x0_35")):
        assert flaxcls.get_model_cfg(alias).name == base
        assert flaxcls.get_model_cfg(alias.lower()).name == base
        _, top1, _ = PADDLECLAS_ALIASES[alias]
        assert top1 > flaxcls.get_model_cfg(base).top1
    model = flaxcls.create_model("mobilenetv3_small_x1_0_ssld")
    assert model.units == mobilenet_v3.SMALL and model.scale == 1.0


def _config(model: str, **fields):
    c = default_config()
    c.model = model
    for k, v in fields.items():
        setattr(c, k, v)
    return c


def test_config_takes_drop_path_and_refuses_a_second_head_dropout():
    validate(_config("MobileNetV3_small_x1_0", drop_path_rate=0.1), need_data=False)
    with pytest.raises(ConfigError, match=r"^config\.dropout_rate=0.2: .*own dropout \(0.2"):
        validate(_config("MobileNetV3_large_x1_0", dropout_rate=0.2), need_data=False)


# ------------------------------------------------------------------------ training


@pytest.mark.heavy
def test_drop_path_is_the_identity_at_eval_and_random_in_training():
    # Without the head's dropout, so that only stochastic depth is random.
    kw = {"num_classes": 10, "head_dropout": 0.0}
    check_random_in_training_only(
        flaxcls.create_model("MobileNetV3_small_x0_35", **kw),
        flaxcls.create_model("MobileNetV3_small_x0_35", drop_path_rate=0.5, **kw))


@pytest.mark.heavy
@pytest.mark.parametrize("drop_path_rate", [0.0, 0.2])
def test_train_step(drop_path_rate):
    # small_x0_35: SE units, both activations, shortcuts, the head's dropout in training.
    model = flaxcls.create_model("MobileNetV3_small_x0_35", num_classes=10,
                                 drop_path_rate=drop_path_rate)
    train_step_checks(model, 64)
