"""DarkNet53 (classification, input 256) as in the 2019 PaddleCV zoo (``darknet.py``).

Structure follows Paddle exactly: every conv is conv -> BN -> plain ReLU (not YOLOv3's leaky
ReLU); a 3x3/1 stem conv (32) and a 3x3/2 downsample conv (64, pad 1); five stages of residual
blocks (1x1 halving -> 3x3 restoring the width, added to the block input with no activation after
the add), a 3x3/2 downsample conv doubling the width between stages; global average pool -> fc.

Parameter names (used by ``flaxcls.convert``): ``stem/{conv,bn}``, ``stem_downsample/{conv,bn}``,
``stage{s}_block{b}/{reduce,expand}/{conv,bn}``, ``stage{s}_downsample/{conv,bn}``, ``head``
(s from 1, b from 0).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
from flax import linen as nn

from flaxcls.models.layers import (
    BNClassifier,
    ConvBN,
    ConvNormBlock,
    DropPath,
    ModuleDef,
    classifier_head,
    drop_path_rates,
    global_avg_pool,
)
from flaxcls.registry import register_model


def _conv_bn(conv: ModuleDef, norm: ModuleDef, act: Callable):
    """k x k conv (padding (k - 1) // 2, no bias) -> BN -> ``act``, as ``layer(features, k)``."""

    def layer(features: int, kernel_size: int, strides: int = 1, name: str | None = None):
        return ConvBN(features, kernel_size, conv, norm, strides=strides,
                      padding=(kernel_size - 1) // 2, act=act, name=name)

    return layer


class ResidualBlock(ConvNormBlock):
    """1x1 CBR to ``features`` -> 3x3 CBR to ``2 * features``, + input (no activation after);
    ``drop_path``: stochastic depth of the branch while training."""

    drop_path: float = 0.0
    train: bool = False

    @nn.compact
    def __call__(self, x):
        layer = _conv_bn(self.conv, self.norm, self.act)
        y = layer(self.features, 1, name="reduce")(x)
        y = layer(2 * self.features, 3, name="expand")(y)
        return x + DropPath(self.drop_path, name="drop_path")(y, train=self.train)


class DarkNet(BNClassifier):
    """Generic DarkNet classifier on NHWC input.

    Stage ``s`` (from 0) runs ``stage_sizes[s]`` residual blocks at width ``2 * stem_width * 2**s``;
    a 3x3/2 conv doubles the width between stages.

    Returns float32 logits ``[N, num_classes]``; with ``return_features=True`` also a dict:
    ``stem`` (after the stride-2 stem downsample), ``stage1``..``stage{n}`` (each stage's output,
    before the following downsample) and ``pooled`` (``[N, C]`` global average, float32).

    Init as Paddle: conv kernels He-normal with fan_in, head Uniform(+-1/sqrt(fan_in)) with zero
    bias, BN scale 1 / bias 0.
    """

    stage_sizes: Sequence[int] = (1, 2, 8, 8, 4)
    stem_width: int = 32
    drop_path_rate: float = 0.0  # of the last block; linear in depth from 0
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        layer = _conv_bn(conv, norm, self.act)
        features = {}
        x = layer(self.stem_width, 3, name="stem")(x)
        x = layer(2 * self.stem_width, 3, strides=2, name="stem_downsample")(x)
        features["stem"] = x
        last = len(self.stage_sizes) - 1
        rates = iter(drop_path_rates(self.drop_path_rate, sum(self.stage_sizes)))
        for s, depth in enumerate(self.stage_sizes):
            width = self.stem_width * 2**s
            for b in range(depth):
                x = ResidualBlock(width, conv=conv, norm=norm, act=self.act,
                                  drop_path=next(rates), train=train,
                                  name=f"stage{s + 1}_block{b}")(x)
            features[f"stage{s + 1}"] = x
            if s != last:
                x = layer(2 * x.shape[-1], 3, strides=2, name=f"stage{s + 1}_downsample")(x)
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


# Trained and evaluated at 256 px (resize_short 256, crop 256); README top-1 / top-5.
register_model(
    "DarkNet53",
    functools.partial(DarkNet, stage_sizes=(1, 2, 8, 8, 4)),
    family="darknet",
    input_size=256,
    crop_size=256,
    resize_short_size=256,
    first_conv="stem/conv",
    classifier="head",
    top1=0.7804,
    top5=0.9405,
)
