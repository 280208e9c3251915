"""Paddle 2019 names of the DenseNet family (``densenet.py``) -> Flax variables of
``flaxcls.models.densenet.DenseNet``.

Paddle numbers the dense blocks conv2..conv5 and their layers from 1: ``conv{b}_{l}_x1`` is the
1x1 conv (its pre-activation BN ``conv{b}_{l}_x1_bn``), ``conv{b}_{l}_x2`` the 3x3; the transition
after block b is ``conv{b}_blk`` and the final BN before pooling ``conv5_blk_bn`` (no conv).
"""

from __future__ import annotations

from flaxcls.convert.paddle import NameMap, bn, conv, dense, register_name_map
from flaxcls.models.densenet import DenseNet


@register_name_map("densenet")
def _densenet_name_map(model: DenseNet, cfg) -> NameMap:
    mapping: NameMap = {**conv("conv1_weights", ("stem_conv",)), **bn("conv1_bn", ("stem_bn",))}
    last = len(model.block_sizes) - 1
    for b, depth in enumerate(model.block_sizes):
        stage = b + 2  # Paddle's conv2..conv5
        for layer in range(1, depth + 1):
            path = f"block{b + 1}_layer{layer}"
            for x, (bn_leaf, conv_leaf) in (("x1", ("bn1", "conv1")), ("x2", ("bn2", "conv2"))):
                mapping.update(bn(f"conv{stage}_{layer}_{x}_bn", (path, bn_leaf)))
                mapping.update(conv(f"conv{stage}_{layer}_{x}_weights", (path, conv_leaf)))
        if b != last:
            mapping.update(bn(f"conv{stage}_blk_bn", (f"transition{b + 1}", "bn")))
            mapping.update(conv(f"conv{stage}_blk_weights", (f"transition{b + 1}", "conv")))
    mapping.update(bn(f"conv{last + 2}_blk_bn", ("final_bn",)))
    mapping.update(dense("fc_weights", "fc_offset", ("head",)))
    return mapping
