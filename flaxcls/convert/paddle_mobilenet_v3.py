"""PaddleClas 2.x state-dict keys of MobileNetV3 large and small, every width and the SSLD
releases (``legendary_models/mobilenet_v3.py``) -> Flax variables.

``conv`` (stem), ``blocks.{i}.expand_conv`` / ``.bottleneck_conv`` (depthwise) /
``.linear_conv`` and ``last_second_conv``, each a ``ConvBNLayer`` (``.conv.weight``,
``.bn.weight/.bias/._mean/._variance``); ``blocks.{i}.mid_se.conv1`` / ``.conv2`` (biased 1x1
convs, on the SE units only); ``last_conv.weight`` (the bias-free 1280 conv); ``fc.weight/.bias``.

PaddleClas leaves the parameter names automatic (``conv2d_0.w_0``) and released no MobileNetV3
under other names, so the keys are this family's only naming: the map is registered as both
its name map and its state-dict map. A ``.pdparams`` converts by its keys (its parameter names
match nothing); arrays already keyed by state-dict key convert as they are.
"""

from __future__ import annotations

from flax import linen as nn

from flaxcls.convert.paddle import (
    NameMap,
    bias,
    conv,
    dense,
    register_name_map,
    register_state_dict_map,
    state_dict_conv_bn,
)
from flaxcls.registry import ModelCfg

# Our names of the layers of one ResidualUnit (``flaxcls.models.mobilenet_v3``) by PaddleClas's.
UNIT_LAYERS = {"expand_conv": "expand", "bottleneck_conv": "dw", "linear_conv": "project"}
SE_CONVS = {"conv1": "reduce", "conv2": "expand"}


@register_name_map("mobilenet_v3")
@register_state_dict_map("mobilenet_v3")
def _mobilenet_v3_state_dict_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping = state_dict_conv_bn("conv", ("stem_conv",), ("stem_bn",))
    for i, unit in enumerate(model.units):
        block = f"block{i}"
        for theirs, ours in UNIT_LAYERS.items():
            mapping.update(state_dict_conv_bn(f"blocks.{i}.{theirs}", (block, f"{ours}_conv"),
                                              (block, f"{ours}_bn")))
        if unit.se:
            for theirs, ours in SE_CONVS.items():
                prefix = f"blocks.{i}.mid_se.{theirs}"
                mapping.update(conv(f"{prefix}.weight", (block, "se", ours)))
                mapping.update(bias(f"{prefix}.bias", (block, "se", ours)))
    mapping.update(state_dict_conv_bn("last_second_conv", ("last_conv",), ("last_bn",)))
    mapping.update(conv("last_conv.weight", ("head_conv",)))
    mapping.update(dense("fc.weight", "fc.bias", ("head",)))
    return mapping
