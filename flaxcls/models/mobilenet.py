"""MobileNetV1 (``mobilenet_v1.py``) and MobileNetV2 (``mobilenet_v2.py``) of the 2019 PaddleCV
zoo, at every width multiplier the two files define. Each variant is one registered line.

Both follow Paddle exactly, including where it departs from other zoos:

* widths are ``int(c * scale)`` (truncation, no make-divisible rounding);
* V1: 3x3/2 stem conv, then 13 depthwise-separable units (3x3 depthwise -> BN -> ReLU -> 1x1 ->
  BN -> ReLU), global average, fc;
* V2: 3x3/2 stem conv, then 7 stages of inverted-residual units (1x1 expand -> 3x3 depthwise ->
  1x1 linear projection, BN after each, ReLU6 after the first two). The expand conv exists
  **even when the expansion t = 1** (stage 1 has a 32 -> 32 expand conv, unlike torchvision);
  its width is ``int(round(cin * t))``. Only the second and later units of a stage add their
  input (the first never does, even at stride 1 with equal widths); the stride sits in the
  first unit. The last 1x1 conv has 1280 channels, or ``int(1280 * scale)`` when scale > 1.

Every conv is bias-free with BN (epsilon 1e-5, momentum 0.9) and symmetric padding (k - 1) // 2.

Parameter names (used by ``flaxcls.convert``): ``stem_conv``/``stem_bn``,
V1 ``stage{s}_block{b}/{dw_conv,dw_bn,pw_conv,pw_bn}``,
V2 ``stage{s}_block{b}/{expand_conv,expand_bn,dw_conv,dw_bn,project_conv,project_bn}``,
``last_conv``/``last_bn``; ``head`` (the fc).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from flax import linen as nn

from flaxcls.models.layers import (
    BNClassifier,
    ConvNormBlock,
    DropPath,
    ModuleDef,
    classifier_head,
    conv_bn,
    drop_path_rates,
    global_avg_pool,
)
from flaxcls.registry import register_model

# MobileNetV1 units as (input width, output width, stride) before scaling, grouped into stages
# that each end at one output stride (2, 4, 8, 16, 32). Paddle's names run conv2_1, conv2_2,
# conv3_1, conv3_2, conv4_1, conv4_2, conv5_1..conv5_6, conv6 in this order.
V1_STAGES = (
    ((32, 64, 1),),
    ((64, 128, 2), (128, 128, 1)),
    ((128, 256, 2), (256, 256, 1)),
    ((256, 512, 2),) + ((512, 512, 1),) * 5,
    ((512, 1024, 2), (1024, 1024, 1)),
)
# MobileNetV2 stages (expansion t, width c, units n, stride s) before scaling.
V2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))


def scaled(channels: int, scale: float) -> int:
    """Paddle's width rule: ``int(channels * scale)``, truncating."""
    return int(channels * scale)


def _stem(x: jax.Array, conv: ModuleDef, norm: ModuleDef, scale: float, act: Callable):
    """V1's and V2's stem: 3x3/2 conv to int(32 * scale) -> BN -> act."""
    return conv_bn(x, conv, norm, scaled(32, scale), 3, strides=2, act=act,
                   names=("stem_conv", "stem_bn"))


class DepthwiseSeparable(ConvNormBlock):
    """MobileNetV1 unit: 3x3 depthwise (stride here) -> BN -> act -> 1x1 -> BN -> act."""

    strides: int = 1

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        x = conv_bn(x, self.conv, self.norm, channels, 3, strides=self.strides, groups=channels,
                    act=self.act, names=("dw_conv", "dw_bn"))
        return conv_bn(x, self.conv, self.norm, self.features, 1, act=self.act,
                       names=("pw_conv", "pw_bn"))


