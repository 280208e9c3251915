"""The jitted train and eval steps: normalise, mixup, forward, loss, update, metrics on device.

Both steps take and return a metrics accumulator (a dict of float32 sums) so the host only
reads metrics every ``log_every_steps``; state and accumulator are donated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from flaxcls.data.augment_policy import parse as parse_policy
from flaxcls.parallel import DATA_AXIS, batch_sharding, replicated
from flaxcls.specs import StepSpec
from flaxcls.train import augment, autoaugment_device, ema, losses, optim
from flaxcls.train.state import TrainState

# "labeled": examples with a label (top-1/top-5 count those; distillation's unlabeled images
# have label -1)
TRAIN_METRICS = ("loss", "top1", "top5", "count", "labeled", "skipped_steps")
EVAL_METRICS = ("loss", "top1", "top5", "count")

Metrics = dict[str, jax.Array]


def zeros_metrics(names: tuple[str, ...], mesh: Mesh) -> Metrics:
    z = {k: jnp.zeros((), jnp.float32) for k in names}
    return jax.device_put(z, replicated(mesh))


def normalize(images_u8: jax.Array, mean: tuple, std: tuple, dtype: Any) -> jax.Array:
    """uint8 NHWC -> (x/255 - mean) / std, computed in float32 then cast to the compute dtype."""
    mean = jnp.asarray(mean, jnp.float32) * 255.0
    inv_std = 1.0 / (jnp.asarray(std, jnp.float32) * 255.0)
    return ((images_u8.astype(jnp.float32) - mean) * inv_std).astype(dtype)


def _topk_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    k5 = min(5, logits.shape[-1])
    top1 = jnp.sum(losses.topk_correct(logits, labels, 1) * weights)
    top5 = jnp.sum(losses.topk_correct(logits, labels, k5) * weights)
    return top1, top5


def make_train_step(
    model: flax.linen.Module,
    tx: optax.GradientTransformation,
    spec: StepSpec,
    mesh: Mesh,
    head: Collection[str] | None = None,
    teacher: flax.linen.Module | None = None,
    batch_fn: Callable[[Any, jax.Array], dict[str, jax.Array]] | None = None,
) -> Callable[..., tuple[TrainState, Metrics]]:
    """Builds ``step(state, metrics, batch) -> (state, metrics)``, jitted over the mesh; with
    a ``teacher`` (distillation), ``step(state, metrics, batch, teacher_variables)``.

    The teacher runs in eval mode in the compute dtype on the student's augmented batch (its
    own normalisation converted from the student's), under stop_gradient: it is an input of
    the step, never part of the state. ``spec.distill_loss``: ``kl``/``js`` train on the
    teacher alone; ``soft_hard`` mixes in the labels' cross-entropy with weight
    ``1 - distill_alpha``. Examples with label -1 (images without labels) take the teacher's
    loss only and count in no accuracy.

    With ``batch_fn`` (a device-resident split, ``flaxcls.train.resident``) the third argument
    is the replicated data and the step draws its own batch: ``batch_fn(data, state.step)``.

    With ``spec.freeze_backbone`` and ``head`` (the classifier's parameter paths, as given
    to ``optim.make_optimizer``) only the head is differentiated: no backward pass runs
    through the frozen backbone, and its gradients are zeros that are never computed or
    reduced.

    ``spec.bn_stats="global"``: the step is written for the whole global batch and XLA
    partitions it, so BatchNorm statistics are over the global batch (one small all-reduce per
    BatchNorm layer, forward and backward). ``"device"``: the forward/backward runs under
    ``shard_map`` on each device's share of the batch, BatchNorm statistics are per device, and
    the gradients, new BatchNorm statistics and metric sums of all devices are combined in one
    all-reduce per step.
    """
    num_classes, smoothing, alpha = spec.num_classes, spec.label_smoothing, spec.mixup_alpha
    dtype = jnp.dtype(spec.dtype)
    # Models with auxiliary heads (GoogLeNet) name them and their loss weights.
    aux_weights = dict(getattr(model, "aux_loss_weights", None) or {})
    apply = _model_apply(model, spec.bn_impl)
    frozen = set(head) if head is not None and spec.freeze_backbone else None
    policy = parse_policy(spec.auto_augment) if spec.auto_augment else None
    to_teacher = _renormalize(spec.mean, spec.std, spec.teacher_mean, spec.teacher_std, dtype)

    def one_batch(params, batch_stats, loss_scale, key, batch, teacher_vars):
        """Gradients, new BatchNorm statistics and metric sums of one (micro-)batch."""
        mix_key, dropout_key = jax.random.split(key)
        raw = batch["image"]
        labeled = (batch["label"] >= 0).astype(jnp.float32)
        if policy is not None:  # auto_augment_on="device": on the uint8 batch, its own key
            raw = autoaugment_device.apply_batch(raw, jax.random.fold_in(key, 2), policy,
                                                 spec.fill)
        images = normalize(raw, spec.mean, spec.std, dtype)
        targets = losses.onehot(batch["label"], num_classes, smoothing) * labeled[:, None]
        if spec.erasing > 0:  # its own key: the other draws stay as they are without it
            images = augment.random_erasing(
                jax.random.fold_in(key, 1), images, prob=spec.erasing, mode=spec.erasing_mode,
                max_count=spec.erasing_count, area=spec.erasing_area, aspect=spec.erasing_aspect)
        if alpha > 0 or spec.cutmix_alpha > 0:
            images, targets = augment.mix_batch(
                mix_key, images, targets, mixup_alpha=alpha, cutmix_alpha=spec.cutmix_alpha,
                prob=spec.mixup_prob, switch_prob=spec.mixup_cutmix_switch_prob)
        teacher_logits = None
        if teacher is not None:
            teacher_logits = jax.lax.stop_gradient(teacher.apply(
                teacher_vars, to_teacher(images), train=False)).astype(jnp.float32)

        def loss_fn(params):
            out, updates = apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
                **({"return_features": True} if aux_weights else {}),
            )
            logits, features = out if aux_weights else (out, {})
            logits = logits.astype(jnp.float32)
            per_example = losses.cross_entropy(logits, targets)
            if teacher_logits is not None:
                soft = losses.distillation(logits, teacher_logits, spec.distill_loss,
                                           spec.distill_temperature)
                per_example = (spec.distill_alpha * soft + (1 - spec.distill_alpha) * per_example
                               if spec.distill_loss == "soft_hard" else soft)
            loss = jnp.mean(per_example)
            for name, weight in aux_weights.items():
                aux = features[name].astype(jnp.float32)
                loss = loss + weight * jnp.mean(losses.cross_entropy(aux, targets))
            # l2_decay_mode="loss": the L2 term joins the objective, not the reported loss.
            total = (loss + optim.l2_penalty(params, spec.l2_loss, spec.l2_exclude_bn_bias)
                     if spec.l2_loss else loss)
            scaled = total if loss_scale is None else loss_scale.scale_loss(total)
            return scaled, (loss, logits, updates.get("batch_stats", {}))

        trainable, rebuild = _trainable_part(params, frozen)
        grads, (loss, logits, new_stats) = jax.grad(
            lambda part: loss_fn(rebuild(part)), has_aux=True)(trainable)
        n = jnp.asarray(batch["label"].shape[0], jnp.float32)
        top1, top5 = _topk_sums(logits, batch["label"], labeled)
        sums = {"loss": loss * n, "top1": top1, "top5": top5, "count": n,
                "labeled": jnp.sum(labeled)}
        return grads, new_stats, sums

    accum = spec.grad_accum_steps
    spread = spec.bn_stats == "global" and mesh.shape[DATA_AXIS] > 1

    def forward_backward(params, batch_stats, loss_scale, key, batch, teacher_vars):
        """Gradients, new BatchNorm statistics and metric sums of the global batch, or
        (bn_stats="device") of one device's share of it: with ``grad_accum_steps`` N > 1, of N
        micro-batches in turn (a scan), gradients and statistics averaged, sums added."""
        if accum == 1:
            return one_batch(params, batch_stats, loss_scale, key, batch, teacher_vars)
        size = batch["label"].shape[0]
        if size % accum:
            raise ValueError(f"grad_accum_steps={accum} does not divide the batch of {size}")

        def micro(x):
            # Micro-batch i is examples i, i + N, i + 2N, ...: every device holds an equal
            # share of each, so no example moves between devices.
            x = jnp.swapaxes(x.reshape(size // accum, accum, *x.shape[1:]), 0, 1)
            if spread:
                x = jax.lax.with_sharding_constraint(
                    x, jax.sharding.NamedSharding(mesh, P(None, DATA_AXIS)))
            return x

        def body(carry, xs):
            i, part = xs
            out = one_batch(params, batch_stats, loss_scale, jax.random.fold_in(key, i), part,
                            teacher_vars)
            return jax.tree.map(jnp.add, carry, out), None

        shapes = jax.eval_shape(one_batch, params, batch_stats, loss_scale, key,
                                jax.tree.map(lambda x: x[:size // accum], batch), teacher_vars)
        zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
        (grads, new_stats, sums), _ = jax.lax.scan(
            body, zeros, (jnp.arange(accum), jax.tree.map(micro, batch)))
        mean_of = functools.partial(jax.tree.map, lambda x: x / accum)
        return mean_of(grads), mean_of(new_stats), sums

    if spec.bn_stats == "device":
        n_dev = mesh.shape[DATA_AXIS]

        def per_device(params, batch_stats, loss_scale, key, batch, teacher_vars):
            key = jax.random.fold_in(key, jax.lax.axis_index(DATA_AXIS))
            grads, new_stats, sums = forward_backward(params, batch_stats, loss_scale, key, batch,
                                                      teacher_vars)
            # The step's one all-reduce: every gradient, statistic and metric sum in one flat
            # float32 buffer. (A psum of the tree would be one all-reduce with hundreds of
            # operands, which XLA may split again at its combiner's operand-count limit.)
            flat, unflatten = ravel_pytree((grads, new_stats, sums))
            grads, new_stats, sums = unflatten(jax.lax.psum(flat, DATA_AXIS))
            mean_of = functools.partial(jax.tree.map, lambda x: x / n_dev)
            return mean_of(grads), mean_of(new_stats), sums

        # check_vma=False: gradients of the replicated parameters stay per device until the
        # explicit psum above (JAX would otherwise insert one psum per parameter itself).
        compute = jax.shard_map(per_device, mesh=mesh,
                                in_specs=(P(), P(), P(), P(), P(DATA_AXIS), P()),
                                out_specs=P(), check_vma=False)
    else:
        compute = forward_backward

    def whole_step(state: TrainState, metrics: Metrics, batch: dict[str, jax.Array],
                   teacher_vars: Any = None):
        if batch_fn is not None:
            batch = batch_fn(batch, state.step)
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, new_stats, sums = compute(state.params, state.batch_stats, state.loss_scale, key,
                                         batch, teacher_vars)
        grads = _with_frozen_zeros(grads, state.params, frozen)
        updates, new_opt = tx.update(grads if state.loss_scale is None else
                                     state.loss_scale.unscale(grads), state.opt_state, state.params)
        new_params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=new_params, batch_stats=new_stats, opt_state=new_opt
        )
        skipped = jnp.zeros((), jnp.float32)
        if state.loss_scale is not None:
            # float16: a step whose gradients overflowed is dropped and the scale shrinks. The
            # optimizer's step counts still advance, so the lr schedule keeps following
            # state.step; only parameters, statistics and optimizer moments stay as they were.
            finite = losses.all_finite(grads)

            def keep(new, old, counts_advance=False):
                def pick(path, a, b):
                    if counts_advance and getattr(path[-1], "name", None) == "count":
                        return a
                    return jnp.where(finite, a, b)

                return jax.tree_util.tree_map_with_path(pick, new, old)

            new_state = new_state.replace(
                params=keep(new_params, state.params),
                batch_stats=keep(new_stats, state.batch_stats),
                opt_state=keep(new_opt, state.opt_state, counts_advance=True),
                loss_scale=state.loss_scale.update(finite),
            )
            skipped = 1.0 - finite.astype(jnp.float32)

        if state.ema is not None:  # from the weights as kept (a skipped float16 step: as were)
            new_state = new_state.replace(ema=ema.update(
                state.ema, new_state.params, new_state.batch_stats, new_state.step, spec))

        new_metrics = {k: metrics[k] + sums[k] for k in ("loss", "top1", "top5", "count",
                                                         "labeled")}
        new_metrics["skipped_steps"] = metrics["skipped_steps"] + skipped
        return new_state, new_metrics

    rep = replicated(mesh)
    data = rep if batch_fn is not None else batch_sharding(mesh)
    # Both are named "step": the compiled program is "jit_step" (profiles, the compilation
    # cache's keys).
    if teacher is None:
        def step(state: TrainState, metrics: Metrics, batch: dict[str, jax.Array]):
            return whole_step(state, metrics, batch)

        return jax.jit(step, in_shardings=(rep, rep, data), out_shardings=(rep, rep),
                       donate_argnums=(0, 1))

    def step(state: TrainState, metrics: Metrics, batch: dict[str, jax.Array],
             teacher_vars: Any):
        return whole_step(state, metrics, batch, teacher_vars)

    return jax.jit(step, in_shardings=(rep, rep, data, rep), out_shardings=(rep, rep),
                   donate_argnums=(0, 1))


def _renormalize(mean, std, to_mean, to_std, dtype) -> Callable[[jax.Array], jax.Array]:
    """Images normalised with (mean, std) -> normalised with (to_mean, to_std): the teacher's
    input from the student's (an exact per-channel affine map; the identity where they agree)."""
    if tuple(mean) == tuple(to_mean) and tuple(std) == tuple(to_std):
        return lambda x: x
    scale = jnp.asarray(std, jnp.float32) / jnp.asarray(to_std, jnp.float32)
    shift = (jnp.asarray(mean, jnp.float32) - jnp.asarray(to_mean, jnp.float32)) / jnp.asarray(
        to_std, jnp.float32)
    return lambda x: (x.astype(jnp.float32) * scale + shift).astype(dtype)


