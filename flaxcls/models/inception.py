"""InceptionV4 as in the 2019 PaddleCV zoo (``inception_v4.py``), input 299 (resize_short 320).

Structure follows Paddle exactly. Every conv is conv -> BN -> ReLU (``ConvBN``), without bias, and
pads **only where the original says so** (default 0, not (k - 1) // 2). Kernels are (kh, kw).

* Stem: conv1 3x3/2 (32) -> conv2 3x3 (32) -> conv3 3x3 pad 1 (64); mixed1 = concat[max pool
  3/2, conv 3x3/2 (96)]; mixed2 = concat[1x1 (64) -> 3x3 (96), 1x1 (64) -> **7x1** pad (3, 0)
  (64) -> **1x7** pad (0, 3) (64) -> 3x3 (96)] (Paddle's names ``inception_stem2_1x7``/``_7x1``
  are swapped relative to their kernels); mixed3 = concat[conv 3x3/2 (192), max pool 3/2].
  299 -> 149 -> 147 -> 147 -> 73 -> 71 -> 35.
* InceptionA x4 (35x35, 384): concat[avg pool 3/1 pad 1 -> 1x1 (96), 1x1 (96), 1x1 (64) -> 3x3
  pad 1 (96), 1x1 (64) -> 3x3 pad 1 (96) -> 3x3 pad 1 (96)].
* ReductionA (-> 17x17, 1024): concat[max pool 3/2, 3x3/2 (384), 1x1 (192) -> 3x3 pad 1 (224)
  -> 3x3/2 (256)].
* InceptionB x7 (17x17, 1024): concat[avg pool -> 1x1 (128), 1x1 (384), 1x1 (192) -> 1x7 (224)
  -> 7x1 (256), 1x1 (192) -> 1x7 (192) -> 7x1 (224) -> 1x7 (224) -> 7x1 (256)].
* ReductionB (-> 8x8, 1536): concat[max pool 3/2, 1x1 (192) -> 3x3/2 (192), 1x1 (256) -> 1x7
  (256) -> 7x1 (320) -> 3x3/2 (320)].
* InceptionC x3 (8x8, 1536): concat[avg pool -> 1x1 (256), 1x1 (256), 1x1 (384) -> {1x3, 3x1}
  (256 each), 1x1 (384) -> 1x3 (448) -> 3x1 (512) -> {1x3, 3x1} (256 each)].
* Head: global average pool -> dropout 0.2 (Fluid's downgrade-in-infer: x0.8 at inference) -> fc.

All 1xn / nx1 convs pad n // 2 along their long side; the average pools are 3x3/1 pad 1 and
exclusive (padded cells are not counted), the max pools 3x3/2 without padding. The smallest input
is 75x75 (a 1x1 map at the end).

Parameter names (used by ``flaxcls.convert``): ``stem/{conv1,conv2,conv3,mixed1_conv,
mixed2_branch{0,1}_conv{k},mixed3_conv}``, ``inception_a{1..4}``, ``reduction_a``,
``inception_b{1..7}``, ``reduction_b``, ``inception_c{1..3}``, each holding
``branch{b}_conv{k}`` units (b = the branch's position in the concat, k counted from 1 along the
branch; InceptionC's two-way ends are ``conv2a``/``conv2b`` and ``conv4a``/``conv4b``); every unit
holds ``conv`` and ``bn``. Head ``head``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    ConvBN,
    DowngradeDropout,
    ModuleDef,
    avg_pool,
    classifier_head,
    conv_and_norm,
    global_avg_pool,
    max_pool,
)
from flaxcls.registry import register_model

# Factorised convs: 1xn pads (0, n // 2), nx1 pads (n // 2, 0).
_ROW7 = {"kernel_size": (1, 7), "padding": (0, 3)}
_COL7 = {"kernel_size": (7, 1), "padding": (3, 0)}
_ROW3 = {"kernel_size": (1, 3), "padding": (0, 1)}
_COL3 = {"kernel_size": (3, 1), "padding": (1, 0)}


def _cat(*branches):
    return jnp.concatenate(branches, axis=-1)


def _avg3(x):
    # The pool branch of InceptionA/B/C: 3x3, stride 1, pad 1, exclusive (Paddle's default).
    return avg_pool(x, 3, 1, padding=1, exclusive=True)


class InceptionStem(nn.Module):
    """299x299x3 -> 35x35x384 (see the module docstring)."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        x = u(32, 3, strides=2, name="conv1")(x)
        x = u(32, 3, name="conv2")(x)
        x = u(64, 3, padding=1, name="conv3")(x)
        x = _cat(max_pool(x, 3, 2), u(96, 3, strides=2, name="mixed1_conv")(x))
        a = u(64, 1, name="mixed2_branch0_conv1")(x)
        a = u(96, 3, name="mixed2_branch0_conv2")(a)
        b = u(64, 1, name="mixed2_branch1_conv1")(x)
        b = u(64, **_COL7, name="mixed2_branch1_conv2")(b)  # Paddle: inception_stem2_1x7
        b = u(64, **_ROW7, name="mixed2_branch1_conv3")(b)  # Paddle: inception_stem2_7x1
        b = u(96, 3, name="mixed2_branch1_conv4")(b)
        x = _cat(a, b)
        return _cat(u(192, 3, strides=2, name="mixed3_conv")(x), max_pool(x, 3, 2))


