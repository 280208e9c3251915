"""Model zoo tests: registry, parameter counts against the 2019 Paddle originals (via
``jax.eval_shape``, no compile), a real forward/backward per structural kind, dtypes, and the
Paddle pooling rules of ``flaxcls.models.layers``."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from model_checks import abstract_variables, count, random_variables, train_step_checks
from reference import FIXTURES, README

import flaxcls
from flaxcls import zoo
from flaxcls.models import layers

# Models the 2019 code defines but that have no fixture: expected (trainable, BN running-stat)
# counts, derived from the fixtures by reasoning.
# * vd vs plain stem: 7x7x3x64 conv + BN(64) is replaced by 3x3 convs 3->32, 32->32, 32->64 + BN
#   (32, 32, 64): trainable +(864 + 9216 + 18432 + 2*128) - (9408 + 2*64) = +19,232, running stats
#   +2*128 - 2*64 = +128 (ResNet50_vd - ResNet50 in the fixtures shows the same +19,232 / +128).
#   The vd avg-down shortcut only adds a parameter-free pool, so ResNet18/34_vd = ResNet18/34 + that.
# * vc = the same deep stem with plain shortcuts, so ResNet101/152_vc have the counts of
#   ResNet101/152_vd (fixtures), exactly as ResNet50_vc and ResNet50_vd agree.
DERIVED_COUNTS = {
    "ResNet18_vd": (11_693_736 + 19_232, 9_728 + 128),
    "ResNet34_vd": (21_801_896 + 19_232, 17_152 + 128),
    "ResNet101_vc": (44_568_392, 105_472),
    "ResNet152_vc": (60_212_040, 151_552),
}

RESNET_NAMES = [
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNet152",
    "ResNet50_vc",
    "ResNet101_vc",
    "ResNet152_vc",
    "ResNet18_vd",
    "ResNet34_vd",
    "ResNet50_vd",
    "ResNet101_vd",
    "ResNet152_vd",
    "ResNet200_vd",
    "ResNet_tiny",
]


def load_fixture(name: str) -> dict | None:
    path = FIXTURES / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def path_exists(tree, path: str) -> bool:
    node = tree
    for part in path.split("/"):
        if part not in node:
            return False
        node = node[part]
    return True


# ------------------------------------------------------------------------------------ registry


def test_list_models_sorted_and_complete():
    names = flaxcls.list_models()
    assert names == sorted(names)
    assert set(RESNET_NAMES) <= set(names)


@pytest.mark.parametrize("alias", ["ResNet50_vd", "resnet50_vd", "RESNET50_VD", "Resnet50-VD"])
def test_names_resolve_case_insensitively(alias):
    assert flaxcls.get_model_cfg(alias).name == "ResNet50_vd"
    model = flaxcls.create_model(alias)
    assert model.avg_down and model.stem == "deep" and tuple(model.stage_sizes) == (3, 4, 6, 3)


def test_unknown_name_is_named_with_suggestions():
    with pytest.raises(ValueError, match="ResNet51_vd") as err:
        flaxcls.create_model("ResNet51_vd")
    assert "ResNet50_vd" in str(err.value)
    with pytest.raises(ValueError, match="NoSuchNet"):
        flaxcls.get_model_cfg("NoSuchNet")


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="depth_multiplier"):
        flaxcls.create_model("ResNet18", depth_multiplier=2)


def test_override_changes_the_architecture():
    model = flaxcls.create_model("ResNet50", stage_sizes=(1, 1, 1, 1))
    assert tuple(model.stage_sizes) == (1, 1, 1, 1)


@pytest.mark.parametrize("name", RESNET_NAMES)
def test_resnet_model_cfg(name):
    cfg = flaxcls.get_model_cfg(name)
    assert isinstance(cfg, flaxcls.ModelCfg)
    assert cfg.family == "resnet" and cfg.snake_name == name.lower()
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.interpolation == "bilinear" and cfg.num_classes == 1000
    if name == "ResNet_tiny":
        assert (cfg.input_size, cfg.crop_size, cfg.resize_short_size) == (32, 32, 32)
        assert cfg.top1 is None and cfg.top5 is None
    else:
        assert (cfg.input_size, cfg.crop_size, cfg.resize_short_size) == (224, 224, 256)
    for acc in (cfg.top1, cfg.top5):
        assert acc is None or 0.0 < acc < 1.0


def test_published_accuracies():
    # A few rows of the 2019-12-30 README table (top-1 %, top-5 %).
    assert flaxcls.get_model_cfg("ResNet50").top1 == pytest.approx(0.7650)
    assert flaxcls.get_model_cfg("ResNet50_vd").top5 == pytest.approx(0.9444)
    assert flaxcls.get_model_cfg("ResNet200_vd").top1 == pytest.approx(0.8093)
    assert flaxcls.get_model_cfg("ResNet101_vc").top1 is None  # defined, never released


@pytest.mark.subprocess
def test_import_does_not_pull_tensorflow():
    code = "import sys, flaxcls, flaxcls.models; assert 'tensorflow' not in sys.modules"
    root = REPO
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ------------------------------------------------------------------- shapes and param counts


README_TABLE = zoo.readme_table(README.read_text())


@pytest.mark.parametrize("name", flaxcls.list_models())
def test_param_counts_and_shapes(name):
    cfg = flaxcls.get_model_cfg(name)
    model = flaxcls.create_model(name)
    variables = zoo.abstract_variables(name)
    assert zoo.markdown_row(name) in README_TABLE, "run: python -m flaxcls.zoo --write"
    params, stats = variables["params"], variables.get("batch_stats", {})
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    assert path_exists(params, cfg.first_conv), cfg.first_conv
    assert path_exists(params, cfg.classifier), cfg.classifier

    fixture = load_fixture(name)
    if fixture is not None:
        assert count(params) == fixture["total_params_trainable"]
        assert count(stats) == fixture["total_bn_stat_values"]
        # One Flax leaf per Paddle parameter file (conv kernel; BN scale/bias/mean/var; fc w/b).
        assert len(jax.tree_util.tree_leaves(variables)) == fixture["num_param_tensors"]
    elif name in DERIVED_COUNTS:
        assert (count(params), count(stats)) == DERIVED_COUNTS[name]

    x = jax.ShapeDtypeStruct((1, cfg.input_size, cfg.input_size, 3), jnp.float32)
    logits, feats = jax.eval_shape(
        lambda v, x: model.apply(v, x, return_features=True), variables, x
    )
    assert logits.shape == (1, cfg.num_classes) and logits.dtype == jnp.float32
    assert "pooled" in feats and feats["pooled"].ndim == 2
    head = params
    for part in cfg.classifier.split("/"):
        head = head[part]
    if head["kernel"].ndim == 2:  # a Dense head sees the pooled features
        assert feats["pooled"].shape == (1, head["kernel"].shape[0])
    if cfg.family == "resnet":
        assert {"stem", "stage1", "stage2", "stage3", "stage4"} <= set(feats)
        assert feats["pooled"].shape == feats["stage4"].shape[:1] + feats["stage4"].shape[3:]
    if cfg.family == "resnet" and cfg.input_size == 224:
        assert feats["stem"].shape[1:3] == (56, 56)
        assert [feats[f"stage{i}"].shape[1] for i in range(1, 5)] == [56, 28, 14, 7]


def test_resnet50_feature_widths():
    model = flaxcls.create_model("ResNet50")
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = abstract_variables(model, 224, batch=2)
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)
    assert feats["stem"].shape == (2, 56, 56, 64)
    assert [feats[f"stage{i}"].shape[-1] for i in range(1, 5)] == [256, 512, 1024, 2048]
    assert feats["pooled"].shape == (2, 2048)


def test_paddle_first_block_projection_quirk():
    # resnet.py projects the very first block even though 64 -> 64, stride 1 (res2a_branch1).
    params = abstract_variables(flaxcls.create_model("ResNet18"), 224)["params"]
    assert params["stage1_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 64)
    assert "shortcut_conv" not in params["stage1_block1"]
    # vd: stage-2+ first blocks keep a 1x1 stride-1 conv, after the avg pool.
    vd = abstract_variables(flaxcls.create_model("ResNet50_vd"), 224)["params"]
    assert vd["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 256, 512)
    assert vd["stem_conv1"]["kernel"].shape == (3, 3, 3, 32)


def test_num_classes_override_changes_head():
    model = flaxcls.create_model("resnet18", num_classes=10)
    variables = abstract_variables(model, 64)
    assert variables["params"]["head"]["kernel"].shape == (512, 10)
    assert variables["params"]["head"]["bias"].shape == (10,)
    logits = jax.eval_shape(
        model.apply, variables, jax.ShapeDtypeStruct((3, 64, 64, 3), jnp.float32)
    )
    assert logits.shape == (3, 10)


# ----------------------------------------------------------------- real forward and backward


def _train_step_checks(name: str, size: int):
    train_step_checks(flaxcls.create_model(name, num_classes=10), size)


@pytest.mark.parametrize(
    "name,size",
    # 72 px gives odd stage maps (18, 9, 5, 3) so the vd ceil-mode avg pool gets partial windows.
    [("ResNet18", 64), ("ResNet50", 64), ("ResNet50_vd", 72), ("ResNet_tiny", 32)],
    ids=["basic", "bottleneck", "vd", "tiny"],
)
def test_forward_backward(name, size):
    _train_step_checks(name, size)


def test_odd_input_sizes_give_ceil_mode_maps():
    model = flaxcls.create_model("ResNet18_vd", num_classes=5)
    x = jax.ShapeDtypeStruct((1, 72, 72, 3), jnp.float32)
    variables = abstract_variables(model, 72)
    _, feats = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)
    assert [feats[f"stage{i}"].shape[1] for i in range(1, 5)] == [18, 9, 5, 3]


def test_bfloat16_compute_keeps_float32_params():
    model = flaxcls.create_model("ResNet_tiny", num_classes=10, dtype="bfloat16")
    assert model.dtype == jnp.bfloat16
    shapes = abstract_variables(model, 32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    variables = random_variables(model, 32)
    x = np.random.RandomState(1).standard_normal((2, 32, 32, 3)).astype(np.float32)

    @jax.jit
    def eval_and_train(variables, x):
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return model.apply(variables, x), train_logits, updates

    logits, train_logits, updates = eval_and_train(variables, x)
    for out in (logits, train_logits):
        assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(updates))


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


# ------------------------------------------------------------------------- Paddle pooling rules


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
def test_max_pool_gradient_equals_jax_select_and_scatter(size, window, stride, pad, ceil_mode, ties):
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


def _one_model_per_family() -> list[str]:
    first: dict[str, str] = {}
    for name in flaxcls.list_models():
        first.setdefault(flaxcls.get_model_cfg(name).family, name)
    return sorted(first.values())


@pytest.mark.parametrize("name", _one_model_per_family())
def test_any_class_count_for_every_family(name):
    cfg = flaxcls.get_model_cfg(name)
    model = flaxcls.create_model(name, num_classes=7)
    variables = abstract_variables(model, cfg.input_size)
    x = jax.ShapeDtypeStruct((2, cfg.input_size, cfg.input_size, 3), jnp.float32)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
