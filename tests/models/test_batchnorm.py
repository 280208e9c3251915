"""The fused BatchNorm (flaxcls.models.batchnorm) against flax.linen.BatchNorm, alone and in a
model, and the residual-bytes benchmark that motivates it."""

from __future__ import annotations

import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import REPO
from flax import linen as nn
from model_checks import random_variables

import flaxcls
from flaxcls.models.batchnorm import batch_norm_train, batchnorm_impl, fused_batchnorm

sys.path.insert(0, str(REPO / "benchmarks" / "analysis"))
import bn_residuals

# Relative precision of each compute dtype (one ulp is at most EPS * |value|).
EPS = {"float32": 2.0**-23, "bfloat16": 2.0**-7, "float16": 2.0**-10}


def _bn(dtype, **kw) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, dtype=dtype,
                        param_dtype=jnp.float32, **kw)


def _random_bn_inputs(shape, dtype, seed=0):
    rng = np.random.RandomState(seed)
    channels = shape[-1]
    x = jnp.asarray(rng.standard_normal(shape) * 2.0 + 0.5, dtype)
    variables = {
        "params": {"scale": jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32),
                   "bias": jnp.asarray(rng.standard_normal(channels), jnp.float32)},
        "batch_stats": {"mean": jnp.asarray(rng.standard_normal(channels), jnp.float32),
                        "var": jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32)},
    }
    weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return x, variables, weights


def _bn_value_and_grads(module, variables, x, weights, fused, stats_weights=None):
    """(sum(w * y) [+ stats terms], y, new batch_stats), d/d(params, x), jitted."""

    def loss(params, x):
        with batchnorm_impl("fused" if fused else "flax"):
            y, updates = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, mutable=["batch_stats"])
        value = jnp.sum(y.astype(jnp.float32) * weights)
        if stats_weights is not None:
            new = updates["batch_stats"]
            value += jnp.sum(new["mean"] * stats_weights[0])
            value += jnp.sum(new["var"] * stats_weights[1])
        return value, (y, updates["batch_stats"])

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(variables["params"], x)


def _assert_close_ulps(actual, expected, eps, ulps=2.0, what=""):
    """|actual - expected| <= ulps * eps * |expected| + 8 float32 ulps of max |expected|: the
    second term covers dx's cancellation (dy - mean(dy) - xhat * mean(dy * xhat)) near zero."""
    actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    tol = ulps * eps * np.abs(expected) + 8 * EPS["float32"] * np.abs(expected).max()
    bad = np.abs(actual - expected) > tol
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} differ, worst "
                           f"{np.abs(actual - expected).max()}, max |expected| "
                           f"{np.abs(expected).max()}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_op_matches_flax_batchnorm(dtype):
    """Output and running statistics bit-equal; gradients of a random linear function of y
    w.r.t. x, scale and bias within the stated tolerance."""
    module = _bn(jnp.dtype(dtype))
    x, variables, weights = _random_bn_inputs((4, 5, 6, 16), dtype)
    (ref_v, (ref_y, ref_stats)), ref_g = _bn_value_and_grads(module, variables, x, weights, False)
    (v, (y, stats)), g = _bn_value_and_grads(module, variables, x, weights, True)
    assert y.dtype == ref_y.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref_y, np.float32))
    for k in ("mean", "var"):
        np.testing.assert_array_equal(stats[k], ref_stats[k], err_msg=k)
    assert float(v) == float(ref_v)
    (g_params, g_x), (ref_params, ref_x) = g, ref_g
    assert g_x.dtype == x.dtype
    if dtype == "float32":
        # Same sums in another order: float32 rounding only.
        _assert_close_ulps(g_x, ref_x, EPS[dtype], what="dx")
    else:
        # Autodiff rounds each of dx's two paths (through x - mean and through the statistics)
        # to the input dtype before adding them; the fused backward sums in float32 and rounds
        # once. So: within one ulp of the float32 gradient (Flax with the same values given as
        # float32: its forward is the same computation), and within 2 ulps of max |dx| of
        # Flax's own half-precision dx.
        x32 = x.astype(jnp.float32)
        (_, (y32, _)), (_, exact_x) = _bn_value_and_grads(module, variables, x32, weights, False)
        np.testing.assert_array_equal(np.asarray(y32, np.float32), np.asarray(y, np.float32))
        _assert_close_ulps(g_x, exact_x, EPS[dtype], ulps=1.0, what="dx vs float32")
        g_x, ref_x = np.asarray(g_x, np.float32), np.asarray(ref_x, np.float32)
        np.testing.assert_allclose(g_x, ref_x, rtol=EPS[dtype],
                                   atol=2 * EPS[dtype] * float(np.abs(ref_x).max()))
    # float32 sums of up to 120 terms in another order: a few float32 ulps of their magnitude.
    for k in ("scale", "bias"):
        np.testing.assert_allclose(g_params[k], ref_params[k], rtol=1e-5,
                                   atol=1e-5 * float(np.abs(ref_params[k]).max()), err_msg=k)


