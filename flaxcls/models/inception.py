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
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    BNClassifier,
    ConvBN,
    DowngradeDropout,
    ModuleDef,
    avg_pool,
    classifier_head,
    global_avg_pool,
    max_pool,
)
from flaxcls.registry import register_model

# Unit geometries besides a plain k x k conv without padding: factorised convs (1xn pads
# (0, n // 2), nx1 pads (n // 2, 0)), padded 3x3 and strided 3x3.
_ROW7 = {"kernel_size": (1, 7), "padding": (0, 3)}
_COL7 = {"kernel_size": (7, 1), "padding": (3, 0)}
_ROW3 = {"kernel_size": (1, 3), "padding": (0, 1)}
_COL3 = {"kernel_size": (3, 1), "padding": (1, 0)}
_PAD3 = {"kernel_size": 3, "padding": 1}
_DOWN3 = {"kernel_size": 3, "strides": 2}


def _cat(*branches):
    return jnp.concatenate(branches, axis=-1)


def _avg3(x):
    # The pool branch of InceptionA/B/C: 3x3, stride 1, pad 1, exclusive (Paddle's default).
    return avg_pool(x, 3, 1, padding=1, exclusive=True)


def _chain(unit: ModuleDef, x, prefix: str, *convs):
    """The units of one branch in turn, named ``{prefix}_conv1``, ``_conv2``, ...; each conv is
    ``(features, kernel size)`` or ``(features, unit keywords)``."""
    for k, (features, geometry) in enumerate(convs, start=1):
        kw = {"kernel_size": geometry} if isinstance(geometry, int) else dict(geometry)
        x = unit(features, name=f"{prefix}_conv{k}", **kw)(x)
    return x


_POOLS = {"avg": _avg3, "max": lambda x: max_pool(x, 3, 2), None: lambda x: x}

# The blocks that are plain concatenations: per branch (its pool: "avg" 3x3/1 pad 1, "max"
# 3x3/2 or None; its convs, as ``_chain`` takes them), in concat order; branch b's units are
# ``branch{b}_conv{k}``.
INCEPTION_A = (  # 35x35x384 -> 35x35x384
    ("avg", ((96, 1),)),
    (None, ((96, 1),)),
    (None, ((64, 1), (96, _PAD3))),
    (None, ((64, 1), (96, _PAD3), (96, _PAD3))),
)
REDUCTION_A = (  # 35x35x384 -> 17x17x1024
    ("max", ()),
    (None, ((384, _DOWN3),)),
    (None, ((192, 1), (224, _PAD3), (256, _DOWN3))),
)
INCEPTION_B = (  # 17x17x1024 -> 17x17x1024
    ("avg", ((128, 1),)),
    (None, ((384, 1),)),
    (None, ((192, 1), (224, _ROW7), (256, _COL7))),
    (None, ((192, 1), (192, _ROW7), (224, _COL7), (224, _ROW7), (256, _COL7))),
)
REDUCTION_B = (  # 17x17x1024 -> 8x8x1536
    ("max", ()),
    (None, ((192, 1), (192, _DOWN3))),
    (None, ((256, 1), (256, _ROW7), (320, _COL7), (320, _DOWN3))),
)


class Mixed(nn.Module):
    """A block that concatenates its ``branches`` (INCEPTION_A, REDUCTION_A, ... above)."""

    unit: ModuleDef
    branches: tuple

    @nn.compact
    def __call__(self, x):
        return _cat(*(_chain(self.unit, _POOLS[pool](x), f"branch{b}", *convs)
                      for b, (pool, convs) in enumerate(self.branches)))


class InceptionStem(nn.Module):
    """299x299x3 -> 35x35x384 (see the module docstring)."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u = self.unit
        x = u(32, 3, strides=2, name="conv1")(x)
        x = u(32, 3, name="conv2")(x)
        x = u(64, 3, padding=1, name="conv3")(x)
        x = _cat(max_pool(x, 3, 2), u(96, **_DOWN3, name="mixed1_conv")(x))
        a = _chain(u, x, "mixed2_branch0", (64, 1), (96, 3))
        # Paddle names the 7x1 conv inception_stem2_1x7 and the 1x7 one inception_stem2_7x1.
        b = _chain(u, x, "mixed2_branch1", (64, 1), (64, _COL7), (64, _ROW7), (96, 3))
        x = _cat(a, b)
        return _cat(u(192, **_DOWN3, name="mixed3_conv")(x), max_pool(x, 3, 2))


class InceptionC(nn.Module):
    """8x8x1536 -> 8x8x1536; branches 2 and 3 each end in a parallel 1x3 / 3x1 pair."""

    unit: ModuleDef

    @nn.compact
    def __call__(self, x):
        u, row, col = self.unit, _ROW3, _COL3
        b0 = _chain(u, _avg3(x), "branch0", (256, 1))
        b1 = _chain(u, x, "branch1", (256, 1))
        b2 = _chain(u, x, "branch2", (384, 1))
        b2a = u(256, **row, name="branch2_conv2a")(b2)
        b2b = u(256, **col, name="branch2_conv2b")(b2)
        b3 = _chain(u, x, "branch3", (384, 1), (448, row), (512, col))
        b3a = u(256, **row, name="branch3_conv4a")(b3)
        b3b = u(256, **col, name="branch3_conv4b")(b3)
        return _cat(b0, b1, b2a, b2b, b3a, b3b)


class InceptionV4(BNClassifier):
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

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        if len(self.stage_sizes) != 3:
            raise ValueError(
                f"InceptionV4 stage_sizes {tuple(self.stage_sizes)} must give the number of "
                "InceptionA, InceptionB and InceptionC blocks (3 entries)"
            )
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV4 needs inputs of at least 75x75, got {x.shape[1:3]}")
        conv, norm = self.conv_and_norm(train)
        unit = functools.partial(ConvBN, conv=conv, norm=norm, act=self.act)
        num_a, num_b, num_c = self.stage_sizes
        features = {}
        x = InceptionStem(unit, name="stem")(x)
        features["stem"] = x
        for i in range(num_a):
            x = Mixed(unit, INCEPTION_A, name=f"inception_a{i + 1}")(x)
        features["stage1"] = x
        x = Mixed(unit, REDUCTION_A, name="reduction_a")(x)
        for i in range(num_b):
            x = Mixed(unit, INCEPTION_B, name=f"inception_b{i + 1}")(x)
        features["stage2"] = x
        x = Mixed(unit, REDUCTION_B, name="reduction_b")(x)
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
