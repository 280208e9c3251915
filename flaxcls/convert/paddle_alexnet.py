"""Paddle 2019 names of AlexNet (``alexnet.py``) -> Flax variables: ``conv{i}_weights`` /
``conv{i}_offset`` (i = 1..5), ``fc{6,7,8}_weights`` / ``_offset``. fc6 is fed by the flattened
pool5 map, so its rows are reordered from Paddle's C,H,W to our H,W,C flatten (``flatten_chw``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.convert.paddle import NameMap, bias, conv, dense, register_name_map
from flaxcls.registry import ModelCfg


def feature_maps_chw(model: nn.Module, cfg: ModelCfg) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every 4-D (NHWC) map of ``return_features`` at the model's input size: the
    layout an fc fed by that map saw in Paddle. Traced with ``jax.eval_shape`` (nothing runs)."""
    x = jax.ShapeDtypeStruct((1, cfg.input_size, cfg.input_size, 3), jnp.float32)

    def run(x):
        (_, features), _ = model.init_with_output(jax.random.key(0), x, return_features=True)
        return features

    shapes = jax.eval_shape(run, x)
    return {k: (v.shape[3], v.shape[1], v.shape[2]) for k, v in shapes.items() if v.ndim == 4}


@register_name_map("alexnet")
def _alexnet_name_map(model: nn.Module, cfg: ModelCfg) -> NameMap:
    mapping: NameMap = {}
    for i in range(1, 6):
        mapping.update(conv(f"conv{i}_weights", (f"conv{i}",)))
        mapping.update(bias(f"conv{i}_offset", (f"conv{i}",)))
    chw = feature_maps_chw(model, cfg)["pool5"]
    mapping.update(dense("fc6_weights", "fc6_offset", ("fc6",), flatten_chw=chw))
    mapping.update(dense("fc7_weights", "fc7_offset", ("fc7",)))
    mapping.update(dense("fc8_weights", "fc8_offset", ("fc8",)))
    return mapping
