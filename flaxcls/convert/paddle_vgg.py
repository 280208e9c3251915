"""Paddle names of VGG11/13/16/19 -> Flax variables. fc6 is fed by the flattened block-5 map,
so its rows are reordered from Paddle's C,H,W to our H,W,C flatten (``flatten_chw``).

* 2019 names (``vgg.py``, late 2019): ``conv{b}_{i}_weights`` (no conv offsets: the "fix vgg
  bias bug" commit removed them), ``fc{6,7,8}_weights`` / ``_offset``.
* PaddleClas 2.x state-dict keys (``legendary_models/vgg.py``; the same network, bias-free convs,
  downscale-in-infer dropout): ``conv_block_{b}.conv{i}.weight``, ``fc{1,2,3}.weight/.bias``.
"""

from __future__ import annotations

from flax import linen as nn

from flaxcls.convert.paddle import NameMap, conv, dense, register_name_map, register_state_dict_map
from flaxcls.convert.paddle_alexnet import feature_maps_chw
from flaxcls.registry import ModelCfg


@register_name_map("vgg")
def _vgg_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping: NameMap = {}
    for b, depth in enumerate(model.stage_sizes, start=1):
        for i in range(1, depth + 1):
            mapping.update(conv(f"conv{b}_{i}_weights", (f"conv{b}_{i}",)))
    chw = feature_maps_chw(model, cfg)[f"block{len(model.stage_sizes)}"]
    mapping.update(dense("fc6_weights", "fc6_offset", ("fc6",), flatten_chw=chw))
    mapping.update(dense("fc7_weights", "fc7_offset", ("fc7",)))
    mapping.update(dense("fc8_weights", "fc8_offset", ("fc8",)))
    return mapping


@register_state_dict_map("vgg")
def _vgg_state_dict_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping: NameMap = {}
    for b, depth in enumerate(model.stage_sizes, start=1):
        for i in range(1, depth + 1):
            mapping.update(conv(f"conv_block_{b}.conv{i}.weight", (f"conv{b}_{i}",)))
    chw = feature_maps_chw(model, cfg)[f"block{len(model.stage_sizes)}"]
    mapping.update(dense("fc1.weight", "fc1.bias", ("fc6",), flatten_chw=chw))
    mapping.update(dense("fc2.weight", "fc2.bias", ("fc7",)))
    mapping.update(dense("fc3.weight", "fc3.bias", ("fc8",)))
    return mapping