@pytest.mark.parametrize("constant_channels", [False, True])
def test_backward_through_batch_statistics(constant_channels):
    """Cotangents of the mean and variance (through the running averages) are handled too,
    also where the clipped variance is zero (constant channels: 1/sqrt(eps) is large)."""
    module = _bn(jnp.float32)
    x, variables, weights = _random_bn_inputs((6, 9), "float32", seed=1)
    if constant_channels:
        x = x.at[:, 0].set(0.3).at[:, 1].set(0.0)
    rng = np.random.RandomState(2)
    stats_w = (jnp.asarray(rng.standard_normal(9), jnp.float32),
               jnp.asarray(rng.standard_normal(9), jnp.float32))
    (_, (_, ref_stats)), (ref_p, ref_x) = _bn_value_and_grads(module, variables, x, weights, False,
                                                              stats_w)
    (_, (_, stats)), (g_p, g_x) = _bn_value_and_grads(module, variables, x, weights, True, stats_w)
    np.testing.assert_array_equal(stats["var"], ref_stats["var"])
    _assert_close_ulps(g_x, ref_x, EPS["float32"], ulps=8, what="dx")
    for k in ("scale", "bias"):
        np.testing.assert_allclose(g_p[k], ref_p[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("act,with_residual", [("relu", False), ("relu", True),
                                               ("relu6", False), ("relu6", True)])
def test_op_with_activation_and_residual_matches_flax(dtype, act, with_residual):
    """``act([residual +] BN(x))`` as one op (what BatchNorm.norm_act uses inside the fused
    context) against Flax's BatchNorm, the add and nn.relu / nn.relu6: output bit-equal,
    gradients of x, scale, bias and the residual within the tolerances of the plain op."""
    module = _bn(jnp.dtype(dtype))
    x, variables, weights = _random_bn_inputs((4, 5, 6, 16), dtype)
    if act == "relu6":  # wide enough that some outputs clip at 6
        variables["params"]["scale"] = variables["params"]["scale"] * 4.0
    residual = (jnp.asarray(np.random.RandomState(7).standard_normal(x.shape), dtype)
                if with_residual else None)

    def run(fused):
        def loss(params, x, r):
            if fused:
                y, _, _ = batch_norm_train(x, params["scale"], params["bias"], residual=r,
                                           act=act, epsilon=1e-5, dtype=jnp.dtype(dtype))
            else:
                y, _ = module.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                    x, mutable=["batch_stats"])
                y = getattr(nn, act)(y if r is None else r + y)
            return jnp.sum(y.astype(jnp.float32) * weights), y

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
            variables["params"], x, residual)

    (ref_v, ref_y), (ref_p, ref_x, ref_r) = run(False)
    (v, y), (g_p, g_x, g_r) = run(True)
    assert y.dtype == ref_y.dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref_y, np.float32))
    np.testing.assert_allclose(float(v), float(ref_v), rtol=1e-5)  # same y, another sum order
    assert bool((np.asarray(y, np.float32) == 0).any())  # the mask matters here
    if act == "relu6":  # ... at both ends
        assert bool((np.asarray(y, np.float32) == 6).any())
    if with_residual:  # the ReLU's masked gradient, exactly
        np.testing.assert_array_equal(np.asarray(g_r, np.float32), np.asarray(ref_r, np.float32))
    else:
        assert g_r is None and ref_r is None
    eps = EPS[dtype]
    g_x, ref_x = np.asarray(g_x, np.float32), np.asarray(ref_x, np.float32)
    np.testing.assert_allclose(g_x, ref_x, rtol=eps, atol=2 * eps * float(np.abs(ref_x).max()))
    for k in ("scale", "bias"):
        np.testing.assert_allclose(g_p[k], ref_p[k], rtol=1e-5,
                                   atol=1e-5 * float(np.abs(ref_p[k]).max()), err_msg=k)


