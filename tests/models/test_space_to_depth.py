"""The space-to-depth stem: same parameters and same outputs and gradients as the plain stem."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import flaxcls
from flaxcls.models.fold import find_conv_bn_pairs
from flaxcls.models.resnet import space_to_depth_conv

NUM_CLASSES = 5


@pytest.mark.parametrize("kernel,pad", [(7, 3), (3, 1), (4, 1)])
@pytest.mark.parametrize("height,width", [(32, 32), (33, 35), (9, 8)])
def test_space_to_depth_conv_matches_strided_conv(kernel, pad, height, width):
    rng = np.random.RandomState(kernel * 100 + height)
    x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    k = rng.normal(size=(kernel, kernel, 3, 6)).astype(np.float32)
    padding = ((pad, pad), (pad, pad))
    want = jax.lax.conv_general_dilated(
        x, k, (2, 2), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    got = space_to_depth_conv(x, k, padding, precision="highest")
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def _models(stem: str, dtype=jnp.float32):
    # One narrow stage keeps the compiles short; the stem under test is the full-size one.
    kw = {
        "num_classes": NUM_CLASSES,
        "dtype": dtype,
        "stem": stem,
        "stem_width": 8,
        "stage_sizes": (1,),
        "widths": (8,),
    }
    plain = flaxcls.create_model("ResNet_tiny", **kw)
    s2d = flaxcls.create_model("ResNet_tiny", stem_space_to_depth=True, **kw)
    return plain, s2d


def _random_variables(model, x, seed=0):
    """Variables of ``model`` filled from numpy (a jitted ``init`` with the default PRNG takes
    seconds to compile on CPU): He-scaled kernels, BatchNorm statistics away from 0 and 1."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    rng = np.random.RandomState(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(0, np.sqrt(2 / fan_in), leaf.shape), leaf.dtype)
        if "var" in name or "scale" in name:
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _forward_and_grads(model):
    """Jitted train-mode forward and backward: features, loss, logits, parameter gradients."""

    def run(variables, x, labels):
        def loss_fn(params):
            (logits, features), _ = model.apply(
                {**variables, "params": params},
                x,
                train=True,
                return_features=True,
                mutable=["batch_stats"],
            )
            onehot = jax.nn.one_hot(labels, NUM_CLASSES)
            loss = -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * onehot, -1))
            return loss, (logits, features)

        (loss, (logits, features)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"]
        )
        return features, loss, logits, grads

    return jax.jit(run)


def _close(got, want, what, rtol=1e-5):
    """Elementwise rtol, plus an atol of rtol x the array's largest magnitude: values summed from
    many terms can cancel to near zero, where only rounding relative to the terms is fair."""
    scale = float(jnp.max(jnp.abs(want))) + 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize(
    "stem,size", [("plain", 33), pytest.param("deep", 32, marks=pytest.mark.slow)]
)
def test_model_outputs_and_gradients_match_plain_stem(stem, size):
    plain, s2d = _models(stem)
    x = jnp.asarray(np.random.RandomState(size).normal(size=(4, size, size, 3)), jnp.float32)
    labels = jnp.array([1, 3, 0, 4])
    variables = _random_variables(plain, x)
    # Same parameter names and shapes: one model's variables drive the other.
    s2d_shapes = jax.eval_shape(lambda x: s2d.init(jax.random.key(0), x, train=False), x)
    assert jax.tree.map(jnp.shape, s2d_shapes) == jax.tree.map(jnp.shape, variables)
    assert variables["params"]["stem_conv1"]["kernel"].shape[:3] == (
        (7, 7, 3) if stem == "plain" else (3, 3, 3)
    )

    feats_p, loss_p, logits_p, grads_p = _forward_and_grads(plain)(variables, x, labels)
    feats_s, loss_s, logits_s, grads_s = _forward_and_grads(s2d)(variables, x, labels)
    for name in ("stem", "stage1", "pooled"):
        _close(feats_s[name], feats_p[name], name)
    # Logits are a sum of ~100 terms of either sign: compare at the scale of those terms.
    terms = jnp.abs(feats_p["pooled"]) @ jnp.abs(variables["params"]["head"]["kernel"])
    np.testing.assert_allclose(logits_s, logits_p, rtol=1e-5, atol=1e-5 * float(terms.max()))
    np.testing.assert_allclose(loss_s, loss_p, rtol=1e-5)
    flat_p = dict(jax.tree_util.tree_leaves_with_path(grads_p))
    for path, g in jax.tree_util.tree_leaves_with_path(grads_s):
        _close(g, flat_p[path], jax.tree_util.keystr(path), rtol=1e-4)
    # The stem kernel's gradient is the one the regrouping has to route back correctly.
    assert float(jnp.max(jnp.abs(grads_s["stem_conv1"]["kernel"]))) > 0


