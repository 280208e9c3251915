"""Helpers shared by the model-family tests: shape-only init, numpy weights, one train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def abstract_variables(model, size: int, batch: int = 1):
    """The variables' shapes and dtypes, without running (or compiling) Flax's init."""
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


def random_variables(model, size: int, seed: int = 0, random_bn: bool = False) -> dict:
    """He-normal kernels from numpy (threefry init takes seconds per shape to compile on a
    small CPU). BatchNorm is the identity with zero biases, or random with ``random_bn``."""
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


def train_step_checks(model, size: int, random_bn: bool = False) -> None:
    """One jitted train-mode forward/backward on a batch of 2: float32 finite logits of the
    model's class count, a finite nonzero gradient for every parameter, and every BatchNorm's
    running statistics updated."""
    x = np.random.RandomState(1).standard_normal((2, size, size, 3)).astype(np.float32)
    labels = jnp.array([3, 7])
    variables = random_variables(model, size, random_bn=random_bn)
    params, stats = variables["params"], variables.get("batch_stats", {})
    rngs = {"dropout": jax.random.key(2, impl="rbg")}

    @jax.jit
    def loss_and_grads(params, stats):
        def loss_fn(params):
            logits, updates = model.apply({"params": params, "batch_stats": stats}, x,
                                          train=True, mutable=["batch_stats"], rngs=rngs)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, updates["batch_stats"])

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, (logits, new_stats)), grads = loss_and_grads(params, stats)
    assert logits.shape == (2, model.num_classes) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(float(loss))
    flat_grads = jax.tree_util.tree_flatten_with_path(grads)[0]
    zero = [jax.tree_util.keystr(p) for p, g in flat_grads if not np.any(np.asarray(g) != 0)]
    assert not zero, f"parameters without gradient: {zero}"
    assert all(np.isfinite(np.asarray(g)).all() for _, g in flat_grads)
    unchanged = [
        jax.tree_util.keystr(p)
        for (p, old), new in zip(jax.tree_util.tree_flatten_with_path(stats)[0],
                                 jax.tree_util.tree_leaves(new_stats))
        if np.array_equal(np.asarray(old), np.asarray(new))
    ]
    assert not unchanged, f"BN statistics not updated: {unchanged}"