def test_op_with_relu_keeps_no_mask():
    """The fused BatchNorm+ReLU keeps x (and the residual) for its backward, nothing else of
    their size: the ReLU's mask is recomputed."""
    x = jnp.asarray(np.random.RandomState(3).standard_normal((8, 4, 4, 32)), jnp.bfloat16)
    r = jnp.asarray(np.random.RandomState(4).standard_normal((8, 4, 4, 32)), jnp.bfloat16)
    scale, bias = jnp.ones(32, jnp.float32), jnp.zeros(32, jnp.float32)
    for residual in (None, r):
        _, backward = jax.vjp(lambda x, residual=residual: batch_norm_train(
            x, scale, bias, residual=residual, act="relu", dtype=jnp.bfloat16)[0], x)
        big = [leaf for leaf in jax.tree.leaves(backward) if leaf.size > 32]
        assert [(b.shape, b.dtype) for b in big] == [(x.shape, jnp.bfloat16)] * (
            1 if residual is None else 2)
    with pytest.raises(ValueError, match="residual must have the shape"):
        batch_norm_train(x, scale, bias, residual=r[:4], act="relu")
    with pytest.raises(ValueError, match="residual must have the output dtype"):
        batch_norm_train(x, scale, bias, residual=r.astype(jnp.float32), act="relu",
                         dtype=jnp.bfloat16)
    with pytest.raises(ValueError, match="act must be None or one of"):
        batch_norm_train(x, scale, bias, act="gelu")


def test_op_direct_call_and_vjp_residuals():
    """The bare op: flax-compatible output dtype default, and the backward keeps x in its own
    dtype plus per-channel vectors only (no float32 copy of the activation)."""
    x = jnp.asarray(np.random.RandomState(3).standard_normal((8, 4, 4, 32)), jnp.bfloat16)
    scale, bias = jnp.ones(32, jnp.float32), jnp.zeros(32, jnp.float32)
    y, mean, var = batch_norm_train(x, scale, bias, dtype=jnp.bfloat16)
    assert y.dtype == jnp.bfloat16 and mean.dtype == var.dtype == jnp.float32
    assert batch_norm_train(x, scale, bias)[0].dtype == jnp.float32  # result type, as flax
    _, backward = jax.vjp(lambda x: batch_norm_train(x, scale, bias, dtype=jnp.bfloat16)[0], x)
    big = [leaf for leaf in jax.tree.leaves(backward) if leaf.size > 32]
    assert [(r.shape, r.dtype) for r in big] == [(x.shape, jnp.bfloat16)]
    with pytest.raises(ValueError, match="scale must have shape"):
        batch_norm_train(x, jnp.ones(3), bias)


def test_context_variants_and_errors():
    x, variables, _ = _random_bn_inputs((4, 3, 3, 8), "float32")
    # Evaluation mode is Flax's own code; training mode is the custom_vjp op.
    for use_ra, fused_expected in ((True, False), (False, True)):
        module = nn.BatchNorm(momentum=0.9, epsilon=1e-5, dtype=jnp.float32)
        with fused_batchnorm():
            jaxpr = jax.make_jaxpr(lambda v, x, m=module, r=use_ra: m.apply(
                v, x, use_running_average=r, mutable=["batch_stats"]))(variables, x)
        assert ("custom_vjp" in str(jaxpr)) == fused_expected
    # Without scale / bias: the same variables and output.
    for kw in ({"use_scale": False}, {"use_bias": False}):
        module = _bn(jnp.float32, **kw)
        ref = module.init(jax.random.key(0), x)
        with fused_batchnorm():
            got = module.init(jax.random.key(0), x)
            y = module.apply(got, x, mutable=["batch_stats"])[0]
        assert jax.tree.structure(got) == jax.tree.structure(ref)
        np.testing.assert_array_equal(y, module.apply(ref, x, mutable=["batch_stats"])[0])
    # Immutable batch_stats in training mode fails as in Flax.
    with fused_batchnorm(), pytest.raises(Exception, match="immutable") as err:
        _bn(jnp.float32).apply(variables, x)
    assert type(err.value).__name__ == "ModifyScopeVariableError"
    # What the fused path cannot reproduce raises, naming the module and the field.
    for kw, field in (({"axis_name": "batch"}, "axis_name"), ({"axis": 1}, "axis=1"),
                      ({"use_fast_variance": False}, "use_fast_variance")):
        with fused_batchnorm(), pytest.raises(ValueError, match=field):
            _bn(jnp.float32, **kw).apply(variables, x, mutable=["batch_stats"])
    with fused_batchnorm(), pytest.raises(ValueError, match="mask"):
        _bn(jnp.float32).apply(variables, x, mutable=["batch_stats"], mask=x > 0)
    with pytest.raises(ValueError, match="bn_impl"):
        batchnorm_impl("cudnn")


