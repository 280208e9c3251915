"""ResNet, ResNet_vc and ResNet_vd as in the 2019 PaddleCV zoo (``resnet*.py``), plus a CPU-sized
ResNet_tiny. One generic ``ResNet`` module; each variant is one registered line at the bottom.

Structure follows Paddle exactly: stride on the 3x3 conv ("v1.5"), a 1x1 projection shortcut
whenever channels or stride change *and* on the network's very first block (so ResNet18/34 have
``res2a_branch1``), the vd shortcut = 2x2/2 ceil-mode exclusive avg pool -> 1x1 conv -> BN.

Parameter names (used by ``flaxcls.convert``): ``stem_conv{i}``/``stem_bn{i}``,
``stage{s}_block{b}/{conv1,bn1,conv2,bn2[,conv3,bn3][,shortcut_conv,shortcut_bn]}``, ``head``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    ModuleDef,
    avg_pool,
    conv_kernel_init,
    dense_kernel_init,
    global_avg_pool,
    max_pool,
    symmetric_padding,
)
from flaxcls.registry import register_model

STEMS = ("plain", "deep", "small")


def _shortcut(x, features: int, strides: int, avg_down: bool, conv: ModuleDef, norm: ModuleDef):
    """Projection shortcut, created inside the calling block (names shortcut_conv/shortcut_bn)."""
    if avg_down and strides != 1:
        # vd: let the pool do the downsampling so the 1x1 conv sees every input cell.
        x = avg_pool(x, strides, strides, ceil_mode=True, exclusive=True)
        strides = 1
    x = conv(features, (1, 1), strides=strides, padding=((0, 0), (0, 0)), name="shortcut_conv")(x)
    return norm(name="shortcut_bn")(x)


class BasicBlock(nn.Module):
    """3x3 (stride here) -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU (ResNet18/34)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    projection: bool = False
    avg_down: bool = False
    act: Callable = nn.relu

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x):
        pad3 = symmetric_padding(3)
        y = self.conv(self.features, (3, 3), strides=self.strides, padding=pad3, name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), padding=pad3, name="conv2")(y)
        y = self.norm(name="bn2")(y)
        shortcut = x
        if self.projection:
            shortcut = _shortcut(
                x, self.features, self.strides, self.avg_down, self.conv, self.norm
            )
        return self.act(shortcut + y)


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (stride here) -> 1x1 (4x width), BN after each, + shortcut, ReLU (ResNet50+)."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    projection: bool = False
    avg_down: bool = False
    act: Callable = nn.relu

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x):
        pad0, pad3 = symmetric_padding(1), symmetric_padding(3)
        out_features = self.features * self.expansion
        y = self.conv(self.features, (1, 1), padding=pad0, name="conv1")(x)
        y = self.act(self.norm(name="bn1")(y))
        y = self.conv(self.features, (3, 3), strides=self.strides, padding=pad3, name="conv2")(y)
        y = self.act(self.norm(name="bn2")(y))
        y = self.conv(out_features, (1, 1), padding=pad0, name="conv3")(y)
        y = self.norm(name="bn3")(y)
        shortcut = x
        if self.projection:
            shortcut = _shortcut(x, out_features, self.strides, self.avg_down, self.conv, self.norm)
        return self.act(shortcut + y)