def test_deep_stem_forward_matches_plain():
    """The vc/vd stem's first 3x3/2 conv (the gradients: the slow case above)."""
    plain, s2d = _models("deep")
    x = jnp.asarray(np.random.RandomState(1).normal(size=(2, 35, 35, 3)), jnp.float32)
    variables = _random_variables(plain, x)
    got = jax.jit(lambda v, x: s2d.apply(v, x, train=False, return_features=True))(variables, x)
    want = jax.jit(lambda v, x: plain.apply(v, x, train=False, return_features=True))(variables, x)
    for name in ("stem", "pooled"):
        _close(got[1][name], want[1][name], name)


def test_bfloat16_compute_close_to_plain():
    plain, s2d = _models("plain", jnp.bfloat16)
    x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    variables = _random_variables(plain, x)
    got = jax.jit(lambda v, x: s2d.apply(v, x, train=False))(variables, x)
    want = jax.jit(lambda v, x: plain.apply(v, x, train=False))(variables, x)
    assert got.dtype == jnp.float32  # logits come back float32 either way
    np.testing.assert_allclose(got, want, rtol=0.1, atol=0.1 * float(jnp.max(jnp.abs(want))))


def test_full_size_model_keeps_parameter_shapes_and_folds_the_stem():
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    plain = flaxcls.create_model("ResNet18", num_classes=NUM_CLASSES)
    s2d = flaxcls.create_model("ResNet18", num_classes=NUM_CLASSES, stem_space_to_depth=True)
    shapes = jax.eval_shape(lambda x: plain.init(jax.random.key(0), x), x)
    assert jax.eval_shape(lambda x: s2d.init(jax.random.key(0), x), x) == shapes
    assert shapes["params"]["stem_conv1"]["kernel"].shape == (7, 7, 3, 64)

    # The s2d model really runs the 4x4 stride-1 conv on 12 channels (and the plain one doesn't).
    def stem_kernels(model):
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(shapes, x)
        convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
        return {(e.invars[1].aval.shape, e.params["window_strides"]) for e in convs}

    assert ((4, 4, 12, 64), (1, 1)) in stem_kernels(s2d)
    assert ((4, 4, 12, 64), (1, 1)) not in stem_kernels(plain)
    assert ((7, 7, 3, 64), (2, 2)) in stem_kernels(plain)
    # BatchNorm folding still sees the stem conv as a conv followed by its BatchNorm.
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    pairs = find_conv_bn_pairs(s2d, variables, (1, 64, 64, 3))
    assert pairs == find_conv_bn_pairs(plain, variables, (1, 64, 64, 3))
    assert any(p.conv == ("stem_conv1",) for p in pairs)


def test_small_stem_rejects_space_to_depth():
    model = flaxcls.create_model("ResNet_tiny", num_classes=NUM_CLASSES, stem_space_to_depth=True)
    with pytest.raises(ValueError, match="stem_space_to_depth"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


def test_config_field_reaches_the_model_and_names_itself_when_unsupported():
    from flaxcls.config import ConfigError, default_config, validate
    from flaxcls.specs import ModelSpec

    c = default_config()
    c.model, c.stem_space_to_depth, c.data_dir = "ResNet50", True, "x"
    validate(c)
    assert ModelSpec.from_config(c).build().stem_space_to_depth is True
    c.stem_space_to_depth = False
    assert ModelSpec.from_config(c).build().stem_space_to_depth is False
    for name in ("MobileNetV2", "ResNet_tiny"):  # no such field / no stride-2 stem conv
        c.model, c.stem_space_to_depth = name, True
        with pytest.raises(ConfigError, match=r"^config.stem_space_to_depth=True: .*"
                                              f"{'field' if name == 'MobileNetV2' else 'stem'}"):
            validate(c)  # before any job starts
