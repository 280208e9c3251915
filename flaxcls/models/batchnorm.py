"""Training-mode BatchNorm with a hand-written backward, and a context that routes every
``flax.linen.BatchNorm`` in training mode through it without changing model code.

Autodiff of ``nn.BatchNorm`` keeps float32 intermediates (``x - mean`` is twice the bytes of a
bfloat16 input) and differentiates each statistic separately. The backward here keeps only the
input ``x`` in its own dtype plus per-channel vectors, and needs two per-channel reductions,
``sum(dy)`` and ``sum(dy * (x - mean))``, then one elementwise pass for ``dx``.

    with fused_batchnorm():            # must be active while the model is traced (inside jit)
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])

Where a model calls ``BatchNorm.norm_act`` (the ResNet family's blocks: ``relu(bn(x))`` and
``relu(shortcut + bn(x))``; MobileNets' ``relu6(bn(x))``), the add and the activation join the
op: its backward recomputes the activation's mask from ``x`` (and the shortcut) rather than keeping it, so on a GPU the backward of
such a layer reads x and the incoming gradient twice and writes dx, and nothing else of their
size (see ``_batch_norm_bwd`` for the two details that make XLA compile it that way).

The forward runs ``nn.BatchNorm(use_fast_variance=True)``'s operations in the same order and
dtypes, so its values are bit-identical where XLA emits both the same way (the tests check this
on CPU); gradients agree to float rounding (the backward sums in another order, and rounds dx to
the input dtype once where autodiff rounds its two paths separately).

Supported: the defaults flaxcls uses (``axis=-1``, no ``axis_name``, no mask,
``use_fast_variance=True``, ``force_float32_reductions=True``), with or without scale and bias.
Anything else raises ``ValueError`` naming the module and field, so a run asked to be fused is
never silently unfused. Evaluation mode (``use_running_average`` resolves to True) and
subclasses that override ``__call__`` run Flax's own code.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen import dtypes as flax_dtypes
from jax import lax

Array = jax.Array
BN_IMPLS = ("flax", "fused")


def _reduction_axes(x: Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


def _per_channel(v: Array, ndim: int) -> Array:
    return v.reshape((1,) * (ndim - 1) + (-1,))


def _normalised(xs, mean, mul, bias, dtype, ndim):
    """nn.BatchNorm's output from float32 ``xs``: same operations, same order."""
    y = (xs - _per_channel(mean, ndim)) * _per_channel(mul, ndim)
    return (y + _per_channel(bias, ndim)).astype(dtype)


# The activations the op can take in, as the models apply them (flax.linen's are jax.nn's).
ACTS = {"relu": jax.nn.relu, "relu6": jax.nn.relu6}


def _forward(x, scale, bias, residual, act, epsilon, dtype, stats_dtype):
    """(out, mean, var) and what the backward needs; ``out = act?(residual? + BN(x))``, with
    the operations of nn.BatchNorm, then the model's ``shortcut + y`` and activation."""
    axes = _reduction_axes(x)
    xs = x.astype(stats_dtype)
    mean = xs.mean(axes)
    mean_sq = lax.square(xs).mean(axes)
    raw_var = mean_sq - lax.square(mean)
    var = jnp.maximum(0.0, raw_var)
    inv = lax.rsqrt(var + epsilon)
    scale_s, bias_s = scale.astype(stats_dtype), bias.astype(stats_dtype)
    y = _normalised(xs, mean, inv * scale_s, bias_s, dtype, x.ndim)
    if residual is not None:
        y = residual + y
    if act is not None:
        y = ACTS[act](y)
    # d max(0, v) / dv as JAX defines it: 1 above zero, 1/2 at a tie, 0 below.
    gate = (raw_var > 0).astype(stats_dtype) + 0.5 * (raw_var == 0).astype(stats_dtype)
    return (y, mean, var), (x, mean, inv, scale, bias, gate, residual)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _batch_norm(x, scale, bias, residual, act, epsilon, dtype, stats_dtype):
    return _forward(x, scale, bias, residual, act, epsilon, dtype, stats_dtype)[0]


def _batch_norm_fwd(x, scale, bias, residual, act, epsilon, dtype, stats_dtype):
    return _forward(x, scale, bias, residual, act, epsilon, dtype, stats_dtype)