class MobileNetV1(BNClassifier):
    """MobileNetV1 on NHWC input; float32 logits ``[N, num_classes]``.

    With ``return_features=True`` also a dict: ``stem`` (the stem conv's output), ``stage1``..
    ``stage5`` (the last map at output strides 2, 4, 8, 16, 32) and ``pooled`` (``[N, C]`` global
    average, float32).
    """

    scale: float = 1.0
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        x = _stem(x, conv, norm, self.scale, self.act)
        features = {"stem": x}
        for s, units in enumerate(V1_STAGES):
            for b, (_, out_width, strides) in enumerate(units):
                x = DepthwiseSeparable(
                    scaled(out_width, self.scale),
                    conv=conv,
                    norm=norm,
                    strides=strides,
                    act=self.act,
                    name=f"stage{s + 1}_block{b}",
                )(x)
            features[f"stage{s + 1}"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


class InvertedResidual(nn.Module):
    """MobileNetV2 unit: 1x1 expand (always present) -> BN -> ReLU6 -> 3x3 depthwise (stride
    here) -> BN -> ReLU6 -> 1x1 linear -> BN [+ input when ``residual``]."""

    expanded: int
    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    residual: bool = False
    act: Callable = nn.relu6
    drop_path: float = 0.0  # stochastic depth of the residual branch (training only)
    train: bool = False

    @nn.compact
    def __call__(self, x):
        unit = functools.partial(conv_bn, conv=self.conv, norm=self.norm)
        y = unit(x, features=self.expanded, kernel_size=1, act=self.act,
                 names=("expand_conv", "expand_bn"))
        y = unit(y, features=self.expanded, kernel_size=3, strides=self.strides,
                 groups=self.expanded, act=self.act, names=("dw_conv", "dw_bn"))
        y = unit(y, features=self.features, kernel_size=1, names=("project_conv", "project_bn"))
        if not self.residual:
            return y
        return x + DropPath(self.drop_path, name="drop_path")(y, train=self.train)


class MobileNetV2(BNClassifier):
    """MobileNetV2 on NHWC input; float32 logits ``[N, num_classes]``.

    With ``return_features=True`` also a dict: ``stem``, ``stage1``..``stage7`` (each stage's
    output; Paddle's ``conv2``..``conv8``), ``last`` (the 1x1 ``last_conv`` map) and ``pooled``.
    """

    scale: float = 1.0
    act: Callable = nn.relu6
    drop_path_rate: float = 0.0  # of the last unit; linear in depth from 0 (residual units)
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training

    def last_width(self) -> int:
        # mobilenet_v2.py widens the last conv only for scale > 1 (1280 otherwise).
        return scaled(1280, self.scale) if self.scale > 1.0 else 1280

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        x = _stem(x, conv, norm, self.scale, self.act)
        features = {"stem": x}
        rates = iter(drop_path_rates(self.drop_path_rate, sum(n for _, _, n, _ in V2_STAGES)))
        for s, (t, c, n, stage_stride) in enumerate(V2_STAGES):
            width = scaled(c, self.scale)
            for b in range(n):
                x = InvertedResidual(
                    x.shape[-1] * t,  # Paddle's int(round(cin * t)); t is a whole number
                    width,
                    conv=conv,
                    norm=norm,
                    strides=stage_stride if b == 0 else 1,
                    residual=b > 0,  # never on a stage's first unit
                    act=self.act,
                    drop_path=next(rates),
                    train=train,
                    name=f"stage{s + 1}_block{b}",
                )(x)
            features[f"stage{s + 1}"] = x
        x = conv_bn(x, conv, norm, self.last_width(), 1, act=self.act,
                    names=("last_conv", "last_bn"))
        features["last"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


def _register(name: str, module: type[nn.Module], family: str, scale: float, top) -> None:
    register_model(
        name,
        functools.partial(module, scale=scale),
        family=family,
        first_conv="stem_conv",
        classifier="head",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
_register("MobileNetV1_x0_25", MobileNetV1, "mobilenet_v1", 0.25, (0.5143, 0.7546))
_register("MobileNetV1_x0_5", MobileNetV1, "mobilenet_v1", 0.5, (0.6352, 0.8473))
_register("MobileNetV1_x0_75", MobileNetV1, "mobilenet_v1", 0.75, (0.6881, 0.8823))
_register("MobileNetV1", MobileNetV1, "mobilenet_v1", 1.0, (0.7099, 0.8968))
_register("MobileNetV2_x0_25", MobileNetV2, "mobilenet_v2", 0.25, (0.5321, 0.7652))
_register("MobileNetV2_x0_5", MobileNetV2, "mobilenet_v2", 0.5, (0.6503, 0.8572))
_register("MobileNetV2_x0_75", MobileNetV2, "mobilenet_v2", 0.75, (0.6983, 0.8901))
_register("MobileNetV2", MobileNetV2, "mobilenet_v2", 1.0, (0.7215, 0.9065))
_register("MobileNetV2_x1_5", MobileNetV2, "mobilenet_v2", 1.5, (0.7412, 0.9167))
_register("MobileNetV2_x2_0", MobileNetV2, "mobilenet_v2", 2.0, (0.7523, 0.9258))
