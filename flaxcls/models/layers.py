"""Building blocks shared by the model families: Paddle-style explicit padding and pooling,
conv -> BN [-> act] units, dropout and the classifier head.

Fluid 1.x pads convolutions and pools symmetrically (never TF 'SAME'), lets padded cells never
win a max pool, and averages over the valid cells only (``exclusive=True``), including the
partial windows that ``ceil_mode`` adds at the bottom and right edges.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

Array = jax.Array
ModuleDef = Any

# Paddle's default conv initialiser (MSRA): normal, std = sqrt(2 / (kh * kw * in_channels)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# Paddle's fc in the 2019 zoo: Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias starts at zero.
dense_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def symmetric_padding(kernel_size: int | tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Paddle's ``padding=(k - 1) // 2`` on both sides of each spatial axis."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return ((kh - 1) // 2, (kh - 1) // 2), ((kw - 1) // 2, (kw - 1) // 2)


def check_same_length(model: str, **fields: Sequence[Any]) -> None:
    """One clear error when two per-stage fields of ``model`` (given by name) differ in length."""
    (a, first), (b, second) = fields.items()
    if len(first) != len(second):
        raise ValueError(f"{model} {a} {tuple(first)} and {b} {tuple(second)} must have the same "
                         "length")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_bn(
    x: Array,
    conv: ModuleDef,
    norm: ModuleDef,
    features: int,
    kernel_size: int | tuple[int, int],
    *,
    names: tuple[str, str],
    strides: int = 1,
    padding: int | tuple[int, int] | None = None,
    groups: int = 1,
    act: Callable | None = None,
) -> Array:
    """Paddle's ``conv_bn_layer``: bias-less conv -> BN [-> ``act``], the conv and the BN created
    in the calling module under ``names`` (conv, BN).

    ``padding`` is Paddle's symmetric per-axis padding, (k - 1) // 2 when None; ``groups`` makes
    the conv grouped (``groups=channels``: depthwise). ``act=None`` leaves the BN linear.
    """
    kh, kw = _pair(kernel_size)
    ph, pw = ((kh - 1) // 2, (kw - 1) // 2) if padding is None else _pair(padding)
    groups_kw = {"feature_group_count": groups} if groups != 1 else {}
    x = conv(features, (kh, kw), strides=strides, padding=((ph, ph), (pw, pw)), name=names[0],
             **groups_kw)(x)
    if act is None:
        return norm(name=names[1])(x)
    return norm_act(norm(name=names[1]), x, act)


class ConvNormBlock(nn.Module):
    """The fields of a block built from its network's ``conv`` and ``norm`` partials (the network
    makes them once, with its dtype and BatchNorm settings): its width and activation."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable = nn.relu


class ConvBN(nn.Module):
    """``conv_bn`` as a module of its own (holding ``conv`` and ``bn``), as InceptionV4 and DarkNet
    name their units; explicit symmetric ``padding``, default 0."""

    features: int
    kernel_size: int | tuple[int, int]
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    padding: int | tuple[int, int] = 0
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x):
        return conv_bn(x, self.conv, self.norm, self.features, self.kernel_size,
                       names=("conv", "bn"), strides=self.strides, padding=self.padding,
                       act=self.act)


def _pool_geometry(size: int, window: int, stride: int, pad: int, ceil_mode: bool):
    """Output length and (low, high) padding of one spatial axis, as Paddle's pool2d sizes it."""
    span = size + 2 * pad - window
    if span < 0:
        raise ValueError(f"pool window {window} is larger than the padded input {size + 2 * pad}")
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    # Floor mode never needs more than `pad` on the high side; ceil mode may add a partial window.
    high = max(pad, (out - 1) * stride + window - size - pad)
    return out, (pad, high)


def _valid_counts(size: int, out: int, window: int, stride: int, pad: int) -> np.ndarray:
    starts = np.arange(out) * stride - pad
    ends = np.minimum(starts + window, size)
    return np.maximum(ends - np.maximum(starts, 0), 1)


