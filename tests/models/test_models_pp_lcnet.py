"""PP-LCNet (PaddleClas 2.x ``legendary_models/pp_lcnet.py``): the block table's widths and
geometry, SE widths and Paddle's ``nn.Hardsigmoid``, the head (bias-free 1280 conv, no BN, its
own dropout), parameter counts (the x1_0 fixture; every width from the block table and
PaddleClas's documented sizes), the state-dict map's keys, the SSLD names, what the config
refuses (no shortcuts: no stochastic depth; no second head dropout), and a train step. The
generic checks (ModelCfg, accuracies, name maps, a forward/backward of the family's
representative, the README row) are in test_models.py; logits parity in
tests/convert/test_pp_lcnet_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import count, features_of, params_of, train_step_checks, variables_of
from reference import PADDLECLAS_FIXTURES, load_manifest

import flaxcls
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.convert import paddle as converter
from flaxcls.models import mobilenet_v3, pp_lcnet
from flaxcls.registry import PADDLECLAS_ALIASES

SCALES = {"x0_25": 0.25, "x0_35": 0.35, "x0_5": 0.5, "x0_75": 0.75, "x1_0": 1.0, "x1_5": 1.5,
          "x2_0": 2.0, "x2_5": 2.5}
NAMES = [f"PPLCNet_{w}" for w in SCALES]
# PaddleClas's NET_CONFIG, written out again here: per stage (blocks2 .. blocks6) the rows
# (kernel, in, out, stride, SE), widths before scaling.
BLOCK_TABLE = (
    [(3, 16, 32, 1, False)],
    [(3, 32, 64, 2, False), (3, 64, 64, 1, False)],
    [(3, 64, 128, 2, False), (3, 128, 128, 1, False)],
    [(3, 128, 256, 2, False)] + [(5, 256, 256, 1, False)] * 5,
    [(5, 256, 512, 2, True), (5, 512, 512, 1, True)],
)
# "Params(M)" of PaddleClas's model list (PaddlePaddle/PaddleClas @ d178931fc,
# docs/zh_CN/models/ImageNet1k/model_list.md, the PP-LCNet table): trainable parameters plus
# BatchNorm running statistics (what paddle.summary counts), rounded to 0.01 M (x1_0: 2,952,520
# + 10,944, the fixture's counts, is 2.96 M; the trainable ones alone would be 2.95).
DOCUMENTED_MILLIONS = {
    "PPLCNet_x0_25": 1.52, "PPLCNet_x0_35": 1.65, "PPLCNet_x0_5": 1.89, "PPLCNet_x0_75": 2.37,
    "PPLCNet_x1_0": 2.96, "PPLCNet_x1_5": 4.52, "PPLCNet_x2_0": 6.54, "PPLCNet_x2_5": 9.04,
}


def _manifest(name: str) -> dict:
    return load_manifest(name, PADDLECLAS_FIXTURES)


def _table_counts(scale: float) -> tuple[int, int]:
    """(trainable, BN statistics) from the block table: stem 3x3 conv to c + BN; per block
    c -> o with kernel k: k^2 c (depthwise) + c o (pointwise) conv values and BNs over c and o,
    with SE c (c // 4) + c // 4 + (c // 4) c + c; the head conv c x 1280 (no bias, no BN) and
    the fc 1280 x 1000 + 1000."""
    d = mobilenet_v3.make_divisible
    c = d(16 * scale)
    params, stats = 27 * c + 2 * c, 2 * c
    for stage in BLOCK_TABLE:
        for k, inp, out, _, se in stage:
            assert d(inp * scale) == c  # each row's input is the previous row's output
            o = d(out * scale)
            params += k * k * c + 2 * c + c * o + 2 * o
            stats += 2 * c + 2 * o
            if se:
                r = c // 4
                params += c * r + r + r * c + c
            c = o
    params += c * 1280 + 1280 * 1000 + 1000
    return params, stats


# ------------------------------------------------------------------------ widths and counts


def test_the_block_table_is_paddleclas_net_config():
    rows = [tuple(block) for stage in pp_lcnet.STAGES for block in stage]
    assert rows == [row for stage in BLOCK_TABLE for row in stage]
    assert [len(stage) for stage in pp_lcnet.STAGES] == [1, 2, 2, 6, 2]


@pytest.mark.parametrize("width,expected", [
    # stem, then each stage's output width
    ("x0_25", (8, 8, 16, 32, 64, 128)),
    ("x0_35", (8, 16, 24, 48, 88, 176)),  # 32 x 0.35 = 11.2 -> 8 lost over 10%: 16
    ("x0_5", (8, 16, 32, 64, 128, 256)),
    ("x0_75", (16, 24, 48, 96, 192, 384)),  # 12 -> 16 (halves up)
    ("x1_0", (16, 32, 64, 128, 256, 512)),
    ("x1_5", (24, 48, 96, 192, 384, 768)),
    ("x2_0", (32, 64, 128, 256, 512, 1024)),
    ("x2_5", (40, 80, 160, 320, 640, 1280)),
])
def test_widths_are_make_divisible_of_the_scaled_table(width, expected):
    params = params_of(f"PPLCNet_{width}")
    got = [params["stem_conv"]["kernel"].shape[-1]]
    for s, stage in enumerate(pp_lcnet.STAGES):
        got.append(params[f"stage{s + 1}_block{len(stage) - 1}"]["pw_conv"]["kernel"].shape[-1])
    assert tuple(got) == expected


def test_counts_and_state_dict_keys_match_paddleclas():
    manifest = _manifest("PPLCNet_x1_0")
    variables = variables_of("PPLCNet_x1_0")
    assert count(variables["params"]) == manifest["total_params_trainable"] == 2_952_520
    assert count(variables["batch_stats"]) == manifest["total_bn_stat_values"] == 10_944
    assert _table_counts(1.0) == (manifest["total_params_trainable"],
                                  manifest["total_bn_stat_values"])
    mapping = converter.state_dict_name_map("PPLCNet_x1_0")
    assert set(mapping) == {key for key, _, _ in manifest["params"]}
    assert len(mapping) == manifest["num_param_tensors"] == len(jax.tree.leaves(variables))


@pytest.mark.parametrize("name", NAMES)
def test_counts_of_every_width(name):
    variables = variables_of(name)
    params, stats = count(variables["params"]), count(variables["batch_stats"])
    assert (params, stats) == _table_counts(SCALES[name.removeprefix("PPLCNet_")])
    assert round((params + stats) / 1e6, 2) == DOCUMENTED_MILLIONS[name]


def test_layers_follow_the_block_table():
    params = params_of("PPLCNet_x1_0")
    assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 16)
    assert params["stage1_block0"]["dw_conv"]["kernel"].shape == (3, 3, 1, 16)
    assert params["stage1_block0"]["pw_conv"]["kernel"].shape == (1, 1, 16, 32)
    assert params["stage4_block0"]["dw_conv"]["kernel"].shape == (3, 3, 1, 128)  # k 3, stride 2
    assert params["stage4_block1"]["dw_conv"]["kernel"].shape == (5, 5, 1, 256)
    assert params["stage5_block1"]["pw_conv"]["kernel"].shape == (1, 1, 512, 512)
    # The head: a bias-free 1x1 conv to 1280 without BN, then the fc.
    assert set(params["head_conv"]) == {"kernel"}
    assert params["head_conv"]["kernel"].shape == (1, 1, 512, 1280)
    assert params["head"]["kernel"].shape == (1280, 1000)
    assert not any("last" in k or "head_bn" in k for k in params)
    # 1280 at every scale.
    assert params_of("PPLCNet_x0_25")["head_conv"]["kernel"].shape == (1, 1, 128, 1280)
    assert params_of("PPLCNet_x2_5")["head_conv"]["kernel"].shape == (1, 1, 1280, 1280)


def test_se_on_the_last_two_blocks_squeezing_to_a_quarter_without_rounding():
    params = params_of("PPLCNet_x1_0")
    with_se = sorted(k for k, v in params.items() if k.startswith("stage") and "se" in v)
    assert with_se == ["stage5_block0", "stage5_block1"]
    se = params["stage5_block0"]["se"]  # on the depthwise output: the block's input width
    assert se["reduce"]["kernel"].shape == (1, 1, 256, 64) and se["reduce"]["bias"].shape == (64,)
    assert se["expand"]["kernel"].shape == (1, 1, 64, 256) and se["expand"]["bias"].shape == (256,)
    # x0_35: 88 -> 22 (make_divisible would give 24), 176 -> 44.
    small = params_of("PPLCNet_x0_35")
    assert small["stage5_block0"]["se"]["reduce"]["kernel"].shape == (1, 1, 88, 22)
    assert small["stage5_block1"]["se"]["reduce"]["kernel"].shape == (1, 1, 176, 44)


def test_se_gate_is_paddles_nn_hardsigmoid():
    x = jnp.array([-4.0, -3.0, -1.5, 0.0, 1.5, 3.0, 4.0])
    np.testing.assert_allclose(pp_lcnet.hardsigmoid(x), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0],
                               atol=1e-6)
    # relu6(x + 3) / 6 to float32 precision; not PaddleClas's MobileNetV3 gate (slope 0.2).
    np.testing.assert_allclose(pp_lcnet.hardsigmoid(x), jax.nn.hard_sigmoid(x), atol=1e-6)
    assert not np.allclose(pp_lcnet.hardsigmoid(x), mobilenet_v3.paddle_hardsigmoid(x))


def test_feature_map_geometry():
    feats = features_of("PPLCNet_x1_0")
    assert {k: (v[1], v[-1]) for k, v in feats.items() if k != "pooled"} == {
        "stem": (112, 16), "stage1": (112, 32), "stage2": (56, 64), "stage3": (28, 128),
        "stage4": (14, 256), "stage5": (7, 512)}
    assert feats["pooled"] == (1, 1280)  # after the head conv: what the fc sees


@pytest.mark.heavy
def test_head_dropout_scales_at_inference():
    """``downscale_in_infer``: at eval the fc sees the pooled features times 0.8."""
    model = flaxcls.create_model("PPLCNet_x0_25", num_classes=5)
    undropped = flaxcls.create_model("PPLCNet_x0_25", num_classes=5, head_dropout=0.0)
    x = np.random.RandomState(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    bias = variables["params"]["head"]["bias"]
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, x) - bias
        want = 0.8 * (jax.jit(undropped.apply)(variables, x) - bias)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ names and config


def test_registered_names_and_ssld_aliases():
    family = [n for n in flaxcls.list_models() if flaxcls.get_model_cfg(n).family == "pp_lcnet"]
    assert sorted(family) == sorted(NAMES)
    for alias, base in (("PPLCNet_x0_5_ssld", "PPLCNet_x0_5"),
                        ("PPLCNet_x1_0_ssld", "PPLCNet_x1_0"),
                        ("PPLCNet_x2_5_ssld", "PPLCNet_x2_5")):
        assert flaxcls.get_model_cfg(alias).name == base
        assert flaxcls.get_model_cfg(alias.lower()).name == base
        _, top1, top5 = PADDLECLAS_ALIASES[alias]
        cfg = flaxcls.get_model_cfg(base)
        assert top1 > cfg.top1 and top5 > cfg.top5
    assert flaxcls.create_model("pplcnet_x2_5_ssld").scale == 2.5


def test_model_cfg_is_paddleclas_eval_config():
    cfg = flaxcls.get_model_cfg("PPLCNet_x1_0")
    assert (cfg.input_size, cfg.crop_size, cfg.resize_short_size) == (224, 224, 256)
    assert cfg.interpolation == "bilinear" and cfg.num_classes == 1000
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert (cfg.first_conv, cfg.classifier) == ("stem_conv", "head")


def _config(model: str, **fields):
    c = default_config()
    c.model = model
    for k, v in fields.items():
        setattr(c, k, v)
    return c


def test_config_refuses_drop_path_and_a_second_head_dropout():
    with pytest.raises(ConfigError, match=r"^config\.drop_path_rate=0.1: .* has no residual"):
        validate(_config("PPLCNet_x1_0", drop_path_rate=0.1), need_data=False)
    with pytest.raises(ConfigError, match=r"^config\.dropout_rate=0.2: .*own dropout \(0.2"):
        validate(_config("PPLCNet_x1_0", dropout_rate=0.2), need_data=False)


# ------------------------------------------------------------------------ training


@pytest.mark.heavy
def test_train_step():
    # x0_25: every block kind (3x3 and 5x5 depthwise, SE) and the head's dropout in training.
    train_step_checks(flaxcls.create_model("PPLCNet_x0_25", num_classes=10), 64)