def _batch_norm_bwd(act, epsilon, dtype, stats_dtype, residuals, cotangents):
    """Two per-channel sums over the batch, then one elementwise pass for dx.

    With ``act`` the activation's mask is recomputed from ``x`` (and the residual) instead of being
    kept, and nothing of the size of ``x`` is written but dx (and, with a residual, the
    residual's gradient). Two details keep XLA from writing more (checked on the optimized
    XLA:GPU program, ``benchmarks/analysis/gpu_hlo.py``): the two sums are the real and imaginary part of
    one complex sum, so they are one reduce and the masked gradient feeding it is not written
    out for a second one; and the dx pass states the same mask as ``select(pre <= 0, 0, dy)``
    rather than ``select(pre > 0, dy, 0)``, so XLA does not share one mask tensor between the
    two passes.
    """
    del epsilon  # inv already holds rsqrt(var + epsilon)
    x, mean, inv, scale, bias, gate, residual = residuals
    g_y, g_mean, g_var = cotangents
    axes, ndim = _reduction_axes(x), x.ndim
    count = 1
    for a in axes:
        count *= x.shape[a]
    scale_s = scale.astype(stats_dtype)
    mul = inv * scale_s
    xs = x.astype(stats_dtype)
    centred = xs - _per_channel(mean, ndim)
    g_residual = None
    if act is not None:
        def pre_activation():
            pre = _normalised(xs, mean, mul, bias.astype(stats_dtype), dtype, ndim)
            return pre if residual is None else residual + pre

        zero = jnp.zeros((), g_y.dtype)
        pre = pre_activation()
        # The derivatives JAX gives: relu's 1 above 0, relu6's 1 strictly between 0 and 6.
        passes = pre > 0 if act == "relu" else (pre > 0) & (pre < 6)
        g_sums = jnp.where(passes, g_y, zero)
        if residual is not None:
            # The residual's gradient is written anyway; dx reads it back.
            g_residual = g_sums.astype(residual.dtype)
            g_dx = g_sums
        else:
            pre = pre_activation()
            stops = pre <= 0 if act == "relu" else (pre <= 0) | (pre >= 6)
            g_dx = jnp.where(stops, zero, g_y)
    else:
        g_sums = g_dx = g_y
        if residual is not None:
            g_residual = g_y.astype(residual.dtype)
    g_sums = g_sums.astype(stats_dtype)
    both = lax.complex(g_sums, g_sums * centred).sum(axes)
    sum_g, sum_g_centred = jnp.real(both), jnp.imag(both)

    g_scale = sum_g_centred * inv
    g_bias = sum_g
    # var reaches y through inv = rsqrt(var + eps): d inv / d var = -inv^3 / 2.
    g_var_total = g_var.astype(stats_dtype) - 0.5 * sum_g_centred * scale_s * inv * inv * inv
    g_raw_var = g_var_total * gate
    # mean reaches y through (x - mean); raw_var = E[x^2] - mean^2 contributes 2 (x - mean) / N.
    g_mean_total = g_mean.astype(stats_dtype) - sum_g * mul
    g_x = (
        g_dx.astype(stats_dtype) * _per_channel(mul, ndim)
        + _per_channel(g_mean_total / count, ndim)
        + centred * _per_channel(g_raw_var * (2.0 / count), ndim)
    )
    return (g_x.astype(x.dtype), g_scale.astype(scale.dtype), g_bias.astype(scale.dtype),
            g_residual)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def batch_norm_train(
    x: Array,
    scale: Array,
    bias: Array,
    *,
    residual: Array | None = None,
    act: str | None = None,
    epsilon: float = 1e-5,
    dtype: Any = None,
    stats_dtype: Any = None,
) -> tuple[Array, Array, Array]:
    """Batch-normalises ``x`` over every axis but the last with its own batch statistics,
    optionally followed by ``residual + y`` and an activation, ``act`` one of ``ACTS`` (a
    ResNet block's ``relu(shortcut + bn(x))``, or ``relu(bn(x))``).

    Returns ``(y, mean, var)``: ``y`` in ``dtype`` (default: the result type of ``x``,
    ``scale`` and ``bias``), the batch mean and biased variance in ``stats_dtype`` (default:
    ``dtype`` promoted to at least float32) for the running averages. Differentiable in ``x``,
    ``scale``, ``bias`` and ``residual`` for cotangents of all three outputs; the backward keeps
    ``x`` (and ``residual``) as given, the mean, ``1/sqrt(var + epsilon)``, ``scale``, ``bias``
    and a per-channel clip gate, and recomputes the activation's mask.
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm_train needs batch and channel axes, got shape {x.shape}")
    if jnp.iscomplexobj(x):
        raise ValueError("batch_norm_train supports real floating-point inputs only")
    channels = x.shape[-1]
    for name, v in (("scale", scale), ("bias", bias)):
        if jnp.shape(v) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},), got {jnp.shape(v)}")
    out = jnp.dtype(flax_dtypes.canonicalize_dtype(x, scale, bias, dtype=dtype))
    stats = jnp.promote_types(out, jnp.float32) if stats_dtype is None else jnp.dtype(stats_dtype)
    # One dtype for both (exact widening; autodiff casts each gradient back to its own dtype).
    param_dtype = jnp.promote_types(jnp.result_type(scale), jnp.result_type(bias))
    scale, bias = jnp.asarray(scale, param_dtype), jnp.asarray(bias, param_dtype)
    if residual is not None:
        if jnp.shape(residual) != x.shape:
            raise ValueError(f"residual must have the shape of x {x.shape}, got {jnp.shape(residual)}")
        if jnp.result_type(residual) != out:
            raise ValueError(f"residual must have the output dtype {out}, got {jnp.result_type(residual)}")
        x, scale, bias, residual = _same_varying_axes(x, scale, bias, residual)
    else:
        x, scale, bias = _same_varying_axes(x, scale, bias)
    if act is not None and act not in ACTS:
        raise ValueError(f"act must be None or one of {sorted(ACTS)}, got {act!r}")
    return _batch_norm(x, scale, bias, residual, act, float(epsilon), out, stats)


def _varying_axes(a: Array) -> frozenset:
    """The manual mesh axes ``a`` varies over inside ``shard_map`` (empty outside). JAX has
    exposed them on the abstract value as ``.vma`` and, in this version, ``.mat.varying``."""
    aval = jax.typeof(a)
    axes = getattr(aval, "vma", None)
    if axes is None:
        axes = getattr(getattr(aval, "mat", None), "varying", None)
    return frozenset(axes or ())


def _same_varying_axes(*arrays: Array) -> list[Array]:
    """Inside ``shard_map``, x varies over the batch axis while scale and bias are replicated;
    a custom_vjp's backward must return cotangents of its inputs' own type. Marking every input
    as varying over the union of their manual axes (``pcast``) lets autodiff sum the
    per-device scale and bias gradients over those axes, as it does for ``nn.BatchNorm``.
    Outside ``shard_map`` there are no such axes and this changes nothing."""
    axes = [_varying_axes(a) for a in arrays]
    union = frozenset().union(*axes)
    return [
        lax.pcast(a, tuple(sorted(union - own, key=str)), to="varying") if union - own else a
        for a, own in zip(arrays, axes)
    ]


def _unsupported(module: nn.BatchNorm, x: Array, mask: Any) -> str | None:
    """The first setting the fused path cannot reproduce, as 'field=value', or None."""
    if mask is not None:
        return "mask (a masked call)"
    if module.axis_name is not None:
        return f"axis_name={module.axis_name!r}"
    if module.axis_index_groups is not None:
        return "axis_index_groups"
    if not isinstance(module.axis, int) or module.axis not in (-1, x.ndim - 1):
        return f"axis={module.axis!r} (only the last axis)"
    if not module.use_fast_variance:
        return "use_fast_variance=False"
    if not module.force_float32_reductions:
        return "force_float32_reductions=False"
    if jnp.iscomplexobj(x):
        return f"input dtype {x.dtype}"
    return None


def _fused_call(module: nn.BatchNorm, x: Array, residual: Array | None = None,
                act: str | None = None) -> Array:
    """nn.BatchNorm.__call__ in training mode, with the same variables, init and updates (then
    ``residual +`` and the activation ``act`` when asked)."""
    features = (x.shape[-1],)
    ra_mean = module.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = module.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features)
    scale = (module.param("scale", module.scale_init, features, module.param_dtype)
             if module.use_scale else None)
    bias = (module.param("bias", module.bias_init, features, module.param_dtype)
            if module.use_bias else None)
    # Statistics dtype and output dtype as nn.BatchNorm derives them.
    compute = module.dtype if module.dtype is not None else jnp.result_type(x)
    stats_dtype = jnp.promote_types(compute, jnp.float32)
    dtype = flax_dtypes.canonicalize_dtype(x, scale, bias, dtype=module.dtype)
    y, mean, var = batch_norm_train(
        x,
        jnp.ones(features, stats_dtype) if scale is None else scale,
        jnp.zeros(features, stats_dtype) if bias is None else bias,
        residual=residual,
        act=act,
        epsilon=module.epsilon,
        dtype=dtype,
        stats_dtype=stats_dtype,
    )
    if not module.is_initializing():
        ra_mean.value = module.momentum * ra_mean.value + (1 - module.momentum) * mean
        ra_var.value = module.momentum * ra_var.value + (1 - module.momentum) * var
    return y


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` (same fields, variables and ``__call__``) with one more entry point,
    ``norm_act``, for a BatchNorm followed by ``shortcut +`` and/or an activation."""

    def norm_act(self, x: Array, act: Callable, residual: Array | None = None) -> Array:
        """``act(residual + self(x))`` (``act(self(x))`` without a residual).

        Inside ``fused_batchnorm()`` in training mode with ``act`` being ``nn.relu`` or
        ``nn.relu6``, all of it is one custom-gradient op (``batch_norm_train(..., act=...)``)
        whose backward recomputes the activation's mask from ``x``; otherwise exactly the
        three steps. The request travels to ``fused_batchnorm``'s interceptor of ``__call__``
        (the method that may create variables); without that context nobody takes it up."""
        pending = None
        name = next((k for k, f in ACTS.items() if act is f), None)
        if name is not None and self._fusable(x, residual):
            pending = _PendingAct(self, residual, name)
        token = _PENDING.set(pending)
        try:
            y = self(x)
        finally:
            _PENDING.reset(token)
        if pending is not None and pending.done:
            return y
        return act(y if residual is None else residual + y)

    def _fusable(self, x: Array, residual: Array | None) -> bool:
        if residual is None:
            return True
        out = flax_dtypes.canonicalize_dtype(x, dtype=self.dtype)
        return jnp.shape(residual) == jnp.shape(x) and jnp.result_type(residual) == out


