"""PP-LCNet as PaddleClas 2.x builds it (``ppcls/arch/backbone/legendary_models/pp_lcnet.py`` at
d178931fc), at the eight widths it releases (x0_25 .. x2_5). Each variant is one registered line.

What the network is, where other zoos' copies of it differ:

* a MobileNetV1-like stack of depthwise-separable blocks without any shortcut: k x k depthwise
  (stride here) -> BN -> hardswish [-> SE] -> 1x1 -> BN -> hardswish, in five stages (PaddleClas's
  ``blocks2`` .. ``blocks6``) ending at output strides 4, 8, 16, 32 (the first stage keeps the
  stem's 2); only the last stage's two blocks have SE;
* every width is ``make_divisible(c * scale)`` (PaddleClas's rounding, as in MobileNetV3), the
  stem's too (a 3x3/2 conv to ``make_divisible(16 * scale)`` -> BN -> hardswish), except the SE
  squeeze (``c // 4``, no rounding) and the head conv (1280 at every scale);
* SE: global average -> 1x1 conv (biased) -> ReLU -> 1x1 conv (biased) -> Paddle's
  ``nn.Hardsigmoid`` at its defaults, ``clip(0.1666667 x + 0.5, 0, 1)``: ``relu6(x + 3) / 6``
  to float32 precision, NOT the slope 0.2 of PaddleClas's MobileNetV3 -> the input scaled per
  channel;
* the head: global average, a bias-free 1x1 conv to 1280 (no BN) -> hardswish, dropout 0.2
  (``downscale_in_infer``: kept values unscaled in training, x0.8 at inference), fc.

Every other conv is bias-free with BN (Paddle's ``BatchNorm2D``: epsilon 1e-5, momentum 0.9)
and symmetric padding (k - 1) // 2.

Parameter names (used by ``flaxcls.convert``): ``stem_conv``/``stem_bn``;
``stage{s}_block{b}`` (PaddleClas's ``blocks{s + 1}.{b}``) with ``dw_conv``/``dw_bn``,
``se/{reduce,expand}`` and ``pw_conv``/``pw_bn``; ``head_conv`` (the 1280 conv, PaddleClas's
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
    ConvNormBlock,
    DowngradeDropout,
    ModuleDef,
    classifier_head,
    conv_bn,
    global_avg_pool,
)
from flaxcls.models.mobilenet_v3 import make_divisible
from flaxcls.registry import register_model


class Block(NamedTuple):
    """One row of PaddleClas's ``NET_CONFIG``, widths before scaling."""

    kernel: int
    inp: int
    out: int
    stride: int
    se: bool


# PaddleClas's blocks2 .. blocks6.
STAGES: tuple[tuple[Block, ...], ...] = tuple(tuple(Block(*row) for row in stage) for stage in (
    ((3, 16, 32, 1, False),),
    ((3, 32, 64, 2, False), (3, 64, 64, 1, False)),
    ((3, 64, 128, 2, False), (3, 128, 128, 1, False)),
    ((3, 128, 256, 2, False),) + ((5, 256, 256, 1, False),) * 5,
    ((5, 256, 512, 2, True), (5, 512, 512, 1, True)),
))
STEM_WIDTH = 16  # before scaling
HEAD_WIDTH = 1280  # PaddleClas's class_expand: the same at every scale
SE_REDUCTION = 4
# Paddle's nn.Hardsigmoid defaults (paddle.nn.functional.hardsigmoid's slope and offset).
SE_SLOPE, SE_OFFSET = 0.1666667, 0.5


def hardsigmoid(x: jax.Array) -> jax.Array:
    """``clip(0.1666667 x + 0.5, 0, 1)``: Paddle's ``nn.Hardsigmoid()``."""
    return jnp.clip(SE_SLOPE * x + SE_OFFSET, 0.0, 1.0)


