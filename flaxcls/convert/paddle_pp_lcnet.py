"""PaddleClas 2.x state-dict keys of PP-LCNet, every width and the SSLD releases
(``legendary_models/pp_lcnet.py``) -> Flax variables.

``conv1`` (stem) and ``blocks{2..6}.{b}.dw_conv`` / ``.pw_conv``, each a ``ConvBNLayer``
(``.conv.weight``, ``.bn.weight/.bias/._mean/._variance``); ``blocks{2..6}.{b}.se.conv1`` /
``.conv2`` (biased 1x1 convs, on the SE blocks only); ``last_conv.weight`` (the bias-free 1280
conv); ``fc.weight/.bias``.

PaddleClas leaves the parameter names automatic (``conv2d_0.w_0``) and released no PP-LCNet
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

FIRST_STAGE = 2  # our stage1 is PaddleClas's blocks2
SE_CONVS = {"conv1": "reduce", "conv2": "expand"}


@register_name_map("pp_lcnet")
@register_state_dict_map("pp_lcnet")
def _pp_lcnet_state_dict_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping = state_dict_conv_bn("conv1", ("stem_conv",), ("stem_bn",))
    for s, blocks in enumerate(model.stages):
        for b, block in enumerate(blocks):
            prefix, ours = f"blocks{s + FIRST_STAGE}.{b}", f"stage{s + 1}_block{b}"
            for layer in ("dw", "pw"):
                mapping.update(state_dict_conv_bn(f"{prefix}.{layer}_conv", (ours, f"{layer}_conv"),
                                                  (ours, f"{layer}_bn")))
            if block.se:
                for theirs, leaf in SE_CONVS.items():
                    mapping.update(conv(f"{prefix}.se.{theirs}.weight", (ours, "se", leaf)))
                    mapping.update(bias(f"{prefix}.se.{theirs}.bias", (ours, "se", leaf)))
    mapping.update(conv("last_conv.weight", ("head_conv",)))
    mapping.update(dense("fc.weight", "fc.bias", ("head",)))
    return mapping
