"""Paddle parameters -> Flax variables, for every registered family.

Each family registers a *name map*: Paddle parameter name -> ``Target`` (Flax collection, path,
and any layout change beyond the standard ones), for the 2019 names (``res2a_branch2a_weights``;
also the ``ParamAttr`` names of PaddleClas's ``model_zoo`` files). The families PaddleClas 2.x
rebuilt in ``legendary_models/`` (ResNet and ResNet_vd, MobileNetV1, VGG) leave their parameter
names automatic (``conv2d_0.w_0``, in layer-creation order: not to be trusted), so they also
register a *state-dict map* keyed by the structured keys of their ``.pdparams``
(``stem.0.conv.weight``). ``paddle_to_flax`` takes the tensors by parameter name and, from a
``.pdparams``, the state-dict key of each (``readers.PaddleWeights``), and uses the naming that
covers more of them: the keys where they fit the state-dict map, else the names, as before.

The chosen map is applied strictly: every Flax leaf is filled, every Paddle tensor is used
once, known training leftovers (optimizer velocity, learning-rate counters) are ignored with a
log line, and anything else missing, extra or mis-shaped stops the conversion with one message
listing it all: the report checkpoint restore and pretrained loading give too
(``flaxcls.mismatch``).

Standard layout changes: 4-D conv weights OIHW -> HWIO (depthwise [C,1,kh,kw] becomes
Flax's [kh,kw,1,C]); fc weights ``[in, out]`` are already Dense kernels; an fc fed by a
flattened 4-D map is declared with ``flatten_chw`` and its rows are reordered from Paddle's
C,H,W flatten order to our H,W,C order.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from flaxcls import mismatch
from flaxcls.registry import ModelCfg, create_model, get_model_cfg

log = logging.getLogger("flaxcls")


@dataclasses.dataclass(frozen=True)
class Target:
    collection: str  # "params" or "batch_stats"
    path: tuple[str, ...]  # inside the collection, e.g. ("stage1_block0", "conv1", "kernel")
    flatten_chw: tuple[int, int, int] | None = None  # fc fed by a flattened NCHW (C, H, W) map


NameMap = dict[str, Target]
NameMapFn = Callable[[nn.Module, ModelCfg], NameMap]

_NAME_MAPS: dict[str, NameMapFn] = {}
# PaddleClas 2.x state-dict keys; a function returns None for a model of the family that
# PaddleClas's legendary_models do not build (ResNet50_vc, ResNet_tiny).
_STATE_DICT_MAPS: dict[str, Callable[[nn.Module, ModelCfg], NameMap | None]] = {}
STATE_DICT_NAMING = "PaddleClas state-dict keys"

# Tensors a training checkpoint may carry that are not model weights.
TRAINING_LEFTOVERS = re.compile(
    r"(_velocity_\d+$|_moment\d?_\d+$|_beta\d_pow_acc_\d+$|^learning_rate_\d+$|@LR_DECAY_COUNTER@"
    r"|^@|_fp32_master_\d+$)"
)
BN_SUFFIXES = {
    "_scale": ("params", "scale"),
    "_offset": ("params", "bias"),
    "_mean": ("batch_stats", "mean"),
    "_variance": ("batch_stats", "var"),
}


def register_name_map(family: str) -> Callable[[NameMapFn], NameMapFn]:
    """Decorator: ``fn(model, cfg) -> NameMap`` for the models whose ModelCfg.family is ``family``."""

    def wrap(fn: NameMapFn) -> NameMapFn:
        _NAME_MAPS[family] = fn
        return fn

    return wrap


def register_state_dict_map(family: str):
    """Decorator: ``fn(model, cfg) -> NameMap | None`` keyed by the PaddleClas 2.x state-dict keys
    of the models of ``family`` (None where PaddleClas builds no such model)."""

    def wrap(fn):
        _STATE_DICT_MAPS[family] = fn
        return fn

    return wrap


# ----------------------------------------------------------------------------- map helpers


def conv(paddle_name: str, path: tuple[str, ...]) -> NameMap:
    return {paddle_name: Target("params", (*path, "kernel"))}


def bn(paddle_prefix: str, path: tuple[str, ...]) -> NameMap:
    """Paddle BN ``{prefix}_scale/_offset/_mean/_variance`` -> Flax BatchNorm at ``path``."""
    return {
        paddle_prefix + suffix: Target(collection, (*path, leaf))
        for suffix, (collection, leaf) in BN_SUFFIXES.items()
    }


def dense(weight: str, bias: str | None, path: tuple[str, ...],
          flatten_chw: tuple[int, int, int] | None = None) -> NameMap:
    out = {weight: Target("params", (*path, "kernel"), flatten_chw)}
    if bias is not None:
        out[bias] = Target("params", (*path, "bias"))
    return out


def bias(paddle_name: str, path: tuple[str, ...]) -> NameMap:
    return {paddle_name: Target("params", (*path, "bias"))}


# A Paddle 2.x BatchNorm layer's state-dict entries -> Flax BatchNorm leaves.
STATE_DICT_BN = {
    ".weight": ("params", "scale"),
    ".bias": ("params", "bias"),
    "._mean": ("batch_stats", "mean"),
    "._variance": ("batch_stats", "var"),
}


def state_dict_conv_bn(prefix: str, conv_path: tuple[str, ...],
                       bn_path: tuple[str, ...]) -> NameMap:
    """PaddleClas's ``ConvBNLayer`` at ``prefix``: ``{prefix}.conv.weight`` (no bias) and
    ``{prefix}.bn.weight/.bias/._mean/._variance``."""
    mapping = conv(f"{prefix}.conv.weight", conv_path)
    for suffix, (collection, leaf) in STATE_DICT_BN.items():
        mapping[f"{prefix}.bn{suffix}"] = Target(collection, (*bn_path, leaf))
    return mapping


# ----------------------------------------------------------------------------- conversion


def paddle_name_map(model_name: str, num_classes: int | None = None) -> NameMap:
    cfg = get_model_cfg(model_name)
    fn = _NAME_MAPS.get(cfg.family)
    if fn is None:
        raise ValueError(f"{cfg.name}: no Paddle name map for family {cfg.family!r}")
    return fn(create_model(cfg.name, num_classes=num_classes), cfg)


def state_dict_name_map(model_name: str, num_classes: int | None = None) -> NameMap | None:
    """PaddleClas 2.x state-dict key -> Target for the model, or None where PaddleClas's
    ``legendary_models`` do not build it (its ``.pdparams`` then carry the 2019 names)."""
    cfg = get_model_cfg(model_name)
    fn = _STATE_DICT_MAPS.get(cfg.family)
    if fn is None:
        return None
    return fn(create_model(cfg.name, num_classes=num_classes), cfg)


def _expected_shapes(model: nn.Module, cfg: ModelCfg) -> dict[tuple[str, ...], tuple[int, ...]]:
    size = cfg.input_size
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))
    )
    return {
        (collection, *path): tuple(leaf.shape)
        for collection in shapes
        for path, leaf in traverse_util.flatten_dict(dict(shapes[collection])).items()
    }


def _num_classes(arrays: Mapping[str, np.ndarray], mapping: NameMap, cfg: ModelCfg) -> int:
    head = tuple(cfg.classifier.split("/"))
    for name, target in mapping.items():
        if target.collection == "params" and target.path == (*head, "bias") and name in arrays:
            return int(np.shape(arrays[name])[0])
    return cfg.num_classes


def to_flax_layout(value: np.ndarray, target: Target) -> np.ndarray:
    value = np.asarray(value, dtype=np.float32)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if target.flatten_chw is not None and value.ndim == 2:
        c, h, w = target.flatten_chw
        out = value.shape[1]
        return value.reshape(c, h, w, out).transpose(1, 2, 0, 3).reshape(c * h * w, out)
    return value


def paddle_layout_shape(shape: tuple[int, ...], target: Target) -> tuple[int, ...]:
    """The shape a Paddle tensor must have to fill a Flax leaf of ``shape`` (``to_flax_layout``
    undone: HWIO -> OIHW; an fc's rows are only reordered)."""
    if len(shape) == 4:
        h, w, i, o = shape
        return (o, i, h, w)
    return tuple(shape)


def paddle_to_flax(arrays: Mapping[str, np.ndarray], model_name: str,
                   state_dict_keys: Mapping[str, str] | None = None) -> dict:
    """Paddle-named arrays -> ``{"params": ..., "batch_stats": ...}`` (numpy, float32).

    ``state_dict_keys``: parameter name -> the state-dict key the ``.pdparams`` stored it under
    (``readers.PaddleWeights``). Where the model has a PaddleClas state-dict map, the arrays are
    also keyed that way (a key without an entry keeps its name) and the naming that covers more
    of them is used; a tie goes to the parameter names. The class count is read from the
    classifier's bias. Raises ValueError naming the model (and the naming, for state-dict keys)
    and listing (``flaxcls.mismatch``'s report, shapes in Paddle's layout) every missing,
    unexpected or wrongly shaped tensor, then any fault of the name map itself.
    """
    cfg = get_model_cfg(model_name)
    by_name = paddle_name_map(cfg.name)
    by_key = state_dict_name_map(cfg.name)
    if by_key is not None:
        keys = state_dict_keys or {}
        keyed = {keys.get(n, n): v for n, v in arrays.items()}
        if _covered(keyed, by_key) > _covered(arrays, by_name):
            return _convert(cfg, keyed, by_key, state_dict_name_map, STATE_DICT_NAMING)
    return _convert(cfg, arrays, by_name, paddle_name_map, "")


def _covered(arrays: Mapping[str, np.ndarray], mapping: NameMap) -> int:
    return sum(1 for name in arrays if name in mapping)


def _convert(cfg: ModelCfg, arrays: Mapping[str, np.ndarray], first: NameMap,
             map_for: Callable[..., NameMap | None], naming: str) -> dict:
    """``paddle_to_flax`` with one naming: ``first`` is ``map_for(cfg.name)``."""
    num_classes = _num_classes(arrays, first, cfg)
    mapping = map_for(cfg.name, num_classes) if num_classes != cfg.num_classes else first
    model = create_model(cfg.name, num_classes=num_classes)
    expected = _expected_shapes(model, cfg)

    leftovers = sorted(n for n in arrays if n not in mapping and TRAINING_LEFTOVERS.search(n))
    if leftovers:
        log.info("ignoring %d training leftovers (optimizer state, counters): %s",
                 len(leftovers), ", ".join(leftovers[:8]) + (" ..." if len(leftovers) > 8 else ""))
    # The name map's own faults (a target the model lacks, two tensors for one leaf, a leaf no
    # tensor fills) are listed after the weights' mismatches.
    map_faults, want, seen = {}, {}, set()
    for name, target in mapping.items():
        key = (target.collection, *target.path)
        if key not in expected:
            map_faults[name] = f"{name} maps to {'/'.join(key)}, which the model lacks"
        elif key in seen:
            map_faults[name] = f"{name}: a second tensor for {'/'.join(key)}"
        else:
            seen.add(key)
            want[name] = paddle_layout_shape(expected[key], target)
    faults = [*map_faults.values(), *(f"{'/'.join(k)}: a model leaf that no Paddle tensor fills"
                                      for k in sorted(set(expected) - seen))]
    have = {n: tuple(np.shape(v)) for n, v in arrays.items()
            if n not in leftovers and n not in map_faults}
    diff = mismatch.compare(have, want)
    if diff or faults:
        report = diff.report(have="Paddle weights", want="model's name map") if diff else ""
        where = f" ({naming})" if naming else ""
        raise ValueError(
            f"cannot convert Paddle weights to {cfg.name}{where}: {len(diff) + len(faults)} "
            f"tensor(s) differ:{report}" + "".join(f"\n  {line}" for line in faults))
    flat = {(t.collection, *t.path): to_flax_layout(arrays[n], t) for n, t in mapping.items()}
    return traverse_util.unflatten_dict(flat)
