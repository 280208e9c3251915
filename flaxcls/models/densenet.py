"""DenseNet121/161/169/201/264 as in the 2019 PaddleCV zoo (``densenet.py``): one generic
``DenseNet`` module, one registered line per variant at the bottom.

Structure follows Paddle exactly: 7x7/2 stem conv -> BN+ReLU -> 3x3/2 max pool (pad 1); dense
layers are pre-activation (BN+ReLU -> 1x1 conv to ``bn_size * growth_rate`` -> BN+ReLU -> 3x3
conv to ``growth_rate``) and concatenate ``[input, new]`` on channels; transitions are BN+ReLU ->
1x1 conv halving the channels -> 2x2/2 average pool; the network ends with BN+ReLU -> global
average pool -> fc. The released models use no dropout (``dropout_rate=0``).

Parameter names (used by ``flaxcls.convert``): ``stem_conv``/``stem_bn``,
``block{b}_layer{l}/{bn1,conv1,bn2,conv2}``, ``transition{b}/{bn,conv}``, ``final_bn``, ``head``
(b, l counted from 1).
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
    DowngradeDropout,
    ModuleDef,
    avg_pool,
    classifier_head,
    conv_bn,
    global_avg_pool,
    max_pool,
    norm_act,
    symmetric_padding,
)
from flaxcls.registry import register_model


class DenseLayer(nn.Module):
    """BN+ReLU -> 1x1 (bn_size * growth) -> BN+ReLU -> 3x3 (growth) [-> dropout]; returns the
    input with the new ``growth_rate`` channels appended (``[input, new]``)."""

    growth_rate: int
    bn_size: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = norm_act(self.norm(name="bn1"), x, self.act)
        y = self.conv(self.bn_size * self.growth_rate, (1, 1), padding=symmetric_padding(1),
                      name="conv1")(y)
        y = norm_act(self.norm(name="bn2"), y, self.act)
        y = self.conv(self.growth_rate, (3, 3), padding=symmetric_padding(3), name="conv2")(y)
        # Fluid's dropout (downgrade_in_infer) when the rate is nonzero; 0 in every release.
        y = DowngradeDropout(self.dropout_rate, name="dropout")(y, train=train)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class Transition(ConvNormBlock):
    """BN+ReLU -> 1x1 conv to ``features`` -> 2x2/2 average pool (floor mode, no padding)."""

    @nn.compact
    def __call__(self, x):
        x = norm_act(self.norm(name="bn"), x, self.act)
        x = self.conv(self.features, (1, 1), padding=symmetric_padding(1), name="conv")(x)
        return avg_pool(x, 2, 2)


class DenseNet(BNClassifier, kw_only=True):
    """Generic DenseNet on NHWC input.

    ``block_sizes`` dense layers per block, each adding ``growth_rate`` channels; transitions
    halve the channels (floor) between blocks.

    Returns float32 logits ``[N, num_classes]``; with ``return_features=True`` also a dict:
    ``stem`` (after the max pool, stride 4), ``stage1``..``stage{n}`` (each dense block's
    concatenated output, before its transition; the last one after the final BN+ReLU, i.e. the
    map that is pooled) and ``pooled`` (``[N, C]`` global average, float32).

    Init as Paddle: conv kernels He-normal with fan_in, head Uniform(+-1/sqrt(fan_in)) with zero
    bias, BN scale 1 / bias 0.
    """

    block_sizes: Sequence[int]
    growth_rate: int = 32
    stem_width: int = 64
    bn_size: int = 4
    dropout_rate: float = 0.0  # inside the dense layers (Fluid's downgrade-in-infer)
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training

    def num_features(self) -> list[int]:
        """Channels entering each dense block, and (last entry) the width of the final map."""
        widths, width = [], self.stem_width
        for b, depth in enumerate(self.block_sizes):
            widths.append(width)
            width += depth * self.growth_rate
            if b != len(self.block_sizes) - 1:
                width //= 2
        return [*widths, width]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        features = {}
        x = conv_bn(x, conv, norm, self.stem_width, 7, strides=2, act=self.act,
                    names=("stem_conv", "stem_bn"))
        x = max_pool(x, 3, 2, padding=1)
        features["stem"] = x
        last = len(self.block_sizes) - 1
        for b, depth in enumerate(self.block_sizes):
            for layer in range(depth):
                x = DenseLayer(
                    self.growth_rate,
                    self.bn_size,
                    conv=conv,
                    norm=norm,
                    dropout_rate=self.dropout_rate,
                    act=self.act,
                    name=f"block{b + 1}_layer{layer + 1}",
                )(x, train=train)
            if b != last:
                features[f"stage{b + 1}"] = x
                x = Transition(x.shape[-1] // 2, conv=conv, norm=norm, act=self.act,
                               name=f"transition{b + 1}")(x)
        x = norm_act(norm(name="final_bn"), x, self.act)
        features[f"stage{last + 1}"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


def _register(name: str, stem_width: int, growth_rate: int, block_sizes, top):
    register_model(
        name,
        functools.partial(
            DenseNet, block_sizes=tuple(block_sizes), growth_rate=growth_rate, stem_width=stem_width
        ),
        family="densenet",
        first_conv="stem_conv",
        classifier="head",
        top1=top[0],
        top5=top[1],
    )


# (stem width, growth rate, layers per block) from densenet.py; accuracies from the PaddleCV
# README table (top-1, top-5).
_register("DenseNet121", 64, 32, (6, 12, 24, 16), top=(0.7566, 0.9258))
_register("DenseNet161", 96, 48, (6, 12, 36, 24), top=(0.7857, 0.9414))
_register("DenseNet169", 64, 32, (6, 12, 32, 32), top=(0.7681, 0.9331))
_register("DenseNet201", 64, 32, (6, 12, 48, 32), top=(0.7763, 0.9366))
_register("DenseNet264", 64, 32, (6, 12, 64, 48), top=(0.7796, 0.9385))
