"""Paddle 2019 ResNet / ResNet_vc / ResNet_vd parameters (by their Paddle names) -> Flax variables.

Works on a dict of numpy arrays, however it was read (per-variable files, a combined file or a
``.pdparams`` pickle). Conv OIHW -> HWIO, fc ``[in, out]`` as-is, BN scale/offset -> params,
mean/variance -> batch_stats. Strict: every Flax leaf is filled and every Paddle tensor is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from flaxcls.models.resnet import BasicBlock, ResNet
from flaxcls.registry import create_model, get_model_cfg

FC_WEIGHT, FC_BIAS = "fc_0.w_0", "fc_0.b_0"
# Paddle BN tensor suffix -> (Flax collection, leaf name)
_BN_LEAVES = {
    "_scale": ("params", "scale"),
    "_offset": ("params", "bias"),
    "_mean": ("batch_stats", "mean"),
    "_variance": ("batch_stats", "var"),
}


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
            for paddle_branch, conv, bn in branches:
                pairs.append((f"{blk}_{paddle_branch}", (path, conv), (path, bn)))
            # Same rule as ResNet.__call__: projection on shape change and on the first block.
            if in_features != out_features or (b == 0 and s > 0) or s == b == 0:
                pairs.append((f"{blk}_branch1", (path, "shortcut_conv"), (path, "shortcut_bn")))
            in_features = out_features
    return pairs


def paddle_resnet_name_map(model_name: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Paddle parameter name -> (Flax collection, path) for a registered ResNet-family model."""
    cfg = get_model_cfg(model_name)
    if cfg.family != "resnet":
        raise ValueError(f"{cfg.name} is a {cfg.family!r} model, not a ResNet-family one")
    model = create_model(cfg.name)
    mapping = {}
    for conv_name, conv_path, bn_path in _conv_bn_pairs(model):
        mapping[f"{conv_name}_weights"] = ("params", conv_path + ("kernel",))
        for suffix, (collection, leaf) in _BN_LEAVES.items():
            mapping[_bn_name(conv_name) + suffix] = (collection, bn_path + (leaf,))
    mapping[FC_WEIGHT] = ("params", ("head", "kernel"))
    mapping[FC_BIAS] = ("params", ("head", "bias"))
    return mapping


def paddle_to_flax_resnet(arrays: Mapping[str, np.ndarray], model_name: str) -> dict:
    """Convert Paddle-named ResNet arrays to ``{"params": ..., "batch_stats": ...}`` (numpy).

    The number of classes is read from ``fc_0.b_0``. Raises ValueError listing every missing,
    unexpected or wrongly shaped tensor.
    """
    cfg = get_model_cfg(model_name)
    num_classes = int(np.shape(arrays[FC_BIAS])[0]) if FC_BIAS in arrays else cfg.num_classes
    mapping = paddle_resnet_name_map(cfg.name)
    model = create_model(cfg.name, num_classes=num_classes)
    size = cfg.input_size
    shapes = jax.eval_shape(
        model.init, jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32)
    )
    expected = {
        (collection,) + path: leaf.shape
        for collection in ("params", "batch_stats")
        for path, leaf in traverse_util.flatten_dict(dict(shapes[collection])).items()
    }

    problems, flat = [], {}
    missing = sorted(set(mapping) - set(arrays))
    unexpected = sorted(set(arrays) - set(mapping))
    if missing:
        problems.append(f"missing Paddle tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected Paddle tensors ({len(unexpected)}): {', '.join(unexpected)}")
    for paddle_name, (collection, path) in mapping.items():
        if paddle_name not in arrays:
            continue
        value = np.asarray(arrays[paddle_name], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        key = (collection,) + path
        if key not in expected:
            problems.append(f"{paddle_name} maps to {'/'.join(key)}, which the model lacks")
        elif value.shape != expected[key]:
            problems.append(
                f"{paddle_name}: shape {tuple(value.shape)} after layout change, "
                f"{'/'.join(key)} expects {tuple(expected[key])}"
            )
        else:
            flat[key] = value
    unfilled = sorted("/".join(k) for k in set(expected) - set(flat))
    if unfilled and not problems:
        problems.append(f"model leaves left unfilled ({len(unfilled)}): {', '.join(unfilled)}")
    if problems:
        raise ValueError(
            f"cannot convert Paddle weights to {cfg.name}:\n  " + "\n  ".join(problems)
        )
    return traverse_util.unflatten_dict(flat)
