"""Paddle 2019 ResNet / ResNet_vc / ResNet_vd parameters (by their Paddle names) -> Flax variables.

Works on a dict of numpy arrays, however it was read (per-variable files, a combined file or a
``.pdparams`` pickle). Conv OIHW -> HWIO, fc ``[in, out]`` as-is, BN scale/offset -> params,
mean/variance -> batch_stats. Strict: every Flax leaf is filled and every Paddle tensor is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from flaxcls.convert.paddle import (
    NameMap,
    bn,
    conv,
    dense,
    paddle_name_map,
    paddle_to_flax,
    register_name_map,
)
from flaxcls.models.resnet import BasicBlock, ResNet
from flaxcls.registry import get_model_cfg

FC_WEIGHT, FC_BIAS = "fc_0.w_0", "fc_0.b_0"
def _bn_name(conv_name: str) -> str:
    # Paddle's conv_bn_layer: "conv1" -> "bn_conv1", "res2a_branch2a" -> "bn2a_branch2a",
    # "conv1_1" -> "bn1_1".
    return "bn_" + conv_name if conv_name == "conv1" else "bn" + conv_name[3:]


def _block_name(stage: int, block: int, num_layers: int) -> str:
    """Paddle's block name for 0-based (stage, block): res2a, res3b, ... and res4b{i} for 101+."""
    if stage == 2 and num_layers in (101, 152, 200):
        return "res4a" if block == 0 else f"res4b{block}"
    return f"res{stage + 2}{chr(97 + block)}"


def _conv_bn_pairs(model: ResNet) -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(Paddle conv name, Flax conv path, Flax BN path) for every conv of ``model``."""
    pairs = []
    if model.stem == "deep":
        pairs += [(f"conv1_{i}", (f"stem_conv{i}",), (f"stem_bn{i}",)) for i in (1, 2, 3)]
    else:
        pairs.append(("conv1", ("stem_conv1",), ("stem_bn1",)))
    basic = model.block_cls is BasicBlock
    num_layers = (2 if basic else 3) * sum(model.stage_sizes) + 2
    branches = [("branch2a", "conv1", "bn1"), ("branch2b", "conv2", "bn2")]
    if not basic:
        branches.append(("branch2c", "conv3", "bn3"))
    in_features = model.stem_width
    for s, (depth, width) in enumerate(zip(model.stage_sizes, model.widths)):
        out_features = width * model.block_cls.expansion
        for b in range(depth):
            blk, path = _block_name(s, b, num_layers), f"stage{s + 1}_block{b}"
            for paddle_branch, conv_leaf, bn_leaf in branches:
                pairs.append((f"{blk}_{paddle_branch}", (path, conv_leaf), (path, bn_leaf)))
            # Same rule as ResNet.__call__: projection on shape change and on the first block.
            if in_features != out_features or (b == 0 and s > 0) or s == b == 0:
                pairs.append((f"{blk}_branch1", (path, "shortcut_conv"), (path, "shortcut_bn")))
            in_features = out_features
    return pairs


@register_name_map("resnet")
def _resnet_name_map(model: ResNet, cfg) -> NameMap:
    mapping: NameMap = {}
    for conv_name, conv_path, bn_path in _conv_bn_pairs(model):
        mapping.update(conv(f"{conv_name}_weights", conv_path))
        mapping.update(bn(_bn_name(conv_name), bn_path))
    mapping.update(dense(FC_WEIGHT, FC_BIAS, ("head",)))
    return mapping


def paddle_resnet_name_map(model_name: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Paddle parameter name -> (Flax collection, path) for a registered ResNet-family model."""
    cfg = get_model_cfg(model_name)
    if cfg.family != "resnet":
        raise ValueError(f"{cfg.name} is a {cfg.family!r} model, not a ResNet-family one")
    return {k: (t.collection, t.path) for k, t in paddle_name_map(cfg.name).items()}


def paddle_to_flax_resnet(arrays: Mapping[str, np.ndarray], model_name: str) -> dict:
    """Convert Paddle-named ResNet arrays to ``{"params": ..., "batch_stats": ...}`` (numpy)."""
    return paddle_to_flax(arrays, model_name)