def _trainable_part(params: Any, head: set[str] | None) -> tuple[Any, Callable[[Any], Any]]:
    """(what to differentiate, part -> full params). Everything, unless a frozen backbone
    leaves only the ``head`` leaves (a list, in tree order)."""
    if head is None:
        return params, lambda part: part
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    keep = [i for i, (path, _) in enumerate(leaves) if optim.path_name(path) in head]
    values = [v for _, v in leaves]

    def rebuild(part):
        full = list(values)
        for i, v in zip(keep, part):
            full[i] = v
        return jax.tree_util.tree_unflatten(treedef, full)

    return [values[i] for i in keep], rebuild


def _with_frozen_zeros(grads: Any, params: Any, head: set[str] | None) -> Any:
    """The full gradient tree: the head's gradients, zeros for the frozen backbone."""
    if head is None:
        return grads
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    part = iter(grads)
    return jax.tree_util.tree_unflatten(treedef, [
        next(part) if optim.path_name(path) in head else jnp.zeros_like(v) for path, v in leaves])


def _model_apply(model: flax.linen.Module, impl: str) -> Callable[..., Any]:
    """``model.apply``, with the fused-backward BatchNorm when ``impl="fused"`` (entered while
    the step is traced)."""
    if impl == "flax":
        return model.apply
    from flaxcls.models.batchnorm import batchnorm_impl

    def apply(*args, **kwargs):
        with batchnorm_impl(impl):
            return model.apply(*args, **kwargs)

    return apply