class InceptionA(nn.Module):
    """35x35x384 -> 35x35x384."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        b0 = u(96, 1, name="branch0_conv1")(_avg3(x))
        b1 = u(96, 1, name="branch1_conv1")(x)
        b2 = u(64, 1, name="branch2_conv1")(x)
        b2 = u(96, 3, padding=1, name="branch2_conv2")(b2)
        b3 = u(64, 1, name="branch3_conv1")(x)
        b3 = u(96, 3, padding=1, name="branch3_conv2")(b3)
        b3 = u(96, 3, padding=1, name="branch3_conv3")(b3)
        return _cat(b0, b1, b2, b3)


class ReductionA(nn.Module):
    """35x35x384 -> 17x17x1024."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        b1 = u(384, 3, strides=2, name="branch1_conv1")(x)
        b2 = u(192, 1, name="branch2_conv1")(x)
        b2 = u(224, 3, padding=1, name="branch2_conv2")(b2)
        b2 = u(256, 3, strides=2, name="branch2_conv3")(b2)
        return _cat(max_pool(x, 3, 2), b1, b2)


class InceptionB(nn.Module):
    """17x17x1024 -> 17x17x1024."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        row, col = _ROW7, _COL7
        b0 = u(128, 1, name="branch0_conv1")(_avg3(x))
        b1 = u(384, 1, name="branch1_conv1")(x)
        b2 = u(192, 1, name="branch2_conv1")(x)
        b2 = u(224, **row, name="branch2_conv2")(b2)
        b2 = u(256, **col, name="branch2_conv3")(b2)
        b3 = u(192, 1, name="branch3_conv1")(x)
        b3 = u(192, **row, name="branch3_conv2")(b3)
        b3 = u(224, **col, name="branch3_conv3")(b3)
        b3 = u(224, **row, name="branch3_conv4")(b3)
        b3 = u(256, **col, name="branch3_conv5")(b3)
        return _cat(b0, b1, b2, b3)


class ReductionB(nn.Module):
    """17x17x1024 -> 8x8x1536."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        b1 = u(192, 1, name="branch1_conv1")(x)
        b1 = u(192, 3, strides=2, name="branch1_conv2")(b1)
        b2 = u(256, 1, name="branch2_conv1")(x)
        b2 = u(256, **_ROW7, name="branch2_conv2")(b2)
        b2 = u(320, **_COL7, name="branch2_conv3")(b2)
        b2 = u(320, 3, strides=2, name="branch2_conv4")(b2)
        return _cat(max_pool(x, 3, 2), b1, b2)


