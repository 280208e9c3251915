"""Learning-rate schedules and the Momentum + L2 optimizer of the 2019 PaddleCV recipes.

Every schedule is a function of the optimizer step (an int array) that jits; the optimizer
records the rate it used in ``opt_state.hyperparams["learning_rate"]`` for logging.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxcls.config import L2_DECAY_MODES, LR_STRATEGIES, ConfigError, split_lr_strategy

WARMUP_SUFFIX = "_warmup"


def base_learning_rate(config: Any, global_batch_size: int | None = None) -> float:
    """``config.lr``, scaled linearly by ``global batch / config.lr_base_batch_size`` when that is > 0."""
    batch = int(config.batch_size if global_batch_size is None else global_batch_size)
    if config.lr_base_batch_size > 0:
        return float(config.lr) * batch / float(config.lr_base_batch_size)
    return float(config.lr)


def make_schedule(
    config: Any, steps_per_epoch: int, global_batch_size: int | None = None
) -> optax.Schedule:
    """The learning rate at each optimizer step for ``config.lr_strategy``.

    Strategies (``T = num_epochs * steps_per_epoch`` steps in all, ``W`` warm-up steps):

    - ``piecewise_decay``: times ``decay_rate`` at each of ``step_epochs`` (absolute epochs,
      also with warm-up). The 2019 code hard-coded 0.1, the default ``decay_rate``.
    - ``cosine_decay``: ``lr * (cos(pi * t / (T - W)) + 1) / 2`` with ``t = step - W``, reaching 0
      at the end. Smooth per step; the 2019 ``cosine_decay`` stepped once per epoch
      (``t = floor(step / steps_per_epoch)`` epochs), which differs by under one epoch's decay.
      The 2019 ``cosine_decay_warmup`` ran its cosine over all ``T`` steps after warm-up, so it
      never reached 0; here it spans the remaining ``T - W`` steps.
    - ``linear_decay``: ``lr -> end_lr`` linearly over the ``T - W`` steps after warm-up.
    - ``exponential_decay``: ``lr * decay_rate ** floor(t / (decay_epochs * steps_per_epoch))``
      (staircase, as in 2019), ``t = step - W``.
    - ``constant``: ``lr``.

    A ``_warmup`` suffix (e.g. ``cosine_decay_warmup``), or a plain strategy with
    ``warm_up_epochs > 0``, first ramps linearly from 0 to ``lr`` over ``warm_up_epochs`` epochs.
    ``lr`` is ``base_learning_rate(config, global_batch_size)``.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
    strategy = str(config.lr_strategy)
    name, with_warmup = split_lr_strategy(strategy)
    if name not in LR_STRATEGIES:
        raise ConfigError(f"config.lr_strategy={strategy!r}: must be one of {LR_STRATEGIES} "
                          f"(optionally with {WARMUP_SUFFIX!r})")
    lr = base_learning_rate(config, global_batch_size)
    total = round(float(config.num_epochs) * steps_per_epoch)
    warmup = round(float(config.warm_up_epochs) * steps_per_epoch)
    if with_warmup and warmup == 0:
        raise ConfigError(
            f"config.warm_up_epochs={config.warm_up_epochs!r}: lr_strategy={strategy!r} needs "
            "warm_up_epochs > 0 (the 2019 recipes used 5)"
        )
    if warmup and warmup >= total:
        raise ConfigError(
            f"config.warm_up_epochs={config.warm_up_epochs!r}: warm-up must end before "
            f"num_epochs={config.num_epochs}"
        )
    decay = _decay_schedule(name, config, lr, steps_per_epoch, start=warmup, total=total)
    if warmup == 0:
        return decay

    def schedule(step):
        step = jnp.asarray(step)
        ramp = lr * step.astype(jnp.float32) / warmup
        return jnp.where(step < warmup, ramp, decay(step)).astype(jnp.float32)

    return schedule


def _decay_schedule(
    name: str, config: Any, lr: float, steps_per_epoch: int, *, start: int, total: int
) -> optax.Schedule:
    """The schedule after warm-up; ``start`` is the first step after warm-up (0 without)."""
    span = max(total - start, 1)

    def since_start(step) -> jax.Array:
        return jnp.clip(jnp.asarray(step).astype(jnp.float32) - start, 0.0, float(span))

    if name == "piecewise_decay":
        boundaries = [round(float(e) * steps_per_epoch) for e in config.step_epochs]
        rate = float(config.decay_rate)

        def piecewise(step):
            step = jnp.asarray(step)
            passed = sum((step >= b).astype(jnp.float32) for b in boundaries)
            return (lr * rate ** jnp.asarray(passed, jnp.float32)).astype(jnp.float32)

        return piecewise

    if name == "cosine_decay":
        return lambda step: (0.5 * lr * (1.0 + jnp.cos(math.pi * since_start(step) / span))
                             ).astype(jnp.float32)

    if name == "linear_decay":
        end_lr = float(config.end_lr)
        return lambda step: (end_lr + (lr - end_lr) * (1.0 - since_start(step) / span)
                             ).astype(jnp.float32)

    if name == "exponential_decay":
        period = float(config.decay_epochs) * steps_per_epoch
        if period <= 0:
            raise ConfigError(f"config.decay_epochs={config.decay_epochs!r}: must be > 0 "
                              "for exponential_decay")
        rate = float(config.decay_rate)
        # Not clipped at the end: the 2019 code kept decaying if training ran past num_epochs.
        return lambda step: (lr * rate ** jnp.floor(
            jnp.maximum(jnp.asarray(step).astype(jnp.float32) - start, 0.0) / period)
        ).astype(jnp.float32)

    assert name == "constant", name
    return lambda step: jnp.full(jnp.shape(step), lr, jnp.float32)