def max_pool(
    x: Array,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> Array:
    """Max pool on NHWC input; padded cells are -inf, so they never win.

    The gradient goes to the first maximum of each window in row-major order, as JAX's own
    (``select_and_scatter``), but is computed without a scatter: see ``_pool_max``.
    """
    (wh, ww), (sh, sw), (ph, pw) = _pair(window), _pair(stride), _pair(padding)
    _, pads_h = _pool_geometry(x.shape[1], wh, sh, ph, ceil_mode)
    _, pads_w = _pool_geometry(x.shape[2], ww, sw, pw, ceil_mode)
    geometry = _MaxPoolGeometry((wh, ww), (sh, sw), (tuple(pads_h), tuple(pads_w)),
                                tuple(x.shape[1:3]))
    return _pool_max(x, geometry)


class _MaxPoolGeometry(NamedTuple):
    """A max pool's static geometry (hashable, so a custom_vjp's non-differentiable argument)."""

    window: tuple[int, int]
    strides: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]  # (low, high) padding of H, of W
    in_hw: tuple[int, int]  # the input's H, W


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _pool_max(x: Array, geo: _MaxPoolGeometry) -> Array:
    """Forward: one ``reduce_window``.

    Differentiated, the forward also records which tap of its window won (an int8 per output)
    and the backward adds each output's gradient back through strided pads: elementwise, so
    XLA fuses it. JAX's own rule lowers to ``select_and_scatter``, which XLA:GPU rewrites into a
    reduce_window that writes the winner's four s32 coordinates per output and a scatter of
    them (3.7 GB per ResNet50 step at batch 256 compiled for an H200, about 0.7 GB here).
    """
    (wh, ww), (sh, sw) = geo.window, geo.strides
    # A Python-scalar init lets XLA recognise the max monoid.
    return jax.lax.reduce_window(
        x, -jnp.inf, jax.lax.max, (1, wh, ww, 1), (1, sh, sw, 1), ((0, 0), *geo.pads, (0, 0))
    )


def _pool_max_fwd(x: Array, geo: _MaxPoolGeometry):
    (wh, ww), (sh, sw), (pads_h, pads_w) = geo.window, geo.strides, geo.pads
    xp = jnp.pad(x, ((0, 0), pads_h, pads_w, (0, 0)), constant_values=-jnp.inf)
    n, hp, wp, c = xp.shape
    oh, ow = (hp - wh) // sh + 1, (wp - ww) // sw + 1
    best, winner = None, None
    for k, (dy, dx) in enumerate((dy, dx) for dy in range(wh) for dx in range(ww)):
        tap = jax.lax.slice(
            xp, (0, dy, dx, 0), (n, dy + (oh - 1) * sh + 1, dx + (ow - 1) * sw + 1, c), (1, sh, sw, 1)
        )
        if best is None:
            best, winner = tap, jnp.zeros(tap.shape, jnp.int8 if wh * ww <= 127 else jnp.int32)
        else:
            # Strictly greater: on ties the earlier tap keeps the gradient (JAX's rule). lax.max
            # propagates NaN as reduce_window does, so the value equals the primal's.
            winner = jnp.where(tap > best, jnp.asarray(k, winner.dtype), winner)
            best = jax.lax.max(best, tap)
    return best, winner


def _pool_max_bwd(geo: _MaxPoolGeometry, winner: Array, g: Array):
    (wh, ww), (sh, sw), ((lo_h, _), (lo_w, _)), (h, w) = geo
    oh, ow = winner.shape[1:3]
    dx_acc = None
    for k, (dy, dx) in enumerate((dy, dx) for dy in range(wh) for dx in range(ww)):
        part = jnp.where(winner == k, g, 0).astype(jnp.float32)
        # Output (i, j) read input (i*sh + dy - lo_h, j*sw + dx - lo_w): spread the outputs by the
        # stride (interior padding) and shift them there; negative edges crop the padded cells.
        low_h, low_w = dy - lo_h, dx - lo_w
        part = jax.lax.pad(
            part,
            jnp.float32(0),
            (
                (0, 0, 0),
                (low_h, h - low_h - (oh - 1) * sh - 1, sh - 1),
                (low_w, w - low_w - (ow - 1) * sw - 1, sw - 1),
                (0, 0, 0),
            ),
        )
        dx_acc = part if dx_acc is None else dx_acc + part
    return (dx_acc.astype(g.dtype),)


_pool_max.defvjp(_pool_max_fwd, _pool_max_bwd)


def avg_pool(
    x: Array,
    window: int | tuple[int, int],
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    exclusive: bool = True,
) -> Array:
    """Average pool on NHWC input with Paddle's rules.

    ``exclusive=True`` divides each window by its number of valid (in-bounds) cells, also for the
    partial windows ``ceil_mode`` creates; ``exclusive=False`` always divides by the window area.
    """
    (wh, ww), (sh, sw), (ph, pw) = _pair(window), _pair(stride), _pair(padding)
    out_h, pads_h = _pool_geometry(x.shape[1], wh, sh, ph, ceil_mode)
    out_w, pads_w = _pool_geometry(x.shape[2], ww, sw, pw, ceil_mode)
    summed = jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, wh, ww, 1), (1, sh, sw, 1), ((0, 0), pads_h, pads_w, (0, 0))
    )
    if exclusive:
        counts = np.outer(
            _valid_counts(x.shape[1], out_h, wh, sh, ph),
            _valid_counts(x.shape[2], out_w, ww, sw, pw),
        )
    else:
        counts = np.full((out_h, out_w), wh * ww)
    return summed / jnp.asarray(counts[None, :, :, None], dtype=x.dtype)


