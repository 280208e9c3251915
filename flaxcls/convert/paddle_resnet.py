"""Paddle names of the ResNet family -> Flax variables: the 2019 names of ResNet / ResNet_vc /
ResNet_vd (``resnet*.py``), ResNeXt / ResNeXt_vd (``resnext*.py``), SE_ResNeXt / SE_ResNeXt_vd /
SENet154_vd (``se_resnext*.py``) and ResNeXt101_wsl (``resnext101_wsl.py``, PyTorch-style names);
and the PaddleClas 2.x state-dict keys of ResNet and ResNet_vd 18-200
(``ppcls/arch/backbone/legendary_models/resnet.py``, also its SSLD releases): ``stem.{i}``,
``blocks.{k}.conv{0,1[,2]}`` and ``.short`` (k counts blocks over all stages), each a
``ConvBNLayer`` (``.conv.weight``, ``.bn.weight/.bias/._mean/._variance``), ``fc.weight/.bias``.
PaddleClas's network is the 2019 one: the same stems, shortcut placement (a projection on the
first block of every stage, stage 1 included, also for 18/34) and vd avg-pool shortcut.

All four share one Flax structure (``flaxcls.models.resnet.ResNet``); only the naming differs,
so each family's map walks the same list of blocks. Works on a dict of numpy arrays, however it
was read (per-variable files, a combined file or a ``.pdparams`` pickle). Conv OIHW -> HWIO, fc
``[in, out]`` as-is, BN scale/offset -> params, mean/variance -> batch_stats. Strict: every Flax
leaf is filled and every Paddle tensor is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from flaxcls.convert.paddle import (
    NameMap,
    Target,
    bn,
    conv,
    dense,
    paddle_name_map,
    paddle_to_flax,
    register_name_map,
    register_state_dict_map,
    state_dict_conv_bn,
)
from flaxcls.models.resnet import BasicBlock, BottleneckBlock, ResNet
from flaxcls.registry import get_model_cfg

FC_WEIGHT, FC_BIAS = "fc_0.w_0", "fc_0.b_0"
RESNET_FAMILIES = ("resnet", "resnext", "se_resnext", "resnext_wsl")
# Flax (conv, BN) leaves of a bottleneck, in order; BasicBlock uses the first two.
_BLOCK_LAYERS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _bn_name(conv_name: str) -> str:
    # resnet*.py / resnext*.py conv_bn_layer: "conv1" -> "bn_conv1", otherwise "bn" + name[3:]:
    # "res2a_branch2a" -> "bn2a_branch2a", "res_conv1" -> "bn_conv1", "conv1_1" -> "bnv1_1".
    return "bn_" + conv_name if conv_name == "conv1" else "bn" + conv_name[3:]


def _num_layers(model: ResNet) -> int:
    return (2 if model.block_cls is BasicBlock else 3) * sum(model.stage_sizes) + 2


def _block_name(stage: int, block: int, num_layers: int) -> str:
    """Paddle's block name for 0-based (stage, block): res2a, res3b, ... and res4b{i} for 101+."""
    if stage == 2 and num_layers in (101, 152, 200):
        return "res4a" if block == 0 else f"res4b{block}"
    return f"res{stage + 2}{chr(97 + block)}"


def _blocks(model: ResNet) -> Iterator[tuple[int, int, str, bool]]:
    """(stage, block, Flax path, has a projection shortcut) for every block, 0-based."""
    in_features = model.stem_width
    for s, (depth, out_features) in enumerate(zip(model.stage_sizes, model.block_out_widths())):
        for b in range(depth):
            # Same rule as ResNet.__call__: projection on shape change and on the first block.
            projection = in_features != out_features or (b == 0 and s > 0) or s == b == 0
            yield s, b, f"stage{s + 1}_block{b}", projection
            in_features = out_features


def _stem_paths(model: ResNet) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    count = 3 if model.stem == "deep" else 1
    return [((f"stem_conv{i}",), (f"stem_bn{i}",)) for i in range(1, count + 1)]


