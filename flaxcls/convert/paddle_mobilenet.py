"""Paddle names of MobileNetV1 and MobileNetV2 -> Flax variables.

2019 names (``mobilenet_v1.py``, ``mobilenet_v2.py``; PaddleClas's ``model_zoo/mobilenet_v2.py``
keeps them): every conv is ``{name}_weights`` with BN ``{name}_bn_{scale,offset,mean,variance}``.

* V1: ``conv1``; units ``conv2_1, conv2_2, conv3_1, conv3_2, conv4_1, conv4_2, conv5_1..conv5_6,
  conv6``, each ``{unit}_dw`` (depthwise) and ``{unit}_sep`` (1x1); fc ``fc7_weights/_offset``.
* V2: ``conv1_1``; units ``conv{k}_{j}`` (stage k = 2..8, unit j from 1), each
  ``{unit}_expand``, ``{unit}_dwise``, ``{unit}_linear``; ``conv9``; fc ``fc10_weights/_offset``.

PaddleClas 2.x state-dict keys of V1 at every width (``legendary_models/mobilenet_v1.py``, also
MobileNetV1_ssld; the same network): ``conv`` (stem), ``blocks.{0..12}.depthwise_conv`` and
``.pointwise_conv``, each a ``ConvBNLayer`` (``.conv.weight``, ``.bn.weight/.bias/._mean/
._variance``), ``fc.weight/.bias``.
"""

from __future__ import annotations

from flax import linen as nn

from flaxcls.convert.paddle import (
    NameMap,
    bn,
    conv,
    dense,
    register_name_map,
    register_state_dict_map,
    state_dict_conv_bn,
)
from flaxcls.models.mobilenet import V1_STAGES, V2_STAGES
from flaxcls.registry import ModelCfg

# Paddle's V1 unit names, in the order of V1_STAGES' units.
V1_UNIT_NAMES = ("conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv4_1", "conv4_2",
                 *(f"conv5_{i}" for i in range(1, 7)), "conv6")


def _conv_bn(paddle_name: str, conv_path: tuple[str, ...], bn_path: tuple[str, ...]) -> NameMap:
    return {**conv(f"{paddle_name}_weights", conv_path), **bn(f"{paddle_name}_bn", bn_path)}


@register_name_map("mobilenet_v1")
def _mobilenet_v1_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping = _conv_bn("conv1", ("stem_conv",), ("stem_bn",))
    paths = [f"stage{s + 1}_block{b}" for s, units in enumerate(V1_STAGES) for b in range(len(units))]
    for unit, path in zip(V1_UNIT_NAMES, paths, strict=True):
        mapping.update(_conv_bn(f"{unit}_dw", (path, "dw_conv"), (path, "dw_bn")))
        mapping.update(_conv_bn(f"{unit}_sep", (path, "pw_conv"), (path, "pw_bn")))
    mapping.update(dense("fc7_weights", "fc7_offset", ("head",)))
    return mapping


@register_state_dict_map("mobilenet_v1")
def _mobilenet_v1_state_dict_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping = state_dict_conv_bn("conv", ("stem_conv",), ("stem_bn",))
    paths = [f"stage{s + 1}_block{b}" for s, units in enumerate(V1_STAGES) for b in range(len(units))]
    for k, path in enumerate(paths):
        for unit, leaf in (("depthwise_conv", "dw"), ("pointwise_conv", "pw")):
            mapping.update(state_dict_conv_bn(f"blocks.{k}.{unit}", (path, f"{leaf}_conv"),
                                              (path, f"{leaf}_bn")))
    mapping.update(dense("fc.weight", "fc.bias", ("head",)))
    return mapping


@register_name_map("mobilenet_v2")
def _mobilenet_v2_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping = _conv_bn("conv1_1", ("stem_conv",), ("stem_bn",))
    for s, (_, _, n, _) in enumerate(V2_STAGES):
        for b in range(n):
            unit, path = f"conv{s + 2}_{b + 1}", f"stage{s + 1}_block{b}"
            for paddle_suffix, leaf in (("expand", "expand"), ("dwise", "dw"),
                                        ("linear", "project")):
                mapping.update(
                    _conv_bn(f"{unit}_{paddle_suffix}", (path, f"{leaf}_conv"), (path, f"{leaf}_bn"))
                )
    mapping.update(_conv_bn("conv9", ("last_conv",), ("last_bn",)))
    mapping.update(dense("fc10_weights", "fc10_offset", ("head",)))
    return mapping
