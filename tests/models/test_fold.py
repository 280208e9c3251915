"""BatchNorm folding gives the unfolded model's logits, with the paired BatchNorms gone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from model_checks import random_variables

import flaxcls
from flaxcls.models.fold import find_conv_bn_pairs, fold_batchnorm


def _random_variables(model, size, seed=0):
    """Variables of the model's shapes filled on the host (no init compile): He-scaled kernels
    and every BN statistic and affine parameter away from its identity value, so that folding
    has something to fold."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    rng = np.random.RandomState(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['kernel']"):
            fan_in = int(np.prod(s.shape[:-1]))
            return rng.normal(0, np.sqrt(2.0 / fan_in), s.shape).astype(s.dtype)
        if name.endswith("['var']"):
            return rng.uniform(0.3, 3.0, s.shape).astype(s.dtype)
        if name.endswith("['scale']"):
            return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        return rng.normal(0, 0.2, s.shape).astype(s.dtype)  # mean, bias

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _num_batchnorms(variables):
    return sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(variables.get("batch_stats", {}))
               if jax.tree_util.keystr(p).endswith("['mean']"))


@pytest.mark.parametrize("name", ["ResNet_tiny", "ShuffleNetV2"])
def test_folded_logits_match(name):
    size = 32
    model = flaxcls.create_model(name, num_classes=7)
    variables = _random_variables(model, size)
    folded = fold_batchnorm(model, variables, (1, size, size, 3))
    # Every BN of these families follows a conv: all are folded, no batch_stats remain.
    assert len(folded.pairs) == _num_batchnorms(variables) > 5
    assert "batch_stats" not in folded.variables
    first = folded.pairs[0]
    conv = folded.variables["params"]
    for n in first.conv:
        conv = conv[n]
    assert set(conv) == {"kernel", "bias"}
    x = jnp.asarray(np.random.RandomState(1).normal(size=(3, size, size, 3)).astype(np.float32))
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    out = jax.jit(folded.apply)(folded.variables, x)
    # The fold changed the kernels (a no-op fold could not pass) ...
    before = variables["params"]
    for n in first.conv:
        before = before[n]
    assert not np.allclose(np.asarray(conv["kernel"]), before["kernel"], rtol=1e-3)
    # ... and folding keeps them.
    scale = float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4 * scale)


class _PreActivation(nn.Module):
    """BN -> conv -> BN: only the second BatchNorm follows a conv."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.BatchNorm(use_running_average=not train, name="bn_in")(x)
        x = nn.Conv(4, (3, 3), use_bias=True, name="conv")(nn.relu(x))
        return nn.BatchNorm(use_running_average=not train, epsilon=1e-3, name="bn_out")(x)


def test_only_batchnorms_after_a_conv_fold():
    model = _PreActivation()
    x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 8, 8, 3)).astype(np.float32))
    variables = model.init(jax.random.key(0), x)
    variables = jax.tree.map(lambda a: a + 0.3 * jnp.cos(jnp.arange(a.size).reshape(a.shape)),
                             variables)
    pairs = find_conv_bn_pairs(model, variables, x.shape)
    assert [(p.conv, p.norm, p.epsilon, p.conv_has_bias) for p in pairs] == [
        (("conv",), ("bn_out",), 1e-3, True)
    ]
    folded = fold_batchnorm(model, variables, x.shape)
    assert set(folded.variables["batch_stats"]) == {"bn_in"}
    assert set(folded.variables["params"]) == {"bn_in", "conv"}
    np.testing.assert_allclose(np.asarray(folded.apply(folded.variables, x)),
                               np.asarray(model.apply(variables, x)), rtol=1e-5, atol=1e-5)


def test_serving_model_folds_for_infer_and_export(caplog):
    """infer/export's serving_model: folded (host arrays, fewer BatchNorms, same probabilities
    up to rounding, features too) or, with fold=False, the model as it is."""
    import logging

    from flaxcls.infer import make_predict, serving_model
    from flaxcls.preprocessing import EvalPreprocessing

    model = flaxcls.create_model("ResNet_tiny", num_classes=10)
    variables = random_variables(model, 32, random_bn=True)  # non-trivial statistics
    prep = EvalPreprocessing(crop_size=32, resize_short_size=32, interpolation="bilinear",
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with caplog.at_level(logging.INFO, logger="flaxcls"):
        folded, folded_vars = serving_model(model, variables, prep)
    assert "13 of 13 layer(s)" in caplog.text
    assert all(isinstance(a, np.ndarray) for a in jax.tree.leaves(folded_vars))
    assert "batch_stats" not in folded_vars
    same, same_vars = serving_model(model, variables, prep, fold=False)
    assert same is model and same_vars is variables
    images = np.random.RandomState(0).randint(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    for features in (False, True):  # probabilities, then pooled features
        want = jax.jit(make_predict(model, variables, prep, features=features))(images)
        got = jax.jit(make_predict(folded, folded_vars, prep, features=features))(images)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="inference mode only"):
        folded.apply(folded_vars, jnp.zeros((1, 32, 32, 3)), train=True)
