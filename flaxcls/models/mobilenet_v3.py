"""MobileNetV3 large and small as PaddleClas 2.x builds them (``ppcls/arch/backbone/
legendary_models/mobilenet_v3.py`` at d178931fc), at the five widths it releases (x0_35, x0_5,
x0_75, x1_0, x1_25). Each variant is one registered line.

Where PaddleClas's network is exact about something other zoos do differently:

* every width is ``make_divisible(c * scale)`` (nearest multiple of 8, at least 8, one step up
  when rounding lost more than 10%), except the SE squeeze (``c // 4`` of the unit's expanded
  width, no rounding) and the head conv (1280 at every scale);
* a unit is 1x1 expand -> BN -> act -> k x k depthwise (stride here) -> BN -> act [-> SE] ->
  1x1 linear projection -> BN [+ input where stride 1 and the widths match]; the expand conv
  exists even where the expansion equals the input width (large's first unit, 16 -> 16);
* SE: global average -> 1x1 conv (biased) -> ReLU -> 1x1 conv (biased) -> Paddle's
  ``hardsigmoid`` with slope 0.2 and offset 0.5, ``clip(0.2 x + 0.5, 0, 1)`` (not
  ``relu6(x + 3) / 6``) -> the input scaled per channel;
* hardswish is ``x * relu6(x + 3) / 6``;
* the head: 1x1 conv to ``make_divisible(scale * 960)`` (large) or ``(scale * 576)`` (small)
  -> BN -> hardswish, global average, a bias-free 1x1 conv to 1280 -> hardswish, dropout 0.2
  (``downscale_in_infer``: kept values unscaled in training, x0.8 at inference), fc.

Every other conv is bias-free with BN (Paddle's ``nn.BatchNorm``: epsilon 1e-5, momentum 0.9)
and symmetric padding (k - 1) // 2.

Parameter names (used by ``flaxcls.convert``): ``stem_conv``/``stem_bn``; ``block{i}`` (i as
PaddleClas's ``blocks.{i}``) with ``expand_conv``/``expand_bn``, ``dw_conv``/``dw_bn``,
``se/{reduce,expand}`` and ``project_conv``/``project_bn``; ``last_conv``/``last_bn`` (the 960
or 576 conv, PaddleClas's ``last_second_conv``); ``head_conv`` (the 1280 conv, PaddleClas's
``last_conv``); ``head`` (the fc).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    BNClassifier,
    DowngradeDropout,
    DropPath,
    ModuleDef,
    classifier_head,
    conv_bn,
    drop_path_rates,
    global_avg_pool,
)
from flaxcls.registry import register_model


class Unit(NamedTuple):
    """One row of PaddleClas's ``NET_CONFIG``, widths before scaling."""

    kernel: int
    expanded: int
    out: int
    se: bool
    act: str  # "relu" or "hardswish"
    stride: int


LARGE = tuple(Unit(*row) for row in (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hardswish", 2),
    (3, 200, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 184, 80, False, "hardswish", 1),
    (3, 480, 112, True, "hardswish", 1),
    (3, 672, 112, True, "hardswish", 1),
    (5, 672, 160, True, "hardswish", 2),
    (5, 960, 160, True, "hardswish", 1),
    (5, 960, 160, True, "hardswish", 1),
))
SMALL = tuple(Unit(*row) for row in (
    (3, 16, 16, True, "relu", 2),
    (3, 72, 24, False, "relu", 2),
    (3, 88, 24, False, "relu", 1),
    (5, 96, 40, True, "hardswish", 2),
    (5, 240, 40, True, "hardswish", 1),
    (5, 240, 40, True, "hardswish", 1),
    (5, 120, 48, True, "hardswish", 1),
    (5, 144, 48, True, "hardswish", 1),
    (5, 288, 96, True, "hardswish", 2),
    (5, 576, 96, True, "hardswish", 1),
    (5, 576, 96, True, "hardswish", 1),
))
STEM_WIDTH = 16  # before scaling
LAST_WIDTH = {"large": 960, "small": 576}  # PaddleClas's class_squeeze, before scaling
HEAD_WIDTH = 1280  # PaddleClas's class_expand: the same at every scale
SE_REDUCTION = 4
# Paddle's hardsigmoid(x, slope, offset) as PaddleClas's SE calls it.
SE_SLOPE, SE_OFFSET = 0.2, 0.5

ACTIVATIONS: dict[str, Callable] = {"relu": nn.relu, "hardswish": jax.nn.hard_swish}


