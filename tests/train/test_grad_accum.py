"""Gradient accumulation: N micro-batches inside the jitted step give the update of the whole
batch, with BatchNorm statistics per micro-batch (as per-device BatchNorm has them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxcls import parallel
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import Specs
from flaxcls.train import builder
from flaxcls.train.step import TRAIN_METRICS, fetch_metrics, zeros_metrics

SIZE, BATCH = 16, 16


def _trainer(**overrides):
    c = default_config()
    c.model, c.num_classes, c.crop_size, c.resize_short_size = "ResNet_tiny", 10, SIZE, SIZE
    c.batch_size, c.lr, c.use_label_smoothing = BATCH, 0.1, True
    c.update(overrides)
    resolve_preprocessing(c)
    return builder.build(Specs.from_config(c), parallel.make_mesh(), steps_per_epoch=10), c


def _batch(seed=0):
    rng = np.random.RandomState(seed)
    return {"image": rng.randint(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.uint8),
            "label": rng.randint(0, 10, (BATCH,)).astype(np.int32)}


def _reference_step(trainer, c, state, batch, parts):
    """Micro-batch i = examples i, i + N, ...: plain jax.grad on each (its own BatchNorm
    statistics), gradients and statistics averaged, one optimizer update."""
    mean, std = jnp.asarray(c.image_mean) * 255.0, jnp.asarray(c.image_std) * 255.0
    eps = c.label_smoothing_epsilon

    def loss_fn(params, images, labels):
        x = (jnp.asarray(images, jnp.float32) - mean) / std
        logits, upd = trainer.model.apply({"params": params, "batch_stats": state.batch_stats},
                                          x, train=True, mutable=["batch_stats"])
        target = jax.nn.one_hot(labels, c.num_classes) * (1 - eps) + eps / c.num_classes
        return jnp.mean(-jnp.sum(target * jax.nn.log_softmax(logits), -1)), upd["batch_stats"]

    grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
    outs = [grad_fn(state.params, batch["image"][i::parts], batch["label"][i::parts])
            for i in range(parts)]
    mean_of = lambda trees: jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)
    grads, stats = mean_of([g for g, _ in outs]), mean_of([s for _, s in outs])
    updates, _ = trainer.tx.update(grads, state.opt_state, state.params)
    return optax.apply_updates(state.params, updates), stats


@pytest.mark.heavy  # accumulating steps compile and run slowly on XLA's CPU backend
@pytest.mark.parametrize("parts", [2, 4])
def test_accumulated_step_equals_micro_batch_gradients_averaged(parts):
    t, c = _trainer(grad_accum_steps=parts)
    state = t.init_state()
    ref_params, ref_stats = _reference_step(t, c, jax.device_get(state), _batch(), parts)
    state, metrics = t.train_step(state, zeros_metrics(TRAIN_METRICS, t.mesh),
                                  parallel.host_to_global(_batch(), t.mesh))
    assert fetch_metrics(metrics)["count"] == BATCH
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path((ref_params, ref_stats)),
                                 jax.tree.leaves((state.params, state.batch_stats))):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-6,
                                   err_msg=jax.tree_util.keystr(path))
    # ... which is not the step of the whole batch under one set of BatchNorm statistics
    whole, _ = _trainer()
    one, _ = whole.train_step(whole.init_state(), zeros_metrics(TRAIN_METRICS, t.mesh),
                              parallel.host_to_global(_batch(), t.mesh))
    assert not all(np.allclose(a, b, rtol=1e-4) for a, b in zip(
        jax.tree.leaves(one.params), jax.tree.leaves(state.params)))


@pytest.mark.slow  # SqueezeNet's accumulated step on XLA's CPU backend: about a minute
def test_without_batchnorm_it_is_the_step_of_the_whole_batch():
    """SqueezeNet has no BatchNorm (and its head dropout is set to 0 here): the accumulated
    update equals one step on the whole batch up to rounding."""
    def trained(parts):
        t, _c = _trainer(model="SqueezeNet1_1", crop_size=32, resize_short_size=32,
                        grad_accum_steps=parts, lr=0.05)
        t = builder.build(t.specs, t.mesh, steps_per_epoch=10,
                          model=t.specs.model.build(dropout_rate=0.0))
        state = t.init_state()
        rng = np.random.RandomState(3)
        batch = {"image": rng.randint(0, 256, (BATCH, 32, 32, 3)).astype(np.uint8),
                 "label": rng.randint(0, 10, (BATCH,)).astype(np.int32)}
        metrics = zeros_metrics(TRAIN_METRICS, t.mesh)
        for _ in range(2):
            state, metrics = t.train_step(state, metrics, parallel.host_to_global(batch, t.mesh))
        return state, fetch_metrics(metrics)

    (whole, m1), (accum, m4) = trained(1), trained(4)
    assert not whole.batch_stats
    assert m4["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    moved = 0
    for (path, a), b, start in zip(jax.tree_util.tree_leaves_with_path(whole.params),
                                   jax.tree.leaves(accum.params),
                                   jax.tree.leaves(trained_start())):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
        moved += not np.allclose(a, start)
    assert moved


def trained_start():
    t, _ = _trainer(model="SqueezeNet1_1", crop_size=32, resize_short_size=32)
    return jax.device_get(t.init_state().params)


def test_a_count_that_does_not_divide_the_device_batch_names_the_field():
    with pytest.raises(ConfigError, match=r"config.grad_accum_steps=3 does not divide the batch "
                                          r"of each device \(16 over 1 devices = 16\)"):
        parallel.check_grad_accum(16, parallel.make_mesh(), 3)
    parallel.check_grad_accum(16, parallel.make_mesh(), 4)
    c = default_config()
    c.data_dir, c.grad_accum_steps = "unused", 0
    with pytest.raises(ConfigError, match=r"^config.grad_accum_steps=0: must be a whole number"):
        validate(c)
