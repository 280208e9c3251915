"""Paddle 2019 names of ShuffleNetV2 and ShuffleNetV2_swish (``shufflenet_v2*.py``, identical
naming) -> Flax variables. Every conv is ``{name}_weights`` with BN ``{name}_bn_{scale,offset,
mean,variance}``: stem ``stage1_conv``; units ``stage_{k}_{i}`` (Paddle stage k = 2..4, unit i
from 1) with ``_conv1`` (1x1), ``_conv2`` (depthwise), ``_conv3`` (1x1) on the main branch and,
in the strided first unit, ``_conv4`` (depthwise) and ``_conv5`` (1x1) on the other; ``conv5``;
fc ``fc6_weights/_offset``.
"""

from __future__ import annotations

from flax import linen as nn

from flaxcls.convert.paddle import NameMap, bn, conv, dense, register_name_map
from flaxcls.registry import ModelCfg

_MAIN = (("conv1", "conv1", "bn1"), ("conv2", "conv2", "bn2"), ("conv3", "conv3", "bn3"))
_DOWN = (("conv4", "down_dw_conv", "down_dw_bn"), ("conv5", "down_pw_conv", "down_pw_bn"))


def _conv_bn(paddle_name: str, conv_path: tuple[str, ...], bn_path: tuple[str, ...]) -> NameMap:
    return {**conv(f"{paddle_name}_weights", conv_path), **bn(f"{paddle_name}_bn", bn_path)}


@register_name_map("shufflenet_v2")
def _shufflenet_v2_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping = _conv_bn("stage1_conv", ("stem_conv",), ("stem_bn",))
    for s, depth in enumerate(model.stage_sizes):
        for b in range(depth):
            unit, path = f"stage_{s + 2}_{b + 1}", f"stage{s + 1}_block{b}"
            layers = _MAIN + _DOWN if b == 0 else _MAIN
            for paddle_suffix, conv_leaf, bn_leaf in layers:
                mapping.update(_conv_bn(f"{unit}_{paddle_suffix}", (path, conv_leaf), (path, bn_leaf)))
    mapping.update(_conv_bn("conv5", ("last_conv",), ("last_bn",)))
    mapping.update(dense("fc6_weights", "fc6_offset", ("head",)))
    return mapping