class InceptionC(nn.Module):
    """8x8x1536 -> 8x8x1536; branches 2 and 3 each end in a parallel 1x3 / 3x1 pair."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        row, col = _ROW3, _COL3
        b0 = u(256, 1, name="branch0_conv1")(_avg3(x))
        b1 = u(256, 1, name="branch1_conv1")(x)
        b2 = u(384, 1, name="branch2_conv1")(x)
        b2a = u(256, **row, name="branch2_conv2a")(b2)
        b2b = u(256, **col, name="branch2_conv2b")(b2)
        b3 = u(384, 1, name="branch3_conv1")(x)
        b3 = u(448, **row, name="branch3_conv2")(b3)
        b3 = u(512, **col, name="branch3_conv3")(b3)
        b3a = u(256, **row, name="branch3_conv4a")(b3)
        b3b = u(256, **col, name="branch3_conv4b")(b3)
        return _cat(b0, b1, b2a, b2b, b3a, b3b)


class InceptionV4(nn.Module):
    """InceptionV4 on NHWC input (smallest input 75x75).

    ``stage_sizes`` = number of InceptionA, B and C blocks (4, 7, 3 in the original);
    ``head_dropout`` drops the pooled features before the head (Fluid's downgrade-in-infer).

    Returns float32 logits ``[N, num_classes]``; with ``return_features=True`` also a dict:
    ``stem`` (35x35x384 at 299), ``stage1`` (after the InceptionA blocks), ``stage2`` (after
    ReductionA and the InceptionB blocks, 17x17x1024), ``stage3`` (after ReductionB and the
    InceptionC blocks, 8x8x1536) and ``pooled`` (``[N, 1536]`` global average, float32).

    Init as Paddle: conv kernels He-normal with fan_in, head Uniform(+-1/sqrt(fan_in)) (the
    original also draws the head bias from it; we start it at zero as the other families), BN
    scale 1 / bias 0.
    """

    stage_sizes: Sequence[int] = (4, 7, 3)
    head_dropout: float = 0.2
    num_classes: int = 1000
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9  # Paddle's: running = 0.9 * running + 0.1 * batch
    bn_epsilon: float = 1e-5
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        if len(self.stage_sizes) != 3:
            raise ValueError(
                f"InceptionV4 stage_sizes {tuple(self.stage_sizes)} must give the number of "
                "InceptionA, InceptionB and InceptionC blocks (3 entries)"
            )
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV4 needs inputs of at least 75x75, got {x.shape[1:3]}")
        conv, norm = conv_and_norm(self.dtype, train, self.bn_momentum, self.bn_epsilon)
        unit = functools.partial(ConvBN, conv=conv, norm=norm, act=self.act)
        num_a, num_b, num_c = self.stage_sizes
        features = {}
        x = InceptionStem(unit, name="stem")(x)
        features["stem"] = x
        for i in range(num_a):
            x = InceptionA(unit, name=f"inception_a{i + 1}")(x)
        features["stage1"] = x
        x = ReductionA(unit, name="reduction_a")(x)
        for i in range(num_b):
            x = InceptionB(unit, name=f"inception_b{i + 1}")(x)
        features["stage2"] = x
        x = ReductionB(unit, name="reduction_b")(x)
        for i in range(num_c):
            x = InceptionC(unit, name=f"inception_c{i + 1}")(x)
        features["stage3"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        pooled = DowngradeDropout(self.head_dropout, name="head_dropout")(pooled, train=train)
        logits = classifier_head(pooled, self.num_classes, self.dtype)
        return (logits, features) if return_features else logits


# Accuracy: the ImageNet top-1/top-5 of the PaddleCV README table (Inception series).
register_model(
    "InceptionV4",
    InceptionV4,
    family="inception_v4",
    input_size=299,
    crop_size=299,
    resize_short_size=320,
    first_conv="stem/conv1/conv",
    classifier="head",
    top1=0.8077,
    top5=0.9526,
)