@dataclasses.dataclass
class _PendingAct:
    """``BatchNorm.norm_act``'s request to fuse ``residual +`` and the activation into its
    call."""

    module: nn.Module
    residual: Array | None
    act: str
    done: bool = False


_PENDING: contextvars.ContextVar[_PendingAct | None] = contextvars.ContextVar(
    "flaxcls_pending_bn_act", default=None)


def _route_batchnorm(next_fun, args, kwargs, context):
    module = context.module
    if (
        context.method_name != "__call__"
        or not isinstance(module, nn.BatchNorm)
        or type(module).__call__ is not nn.BatchNorm.__call__
    ):
        return next_fun(*args, **kwargs)
    x = args[0] if args else kwargs["x"]
    use_running_average = args[1] if len(args) > 1 else kwargs.get("use_running_average")
    use_running_average = nn.merge_param(
        "use_running_average", module.use_running_average, use_running_average
    )
    if use_running_average:
        return next_fun(*args, **kwargs)
    problem = _unsupported(module, x, kwargs.get("mask"))
    if problem is not None:
        path = "/".join(module.path) or type(module).__name__
        raise ValueError(
            f"BatchNorm {path}: {problem} is not supported by the fused BatchNorm "
            "(bn_impl='fused'); use bn_impl='flax' for this model"
        )
    pending = _PENDING.get()
    if pending is not None and pending.module is module and not pending.done:
        pending.done = True
        return _fused_call(module, jnp.asarray(x), pending.residual, pending.act)
    return _fused_call(module, jnp.asarray(x))


@contextlib.contextmanager
def fused_batchnorm() -> Iterator[None]:
    """Inside this context every ``nn.BatchNorm`` call in training mode uses
    ``batch_norm_train``. Interception happens while tracing: enter it inside the jitted
    function (around ``model.apply``), not around a call to an already-compiled one."""
    with nn.intercept_methods(_route_batchnorm):
        yield


def batchnorm_impl(name: str) -> contextlib.AbstractContextManager[None]:
    """The context for ``config.bn_impl``: ``"flax"`` changes nothing, ``"fused"`` is
    ``fused_batchnorm()``."""
    if name == "flax":
        return contextlib.nullcontext()
    if name == "fused":
        return fused_batchnorm()
    raise ValueError(f"bn_impl must be one of {BN_IMPLS}, got {name!r}")
