"""ShuffleNetV2 (``shufflenet_v2.py``) and ShuffleNetV2_swish (``shufflenet_v2_swish.py``) of
the 2019 PaddleCV zoo, at every width the two files define. Each variant is one registered line.

Structure, as Paddle builds it:

* stem: 3x3/2 conv (24) -> BN -> act -> 3x3/2 max pool, pad 1 (224 -> 112 -> 56);
* three stages of 4, 8, 4 units; each stage's first unit has stride 2 and two branches,
  concatenated **[down, main]**: down = 3x3/2 depthwise -> BN -> 1x1 (C/2) -> BN -> act;
  main = 1x1 (C/2) -> BN -> act -> 3x3/2 depthwise -> BN -> 1x1 (C/2) -> BN -> act. The other
  units split the channels into halves x1, x2 and concatenate **[x1, main(x2)]**;
* every unit ends with a channel shuffle in 2 groups: output channel 2k is input channel k and
  2k + 1 is input channel C/2 + k;
* depthwise convs are followed by BN only, never by an activation;
* 1x1 conv -> BN -> act (``last_conv``), a 7x7 stride-1 average pool, fc.

"act" is ReLU in ``shufflenet_v2.py`` and swish (x * sigmoid(x)) everywhere in
``shufflenet_v2_swish.py``. Every conv is bias-free with BN (epsilon 1e-5, momentum 0.9).

Head pool: at the 224 input the last map is 7x7, so Paddle's 7x7/1 average pool is exactly the
global mean, which is what this port computes. At other sizes Paddle's pool would leave a map
bigger than 1x1 and change the fc's input width (the released fc no longer fits); the global mean
keeps the weights usable at any size.

Parameter names (used by ``flaxcls.convert``): ``stem_conv``/``stem_bn``,
``stage{s}_block{b}/{conv1,bn1,conv2,bn2,conv3,bn3}`` (main branch; conv2 is the depthwise one)
plus ``down_dw_conv,down_dw_bn,down_pw_conv,down_pw_bn`` in each stage's first block,
``last_conv``/``last_bn``, ``head`` (the fc).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    BNClassifier,
    ConvNormBlock,
    check_same_length,
    classifier_head,
    conv_bn,
    global_avg_pool,
    max_pool,
)
from flaxcls.registry import register_model

# Paddle's width table: scale -> (stage output widths, last conv width); the stem is always 24.
WIDTHS = {
    "x0_25": ((24, 48, 96), 512),
    "x0_33": ((32, 64, 128), 512),
    "x0_5": ((48, 96, 192), 1024),
    "x1_0": ((116, 232, 464), 1024),
    "x1_5": ((176, 352, 704), 1024),
    "x2_0": ((224, 488, 976), 2048),
}


def channel_shuffle(x: jax.Array, groups: int = 2) -> jax.Array:
    """NHWC channel shuffle: view C as (groups, C / groups), transpose, flatten back."""
    *lead, channels = x.shape
    x = x.reshape(*lead, groups, channels // groups)
    return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)


class ShuffleUnit(ConvNormBlock):
    """One ShuffleNetV2 unit. ``strides=2``: both branches see the whole input ([down, main]);
    ``strides=1``: the main branch sees the second half of the channels ([x1, main(x2)])."""

    strides: int = 1

    @nn.compact
    def __call__(self, x):
        half = self.features // 2
        unit = functools.partial(conv_bn, conv=self.conv, norm=self.norm)

        def depthwise(y, names):  # BN only, never an activation after a depthwise conv
            channels = y.shape[-1]
            return unit(y, features=channels, kernel_size=3, strides=self.strides,
                        groups=channels, names=names)

        if self.strides == 1:
            keep, y = jnp.split(x, 2, axis=-1)
        else:
            keep = depthwise(x, ("down_dw_conv", "down_dw_bn"))
            keep = unit(keep, features=half, kernel_size=1, act=self.act,
                        names=("down_pw_conv", "down_pw_bn"))
            y = x
        y = unit(y, features=half, kernel_size=1, act=self.act, names=("conv1", "bn1"))
        y = depthwise(y, ("conv2", "bn2"))
        y = unit(y, features=half, kernel_size=1, act=self.act, names=("conv3", "bn3"))
        return channel_shuffle(jnp.concatenate([keep, y], axis=-1), 2)


class ShuffleNetV2(BNClassifier):
    """ShuffleNetV2 on NHWC input; float32 logits ``[N, num_classes]``.

    ``stage_widths`` are the three stages' output channels, ``last_width`` the 1x1 conv's before
    the pool; ``act`` is ReLU or swish. With ``return_features=True`` also a dict: ``stem``
    (after the max pool), ``stage1``..``stage3`` (Paddle's stages 2-4), ``last`` (the
    ``last_conv`` map) and ``pooled`` (``[N, C]`` global average, float32).
    """

    stage_widths: Sequence[int] = WIDTHS["x1_0"][0]
    last_width: int = WIDTHS["x1_0"][1]
    stage_sizes: Sequence[int] = (4, 8, 4)
    stem_width: int = 24
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        check_same_length("ShuffleNetV2", stage_widths=self.stage_widths,
                          stage_sizes=self.stage_sizes)
        odd = [w for w in self.stage_widths if w % 2]
        if odd:
            raise ValueError(f"ShuffleNetV2 stage_widths must be even, got {odd}")
        conv, norm = self.conv_and_norm(train)
        x = conv_bn(x, conv, norm, self.stem_width, 3, strides=2, act=self.act,
                    names=("stem_conv", "stem_bn"))
        x = max_pool(x, 3, 2, padding=1)
        features = {"stem": x}
        for s, (depth, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
            for b in range(depth):
                x = ShuffleUnit(
                    width,
                    conv=conv,
                    norm=norm,
                    strides=2 if b == 0 else 1,
                    act=self.act,
                    name=f"stage{s + 1}_block{b}",
                )(x)
            features[f"stage{s + 1}"] = x
        x = conv_bn(x, conv, norm, self.last_width, 1, act=self.act, names=("last_conv", "last_bn"))
        features["last"] = x
        pooled = global_avg_pool(x)  # = Paddle's 7x7/1 average pool on the 7x7 map at 224
        features["pooled"] = pooled
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


def _register(name: str, width: str, top=(None, None), act: Callable = nn.relu) -> None:
    stage_widths, last_width = WIDTHS[width]
    register_model(
        name,
        functools.partial(ShuffleNetV2, stage_widths=stage_widths, last_width=last_width, act=act),
        family="shufflenet_v2",
        first_conv="stem_conv",
        classifier="head",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
_register("ShuffleNetV2_x0_25", "x0_25", (0.4990, 0.7379))
_register("ShuffleNetV2_x0_33", "x0_33", (0.5373, 0.7705))
_register("ShuffleNetV2_x0_5", "x0_5", (0.6032, 0.8226))
_register("ShuffleNetV2", "x1_0", (0.6880, 0.8845))
_register("ShuffleNetV2_x1_5", "x1_5", (0.7163, 0.9015))
_register("ShuffleNetV2_x2_0", "x2_0", (0.7315, 0.9120))
# shufflenet_v2_swish.py defines x0.5-x2.0; only x1.0 was released.
_register("ShuffleNetV2_swish", "x1_0", (0.7003, 0.8917), act=nn.swish)
_register("ShuffleNetV2_x0_5_swish", "x0_5", act=nn.swish)
_register("ShuffleNetV2_x1_5_swish", "x1_5", act=nn.swish)
_register("ShuffleNetV2_x2_0_swish", "x2_0", act=nn.swish)