def make_eval_step(
    model: flax.linen.Module, spec: StepSpec, mesh: Mesh
) -> Callable[[dict[str, Any], Metrics, dict[str, jax.Array]], Metrics]:
    """Builds ``step(variables, metrics, batch) -> metrics``; padded examples (mask 0) count nowhere.
    With ``spec.eval_flip`` the logits are the mean of the image's and its mirror's."""
    num_classes, mean, std = spec.num_classes, spec.mean, spec.std
    dtype = jnp.dtype(spec.dtype)

    def step(variables: dict[str, Any], metrics: Metrics, batch: dict[str, jax.Array]) -> Metrics:
        images = normalize(batch["image"], mean, std, dtype)
        if spec.eval_flip:  # the mirror's logits averaged in (one batch of twice the size)
            both = model.apply(variables, jnp.concatenate([images, images[:, :, ::-1]]),
                               train=False).astype(jnp.float32)
            logits = 0.5 * (both[:len(images)] + both[len(images):])
        else:
            logits = model.apply(variables, images, train=False).astype(jnp.float32)
        w = batch["mask"].astype(jnp.float32)
        loss = losses.cross_entropy(logits, losses.onehot(batch["label"], num_classes))
        top1, top5 = _topk_sums(logits, batch["label"], w)
        return {
            "loss": metrics["loss"] + jnp.sum(loss * w),
            "top1": metrics["top1"] + top1,
            "top5": metrics["top5"] + top5,
            "count": metrics["count"] + jnp.sum(w),
        }

    rep, data = replicated(mesh), batch_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, rep, data), out_shardings=rep, donate_argnums=(1,))


def fetch_metrics(metrics: Metrics) -> dict[str, float]:
    """One host sync: the accumulated sums -> means (loss, top1, top5) and totals."""
    host = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
    n = max(host.get("count", 0.0), 1.0)
    out = {k: host[k] / n for k in ("loss", "top1", "top5") if k in host}
    if "labeled" in host:  # accuracy over the examples with a label
        out.update({k: host[k] / max(host["labeled"], 1.0) for k in ("top1", "top5")})
    out["count"] = host.get("count", 0.0)
    if "skipped_steps" in host:
        out["skipped_steps"] = host["skipped_steps"]
    return out