class ResNet(nn.Module):
    """Generic ResNet on NHWC input.

    stem: 'plain' = 7x7/2 conv (stem_width) + 3x3/2 max pool; 'deep' (vc/vd) = three 3x3 convs
    (stem_width/2, stem_width/2, stem_width; the first stride 2) + max pool; 'small' = one 3x3/1
    conv, no pool (32x32 inputs). ``avg_down`` selects the vd shortcut for strided blocks.

    Returns float32 logits ``[N, num_classes]``; with ``return_features=True`` also a dict:
    ``stem`` (the input of stage 1, i.e. after the max pool), ``stage1``..``stage4`` (each stage's
    output) and ``pooled`` (``[N, C]`` global average, float32).

    Init as Paddle: conv kernels He-normal with fan_in (std sqrt(2 / (kh*kw*cin))), head
    Uniform(+-1/sqrt(fan_in)) with zero bias, BN scale 1 / bias 0 everywhere (no zero-init of
    the last BN of a block: the original doesn't do it).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BottleneckBlock
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "plain"
    stem_width: int = 64
    avg_down: bool = False
    num_classes: int = 1000
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9  # Paddle's: running = 0.9 * running + 0.1 * batch
    bn_epsilon: float = 1e-5
    act: Callable = nn.relu

    def _stem(self, x, conv, norm):
        if self.stem == "plain":
            x = conv(
                self.stem_width, (7, 7), strides=2, padding=symmetric_padding(7), name="stem_conv1"
            )(x)
            return max_pool(self.act(norm(name="stem_bn1")(x)), 3, 2, padding=1)
        if self.stem == "deep":
            half = self.stem_width // 2
            for i, (features, strides) in enumerate(((half, 2), (half, 1), (self.stem_width, 1))):
                x = conv(
                    features,
                    (3, 3),
                    strides=strides,
                    padding=symmetric_padding(3),
                    name=f"stem_conv{i + 1}",
                )(x)
                x = self.act(norm(name=f"stem_bn{i + 1}")(x))
            return max_pool(x, 3, 2, padding=1)
        if self.stem == "small":
            x = conv(self.stem_width, (3, 3), padding=symmetric_padding(3), name="stem_conv1")(x)
            return self.act(norm(name="stem_bn1")(x))
        raise ValueError(f"ResNet stem={self.stem!r} is not one of {STEMS}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        if len(self.widths) != len(self.stage_sizes):
            raise ValueError(
                f"ResNet widths {tuple(self.widths)} and stage_sizes {tuple(self.stage_sizes)} "
                "must have the same length"
            )
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_kernel_init,
        )
        norm = functools.partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        features = {}
        x = self._stem(x, conv, norm)
        features["stem"] = x
        for s, (depth, width) in enumerate(zip(self.stage_sizes, self.widths)):
            for b in range(depth):
                strides = 2 if b == 0 and s > 0 else 1
                out_features = width * self.block_cls.expansion
                # Paddle also projects on the network's first block, even when shapes agree.
                projection = x.shape[-1] != out_features or strides != 1 or s == b == 0
                x = self.block_cls(
                    width,
                    conv=conv,
                    norm=norm,
                    strides=strides,
                    projection=projection,
                    avg_down=self.avg_down,
                    act=self.act,
                    name=f"stage{s + 1}_block{b}",
                )(x)
            features[f"stage{s + 1}"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        logits = nn.Dense(
            self.num_classes,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=dense_kernel_init,
            name="head",
        )(pooled)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits


def _register(name: str, stage_sizes, block_cls, top=(None, None), cfg=None, **arch):
    arch_fn = functools.partial(ResNet, stage_sizes=tuple(stage_sizes), block_cls=block_cls, **arch)
    register_model(
        name,
        arch_fn,
        family="resnet",
        first_conv="stem_conv1",
        classifier="head",
        top1=top[0],
        top5=top[1],
        **(cfg or {}),
    )


_B, _BN = BasicBlock, BottleneckBlock
_DEEP = {"stem": "deep"}
_VD = {"stem": "deep", "avg_down": True}

# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
_register("ResNet18", (2, 2, 2, 2), _B, top=(0.7098, 0.8992))
_register("ResNet34", (3, 4, 6, 3), _B, top=(0.7457, 0.9214))
_register("ResNet50", (3, 4, 6, 3), _BN, top=(0.7650, 0.9300))
_register("ResNet101", (3, 4, 23, 3), _BN, top=(0.7756, 0.9364))
_register("ResNet152", (3, 8, 36, 3), _BN, top=(0.7826, 0.9396))
_register("ResNet50_vc", (3, 4, 6, 3), _BN, top=(0.7835, 0.9403), **_DEEP)
_register("ResNet101_vc", (3, 4, 23, 3), _BN, **_DEEP)  # defined in resnet_vc.py, never released
_register("ResNet152_vc", (3, 8, 36, 3), _BN, **_DEEP)  # defined in resnet_vc.py, never released
_register("ResNet18_vd", (2, 2, 2, 2), _B, top=(0.7226, 0.9080), **_VD)
_register("ResNet34_vd", (3, 4, 6, 3), _B, top=(0.7598, 0.9298), **_VD)
_register("ResNet50_vd", (3, 4, 6, 3), _BN, top=(0.7912, 0.9444), **_VD)
_register("ResNet101_vd", (3, 4, 23, 3), _BN, top=(0.8017, 0.9497), **_VD)
_register("ResNet152_vd", (3, 8, 36, 3), _BN, top=(0.8059, 0.9530), **_VD)
_register("ResNet200_vd", (3, 12, 48, 3), _BN, top=(0.8093, 0.9533), **_VD)
# CPU-sized demo model for 32x32 inputs (not in the Paddle zoo): one 3x3/1 stem conv, no max pool.
_TINY = {"widths": (16, 32, 64, 128), "stem": "small", "stem_width": 16}
_TINY_CFG = {"input_size": 32, "crop_size": 32, "resize_short_size": 32}
_register("ResNet_tiny", (1, 1, 1, 1), _B, cfg=_TINY_CFG, **_TINY)
