"""MobileNetV1, MobileNetV2, ShuffleNetV2 and ShuffleNetV2_swish: which widths were released,
Paddle's width rules and feature-map geometry (``jax.eval_shape``), the channel shuffle,
parameter counts of the variants without a fixture and their conversion. The generic checks
(ModelCfg, accuracies, counts, name maps, a real forward/backward, bf16) are in test_models.py;
logits parity with the fixtures in tests/convert/test_paddle_parity.py."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from model_checks import abstract_variables, count, features_of, params_of, variables_of
from reference import load_manifest

import flaxcls
from flaxcls.convert import paddle_name_map, paddle_to_flax
from flaxcls.models import mobilenet, shufflenet

# Models without a fixture: expected (trainable, BN running-stat) counts at 224.
# * MobileNetV1_x{s}: with c(k) = int(k * s), the stem has 27 c(32) + 2 c(32) trainable values,
#   each unit c1 -> c2 has 9 c(c1) (depthwise) + c(c1) c(c2) (1x1) + 2 c(c1) + 2 c(c2) (two BNs),
#   and the head c(1024) * 1000 + 1000. Every width k * s is whole here, so the BN statistics
#   scale exactly: 21,888 * s (MobileNetV1 fixture: 21,888). `_v1_counts` below is this sum; it
#   reproduces the MobileNetV1 fixture (4,231,976 / 21,888).
# * MobileNetV2_x0_75: widths 24 (stem), 12, 18, 24, 48, 72, 120, 240, last conv 1280 (not
#   widened for scale <= 1); a unit cin -> cout with E = cin * t has cin E + 9 E + E cout conv
#   values and BNs over E, E, cout. `_v2_counts` is that sum; it reproduces all five V2 fixtures.
# * The swish variants have the parameters of the ReLU ones (swish has none): their counts are
#   those of the ShuffleNetV2_x0_5 / _x1_5 / _x2_0 fixtures.
DERIVED_COUNTS = {
    "MobileNetV1_x0_25": (470_072, 5_472),
    "MobileNetV1_x0_5": (1_331_592, 10_944),
    "MobileNetV1_x0_75": (2_585_560, 16_416),
    "MobileNetV2_x0_75": (2_628_592, 26_272),
    "ShuffleNetV2_x0_5_swish": (1_366_792, 7_952),
    "ShuffleNetV2_x1_5_swish": (3_503_624, 23_440),
    "ShuffleNetV2_x2_0_swish": (7_366_536, 33_416),
}


def _fixture_counts(name: str) -> tuple[int, int]:
    manifest = load_manifest(name)
    return manifest["total_params_trainable"], manifest["total_bn_stat_values"]


def _v1_counts(s: float) -> tuple[int, int]:
    c = functools.partial(mobilenet.scaled, scale=s)
    units = [(32, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 512)]
    units += [(512, 512)] * 5 + [(512, 1024), (1024, 1024)]
    params, stats = 27 * c(32) + 2 * c(32), 2 * c(32)
    for a, b in units:
        params += 9 * c(a) + c(a) * c(b) + 2 * c(a) + 2 * c(b)
        stats += 2 * c(a) + 2 * c(b)
    return params + c(1024) * 1000 + 1000, stats


def _v2_counts(s: float) -> tuple[int, int]:
    c = functools.partial(mobilenet.scaled, scale=s)
    cin = c(32)
    params, stats = 27 * cin + 2 * cin, 2 * cin
    for t, width, n, _ in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for _ in range(n):
            e, cout = cin * t, c(width)
            params += cin * e + 9 * e + e * cout + 2 * (e + e + cout)
            stats += 2 * (e + e + cout)
            cin = cout
    last = c(1280) if s > 1 else 1280
    return params + cin * last + 2 * last + last * 1000 + 1000, stats + 2 * last


# ---------------------------------------------------------------------------------- released


def test_only_released_builds_have_accuracies():
    # shufflenet_v2_swish.py defines four widths; only x1.0 was released (and has a table row).
    families = ("mobilenet_v1", "mobilenet_v2", "shufflenet_v2")
    names = [n for n in flaxcls.list_models() if flaxcls.get_model_cfg(n).family in families]
    for name in names:
        released = not name.endswith("_swish") or name == "ShuffleNetV2_swish"
        assert (flaxcls.get_model_cfg(name).top1 is not None) == released, name


# ------------------------------------------------------------------- counts and width rules


@pytest.mark.parametrize("name", sorted(DERIVED_COUNTS))
def test_derived_counts(name):
    variables = variables_of(name)
    assert (count(variables["params"]), count(variables["batch_stats"])) == DERIVED_COUNTS[name]


def test_count_formulas_reproduce_the_fixtures():
    assert _v1_counts(1.0) == _fixture_counts("MobileNetV1") == (4_231_976, 21_888)
    for s, name in ((0.25, "MobileNetV2_x0_25"), (0.5, "MobileNetV2_x0_5"), (1.0, "MobileNetV2"),
                    (1.5, "MobileNetV2_x1_5"), (2.0, "MobileNetV2_x2_0")):
        assert _v2_counts(s) == _fixture_counts(name)
    for s, name in ((0.25, "MobileNetV1_x0_25"), (0.5, "MobileNetV1_x0_5"),
                    (0.75, "MobileNetV1_x0_75")):
        assert _v1_counts(s) == DERIVED_COUNTS[name]
    assert _v2_counts(0.75) == DERIVED_COUNTS["MobileNetV2_x0_75"]


def test_mobilenet_v1_widths_truncate():
    params = params_of("MobileNetV1_x0_75")
    assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 24)  # int(32 * 0.75)
    # Depthwise kernels are [3, 3, 1, C]; the 1x1 after it widens to int(c2 * s).
    assert params["stage1_block0"]["dw_conv"]["kernel"].shape == (3, 3, 1, 24)
    assert params["stage1_block0"]["pw_conv"]["kernel"].shape == (1, 1, 24, 48)
    assert params["stage5_block1"]["pw_conv"]["kernel"].shape == (1, 1, 768, 768)
    assert params["head"]["kernel"].shape == (768, 1000)


def test_mobilenet_v2_paddle_quirks():
    params = params_of("MobileNetV2")
    # The expand conv exists even for t = 1 (stage 1: 32 -> 32), unlike torchvision.
    assert params["stage1_block0"]["expand_conv"]["kernel"].shape == (1, 1, 32, 32)
    assert params["stage2_block0"]["expand_conv"]["kernel"].shape == (1, 1, 16, 96)
    assert params["stage2_block0"]["dw_conv"]["kernel"].shape == (3, 3, 1, 96)
    assert params["last_conv"]["kernel"].shape == (1, 1, 320, 1280)
    # int() truncation at 0.25: 16 -> 4, 24 -> 6; the last conv stays 1280 for scale <= 1 ...
    small = params_of("MobileNetV2_x0_25")
    assert small["stem_conv"]["kernel"].shape == (3, 3, 3, 8)
    assert small["stage1_block0"]["project_conv"]["kernel"].shape == (1, 1, 8, 4)
    assert small["stage2_block1"]["expand_conv"]["kernel"].shape == (1, 1, 6, 36)
    assert small["last_conv"]["kernel"].shape == (1, 1, 80, 1280)
    # ... and becomes int(1280 * s) above 1.
    wide = params_of("MobileNetV2_x1_5")
    assert wide["last_conv"]["kernel"].shape == (1, 1, 480, 1920)


def test_mobilenet_v2_residual_only_after_the_first_unit():
    units = {}

    def spy(next_fun, args, kwargs, context):
        if isinstance(context.module, mobilenet.InvertedResidual):
            units[context.module.name] = context.module.residual
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        abstract_variables(flaxcls.create_model("MobileNetV2"), 64)
    assert len(units) == 17
    # stage5_block0 is stride 1 with 64 -> 96; stage6/7 first units change width too: all plain.
    assert [n for n, r in units.items() if not r] == [f"stage{s}_block0" for s in range(1, 8)]


@pytest.mark.parametrize(
    "name,expected",
    [
        ("MobileNetV1", {"stem": 112, "stage1": 112, "stage2": 56, "stage3": 28, "stage4": 14,
                         "stage5": 7}),
        ("MobileNetV2", {"stem": 112, "stage1": 112, "stage2": 56, "stage3": 28, "stage4": 14,
                         "stage5": 14, "stage6": 7, "stage7": 7, "last": 7}),
        ("ShuffleNetV2", {"stem": 56, "stage1": 28, "stage2": 14, "stage3": 7, "last": 7}),
    ],
)
def test_feature_map_geometry(name, expected):
    feats = features_of(name)
    assert {k: v[1] for k, v in feats.items() if k != "pooled"} == expected
    # ShuffleNetV2's 7x7/1 head pool sees exactly the 7x7 map: it is the global mean.
    last = feats["last"] if "last" in feats else feats["stage5"]
    assert feats["pooled"] == (1, last[-1])


@pytest.mark.parametrize("name,widths", [
    ("ShuffleNetV2_x0_25", (24, 48, 96, 512)),
    ("ShuffleNetV2_x0_33", (32, 64, 128, 512)),
    ("ShuffleNetV2_x0_5_swish", (48, 96, 192, 1024)),
    ("ShuffleNetV2", (116, 232, 464, 1024)),
    ("ShuffleNetV2_x1_5", (176, 352, 704, 1024)),
    ("ShuffleNetV2_x2_0_swish", (224, 488, 976, 2048)),
])
def test_shufflenet_widths(name, widths):
    feats = features_of(name)
    assert feats["stem"][-1] == 24
    assert tuple(feats[k][-1] for k in ("stage1", "stage2", "stage3", "last")) == widths
    params = variables_of(name)["params"]
    half = widths[0] // 2
    first = params["stage1_block0"]
    assert first["down_dw_conv"]["kernel"].shape == (3, 3, 1, 24)  # depthwise on the whole input
    assert first["down_pw_conv"]["kernel"].shape == (1, 1, 24, half)
    assert first["conv1"]["kernel"].shape == (1, 1, 24, half)
    assert params["stage1_block1"]["conv1"]["kernel"].shape == (1, 1, half, half)
    assert "down_dw_conv" not in params["stage1_block1"]


def test_channel_shuffle_mapping():
    x = jnp.arange(2 * 3 * 10, dtype=jnp.float32).reshape(2, 1, 3, 10)
    y = np.asarray(shufflenet.channel_shuffle(x, 2))
    # Output channel 2k is input channel k, 2k + 1 is input channel C/2 + k.
    order = [0, 5, 1, 6, 2, 7, 3, 8, 4, 9]
    np.testing.assert_array_equal(y, np.asarray(x)[..., order])


def test_shufflenet_activations():
    assert flaxcls.create_model("ShuffleNetV2").act is nn.relu
    for name in ("ShuffleNetV2_swish", "ShuffleNetV2_x1_5_swish"):
        assert flaxcls.create_model(name).act is nn.swish


# --------------------------------------------------------------------------------- name maps


@pytest.mark.parametrize("name", sorted(DERIVED_COUNTS))
def test_variants_without_fixture_convert(name):
    """The name map of every width fills every leaf: fake Paddle arrays of the right shapes
    (Flax shapes taken back to Paddle's layout) convert without complaint."""
    expected = traverse_util.flatten_dict(
        jax.tree_util.tree_map(lambda leaf: leaf.shape, variables_of(name)),
        is_leaf=lambda _, v: isinstance(v, tuple),
    )
    arrays = {}
    for paddle_name, target in paddle_name_map(name).items():
        shape = expected[(target.collection, *target.path)]
        if len(shape) == 4:  # HWIO -> OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        arrays[paddle_name] = np.zeros(shape, np.float32)
    assert len(arrays) == len(expected)
    variables = paddle_to_flax(arrays, name)
    assert count(variables["params"]) == DERIVED_COUNTS[name][0]
