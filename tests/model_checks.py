"""Helpers shared by the model tests: shapes without compiling (cached per model and size),
numpy weights, the representative model of each family, and one checked train step."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from reference import FIXTURES

import flaxcls
from flaxcls import zoo
from flaxcls.models.layers import DowngradeDropout


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_variables(model, size: int, batch: int = 1):
    """The variables' shapes and dtypes, without running (or compiling) Flax's init."""
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def variables_of(name: str, size: int | None = None, num_classes: int | None = None,
                 **overrides) -> dict:
    """``abstract_variables`` of a registered model (``size`` default: its input size), cached;
    at the defaults the very trace the README table's row is computed from."""
    return _variables(name, size, num_classes, tuple(sorted(overrides.items())))


@functools.cache
def _variables(name: str, size: int | None, num_classes: int | None, overrides: tuple) -> dict:
    if size is None and num_classes is None and not overrides:
        return zoo.abstract_variables(flaxcls.get_model_cfg(name).name)
    model = flaxcls.create_model(name, num_classes=num_classes, **dict(overrides))
    return abstract_variables(model, size or flaxcls.get_model_cfg(name).input_size)


def params_of(name: str, size: int | None = None, **overrides) -> dict:
    return variables_of(name, size, **overrides)["params"]


def outputs_of(name: str, size: int | None = None, num_classes: int | None = None,
               batch: int = 1, **overrides):
    """(logits, features) shapes of ``apply(..., return_features=True)``, cached."""
    return _outputs(name, size, num_classes, batch, tuple(sorted(overrides.items())))


@functools.cache
def _outputs(name: str, size: int | None, num_classes: int | None, batch: int,
             overrides: tuple):
    model = flaxcls.create_model(name, num_classes=num_classes, **dict(overrides))
    variables = _variables(name, size, num_classes, overrides)
    size = size or flaxcls.get_model_cfg(name).input_size
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), variables, x)


def features_of(name: str, size: int | None = None, **overrides) -> dict[str, tuple[int, ...]]:
    """The shapes of a model's ``return_features`` maps, as tuples."""
    return {k: tuple(v.shape) for k, v in outputs_of(name, size, **overrides)[1].items()}


def classifier_of(params: dict, name: str) -> dict:
    """The classifier's parameters (``ModelCfg.classifier``) inside ``params``."""
    node = params
    for part in flaxcls.get_model_cfg(name).classifier.split("/"):
        node = node[part]
    return node


def fixture_param_counts() -> dict[str, int]:
    """Trainable parameters of every fixture model (the fixture's own count)."""
    counts = {}
    for path in sorted(FIXTURES.glob("*.json")):
        with path.open() as f:  # the count sits near the top; the params list follows
            counts[path.stem] = json.load(f)["total_params_trainable"]
    return counts


def representatives() -> dict[str, str]:
    """family -> the model that stands for it in the generic tests: the family's smallest
    fixture model (fewest trainable parameters, then name), or without a fixture its first
    member by name. A new family with a fixture is covered with no test edit."""
    sizes = fixture_param_counts()
    out: dict[str, str] = {}
    for name in flaxcls.list_models():  # sorted
        family = flaxcls.get_model_cfg(name).family
        best = out.get(family)
        key = (name not in sizes, sizes.get(name, 0), name)
        if best is None or key < (best not in sizes, sizes.get(best, 0), best):
            out[family] = name
    return dict(sorted(out.items()))


