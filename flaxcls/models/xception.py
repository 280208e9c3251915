"""Xception41/65/71 as in the 2019 PaddleCV zoo (``xception.py``), input 299 (resize_short 320).
One generic ``Xception`` module; each variant is one registered line at the bottom.

Structure follows Paddle exactly, which differs from Chollet's paper in its separable conv:
* ``SeparableConv`` = 1x1 pointwise conv -> BN -> 3x3 depthwise conv (pad 1) -> BN, pointwise
  **first**, no activation between or after (the ReLUs belong to the blocks).
* Stem: 3x3/2 conv pad 1 (32) -> BN -> ReLU -> 3x3 conv pad 1 (64) -> BN -> ReLU (299 -> 150).
* Entry blocks (widths 128, 256, 728, all stride 2; Xception71: 128, 256, 256, 728, 728 with
  strides 2, 1, 2, 1, 2): [ReLU, except the first block] -> sep -> ReLU -> sep -> max pool 3x3
  stride s pad 1; shortcut = plain 1x1 conv, stride s (no BN, no bias, on the un-ReLU'd input,
  in every entry block, even a stride-1 one that keeps the width); sum, no ReLU after.
* Middle blocks (8 in Xception41, 16 in 65/71; 728 channels): 3 x (ReLU -> sep) + identity.
* Exit block: ReLU -> sep (728) -> ReLU -> sep (1024) -> max pool 3/2 pad 1, shortcut 1x1/2 conv
  (1024); then sep (1536) -> ReLU -> sep (2048) -> ReLU -> global average pool -> fc. No dropout.

Spatial at 299: 150 -> 75 -> 38 -> 19 (middle) -> 10. Every size >= 1 pixel works.

Parameter names (used by ``flaxcls.convert``): ``stem_conv{1,2}``/``stem_bn{1,2}``,
``entry_block{b}``, ``middle_block{b}``, ``exit_block`` (b counted from 1) holding
``sep{k}`` (k = 1..3) and, in entry and exit blocks, ``shortcut``; ``exit_sep1``, ``exit_sep2``;
``head``. Every ``sep`` holds ``pointwise``, ``pointwise_bn``, ``depthwise``, ``depthwise_bn``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
from flax import linen as nn

from flaxcls.models.layers import (
    BNClassifier,
    DropPath,
    ModuleDef,
    check_same_length,
    classifier_head,
    conv_bn,
    drop_path_rates,
    global_avg_pool,
    max_pool,
    symmetric_padding,
)
from flaxcls.registry import register_model


class SeparableConv(nn.Module):
    """Paddle's ``separable_conv``: 1x1 conv -> BN -> depthwise 3x3 conv -> BN (all linear)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = conv_bn(x, self.conv, self.norm, self.features, 1, names=("pointwise", "pointwise_bn"))
        return conv_bn(x, self.conv, self.norm, self.features, 3, groups=self.features,
                       names=("depthwise", "depthwise_bn"))


class XceptionBlock(nn.Module):
    """``len(widths)`` x ([ReLU] -> SeparableConv), then for a downsampling block a 3x3 max pool
    (stride ``strides``, pad 1) and a 1x1 conv shortcut (stride ``strides``); else identity.

    The ReLU before the first separable conv is skipped when ``relu_first`` is False (the first
    entry block); the shortcut always reads the block's input as it came in.
    """

    widths: Sequence[int]
    conv: ModuleDef
    sep: ModuleDef
    strides: int = 1
    downsample: bool = True  # max pool + conv shortcut (entry/exit) or identity (middle)
    relu_first: bool = True
    act: Callable = nn.relu
    drop_path: float = 0.0  # stochastic depth of the separable-conv branch (training only)
    train: bool = False

    @nn.compact
    def __call__(self, x):
        y = x
        for k, width in enumerate(self.widths):
            if k > 0 or self.relu_first:
                y = self.act(y)
            y = self.sep(width, name=f"sep{k + 1}")(y)
        if not self.downsample:
            return x + DropPath(self.drop_path, name="drop_path")(y, train=self.train)
        y = max_pool(y, 3, self.strides, padding=1)
        y = DropPath(self.drop_path, name="drop_path")(y, train=self.train)
        shortcut = self.conv(
            self.widths[-1],
            (1, 1),
            strides=self.strides,
            padding=symmetric_padding(1),
            name="shortcut",
        )(x)
        return shortcut + y


