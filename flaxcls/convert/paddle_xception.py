"""Paddle 2019 names of Xception41/65/71 (``xception.py``) -> Flax variables of
``flaxcls.models.xception.Xception``.

Convs are ``X_weights`` with BN ``bn_X_{scale,offset,mean,variance}``. A separable conv ``S``
is ``S_sep`` (pointwise) and ``S_dw`` (depthwise); inside blocks ``S`` is
``{block}_branch2{a,b,c}_weights`` (so ``entry_flow_0_branch2a_weights_sep_weights``), the block
shortcut ``{block}_branch1_weights`` (no BN). Blocks are ``entry_flow_{b}``, ``middle_flow_{b}``
(b from 0) and ``exit_flow_1``; the tail separable convs ``exit_flow_2``/``exit_flow_3``.
"""

from __future__ import annotations

from flaxcls.convert.paddle import NameMap, bn, conv, dense, register_name_map
from flaxcls.models.xception import Xception


def _separable(name: str, path: tuple[str, ...]) -> NameMap:
    mapping: NameMap = {}
    for paddle_part, leaf in (("sep", "pointwise"), ("dw", "depthwise")):
        mapping.update(conv(f"{name}_{paddle_part}_weights", (*path, leaf)))
        mapping.update(bn(f"bn_{name}_{paddle_part}", (*path, f"{leaf}_bn")))
    return mapping


def _block(paddle_block: str, path: str, num_seps: int, shortcut: bool) -> NameMap:
    mapping: NameMap = {}
    for k in range(num_seps):
        branch = f"{paddle_block}_branch2{'abc'[k]}_weights"
        mapping.update(_separable(branch, (path, f"sep{k + 1}")))
    if shortcut:
        mapping.update(conv(f"{paddle_block}_branch1_weights", (path, "shortcut")))
    return mapping


@register_name_map("xception")
def _xception_name_map(model: Xception, cfg) -> NameMap:
    mapping: NameMap = {}
    for i in (1, 2):
        mapping.update(conv(f"entry_flow_conv{i}_weights", (f"stem_conv{i}",)))
        mapping.update(bn(f"bn_entry_flow_conv{i}", (f"stem_bn{i}",)))
    for b in range(len(model.entry_widths)):
        mapping.update(_block(f"entry_flow_{b}", f"entry_block{b + 1}", 2, shortcut=True))
    for b in range(model.middle_blocks):
        mapping.update(_block(f"middle_flow_{b}", f"middle_block{b + 1}", 3, shortcut=False))
    mapping.update(_block("exit_flow_1", "exit_block", len(model.exit_widths), shortcut=True))
    for k in range(len(model.tail_widths)):
        mapping.update(_separable(f"exit_flow_{k + 2}", (f"exit_sep{k + 1}",)))
    mapping.update(dense("fc_weights", "fc_offset", ("head",)))
    return mapping