def _block_layers(model: ResNet) -> tuple[tuple[str, str], ...]:
    return _BLOCK_LAYERS[:2] if model.block_cls is BasicBlock else _BLOCK_LAYERS


def _res_style_map(model: ResNet, plain_stem: str, fc: tuple[str, str]) -> NameMap:
    """resnet*.py and resnext*.py: res{s}{letter}_branch2{a,b,c} / _branch1, BN bn{...}."""
    mapping: NameMap = {}
    names = [plain_stem] if model.stem != "deep" else ["conv1_1", "conv1_2", "conv1_3"]
    pairs = [(name, c, n) for name, (c, n) in zip(names, _stem_paths(model))]
    num_layers = _num_layers(model)
    branches = ("branch2a", "branch2b", "branch2c")
    for s, b, path, projection in _blocks(model):
        blk = _block_name(s, b, num_layers)
        for branch, (conv_leaf, bn_leaf) in zip(branches, _block_layers(model)):
            pairs.append((f"{blk}_{branch}", (path, conv_leaf), (path, bn_leaf)))
        if projection:
            pairs.append((f"{blk}_branch1", (path, "shortcut_conv"), (path, "shortcut_bn")))
    for conv_name, conv_path, bn_path in pairs:
        mapping.update(conv(f"{conv_name}_weights", conv_path))
        mapping.update(bn(_bn_name(conv_name), bn_path))
    mapping.update(dense(*fc, ("head",)))
    return mapping


@register_name_map("resnet")
def _resnet_name_map(model: ResNet, cfg) -> NameMap:
    return _res_style_map(model, "conv1", (FC_WEIGHT, FC_BIAS))


@register_name_map("resnext")
def _resnext_name_map(model: ResNet, cfg) -> NameMap:
    # resnext.py names its 7x7 stem conv "res_conv1" (BN still "bn_conv1") and its fc explicitly.
    return _res_style_map(model, "res_conv1", ("fc_weights", "fc_offset"))


@register_name_map("se_resnext")
def _se_resnext_name_map(model: ResNet, cfg) -> NameMap:
    """se_resnext*.py: units conv{n}_{i}_x1/x2/x3/prj (BN "<conv>_bn"), SE fc{n}_{i}_sqz/exc."""
    mapping: NameMap = {}
    if model.stem != "deep":
        stem_names = ["conv1"]
    elif model.avg_down:
        stem_names = ["conv1_1", "conv1_2", "conv1_3"]  # se_resnext_vd.py
    else:
        stem_names = ["conv1", "conv2", "conv3"]  # se_resnext.py's 152-layer stem
    pairs = [(name, c, n) for name, (c, n) in zip(stem_names, _stem_paths(model))]
    # Unit ids count stages from 2, but from 4 in the 152-layer builds (SENet154 numbering).
    first = 2 if _num_layers(model) in (50, 101) else 4
    for s, b, path, projection in _blocks(model):
        unit = f"{s + first}_{b + 1}"
        for suffix, (conv_leaf, bn_leaf) in zip(("x1", "x2", "x3"), _block_layers(model)):
            pairs.append((f"conv{unit}_{suffix}", (path, conv_leaf), (path, bn_leaf)))
        if projection:
            pairs.append((f"conv{unit}_prj", (path, "shortcut_conv"), (path, "shortcut_bn")))
        if model.se_reduction:
            mapping.update(
                dense(f"fc{unit}_sqz_weights", f"fc{unit}_sqz_offset", (path, "se", "squeeze"))
            )
            mapping.update(
                dense(f"fc{unit}_exc_weights", f"fc{unit}_exc_offset", (path, "se", "excite"))
            )
    for conv_name, conv_path, bn_path in pairs:
        mapping.update(conv(f"{conv_name}_weights", conv_path))
        mapping.update(bn(f"{conv_name}_bn", bn_path))
    mapping.update(dense("fc6_weights", "fc6_offset", ("head",)))
    return mapping