class Xception(BNClassifier):
    """Generic Xception (Paddle's 2019 variant) on NHWC input.

    ``entry_widths``/``entry_strides``: the entry blocks; ``middle_blocks`` blocks of
    ``middle_width`` channels; ``exit_widths`` the exit block's two separable convs and
    ``tail_widths`` the two that follow it.

    Returns float32 logits ``[N, num_classes]``; with ``return_features=True`` also a dict:
    ``stem`` (after the two stem convs, stride 2), ``entry`` (after the entry flow, stride 16),
    ``middle`` (after the middle flow), ``exit`` (the final ReLU'd map, stride 32) and ``pooled``
    (``[N, C]`` global average, float32).

    Init as Paddle: conv kernels He-normal with fan_in (the depthwise ones too: fan_in = 9), head
    Uniform(+-1/sqrt(fan_in)) with zero bias, BN scale 1 / bias 0.
    """

    entry_widths: Sequence[int] = (128, 256, 728)
    entry_strides: Sequence[int] = (2, 2, 2)
    middle_blocks: int = 8
    middle_width: int = 728
    exit_widths: Sequence[int] = (728, 1024)
    tail_widths: Sequence[int] = (1536, 2048)
    stem_widths: Sequence[int] = (32, 64)
    drop_path_rate: float = 0.0  # of the exit block; linear in depth from 0 over every block
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        check_same_length("Xception", entry_widths=self.entry_widths,
                          entry_strides=self.entry_strides)
        if self.entry_widths[-1] != self.middle_width:
            raise ValueError(
                f"Xception's last entry width {self.entry_widths[-1]} must equal middle_width "
                f"{self.middle_width} (the middle blocks add their input)"
            )
        conv, norm = self.conv_and_norm(train)
        sep = functools.partial(SeparableConv, conv=conv, norm=norm)
        blocks = len(self.entry_widths) + self.middle_blocks + 1
        rates = iter(drop_path_rates(self.drop_path_rate, blocks))

        def block(*args, **kwargs):
            return XceptionBlock(*args, conv=conv, sep=sep, act=self.act, drop_path=next(rates),
                                 train=train, **kwargs)

        features = {}
        for i, (width, strides) in enumerate(zip(self.stem_widths, (2, 1)), start=1):
            x = conv_bn(x, conv, norm, width, 3, strides=strides, act=self.act,
                        names=(f"stem_conv{i}", f"stem_bn{i}"))
        features["stem"] = x
        for b, (width, strides) in enumerate(zip(self.entry_widths, self.entry_strides)):
            x = block(
                (width, width), strides=strides, relu_first=b > 0, name=f"entry_block{b + 1}"
            )(x)
        features["entry"] = x
        for b in range(self.middle_blocks):
            x = block((self.middle_width,) * 3, downsample=False, name=f"middle_block{b + 1}")(x)
        features["middle"] = x
        x = block(tuple(self.exit_widths), strides=2, name="exit_block")(x)
        for k, width in enumerate(self.tail_widths):
            x = self.act(sep(width, name=f"exit_sep{k + 1}")(x))
        features["exit"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


def _register(name: str, top: tuple[float, float], **arch) -> None:
    register_model(
        name,
        functools.partial(Xception, **arch),
        family="xception",
        input_size=299,
        crop_size=299,
        resize_short_size=320,
        first_conv="stem_conv1",
        classifier="head",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (Inception series).
_register("Xception41", (0.7930, 0.9453))
_register("Xception65", (0.8100, 0.9549), middle_blocks=16)
_ENTRY71 = {"entry_widths": (128, 256, 256, 728, 728), "entry_strides": (2, 1, 2, 1, 2)}
_register("Xception71", (0.8111, 0.9545), middle_blocks=16, **_ENTRY71)
