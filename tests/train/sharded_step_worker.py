"""Runs three train steps of a small model on a fixed batch and saves losses and parameters.

Started by test_parallel.py in a subprocess with 1 or 8 (fake CPU) devices: the mesh, the
sharded batch and the global-batch BatchNorm must give the same numbers either way.

With ``bn_stats=device`` it also computes, without any mesh or shard_map, what per-device
BatchNorm means: plain ``jax.grad`` on each device's slice of the batch, gradients and new
statistics averaged over the slices, then one optimizer update. Those go under ``ref/``.
"""

import ast
import sys

import jax
import numpy as np

from flaxcls import parallel
from flaxcls.config import default_config
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import Specs
from flaxcls.train import builder
from flaxcls.train.step import TRAIN_METRICS, fetch_metrics, zeros_metrics


def main(out_path: str, model_name: str = "ResNet_tiny", bn_stats: str = "global",
         bn_impl: str = "flax", coordinator: str = "", num_processes: str = "1",
         process_id: str = "0", **fields) -> None:
    """``fields``: more config fields (``name=value`` arguments), e.g. an EMA or accumulation."""
    if coordinator:  # one of several processes (jax.distributed on loopback)
        jax.distributed.initialize(coordinator, int(num_processes), int(process_id))
    c = default_config()
    c.model, c.num_classes, c.crop_size, c.resize_short_size = model_name, 10, 32, 32
    c.batch_size, c.lr, c.use_label_smoothing, c.bn_stats = 16, 0.05, True, bn_stats
    c.bn_impl = bn_impl
    c.update(fields)
    resolve_preprocessing(c)  # image_mean/image_std: the model's, for the reference step
    mesh = parallel.make_mesh()
    trainer = builder.build(Specs.from_config(c), mesh, steps_per_epoch=10)  # the loop's chain
    model, tx, state, step = trainer.model, trainer.tx, trainer.init_state(), trainer.train_step
    if trainer.teacher is not None:
        trainer.load_teacher()
    ref = jax.device_get(state) if bn_stats == "device" and not coordinator else None
    # Each process hands in its own consecutive slice of the global batch.
    per_process = 16 // jax.process_count()
    mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    rng = np.random.RandomState(0)
    losses, ref_losses, whole_losses = [], [], []
    for _ in range(3):
        batch = {
            "image": rng.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8),
            "label": rng.randint(0, 10, (16,)).astype(np.int32),
        }
        metrics = zeros_metrics(TRAIN_METRICS, mesh)
        local = {k: v[mine] for k, v in batch.items()}
        state, metrics = step(state, metrics, parallel.host_to_global(local, mesh),
                              *trainer.step_inputs)
        losses.append(fetch_metrics(metrics)["loss"])
        if ref is not None:
            ref, loss, whole = _per_slice_reference_step(model, tx, c, ref, batch,
                                                         jax.device_count())
            ref_losses.append(loss)
            whole_losses.append(whole)
    out = {"losses": np.asarray(losses), "devices": jax.device_count(), **_flat(state)}
    if ref is not None:
        out.update({"ref_losses": np.asarray(ref_losses), "whole_losses": np.asarray(whole_losses),
                    **{f"ref/{k}": v for k, v in _flat(ref).items()}})
    np.savez(out_path, **out)


def _flat(state) -> dict[str, np.ndarray]:
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    if getattr(state, "ema", None) is not None:
        tree["ema"] = state.ema
    return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _per_slice_reference_step(model, tx, c, state, batch, slices):
    """One step of per-device BatchNorm written out by hand (no mesh, no shard_map). Returns
    the new state, the mean of the slices' losses and, for contrast, the loss of the whole
    batch under BatchNorm statistics of the whole batch (same parameters)."""
    import jax.numpy as jnp
    import optax

    mean = jnp.asarray(c.image_mean) * 255.0
    std = jnp.asarray(c.image_std) * 255.0
    eps = c.label_smoothing_epsilon

    def loss_fn(params, images, labels):
        x = (jnp.asarray(images, jnp.float32) - mean) / std
        logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, x,
                                  train=True, mutable=["batch_stats"])
        target = jax.nn.one_hot(labels, c.num_classes) * (1 - eps) + eps / c.num_classes
        loss = jnp.mean(-jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
        return loss, upd["batch_stats"]

    grad_fn = jax.jit(jax.grad(loss_fn, has_aux=True))
    value_fn = jax.jit(loss_fn)
    per = len(batch["label"]) // slices
    grads, stats, loss = [], [], 0.0
    for i in range(slices):
        part = slice(i * per, (i + 1) * per)
        g, s = grad_fn(state.params, batch["image"][part], batch["label"][part])
        grads.append(g)
        stats.append(s)
        loss += float(value_fn(state.params, batch["image"][part], batch["label"][part])[0])
    mean_tree = lambda trees: jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)
    whole = float(value_fn(state.params, batch["image"], batch["label"])[0])
    updates, opt_state = tx.update(mean_tree(grads), state.opt_state, state.params)
    state = state.replace(params=optax.apply_updates(state.params, updates),
                          batch_stats=mean_tree(stats), opt_state=opt_state,
                          step=state.step + 1)
    return state, loss / slices, whole


if __name__ == "__main__":
    positional = [a for a in sys.argv[1:] if "=" not in a]
    named = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    main(*positional, **{k: ast.literal_eval(v) for k, v in named.items()})