def _is_paddleclas_resnet(model: ResNet) -> bool:
    """What ``legendary_models/resnet.py`` builds: version "vb" (7x7 stem) or "vd" (three-conv
    stem and avg-pool shortcut), 64-512 widths, no groups, SE or head dropout."""
    version = (model.stem, model.avg_down) in (("plain", False), ("deep", True))
    return (version and model.block_cls in (BasicBlock, BottleneckBlock) and model.stem_width == 64
            and tuple(model.widths) == (64, 128, 256, 512) and model.out_widths is None
            and model.cardinality == 1 and not model.se_reduction and not model.head_dropout
            and model.first_block_projection)


@register_state_dict_map("resnet")
def _resnet_state_dict_map(model: ResNet, cfg) -> NameMap | None:
    if not _is_paddleclas_resnet(model):
        return None  # ResNet*_vc (model_zoo/resnet_vc.py keeps the 2019 names), ResNet_tiny
    mapping: NameMap = {}
    for i, (conv_path, bn_path) in enumerate(_stem_paths(model)):
        mapping.update(state_dict_conv_bn(f"stem.{i}", conv_path, bn_path))
    for k, (_, _, path, projection) in enumerate(_blocks(model)):
        for j, (conv_leaf, bn_leaf) in enumerate(_block_layers(model)):
            mapping.update(state_dict_conv_bn(f"blocks.{k}.conv{j}", (path, conv_leaf),
                                              (path, bn_leaf)))
        if projection:
            mapping.update(state_dict_conv_bn(f"blocks.{k}.short", (path, "shortcut_conv"),
                                              (path, "shortcut_bn")))
    mapping.update(dense("fc.weight", "fc.bias", ("head",)))
    return mapping


def _torch_bn(prefix: str, path: tuple[str, ...]) -> NameMap:
    """PyTorch BN ``{prefix}.weight/.bias/.running_mean/.running_var`` -> Flax BatchNorm."""
    leaves = {
        ".weight": ("params", "scale"),
        ".bias": ("params", "bias"),
        ".running_mean": ("batch_stats", "mean"),
        ".running_var": ("batch_stats", "var"),
    }
    return {
        prefix + s: Target(collection, (*path, leaf)) for s, (collection, leaf) in leaves.items()
    }


@register_name_map("resnext_wsl")
def _resnext_wsl_name_map(model: ResNet, cfg) -> NameMap:
    """resnext101_wsl.py keeps torchvision's names: layer{L}.{i}.conv{k} / bn{k} / downsample."""
    mapping: NameMap = {**conv("conv1.weight", ("stem_conv1",)), **_torch_bn("bn1", ("stem_bn1",))}
    for s, b, path, projection in _blocks(model):
        unit = f"layer{s + 1}.{b}"
        for k, (conv_leaf, bn_leaf) in enumerate(_block_layers(model), start=1):
            mapping.update(conv(f"{unit}.conv{k}.weight", (path, conv_leaf)))
            mapping.update(_torch_bn(f"{unit}.bn{k}", (path, bn_leaf)))
        if projection:
            mapping.update(conv(f"{unit}.downsample.0.weight", (path, "shortcut_conv")))
            mapping.update(_torch_bn(f"{unit}.downsample.1", (path, "shortcut_bn")))
    mapping.update(dense("fc.weight", "fc.bias", ("head",)))  # Paddle layout [in, out]
    return mapping


def paddle_resnet_name_map(model_name: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Paddle parameter name -> (Flax collection, path) for a registered ResNet-family model."""
    cfg = get_model_cfg(model_name)
    if cfg.family not in RESNET_FAMILIES:
        raise ValueError(f"{cfg.name} is a {cfg.family!r} model, not a ResNet-family one")
    return {k: (t.collection, t.path) for k, t in paddle_name_map(cfg.name).items()}


def paddle_to_flax_resnet(arrays: Mapping[str, np.ndarray], model_name: str) -> dict:
    """Convert Paddle-named ResNet arrays to ``{"params": ..., "batch_stats": ...}`` (numpy)."""
    return paddle_to_flax(arrays, model_name)
