"""Paddle 2019 names of GoogLeNet (``googlenet.py``) -> Flax variables: bias-less convs
``conv1``, ``conv2_1x1``, ``conv2_3x3``, ``inception_{ince3a..5b}_{1x1,3x3_reduce,3x3,5x5_reduce,
5x5,3x3_proj}_weights``; the main head ``out_weights``/``out_offset``; and both auxiliary heads
(``conv_o{i}_weights``, ``fc_o{i}_weights``/``_offset``, ``out{i}_weights``/``_offset``), which the
released weights hold. fc_o1/fc_o2 are fed by a flattened 128-channel map, so their rows are
reordered from Paddle's C,H,W to our H,W,C flatten (``flatten_chw``).
"""

from __future__ import annotations

from flax import linen as nn

from flaxcls.convert.paddle import NameMap, conv, dense, register_name_map
from flaxcls.convert.paddle_alexnet import feature_maps_chw
from flaxcls.models.googlenet import AUX_HEADS, AUX_POOL, AUX_WIDTH, INCEPTIONS, paddle_pool_size
from flaxcls.registry import ModelCfg

_BRANCHES = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "3x3_proj")


@register_name_map("googlenet")
def _googlenet_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping: NameMap = {}
    for name in ("conv1", "conv2_1x1", "conv2_3x3"):
        mapping.update(conv(f"{name}_weights", (name,)))
    for module in INCEPTIONS:
        for branch in _BRANCHES:
            mapping.update(conv(f"inception_{module}_{branch}_weights", (module, branch)))
    mapping.update(dense("out_weights", "out_offset", ("out",)))
    maps = feature_maps_chw(model, cfg)
    for i, head in enumerate(AUX_HEADS, start=1):
        mapping.update(conv(f"conv_o{i}_weights", (f"conv_o{i}",)))
        # fc_o{i} sees conv_o{i}'s output: AUX_WIDTH channels on the aux pool's grid.
        _, h, w = maps[AUX_HEADS[head]]
        chw = (AUX_WIDTH, paddle_pool_size(h, *AUX_POOL), paddle_pool_size(w, *AUX_POOL))
        mapping.update(dense(f"fc_o{i}_weights", f"fc_o{i}_offset", (f"fc_o{i}",), flatten_chw=chw))
        mapping.update(dense(f"out{i}_weights", f"out{i}_offset", (f"out{i}",)))
    return mapping
