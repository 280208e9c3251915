"""ResNeXt, ResNeXt_vd, SE_ResNeXt, SE_ResNeXt_vd / SENet154_vd and ResNeXt101_wsl: shapes and
parameter counts of the builds without a fixture (``jax.eval_shape``, no compile), their Paddle
names, the SE unit and head-dropout semantics. The generic checks (ModelCfg, accuracies, counts,
name maps, a real forward/backward of each structural kind, bf16) are in test_models.py; logits
parity for the fixtures in tests/convert/test_paddle_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from model_checks import count, outputs_of, params_of, random_variables, variables_of

import flaxcls
from flaxcls.convert import paddle_name_map, paddle_resnet_name_map, paddle_to_flax
from flaxcls.models import resnet

RESNEXT = [
    "ResNeXt50_32x4d",
    "ResNeXt50_vd_32x4d",
    "ResNeXt50_64x4d",
    "ResNeXt50_vd_64x4d",
    "ResNeXt101_32x4d",
    "ResNeXt101_vd_32x4d",
    "ResNeXt101_64x4d",
    "ResNeXt101_vd_64x4d",
    "ResNeXt152_32x4d",
    "ResNeXt152_vd_32x4d",
    "ResNeXt152_64x4d",
    "ResNeXt152_vd_64x4d",
]
SE_RESNEXT = [
    "SE_ResNeXt50_32x4d",
    "SE_ResNeXt101_32x4d",
    "SE_ResNeXt152_32x4d",
    "SE_ResNeXt50_vd_32x4d",
    "SE_ResNeXt101_vd_32x4d",
    "SENet154_vd",
]
WSL = [
    "ResNeXt101_32x8d_wsl",
    "ResNeXt101_32x16d_wsl",
    "ResNeXt101_32x32d_wsl",
    "ResNeXt101_32x48d_wsl",
    "Fix_ResNeXt101_32x48d_wsl",
]

# Models the 2019 files define without a fixture: (trainable, BN running-stat) counts, derived
# from fixtures by reasoning (the same as tests/test_models.py does for ResNet).
# * ResNeXt*_vd = ResNeXt* + the 32/32/64 deep stem: +19,232 / +128, exactly as ResNet50_vd -
#   ResNet50 (ResNeXt50_vd_32x4d - ResNeXt50_32x4d in the fixtures shows the same).
# * SE_ResNeXt50/101_vd_32x4d = SE_ResNeXt50/101_32x4d with the 64/64/128 stem instead of 7x7x64:
#   (1,728 + 36,864 + 73,728 + 2*256) - (9,408 + 2*64) = +103,296 trainable, 2*256 - 2*64 = +384
#   running stats; the first unit then reads 128 channels, not 64: x1 +128*64 and prj +256*64 =
#   +24,576. No parameters for the avg-down pool or the (absent) dropout.
# * SE_ResNeXt152_32x4d = ResNeXt152_32x4d + that stem and first-unit change (+127,872 / +384),
#   with 64 groups in the 3x3 conv instead of 32 (-9/64 * (3*128^2 + 8*256^2 + 36*512^2 +
#   3*1024^2) = -1,850,112), plus SE units 2*o*o/16 + o/16 + o for o = 256 (x3), 512 (x8),
#   1024 (x36), 2048 (x3): +6,629,040.
DERIVED_COUNTS = {
    "ResNeXt101_vd_32x4d": (44_177_704 + 19_232, 137_856 + 128),
    "ResNeXt152_vd_32x4d": (59_951_400 + 19_232, 199_296 + 128),
    "ResNeXt152_vd_64x4d": (114_971_944 + 19_232, 295_040 + 128),
    "SE_ResNeXt50_vd_32x4d": (27_559_896 + 127_872, 68_224 + 384),
    "SE_ResNeXt101_vd_32x4d": (48_955_416 + 127_872, 137_856 + 384),
    "SE_ResNeXt152_32x4d": (59_951_400 + 127_872 - 1_850_112 + 6_629_040, 199_296 + 384),
}


def kernel(name: str, *path: str) -> tuple[int, ...]:
    node = params_of(name)
    for part in path:
        node = node[part]
    return tuple(node["kernel"].shape)


# ------------------------------------------------------------------- shapes and param counts


@pytest.mark.parametrize("name", sorted(DERIVED_COUNTS))
def test_derived_param_counts(name):
    variables = variables_of(name)
    assert (count(variables["params"]), count(variables["batch_stats"])) == DERIVED_COUNTS[name]


@pytest.mark.parametrize("name", [*RESNEXT, *SE_RESNEXT, *WSL])
def test_feature_maps(name):
    cfg = flaxcls.get_model_cfg(name)
    _, feats = outputs_of(name)
    side = cfg.input_size // 4
    assert feats["stem"].shape[1:3] == (side, side)
    assert [feats[f"stage{i}"].shape[1:] for i in range(1, 5)] == [
        (side, side, 256),
        (side // 2, side // 2, 512),
        (side // 4, side // 4, 1024),
        (side // 8, side // 8, 2048),
    ]
    assert feats["pooled"].shape == (1, 2048)


def test_resnext_block_widths():
    # 32x4d: inner 128 in 32 groups of 4, output 2x inner; 64x4d: inner 256 in 64 groups of 4,
    # output = inner. Inner widths double per stage, so do the channels per group.
    assert kernel("ResNeXt50_32x4d", "stage1_block0", "conv2") == (3, 3, 4, 128)
    assert kernel("ResNeXt50_32x4d", "stage1_block0", "conv3") == (1, 1, 128, 256)
    assert kernel("ResNeXt50_32x4d", "stage4_block0", "conv2") == (3, 3, 32, 1024)
    assert kernel("ResNeXt50_64x4d", "stage1_block0", "conv2") == (3, 3, 4, 256)
    assert kernel("ResNeXt50_64x4d", "stage4_block2", "conv2") == (3, 3, 32, 2048)
    assert kernel("ResNeXt50_64x4d", "stage4_block2", "conv3") == (1, 1, 2048, 2048)
    assert kernel("ResNeXt50_32x4d", "stem_conv1") == (7, 7, 3, 64)
    assert kernel("ResNeXt50_vd_64x4d", "stem_conv3") == (3, 3, 32, 64)
    # vd: the stage-2+ shortcut is a stride-1 1x1 conv after the avg pool.
    assert kernel("ResNeXt50_vd_32x4d", "stage2_block0", "shortcut_conv") == (1, 1, 256, 512)


def test_se_block_widths():
    se50 = params_of("SE_ResNeXt50_32x4d")["stage1_block0"]["se"]
    assert se50["squeeze"]["kernel"].shape == (256, 16) and se50["squeeze"]["bias"].shape == (16,)
    assert se50["excite"]["kernel"].shape == (16, 256) and se50["excite"]["bias"].shape == (256,)
    # The vd builds' wider 64/64/128 stem; the first unit reads 128 channels.
    assert [kernel("SE_ResNeXt50_vd_32x4d", f"stem_conv{i}") for i in (1, 2, 3)] == [
        (3, 3, 3, 64),
        (3, 3, 64, 64),
        (3, 3, 64, 128),
    ]
    assert kernel("SE_ResNeXt50_vd_32x4d", "stage1_block0", "conv1") == (1, 1, 128, 128)
    # SENet154_vd: 64 groups of 4, x3 out = nf (not 2nf), SE on nf channels.
    assert kernel("SENet154_vd", "stage1_block0", "conv2") == (3, 3, 4, 256)
    assert kernel("SENet154_vd", "stage1_block0", "conv3") == (1, 1, 256, 256)
    assert kernel("SENet154_vd", "stage4_block0", "se", "squeeze") == (2048, 128)
    # se_resnext.py's 152-layer build: 32x4d widths in 64 groups of 2.
    assert kernel("SE_ResNeXt152_32x4d", "stage1_block0", "conv2") == (3, 3, 2, 128)
    assert kernel("SE_ResNeXt152_32x4d", "stage1_block0", "conv3") == (1, 1, 128, 256)


def test_wsl_group_widths():
    for d in (8, 16, 32, 48):
        name = f"ResNeXt101_32x{d}d_wsl"
        for stage, mult in zip((1, 2, 3, 4), (1, 2, 4, 8)):
            width = 32 * d * mult
            assert kernel(name, f"stage{stage}_block1", "conv2") == (3, 3, d * mult, width)
            assert kernel(name, f"stage{stage}_block1", "conv3") == (1, 1, width, 128 * 2**stage)
    assert (
        params_of("Fix_ResNeXt101_32x48d_wsl").keys() == params_of("ResNeXt101_32x48d_wsl").keys()
    )


def test_head_dropout_rates():
    rates = {
        "SE_ResNeXt50_32x4d": 0.5,
        "SE_ResNeXt101_32x4d": 0.5,
        "SE_ResNeXt152_32x4d": 0.5,
        "SENet154_vd": 0.2,
        "SE_ResNeXt50_vd_32x4d": 0.0,
        "SE_ResNeXt101_vd_32x4d": 0.0,
        "ResNeXt50_32x4d": 0.0,
        "ResNeXt101_32x8d_wsl": 0.0,
    }
    for name, rate in rates.items():
        assert flaxcls.create_model(name).head_dropout == rate, name


def test_cardinality_needs_a_bottleneck():
    model = flaxcls.create_model("ResNet18", cardinality=32)
    with pytest.raises(ValueError, match="cardinality=32.*BasicBlock"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------------------------- name maps


@pytest.mark.parametrize("name", [*RESNEXT, *SE_RESNEXT, *WSL])
def test_resnet_name_map_is_the_name_map(name):
    assert paddle_resnet_name_map(name) == {
        n: (t.collection, t.path) for n, t in paddle_name_map(name).items()}


def test_name_maps_without_fixtures():
    # Names as the 2019 files build them, for the variants no fixture covers.
    se152 = paddle_name_map("SE_ResNeXt152_32x4d")  # se_resnext.py: conv1..3 stem, units from 4
    for n in (
        "conv1_weights",
        "conv2_bn_scale",
        "conv3_bn_variance",
        "conv4_1_x2_weights",
        "conv4_1_prj_weights",
        "conv5_8_x3_bn_mean",
        "fc6_36_sqz_offset",
        "conv7_1_prj_bn_offset",
        "fc7_3_exc_weights",
        "fc6_weights",
        "fc6_offset",
    ):
        assert n in se152, n
    assert "conv1_1_weights" not in se152 and "conv2_1_x1_weights" not in se152
    se50vd = paddle_name_map("SE_ResNeXt50_vd_32x4d")  # se_resnext_vd.py: conv1_1..3, units from 2
    for n in (
        "conv1_1_weights",
        "conv1_3_bn_scale",
        "conv2_1_prj_weights",
        "conv3_1_prj_bn_mean",
        "conv5_3_x3_weights",
        "fc5_3_exc_offset",
        "fc6_weights",
    ):
        assert n in se50vd, n
    assert "conv2_2_prj_weights" not in se50vd
    rx = paddle_name_map("ResNeXt152_vd_64x4d")  # resnext_vd.py: "bn" + name[3:] -> "bnv1_1"
    for n in (
        "conv1_1_weights",
        "bnv1_1_scale",
        "bnv1_3_variance",
        "res3h_branch2b_weights",
        "res4b35_branch2c_weights",
        "bn4b35_branch2c_mean",
        "res5a_branch1_weights",
        "bn2a_branch1_offset",
        "fc_weights",
        "fc_offset",
    ):
        assert n in rx, n
    assert "res2b_branch1_weights" not in rx
    wsl = paddle_name_map("ResNeXt101_32x16d_wsl")
    for n in (
        "conv1.weight",
        "bn1.running_var",
        "layer3.22.conv3.weight",
        "layer3.10.bn2.bias",
        "layer4.0.downsample.0.weight",
        "layer4.0.downsample.1.running_mean",
        "fc.bias",
    ):
        assert n in wsl, n


@pytest.mark.parametrize("name", ["SE_ResNeXt50_vd_32x4d", "SE_ResNeXt152_32x4d"])
def test_converter_round_trip(name):
    # Paddle-layout arrays made from Flax variables convert back to exactly those variables.
    mapping = paddle_name_map(name)
    variables = variables_of(name)
    rng = np.random.RandomState(0)
    flat, arrays = {}, {}
    for paddle_name, target in mapping.items():
        key = (target.collection, *target.path)
        node = variables[target.collection]
        for part in target.path:
            node = node[part]
        flat[key] = rng.standard_normal(node.shape).astype(np.float32)
        arrays[paddle_name] = flat[key].transpose(3, 2, 0, 1) if flat[key].ndim == 4 else flat[key]
    converted = traverse_util.flatten_dict(paddle_to_flax(arrays, name))
    assert converted.keys() == flat.keys()
    for key, value in flat.items():
        np.testing.assert_array_equal(converted[key], value)


# -------------------------------------------------------------- SE unit and dropout semantics


def test_squeeze_excite_matches_paddle_formula():
    se = resnet.SqueezeExcite(reduction=4)
    x = np.random.RandomState(0).standard_normal((2, 5, 5, 8)).astype(np.float32)
    variables = se.init(jax.random.key(0), x)
    p = variables["params"]
    pooled = x.mean(axis=(1, 2))
    squeeze = np.maximum(pooled @ np.asarray(p["squeeze"]["kernel"]) + p["squeeze"]["bias"], 0)
    gate = 1 / (1 + np.exp(-(squeeze @ np.asarray(p["excite"]["kernel"]) + p["excite"]["bias"])))
    want = x * gate[:, None, None, :]
    np.testing.assert_allclose(se.apply(variables, x), want, rtol=1e-5, atol=1e-6)
    assert p["squeeze"]["kernel"].shape == (8, 2)


@pytest.mark.parametrize(
    "name,factor",
    [("SE_ResNeXt50_32x4d", 0.5), ("SENet154_vd", 0.8), ("SE_ResNeXt50_vd_32x4d", 1.0)],
)
def test_head_dropout_scales_at_inference(name, factor):
    # Fluid's downgrade_in_infer: eval logits = head((1 - p) * pooled).
    small = {"stage_sizes": (1, 1, 1, 1)}
    model = flaxcls.create_model(name, num_classes=3, **small)
    variables = random_variables(model, 32, random_bn=True)
    x = np.random.RandomState(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
    head = variables["params"]["head"]
    want = factor * np.asarray(feats["pooled"]) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
