"""Learning-rate schedules and the optimizers: the 2019 recipes' Momentum + L2 and the ones
recipes use today (AdamW, LAMB, LARS, TF-style RMSProp, Lion), from optax.

Every schedule is a function of the optimizer step (an int array) that jits; the optimizer
records the rate it used in ``opt_state.hyperparams["learning_rate"]`` for logging.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import jax
import jax.numpy as jnp
import optax

from flaxcls.config import ConfigError
from flaxcls.specs import OptimSpec

WARMUP_SUFFIX = "_warmup"


def base_learning_rate(spec: OptimSpec, global_batch_size: int) -> float:
    """``spec.lr``, scaled linearly by ``global batch / spec.lr_base_batch_size`` when that is > 0."""
    if spec.lr_base_batch_size > 0:
        return spec.lr * int(global_batch_size) / float(spec.lr_base_batch_size)
    return spec.lr


def make_schedule(spec: OptimSpec, steps_per_epoch: int, global_batch_size: int) -> optax.Schedule:
    """The learning rate at each optimizer step for ``spec.lr_strategy``.

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

    A strategy named with a ``_warmup`` suffix (e.g. ``cosine_decay_warmup``), or any strategy
    with ``warm_up_epochs > 0``, first ramps linearly from 0 to ``lr`` over ``warm_up_epochs``
    epochs. ``lr`` is ``base_learning_rate(spec, global_batch_size)``. The fields were checked by
    ``flaxcls.config.validate``; what depends on the epoch length is checked here.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch} must be >= 1")
    lr = base_learning_rate(spec, global_batch_size)
    total = round(spec.num_epochs * steps_per_epoch)
    warmup = round(spec.warm_up_epochs * steps_per_epoch)
    if spec.warmup_required and warmup == 0:
        raise ConfigError(
            f"config.warm_up_epochs={spec.warm_up_epochs!r}: lr_strategy={spec.lr_strategy}"
            f"{WARMUP_SUFFIX} needs at least one warm-up step ({steps_per_epoch} steps per epoch)")
    if warmup and warmup >= total:
        raise ConfigError(
            f"config.warm_up_epochs={spec.warm_up_epochs!r}: warm-up must end before "
            f"num_epochs={spec.num_epochs:g} ({warmup} of {total} steps)")
    decay = _decay_schedule(spec, lr, steps_per_epoch, start=warmup, total=total)
    if warmup == 0:
        return decay

    def schedule(step):
        step = jnp.asarray(step)
        ramp = lr * step.astype(jnp.float32) / warmup
        return jnp.where(step < warmup, ramp, decay(step)).astype(jnp.float32)

    return schedule


def _decay_schedule(
    spec: OptimSpec, lr: float, steps_per_epoch: int, *, start: int, total: int
) -> optax.Schedule:
    """The schedule after warm-up; ``start`` is the first step after warm-up (0 without)."""
    span = max(total - start, 1)

    def since_start(step) -> jax.Array:
        return jnp.clip(jnp.asarray(step).astype(jnp.float32) - start, 0.0, float(span))

    name = spec.lr_strategy
    if name == "piecewise_decay":
        boundaries = [round(e * steps_per_epoch) for e in spec.step_epochs]
        rate = spec.decay_rate

        def piecewise(step):
            step = jnp.asarray(step)
            passed = sum((step >= b).astype(jnp.float32) for b in boundaries)
            return (lr * rate ** jnp.asarray(passed, jnp.float32)).astype(jnp.float32)

        return piecewise

    if name == "cosine_decay":
        return lambda step: (0.5 * lr * (1.0 + jnp.cos(math.pi * since_start(step) / span))
                             ).astype(jnp.float32)

    if name == "linear_decay":
        end_lr = spec.end_lr
        return lambda step: (end_lr + (lr - end_lr) * (1.0 - since_start(step) / span)
                             ).astype(jnp.float32)

    if name == "exponential_decay":
        period = spec.decay_epochs * steps_per_epoch
        rate = spec.decay_rate
        # Not clipped at the end: the 2019 code kept decaying if training ran past num_epochs.
        return lambda step: (lr * rate ** jnp.floor(
            jnp.maximum(jnp.asarray(step).astype(jnp.float32) - start, 0.0) / period)
        ).astype(jnp.float32)

    assert name == "constant", name
    return lambda step: jnp.full(jnp.shape(step), lr, jnp.float32)


