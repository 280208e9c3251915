"""Paddle 2019 names of SqueezeNet1_0/1_1 (``squeezenet.py``) -> Flax variables: ``conv1``,
``fire{n}_{squeeze1x1,expand1x1,expand3x3}`` and ``conv10``, each ``_weights`` + ``_offset``."""

from __future__ import annotations

from flax import linen as nn

from flaxcls.convert.paddle import NameMap, bias, conv, register_name_map
from flaxcls.registry import ModelCfg

_FIRE_CONVS = ("squeeze1x1", "expand1x1", "expand3x3")


@register_name_map("squeezenet")
def _squeezenet_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    layers = [("conv1", ("conv1",))]
    layers += [(f"fire{n}_{c}", (f"fire{n}", c)) for n in range(2, 10) for c in _FIRE_CONVS]
    layers.append(("conv10", ("conv10",)))
    mapping: NameMap = {}
    for name, path in layers:
        mapping.update(conv(f"{name}_weights", path))
        mapping.update(bias(f"{name}_offset", path))
    return mapping