def global_avg_pool(x: Array) -> Array:
    """Mean over H and W of an NHWC map -> [N, C], accumulated in float32."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class DowngradeDropout(nn.Module):
    """Fluid's default dropout (``downgrade_in_infer``): training keeps each value with
    probability 1 - rate and does NOT rescale; inference multiplies by 1 - rate.

    Matches the released weights exactly (they were trained with it). Uses the ``dropout`` rng.
    """

    rate: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        keep = 1.0 - self.rate
        if self.rate == 0.0:
            return x
        if not train:
            return x * jnp.asarray(keep, x.dtype)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x, jnp.zeros((), x.dtype))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, a residual branch is dropped for a
    whole example with probability ``rate`` and the kept ones scaled by 1 / (1 - rate), so
    inference (the identity) sees the same expectation. Uses the ``dropout`` rng."""

    rate: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        if self.rate == 0.0 or not train:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one draw per example
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Stochastic depth rates of ``blocks`` residual blocks, linear in depth from 0 to ``rate``
    (the last block's), as in the paper and timm."""
    if blocks <= 1:
        return [rate] * blocks
    return [rate * i / (blocks - 1) for i in range(blocks)]


def conv_and_norm(
    dtype: Any, train: bool, bn_momentum: float = 0.9, bn_epsilon: float = 1e-5
) -> tuple[ModuleDef, ModuleDef]:
    """The ``conv`` and ``norm`` partials every BN family passes to its blocks.

    Bias-less convs with Paddle's MSRA init; BatchNorm with Paddle's momentum 0.9 and
    epsilon 1e-5 (Flax's default momentum is 0.99). Compute in ``dtype``, params float32.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=conv_kernel_init,
    )
    from flaxcls.models.batchnorm import BatchNorm

    norm = functools.partial(
        BatchNorm, use_running_average=not train, momentum=bn_momentum,
        epsilon=bn_epsilon, dtype=dtype, param_dtype=jnp.float32,
    )
    return conv, norm


class Classifier(nn.Module):
    """What every registered model takes (the registry passes both): the class count and the
    compute dtype (parameters stay float32). A family's network adds its architecture fields."""

    num_classes: int = 1000
    dtype: Any = jnp.float32


class BNClassifier(Classifier):
    """A ``Classifier`` with BatchNorm: Paddle's momentum and epsilon, the activation, and the
    conv and norm partials its blocks are built with."""

    bn_momentum: float = 0.9  # Paddle's: running = 0.9 * running + 0.1 * batch
    bn_epsilon: float = 1e-5
    act: Callable = nn.relu

    def conv_and_norm(self, train: bool) -> tuple[ModuleDef, ModuleDef]:
        return conv_and_norm(self.dtype, train, self.bn_momentum, self.bn_epsilon)


def norm_act(norm: nn.Module, x: Array, act: Callable, residual: Array | None = None) -> Array:
    """``act(residual + norm(x))``; through ``BatchNorm.norm_act`` when ``norm`` has it, so
    that ``config.bn_impl="fused"`` can fuse the ReLU into the BatchNorm's gradient."""
    if hasattr(norm, "norm_act"):
        return norm.norm_act(x, act, residual)
    y = norm(x)
    return act(y if residual is None else residual + y)


def classifier_head(x: Array, num_classes: int, dtype: Any, name: str = "head",
                    dropout: float = 0.0, train: bool = False) -> Array:
    """The fc classifier on pooled features (Paddle's fc init); logits returned in float32.

    ``dropout`` > 0 drops pooled features in training first (``config.dropout_rate``, for the
    heads that had no dropout in 2019; inverted dropout, the identity at inference)."""
    if dropout:
        x = nn.Dropout(dropout, deterministic=not train, name="classifier_dropout")(x)
    logits = nn.Dense(
        num_classes, dtype=dtype, param_dtype=jnp.float32, kernel_init=dense_kernel_init,
        name=name,
    )(x)
    return logits.astype(jnp.float32)