def _weight_decay_mask(params: Any) -> Any:
    """True for kernels (ndim > 1); False for biases and BatchNorm scale/offset."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def l2_penalty(params: Any, l2: float, exclude_bn_bias: bool) -> jax.Array:
    """``0.5 * l2 * sum(p**2)`` (float32 scalar) over the parameters the optimizer would decay:
    all of them, or with ``exclude_bn_bias`` those with ndim > 1. What the step adds to its
    objective under ``l2_decay_mode="loss"``."""
    if not l2:
        return jnp.zeros((), jnp.float32)
    leaves = [p for p in jax.tree.leaves(params) if not exclude_bn_bias or jnp.ndim(p) > 1]
    return 0.5 * l2 * sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves)


# optimizer -> (beta1, beta2) and eps when config.opt_betas / config.opt_eps are unset (timm's
# and the papers' defaults; rmsprop_tf's eps is the MobileNet/EfficientNet recipes' 1e-3).
DEFAULT_BETAS = {"adamw": (0.9, 0.999), "lamb": (0.9, 0.999), "lion": (0.9, 0.99)}
DEFAULT_EPS = {"adamw": 1e-8, "lamb": 1e-6, "rmsprop_tf": 1e-3}


def _direction(spec: OptimSpec, learning_rate: jax.Array | float) -> optax.GradientTransformation:
    """One parameter group's update for ``spec.optimizer`` at ``learning_rate``.

    ``g`` is the gradient (plus ``l2_decay * p``, Paddle's coupled L2, for momentum, nesterov
    and rmsprop_tf), ``wd`` is ``weight_decay`` (decoupled: never scaled by the adaptive
    terms), ``lr`` the rate, ``b1, b2`` the betas and ``eps`` the epsilon:

    - ``momentum``/``nesterov``: ``v = m v + g``; ``p -= lr (v + wd p)`` (nesterov:
      ``g + m v`` in place of ``v``); SGDW's decoupled decay.
    - ``adamw``: Adam's bias-corrected ``u = m_hat / (sqrt(v_hat) + eps)``; ``p -= lr (u + wd p)``.
    - ``lamb``: ``r = u + wd p`` with Adam's ``u``; ``p -= lr * (||p|| / ||r||) r`` per tensor
      (the trust ratio, 1 where a norm is 0).
    - ``lars``: ``r = g + wd p``; ``v = m v + lr * trust_coefficient * (||p|| / ||r||) r``;
      ``p -= v`` (nesterov as above).
    - ``rmsprop_tf``: TensorFlow's RMSProp as MobileNet/EfficientNet trained with it:
      ``s = d s + (1 - d) g^2`` with ``s`` starting at 1, ``v = m v + lr (g / sqrt(s + eps) +
      wd p)`` (epsilon inside the square root, the rate inside the momentum), ``p -= v``.
    - ``lion``: ``u = sign(b1 mu + (1 - b1) g)``, ``mu = b2 mu + (1 - b2) g``;
      ``p -= lr (u + wd p)``.

    With ``weight_decay_exclude_bn_bias`` (the default) the decay, and LAMB's and LARS's trust
    ratio (as timm's LAMB and the LARS papers), spare BatchNorm scales/offsets and biases
    (tensors with one dimension).
    """
    name = spec.optimizer
    mask = _weight_decay_mask if spec.weight_decay_exclude_bn_bias else None
    coupled_l2 = spec.l2_decay if spec.l2_decay_mode == "optimizer" else 0.0
    parts: list[optax.GradientTransformation] = []
    if coupled_l2:
        parts.append(optax.add_decayed_weights(
            coupled_l2, mask=_weight_decay_mask if spec.l2_decay_exclude_bn_bias else None))
    decay = [optax.add_decayed_weights(spec.weight_decay, mask=mask)] if spec.weight_decay else []
    b1, b2 = spec.betas or DEFAULT_BETAS.get(name, (0.9, 0.999))
    eps = DEFAULT_EPS.get(name, 0.0) if spec.eps is None else spec.eps
    lr = optax.scale_by_learning_rate(learning_rate)

    def trust_ratio(**kw) -> optax.GradientTransformation:
        ratio = optax.scale_by_trust_ratio(**kw)
        return optax.masked(ratio, _weight_decay_mask) if mask is not None else ratio

    if name in ("momentum", "nesterov"):
        if spec.momentum_rate:
            parts.append(optax.trace(decay=spec.momentum_rate,
                                     nesterov=spec.nesterov or name == "nesterov"))
        parts += [*decay, lr]
    elif name == "adamw":
        parts += [optax.scale_by_adam(b1=b1, b2=b2, eps=eps), *decay, lr]
    elif name == "lamb":
        parts += [optax.scale_by_adam(b1=b1, b2=b2, eps=eps), *decay, trust_ratio(), lr]
    elif name == "lars":
        parts += [*decay, trust_ratio(trust_coefficient=spec.lars_trust_coefficient), lr,
                  optax.trace(decay=spec.momentum_rate, nesterov=spec.nesterov)]
    elif name == "rmsprop_tf":
        parts += [optax.scale_by_rms(decay=spec.rmsprop_decay, eps=eps, initial_scale=1.0,
                                     eps_in_sqrt=True), *decay, lr]
        if spec.momentum_rate:
            parts.append(optax.trace(decay=spec.momentum_rate))
    else:
        assert name == "lion", name
        parts += [optax.scale_by_lion(b1=b1, b2=b2), *decay, lr]
    return optax.chain(*parts)


def make_optimizer(
    spec: OptimSpec, schedule: optax.Schedule | float, head: Collection[str] | None = None
) -> optax.GradientTransformation:
    """``spec.optimizer`` (``_direction`` has each update rule) at the rate ``schedule``.

    The default, ``momentum``, is Paddle's ``Momentum`` with an ``L2Decay`` regularizer: per
    parameter ``g' = g + l2_decay * p``; ``v = momentum_rate * v + g'``; ``p -= lr * v`` (with
    ``nesterov``: ``p -= lr * (g' + momentum_rate * v)``). Like Paddle, the L2 term applies to
    every trainable parameter, BatchNorm scale/offset and biases included;
    ``l2_decay_exclude_bn_bias`` limits it to parameters with ndim > 1. With
    ``l2_decay_mode="loss"`` the same term is in the step's objective instead (``l2_penalty``):
    the same gradient, at another speed. ``clip_grad_norm > 0`` first scales the whole gradient
    down to that global norm. The rate used by the last update is
    ``opt_state.hyperparams["learning_rate"]``.

    Fine-tuning: ``head`` names the classifier's parameters ('/'-joined paths inside params);
    with it, ``freeze_backbone`` leaves every other parameter unchanged and
    ``backbone_lr_mult`` scales their learning rate (optax.multi_transform).
    """
    clip = [optax.clip_by_global_norm(spec.clip_grad_norm)] if spec.clip_grad_norm else []

    def whole(learning_rate: jax.Array | float) -> optax.GradientTransformation:
        inner = _direction(spec, learning_rate)
        return optax.chain(*clip, inner) if clip else inner

    freeze, mult = spec.freeze_backbone, spec.backbone_lr_mult
    if head is None or not spec.fine_tuning:
        return optax.inject_hyperparams(whole)(learning_rate=schedule)

    def labels(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "head" if path_name(path) in head else "backbone", params)

    def per_group(learning_rate: jax.Array | float) -> optax.GradientTransformation:
        backbone = optax.set_to_zero() if freeze else _direction(spec, learning_rate * mult)
        groups = optax.multi_transform(
            {"head": _direction(spec, learning_rate), "backbone": backbone}, labels)
        return optax.chain(*clip, groups) if clip else groups

    return optax.inject_hyperparams(per_group)(learning_rate=schedule)


def path_name(path: Any) -> str:
    """A parameter's '/'-joined path inside params (the names ``head`` uses)."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def learning_rate_of(opt_state: Any) -> jax.Array:
    """The learning rate the last ``update`` used (0-d array), read from ``make_optimizer``'s state."""
    return opt_state.hyperparams["learning_rate"]

