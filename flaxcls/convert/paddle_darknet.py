"""Paddle 2019 names of DarkNet53 (``darknet.py``) -> Flax variables of
``flaxcls.models.darknet.DarkNet``.

Every conv-BN pair ``X`` is stored as ``X.conv.weights`` and ``X.bn.scale/.offset/.mean/.var``:
``yolo_input`` (stem), ``yolo_input.downsample``, ``stage.{s}.{b}.0`` / ``.1`` (the 1x1 and 3x3 of
a residual block, s and b from 0), ``stage.{s}.downsample``; the fc is ``fc_weights``/``fc_offset``.
"""

from __future__ import annotations

from flaxcls.convert.paddle import NameMap, Target, conv, dense, register_name_map
from flaxcls.models.darknet import DarkNet

_BN_LEAVES = {
    ".scale": ("params", "scale"),
    ".offset": ("params", "bias"),
    ".mean": ("batch_stats", "mean"),
    ".var": ("batch_stats", "var"),
}


def _conv_bn(prefix: str, path: tuple[str, ...]) -> NameMap:
    """``{prefix}.conv.weights`` + ``{prefix}.bn.*`` -> the ConvBN module at ``path``."""
    mapping = conv(f"{prefix}.conv.weights", (*path, "conv"))
    for suffix, (collection, leaf) in _BN_LEAVES.items():
        mapping[f"{prefix}.bn{suffix}"] = Target(collection, (*path, "bn", leaf))
    return mapping


@register_name_map("darknet")
def _darknet_name_map(model: DarkNet, cfg) -> NameMap:
    mapping: NameMap = {**_conv_bn("yolo_input", ("stem",)),
                        **_conv_bn("yolo_input.downsample", ("stem_downsample",))}
    last = len(model.stage_sizes) - 1
    for s, depth in enumerate(model.stage_sizes):
        for b in range(depth):
            path = f"stage{s + 1}_block{b}"
            mapping.update(_conv_bn(f"stage.{s}.{b}.0", (path, "reduce")))
            mapping.update(_conv_bn(f"stage.{s}.{b}.1", (path, "expand")))
        if s != last:
            mapping.update(_conv_bn(f"stage.{s}.downsample", (f"stage{s + 1}_downsample",)))
    mapping.update(dense("fc_weights", "fc_offset", ("head",)))
    return mapping