def make_divisible(value: float, divisor: int = 8) -> int:
    """PaddleClas's ``_make_divisible``: ``value`` rounded to the nearest multiple of ``divisor``
    (halves up, at least ``divisor``), one ``divisor`` more where that lost over 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def paddle_hardsigmoid(x: jax.Array) -> jax.Array:
    """``clip(0.2 x + 0.5, 0, 1)``: Paddle's ``hardsigmoid`` with PaddleClas's slope and offset."""
    return jnp.clip(SE_SLOPE * x + SE_OFFSET, 0.0, 1.0)


class SqueezeExcite(nn.Module):
    """PaddleClas's ``SEModule``: global average -> 1x1 conv to ``C // 4`` (biased) -> ReLU ->
    1x1 conv to ``C`` (biased) -> ``paddle_hardsigmoid`` -> the input scaled per channel."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        conv = functools.partial(self.conv, kernel_size=(1, 1), padding="VALID", use_bias=True)
        s = global_avg_pool(x)[:, None, None, :].astype(x.dtype)
        s = nn.relu(conv(channels // SE_REDUCTION, name="reduce")(s))
        s = paddle_hardsigmoid(conv(channels, name="expand")(s))
        return x * s


class ResidualUnit(nn.Module):
    """PaddleClas's ``ResidualUnit``: 1x1 expand (always present) -> BN -> act -> depthwise
    (stride here) -> BN -> act [-> SE] -> 1x1 linear -> BN, plus the input where the stride is 1
    and the widths match (stochastic depth on that branch in training)."""

    unit: Unit
    expanded: int
    features: int
    conv: ModuleDef
    norm: ModuleDef
    drop_path: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.unit.act]
        layer = functools.partial(conv_bn, conv=self.conv, norm=self.norm)
        y = layer(x, features=self.expanded, kernel_size=1, act=act,
                  names=("expand_conv", "expand_bn"))
        y = layer(y, features=self.expanded, kernel_size=self.unit.kernel,
                  strides=self.unit.stride, groups=self.expanded, act=act,
                  names=("dw_conv", "dw_bn"))
        if self.unit.se:
            y = SqueezeExcite(self.conv, name="se")(y)
        y = layer(y, features=self.features, kernel_size=1, names=("project_conv", "project_bn"))
        if self.unit.stride != 1 or x.shape[-1] != self.features:
            return y
        return x + DropPath(self.drop_path, name="drop_path")(y, train=self.train)


def stage_ends(units: tuple[Unit, ...]) -> list[int]:
    """The units that end a stage (the last one before each stride-2 unit, and the last):
    PaddleClas's ``MODEL_STAGES_PATTERN``, large blocks 0, 2, 5, 11, 14, small 0, 2, 7, 10."""
    ends = [i - 1 for i, u in enumerate(units) if u.stride == 2 and i > 0]
    return ends + [len(units) - 1]


class MobileNetV3(BNClassifier):
    """MobileNetV3 on NHWC input; float32 logits ``[N, num_classes]``.

    With ``return_features=True`` also a dict: ``stem``, ``stage1``.. (the output of each unit in
    ``stage_ends``: output strides 2 (large only), 4, 8, 16, 32), ``last`` (the ``last_conv``
    map) and ``pooled`` (``[N, 1280]`` float32, after the head conv and hardswish: what the fc
    sees, before its dropout).
    """

    units: tuple[Unit, ...] = LARGE
    scale: float = 1.0
    last_width: int = LAST_WIDTH["large"]  # before scaling
    head_width: int = HEAD_WIDTH
    act: Callable = jax.nn.hard_swish  # stem, last conv, head conv
    head_dropout: float = 0.2  # PaddleClas's dropout_prob (downscale-in-infer)
    drop_path_rate: float = 0.0  # of the last unit; linear in depth from 0 (residual units)

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.scale)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        x = conv_bn(x, conv, norm, self.width(STEM_WIDTH), 3, strides=2, act=self.act,
                    names=("stem_conv", "stem_bn"))
        features = {"stem": x}
        ends = stage_ends(self.units)
        rates = drop_path_rates(self.drop_path_rate, len(self.units))
        for i, unit in enumerate(self.units):
            x = ResidualUnit(unit, self.width(unit.expanded), self.width(unit.out), conv=conv,
                             norm=norm, drop_path=rates[i], train=train, name=f"block{i}")(x)
            if i in ends:
                features[f"stage{ends.index(i) + 1}"] = x
        x = conv_bn(x, conv, norm, self.width(self.last_width), 1, act=self.act,
                    names=("last_conv", "last_bn"))
        features["last"] = x
        pooled = global_avg_pool(x)[:, None, None, :].astype(self.dtype)
        pooled = self.act(conv(self.head_width, (1, 1), padding="VALID", name="head_conv")(pooled))
        pooled = pooled.reshape(pooled.shape[0], -1)
        features["pooled"] = pooled.astype(jnp.float32)
        pooled = DowngradeDropout(self.head_dropout, name="head_dropout")(pooled, train=train)
        logits = classifier_head(pooled, self.num_classes, self.dtype)
        return (logits, features) if return_features else logits


def _register(name: str, size: str, scale: float, top: tuple[float, float]) -> None:
    register_model(
        name,
        functools.partial(MobileNetV3, units={"large": LARGE, "small": SMALL}[size], scale=scale,
                          last_width=LAST_WIDTH[size]),
        family="mobilenet_v3",
        first_conv="stem_conv",
        classifier="head",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: ImageNet top-1/top-5 of PaddleClas's model list, PaddlePaddle/PaddleClas @
# d178931fc, docs/zh_CN/models/ImageNet1k/model_list.md (the mobile table; MobileNetV3.md in the
# same folder gives them to three decimals).
_register("MobileNetV3_large_x0_35", "large", 0.35, (0.6432, 0.8546))
_register("MobileNetV3_large_x0_5", "large", 0.5, (0.6924, 0.8852))
_register("MobileNetV3_large_x0_75", "large", 0.75, (0.7314, 0.9108))
_register("MobileNetV3_large_x1_0", "large", 1.0, (0.7532, 0.9231))
_register("MobileNetV3_large_x1_25", "large", 1.25, (0.7641, 0.9295))
_register("MobileNetV3_small_x0_35", "small", 0.35, (0.5303, 0.7637))
_register("MobileNetV3_small_x0_5", "small", 0.5, (0.5921, 0.8152))
_register("MobileNetV3_small_x0_75", "small", 0.75, (0.6602, 0.8633))
_register("MobileNetV3_small_x1_0", "small", 1.0, (0.6824, 0.8806))
_register("MobileNetV3_small_x1_25", "small", 1.25, (0.7067, 0.8951))