def _weight_decay_mask(params: Any) -> Any:
    """True for kernels (ndim > 1); False for biases and BatchNorm scale/offset."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def l2_decay_mode(config: Any) -> str:
    """Where ``l2_decay`` applies: "optimizer" (default: ``g + l2 * p`` before momentum, as
    Paddle's L2Decay) or "loss" (``0.5 * l2 * sum(p**2)`` added to the loss, as the Flax
    ImageNet example). Both give the same gradient; they differ only in speed."""
    mode = str(config.get("l2_decay_mode", "optimizer"))
    if mode not in L2_DECAY_MODES:
        raise ConfigError(f"config.l2_decay_mode={mode!r}: must be one of {L2_DECAY_MODES}")
    return mode


def l2_penalty(params: Any, config: Any) -> jax.Array:
    """``0.5 * l2_decay * sum(p**2)`` over the parameters the optimizer mode would decay
    (float32 scalar); 0 unless ``l2_decay_mode == "loss"``."""
    l2 = float(config.l2_decay)
    if l2_decay_mode(config) != "loss" or not l2:
        return jnp.zeros((), jnp.float32)
    exclude = bool(config.get("l2_decay_exclude_bn_bias", False))
    leaves = [p for p in jax.tree.leaves(params) if not exclude or jnp.ndim(p) > 1]
    return 0.5 * l2 * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)


def make_optimizer(
    config: Any, schedule: optax.Schedule | float, head: set[str] | None = None
) -> optax.GradientTransformation:
    """Paddle's ``Momentum`` optimizer with an ``L2Decay`` regularizer.

    Per parameter: ``g' = g + l2_decay * p``; ``v = momentum_rate * v + g'``;
    ``p -= lr * v`` (with ``nesterov``: ``p -= lr * (g' + momentum_rate * v)``). Like Paddle,
    the L2 term applies to every trainable parameter, BatchNorm scale/offset and biases
    included; ``config.l2_decay_exclude_bn_bias = True`` (optional field) limits it to
    parameters with ndim > 1. The rate used by the last update is
    ``opt_state.hyperparams["learning_rate"]``.

    Fine-tuning: ``head`` names the classifier's parameters ('/'-joined paths inside params);
    with it, ``config.freeze_backbone`` leaves every other parameter unchanged and
    ``config.backbone_lr_mult`` scales their learning rate (optax.multi_transform).
    """
    # l2_decay_mode="loss" moves the same L2 term into the loss (step.py, l2_penalty).
    l2 = float(config.l2_decay) if l2_decay_mode(config) == "optimizer" else 0.0
    exclude = bool(config.get("l2_decay_exclude_bn_bias", False))
    momentum = float(config.momentum_rate)
    nesterov = bool(config.nesterov)

    def momentum_l2(learning_rate: jax.Array | float) -> optax.GradientTransformation:
        parts = []
        if l2:
            parts.append(optax.add_decayed_weights(l2, mask=_weight_decay_mask if exclude else None))
        if momentum:
            parts.append(optax.trace(decay=momentum, nesterov=nesterov))
        parts.append(optax.scale_by_learning_rate(learning_rate))
        return optax.chain(*parts)

    freeze = bool(config.get("freeze_backbone", False))
    mult = float(config.get("backbone_lr_mult", 1.0))
    if head is None or (not freeze and mult == 1.0):
        return optax.inject_hyperparams(momentum_l2)(learning_rate=schedule)

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "head" if path_name(path) in head else "backbone", params)

    def per_group(learning_rate: jax.Array | float) -> optax.GradientTransformation:
        backbone = optax.set_to_zero() if freeze else momentum_l2(learning_rate * mult)
        return optax.multi_transform({"head": momentum_l2(learning_rate), "backbone": backbone},
                                     labels)

    return optax.inject_hyperparams(per_group)(learning_rate=schedule)


def path_name(path: Any) -> str:
    """A parameter's '/'-joined path inside params (the names ``head`` uses)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def learning_rate_of(opt_state: Any) -> jax.Array:
    """The learning rate the last ``update`` used (0-d array), read from ``make_optimizer``'s state."""
    return opt_state.hyperparams["learning_rate"]