def random_variables(model, size: int, seed: int = 0, random_bn: bool = False) -> dict:
    """He-normal kernels from numpy (threefry init takes seconds per shape to compile on a
    small CPU). Every other leaf (BatchNorm, biases) is the identity / zero, or random with
    ``random_bn``."""
    rng = np.random.RandomState(seed)

    def make(path, leaf):
        kind = path[-1].key
        if kind == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        if random_bn:
            if kind in ("scale", "var"):
                return rng.uniform(0.5, 1.0, leaf.shape).astype(np.float32)
            return (rng.standard_normal(leaf.shape) * 0.1).astype(np.float32)
        return np.full(leaf.shape, 1.0 if kind in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(make, abstract_variables(model, size))


def train_step_checks(model, size: int) -> None:
    """One jitted train-mode forward/backward on a batch of 2, with random weights, biases and
    BatchNorm, and the auxiliary losses the train step adds (``aux_loss_weights``): float32
    finite logits of the model's class count, a finite nonzero gradient for every parameter,
    every BatchNorm's running statistics updated (nothing else), and every dropout of nonzero rate
    in training mode, drawing from the ``dropout`` stream (another key, other logits)."""
    x = np.random.RandomState(1).standard_normal((2, size, size, 3)).astype(np.float32)
    labels = jnp.array([3, 7])
    variables = random_variables(model, size, random_bn=True)
    params, stats = variables["params"], variables.get("batch_stats", {})
    aux_weights = dict(getattr(model, "aux_loss_weights", None) or {})
    dropouts = []

    def spy(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, DowngradeDropout) and module.rate > 0:
            training = kwargs.get("train", args[1] if len(args) > 1 else False)
            dropouts.append((module.name, training))
        return next_fun(*args, **kwargs)

    @jax.jit
    def loss_and_grads(params, stats, key):
        def loss_fn(params):
            variables = {"params": params, **({"batch_stats": stats} if stats else {})}
            out, updates = model.apply(
                variables, x, train=True, mutable=["batch_stats"],
                rngs={"dropout": key}, **({"return_features": True} if aux_weights else {}))
            logits, features = out if aux_weights else (out, {})
            ce = optax.softmax_cross_entropy_with_integer_labels
            loss = ce(logits, labels).mean()
            for head, weight in aux_weights.items():
                loss = loss + weight * ce(features[head], labels).mean()
            return loss, (logits, updates)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    with nn.intercept_methods(spy):
        key = jax.random.key(2, impl="rbg")
        (loss, (logits, updates)), grads = loss_and_grads(params, stats, key)
    assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(float(loss))
    flat_grads = jax.tree_util.tree_flatten_with_path(grads)[0]
    zero = [jax.tree_util.keystr(p) for p, g in flat_grads if not np.any(np.asarray(g) != 0)]
    assert not zero, f"parameters without gradient: {zero}"
    assert all(np.isfinite(np.asarray(g)).all() for _, g in flat_grads)
    assert set(updates) == ({"batch_stats"} if stats else set())  # no BatchNorm: no updates
    new_stats = updates.get("batch_stats", {})
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    unchanged = [
        jax.tree_util.keystr(p)
        for (p, old), new in zip(jax.tree_util.tree_flatten_with_path(stats)[0],
                                 jax.tree_util.tree_leaves(new_stats))
        if np.array_equal(np.asarray(old), np.asarray(new))
    ]
    assert not unchanged, f"BN statistics not updated: {unchanged}"
    assert all(training for _, training in dropouts), f"dropout left in eval mode: {dropouts}"
    if dropouts:  # another key, another mask
        (_, (other, _)), _ = loss_and_grads(params, stats, jax.random.key(3, impl="rbg"))
        assert not np.array_equal(np.asarray(logits), np.asarray(other)), dropouts


def check_random_in_training_only(plain, dropping) -> None:
    """``dropping`` (a model with a parameter-free random layer switched on) has ``plain``'s
    parameters and eval outputs; in training it is random (another rng, other logits; the
    same rng, the same logits) where ``plain`` is not."""
    x = np.random.RandomState(0).standard_normal((6, 32, 32, 3)).astype(np.float32)
    variables = jax.jit(plain.init)(jax.random.key(0), x)
    assert jax.tree.structure(jax.eval_shape(dropping.init, jax.random.key(0), x)) == \
        jax.tree.structure(variables)
    np.testing.assert_array_equal(plain.apply(variables, x), dropping.apply(variables, x))

    def train(model, seed):
        out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.key(seed)})
        return np.asarray(out)

    np.testing.assert_array_equal(train(plain, 0), train(plain, 1))
    assert not np.allclose(train(dropping, 0), train(dropping, 1))
    np.testing.assert_array_equal(train(dropping, 0), train(dropping, 0))
