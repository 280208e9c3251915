"""Paddle 2019 names of InceptionV4 (``inception_v4.py``) -> Flax variables of
``flaxcls.models.inception.InceptionV4``.

Every Paddle conv ``X`` has ``X_weights`` and BN ``X_bn_{scale,offset,mean,variance}``; our unit
``.../U`` holds ``conv`` and ``bn``. Blocks are ``inception_{a,b,c}{i}_*`` (i from 1),
``reduction_{a,b}_*`` and the stem; the head is ``final_fc_weights``/``final_fc_offset``.
"""

from __future__ import annotations

from flaxcls.convert.paddle import NameMap, bn, conv, dense, register_name_map
from flaxcls.models.inception import InceptionV4

# Our unit name -> Paddle's conv-name suffix, per block kind.
STEM = {
    "conv1": "conv1_3x3_s2",
    "conv2": "conv2_3x3_s1",
    "conv3": "conv3_3x3_s1",
    "mixed1_conv": "inception_stem1_3x3_s2",
    "mixed2_branch0_conv1": "inception_stem2_3x3_reduce",
    "mixed2_branch0_conv2": "inception_stem2_3x3",
    "mixed2_branch1_conv1": "inception_stem2_1x7_reduce",
    "mixed2_branch1_conv2": "inception_stem2_1x7",  # a 7x1 kernel despite the name
    "mixed2_branch1_conv3": "inception_stem2_7x1",  # a 1x7 kernel despite the name
    "mixed2_branch1_conv4": "inception_stem2_3x3_2",
    "mixed3_conv": "inception_stem3_3x3_s2",
}
INCEPTION_A = {
    "branch0_conv1": "1x1",
    "branch1_conv1": "1x1_2",
    "branch2_conv1": "3x3_reduce",
    "branch2_conv2": "3x3",
    "branch3_conv1": "3x3_2_reduce",
    "branch3_conv2": "3x3_2",
    "branch3_conv3": "3x3_3",
}
REDUCTION_A = {
    "branch1_conv1": "3x3",
    "branch2_conv1": "3x3_2_reduce",
    "branch2_conv2": "3x3_2",
    "branch2_conv3": "3x3_3",
}
INCEPTION_B = {
    "branch0_conv1": "1x1",
    "branch1_conv1": "1x1_2",
    "branch2_conv1": "1x7_reduce",
    "branch2_conv2": "1x7",
    "branch2_conv3": "7x1",
    "branch3_conv1": "7x1_2_reduce",
    "branch3_conv2": "1x7_2",
    "branch3_conv3": "7x1_2",
    "branch3_conv4": "1x7_3",
    "branch3_conv5": "7x1_3",
}
REDUCTION_B = {
    "branch1_conv1": "3x3_reduce",
    "branch1_conv2": "3x3",
    "branch2_conv1": "1x7_reduce",
    "branch2_conv2": "1x7",
    "branch2_conv3": "7x1",
    "branch2_conv4": "3x3_2",
}
INCEPTION_C = {
    "branch0_conv1": "1x1",
    "branch1_conv1": "1x1_2",
    "branch2_conv1": "1x1_3",
    "branch2_conv2a": "1x3",
    "branch2_conv2b": "3x1",
    "branch3_conv1": "1x1_4",
    "branch3_conv2": "1x3_2",
    "branch3_conv3": "3x1_2",
    "branch3_conv4a": "1x3_3",
    "branch3_conv4b": "3x1_3",
}


def _units(block: str, paddle_prefix: str, table: dict[str, str]) -> NameMap:
    mapping: NameMap = {}
    for unit, suffix in table.items():
        name = paddle_prefix + suffix
        mapping.update(conv(f"{name}_weights", (block, unit, "conv")))
        mapping.update(bn(f"{name}_bn", (block, unit, "bn")))
    return mapping


@register_name_map("inception_v4")
def _inception_v4_name_map(model: InceptionV4, cfg) -> NameMap:
    num_a, num_b, num_c = model.stage_sizes
    mapping = _units("stem", "", STEM)
    for i in range(1, num_a + 1):
        mapping.update(_units(f"inception_a{i}", f"inception_a{i}_", INCEPTION_A))
    mapping.update(_units("reduction_a", "reduction_a_", REDUCTION_A))
    for i in range(1, num_b + 1):
        mapping.update(_units(f"inception_b{i}", f"inception_b{i}_", INCEPTION_B))
    mapping.update(_units("reduction_b", "reduction_b_", REDUCTION_B))
    for i in range(1, num_c + 1):
        mapping.update(_units(f"inception_c{i}", f"inception_c{i}_", INCEPTION_C))
    mapping.update(dense("final_fc_weights", "final_fc_offset", ("head",)))
    return mapping