@pytest.mark.subprocess
@pytest.mark.devices(8)
def test_inside_shard_map_per_device_statistics():
    """Under shard_map (per-device statistics, as bn_stats="device" runs the step) the
    replicated scale and bias get the same summed gradients as with Flax's BatchNorm. On 8
    fake devices (conftest: a child pytest), 2 examples per device."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert len(jax.devices()) == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    module = _bn(jnp.bfloat16)
    x, variables, weights = _random_bn_inputs((2 * len(jax.devices()), 3, 3, 8), "bfloat16")

    def grads(impl):
        def per_device(params, x, w):
            def loss(p):
                with batchnorm_impl(impl):
                    y, _ = module.apply({"params": p, "batch_stats": variables["batch_stats"]},
                                        x, mutable=["batch_stats"])
                return jnp.sum(y.astype(jnp.float32) * w)

            return jax.grad(loss)(params)

        f = jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P("data"), P("data")),
                          out_specs=P())
        x_sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
        return jax.jit(f)(variables["params"], x_sharded, weights)

    ref, got = grads("flax"), grads("fused")
    for k in ("scale", "bias"):
        atol = 1e-5 * float(np.abs(ref[k]).max())
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=atol, err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.heavy
def test_resnet_tiny_train_step_matches(dtype):
    """A whole model (ResNet_tiny cut to two stages: stem, basic blocks, projection
    shortcuts), one train-mode forward/backward with and without the context, and the same
    variable tree from init.

    The forward is bit-identical, so the loss and the new batch_stats are equal. Gradients:
    float32 within 1e-5 of the largest (the BatchNorm backward sums in another order);
    bfloat16 within 5e-2 of the largest, because Flax's autodiff rounds a BatchNorm's dx to
    bf16 twice (see test_op_matches_flax_batchnorm) and the difference travels back through
    bf16 convolutions (observed: 1.6e-2)."""
    model = flaxcls.create_model("ResNet_tiny", num_classes=10, dtype=dtype,
                                 stage_sizes=(1, 1), widths=(16, 32))
    size = 16
    shape = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    init = functools.partial(model.init, train=True)
    ref_tree = jax.eval_shape(init, jax.random.key(0), shape)
    with fused_batchnorm():
        fused_tree = jax.eval_shape(init, jax.random.key(0), shape)
    assert jax.tree.structure(fused_tree) == jax.tree.structure(ref_tree)
    assert jax.tree.leaves(fused_tree) == jax.tree.leaves(ref_tree)

    variables = random_variables(model, size, random_bn=True)
    rng = np.random.RandomState(4)
    images = jnp.asarray(rng.standard_normal((4, size, size, 3)), dtype)
    labels = jnp.asarray([1, 3, 5, 7])

    def step(params, stats, impl):
        def loss_fn(params):
            with batchnorm_impl(impl):
                logits, updates = model.apply({"params": params, "batch_stats": stats}, images,
                                              train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    run = jax.jit(step, static_argnums=2)
    (ref_loss, ref_stats), ref_grads = run(variables["params"], variables["batch_stats"], "flax")
    (loss, stats), grads = run(variables["params"], variables["batch_stats"], "fused")
    assert float(loss) == float(ref_loss)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(stats), jax.tree.leaves(ref_stats)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    tol = {"float32": 1e-5, "bfloat16": 5e-2}[dtype]
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()),
                                   err_msg=jax.tree_util.keystr(path))


def test_residual_benchmark_fused_saves_less(capsys):
    """benchmarks/analysis/bn_residuals.py on a tiny model: one JSON line per bn_impl, and the fused
    BatchNorm keeps fewer bytes for the backward (no float32 activation copies)."""
    results = bn_residuals.main(["--model", "ResNet_tiny", "--batch", "4", "--dtype", "bfloat16",
                                 "--image-size", "16", "--num-classes", "10"])
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert lines == results and [r["bn_impl"] for r in lines] == ["flax", "fused"]
    flax_r, fused_r = lines
    assert fused_r["residual_bytes"] < flax_r["residual_bytes"]
    f32 = [r["residual_bytes_by_dtype"].get("float32", 0) for r in lines]
    assert f32[1] < 0.1 * f32[0], f32
    assert 0 < fused_r["stablehlo_reduce_ops"] < flax_r["stablehlo_reduce_ops"]


@pytest.mark.heavy
def test_blocks_fuse_their_activations(monkeypatch):
    """Inside the fused context a ResNet's BatchNorms that feed a ReLU (stem, bn1, the block's
    last one with the shortcut added) run as the BatchNorm+ReLU op (MobileNetV2's with ReLU6); the projection shortcut's
    BatchNorm, which feeds no ReLU, as the plain one; SE blocks keep their last BatchNorm
    plain (the SE sits between it and the add)."""
    import flaxcls.models.batchnorm as bn_module

    calls = []
    real = bn_module._fused_call

    def spy(module, x, residual=None, act=None):
        calls.append((module.name, act, residual is not None))
        return real(module, x, residual, act)

    monkeypatch.setattr(bn_module, "_fused_call", spy)

    def traced(name, size=32, **kw):
        calls.clear()
        model = flaxcls.create_model(name, num_classes=10, **kw)
        variables = jax.eval_shape(functools.partial(model.init, train=True), jax.random.key(0),
                                   jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
        with fused_batchnorm():
            jax.eval_shape(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                    rngs={"dropout": jax.random.key(1)}),
                           variables, jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32))
        return sorted(calls)

    got = traced("ResNet_tiny", stage_sizes=(1, 1), widths=(16, 32))
    assert [c for c in got if c[1]] and all(
        (act == "relu") == (not name.startswith("shortcut")) for name, act, _ in got), got
    assert {(name, residual) for name, act, residual in got if act} >= {("bn2", True)}
    got = traced("SE_ResNeXt50_32x4d", stage_sizes=(1, 1, 1, 1))
    assert ("bn3", None, False) in got and ("bn3", "relu", True) not in got
    assert ("bn1", "relu", False) in got and ("bn2", "relu", False) in got
    # MobileNetV2: ReLU6 after expand/depthwise BatchNorms, none after the projection.
    got = traced("MobileNetV2_x0_25")
    assert ("expand_bn", "relu6", False) in got and ("dw_bn", "relu6", False) in got
    assert ("project_bn", None, False) in got
    # Pre-activation DenseNet: every BatchNorm feeds a ReLU.
    got = traced("DenseNet121", block_sizes=(1, 1), growth_rate=8, stem_width=16)
    assert got and all(act == "relu" for _, act, _ in got), got
    # ShuffleNetV2: the branch's depthwise BatchNorm feeds no activation; the others a ReLU,
    # and the swish variant's (not fusable) run as the plain op.
    got = traced("ShuffleNetV2_x0_25")
    assert ("bn1", "relu", False) in got and ("bn3", "relu", False) in got
    assert ("bn2", None, False) in got
    assert {act for _, act, _ in traced("ShuffleNetV2_swish")} == {None}
    # ConvBN (InceptionV4, DarkNet): conv -> BN -> ReLU, every BatchNorm.
    for name, size in (("DarkNet53", 32), ("InceptionV4", 75)):
        got = traced(name, size=size)
        assert got and all(act == "relu" for _, act, _ in got), (name, got)