class SqueezeExcite(nn.Module):
    """PaddleClas's PP-LCNet ``SEModule``: global average -> 1x1 conv to ``C // 4`` (biased) ->
    ReLU -> 1x1 conv to ``C`` (biased) -> ``hardsigmoid`` -> the input scaled per channel."""

    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        conv = functools.partial(self.conv, kernel_size=(1, 1), padding="VALID", use_bias=True)
        s = global_avg_pool(x)[:, None, None, :].astype(x.dtype)
        s = nn.relu(conv(channels // SE_REDUCTION, name="reduce")(s))
        return x * hardsigmoid(conv(channels, name="expand")(s))


class DepthwiseSeparable(ConvNormBlock):
    """PaddleClas's ``DepthwiseSeparable``: k x k depthwise (stride here) -> BN -> act [-> SE]
    -> 1x1 to ``features`` -> BN -> act. No shortcut."""

    kernel: int = 3
    strides: int = 1
    se: bool = False

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        x = conv_bn(x, self.conv, self.norm, channels, self.kernel, strides=self.strides,
                    groups=channels, act=self.act, names=("dw_conv", "dw_bn"))
        if self.se:
            x = SqueezeExcite(self.conv, name="se")(x)
        return conv_bn(x, self.conv, self.norm, self.features, 1, act=self.act,
                       names=("pw_conv", "pw_bn"))


class PPLCNet(BNClassifier):
    """PP-LCNet on NHWC input; float32 logits ``[N, num_classes]``.

    With ``return_features=True`` also a dict: ``stem``, ``stage1``..``stage5`` (the output of
    each of PaddleClas's ``blocks2``..``blocks6``: output strides 2, 4, 8, 16, 32) and ``pooled``
    (``[N, 1280]`` float32, after the head conv and hardswish: what the fc sees, before its
    dropout).
    """

    stages: tuple[tuple[Block, ...], ...] = STAGES
    scale: float = 1.0
    head_width: int = HEAD_WIDTH
    act: Callable = jax.nn.hard_swish  # every conv but the SE's
    head_dropout: float = 0.2  # PaddleClas's dropout_prob (downscale-in-infer)

    def width(self, channels: int) -> int:
        return make_divisible(channels * self.scale)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        x = conv_bn(x, conv, norm, self.width(STEM_WIDTH), 3, strides=2, act=self.act,
                    names=("stem_conv", "stem_bn"))
        features = {"stem": x}
        for s, blocks in enumerate(self.stages):
            for b, block in enumerate(blocks):
                x = DepthwiseSeparable(self.width(block.out), conv=conv, norm=norm, act=self.act,
                                       kernel=block.kernel, strides=block.stride, se=block.se,
                                       name=f"stage{s + 1}_block{b}")(x)
            features[f"stage{s + 1}"] = x
        pooled = global_avg_pool(x)[:, None, None, :].astype(self.dtype)
        pooled = self.act(conv(self.head_width, (1, 1), padding="VALID", name="head_conv")(pooled))
        pooled = pooled.reshape(pooled.shape[0], -1)
        features["pooled"] = pooled.astype(jnp.float32)
        pooled = DowngradeDropout(self.head_dropout, name="head_dropout")(pooled, train=train)
        logits = classifier_head(pooled, self.num_classes, self.dtype)
        return (logits, features) if return_features else logits


def _register(name: str, scale: float, top: tuple[float, float]) -> None:
    register_model(
        name,
        functools.partial(PPLCNet, scale=scale),
        family="pp_lcnet",
        first_conv="stem_conv",
        classifier="head",
        # ppcls/configs/ImageNet/PPLCNet/PPLCNet_x*.yaml (d178931fc), eval: ResizeImage
        # resize_short 256 (no interpolation given: cv2's INTER_LINEAR), CropImage 224,
        # ImageNet mean/std.
        input_size=224,
        resize_short_size=256,
        crop_size=224,
        interpolation="bilinear",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: ImageNet top-1/top-5 of PaddleClas's model list, PaddlePaddle/PaddleClas @
# d178931fc, docs/zh_CN/models/ImageNet1k/model_list.md (the PP-LCNet table; PP-LCNet.md in the
# same folder gives the same figures in percent).
_register("PPLCNet_x0_25", 0.25, (0.5186, 0.7565))
_register("PPLCNet_x0_35", 0.35, (0.5809, 0.8083))
_register("PPLCNet_x0_5", 0.5, (0.6314, 0.8466))
_register("PPLCNet_x0_75", 0.75, (0.6818, 0.8830))
_register("PPLCNet_x1_0", 1.0, (0.7132, 0.9003))
_register("PPLCNet_x1_5", 1.5, (0.7371, 0.9153))
_register("PPLCNet_x2_0", 2.0, (0.7518, 0.9227))
_register("PPLCNet_x2_5", 2.5, (0.7660, 0.9300))
