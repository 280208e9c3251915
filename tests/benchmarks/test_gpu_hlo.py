"""benchmarks/analysis/hlo.py and ``gpu_hlo.py report``: kernels, groups and bytes of an
optimized GPU HLO text (a hand-written excerpt in XLA:GPU's format; no GPU, no CUDA plugin),
and ``gpu_hlo.py compile``'s step, built by the loop's builder."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "analysis"))
import gpu_hlo
import hlo

# Sizes: x bf16[8,4,4,16] = 4096 B, w f32[3,3,16,16] = 9216 B, wt bf16[16,3,3,16] = 4608 B,
# h bf16[8,256] = 4096 B, k bf16[256,10] = 5120 B, f32[16] = 64 B, f32[8,10] = 320 B.
HLO = """\
HloModule jit_step, is_scheduled=true, entry_computation_layout={(bf16[8,4,4,16]{3,2,1,0})->f32[]}

FileNames
1 "model.py"

%region_add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %add.0 = f32[] add(%a, %b)
}

%fused_transpose (param_0: f32[3,3,16,16]) -> bf16[16,3,3,16] {
  %param_0 = f32[3,3,16,16]{3,2,1,0} parameter(0)
  %convert.1 = bf16[3,3,16,16]{3,2,1,0} convert(%param_0)
  ROOT %transpose.1 = bf16[16,3,3,16]{3,2,1,0} transpose(%convert.1), dimensions={3,0,1,2}
}

%fused_reduce (param_0.1: bf16[8,4,4,16]) -> f32[16] {
  %param_0.1 = bf16[8,4,4,16]{3,2,1,0} parameter(0)
  %convert.2 = f32[8,4,4,16]{3,2,1,0} convert(%param_0.1)
  %constant.1 = f32[] constant(0)
  ROOT %reduce.1 = f32[16]{0} reduce(%convert.2, %constant.1), dimensions={0,1,2}, to_apply=%region_add
}

%fused_relu (param_0.2: bf16[8,4,4,16], param_1.2: f32[16]) -> bf16[8,4,4,16] {
  %param_0.2 = bf16[8,4,4,16]{3,2,1,0} parameter(0)
  %param_1.2 = f32[16]{0} parameter(1)
  %convert.3 = bf16[16]{0} convert(%param_1.2)
  %broadcast.1 = bf16[8,4,4,16]{3,2,1,0} broadcast(%convert.3), dimensions={3}
  %multiply.1 = bf16[8,4,4,16]{3,2,1,0} multiply(%param_0.2, %broadcast.1)
  %constant.2 = bf16[] constant(0)
  %broadcast.2 = bf16[8,4,4,16]{3,2,1,0} broadcast(%constant.2), dimensions={}
  ROOT %maximum.1 = bf16[8,4,4,16]{3,2,1,0} maximum(%multiply.1, %broadcast.2)
}

%gemm_fusion_dot_computation (param_0.3: bf16[8,256], param_1.3: bf16[256,10]) -> f32[8,10] {
  %param_0.3 = bf16[8,256]{1,0} parameter(0)
  %param_1.3 = bf16[256,10]{1,0} parameter(1)
  ROOT %dot.1 = f32[8,10]{1,0} dot(%param_0.3, %param_1.3), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_scale (param_0.4: f32[16]) -> f32[16] {
  %param_0.4 = f32[16]{0} parameter(0)
  ROOT %multiply.2 = f32[16]{0} multiply(%param_0.4, %param_0.4)
}

%command_buffer (p.0: f32[16]) -> f32[16] {
  %p.0 = f32[16]{0} parameter(0)
  ROOT %loop_multiply_fusion = f32[16]{0} fusion(%p.0), kind=kLoop, calls=%fused_scale
}

ENTRY %main.9 (x.1: bf16[8,4,4,16], w.1: f32[3,3,16,16], h.1: bf16[8,256], k.1: bf16[256,10]) -> (f32[16,3,3,16], bf16[8,4,4,16], f32[8,10], f32[16]) {
  %x.1 = bf16[8,4,4,16]{3,2,1,0} parameter(0), metadata={op_name="x"}
  %w.1 = f32[3,3,16,16]{3,2,1,0} parameter(1), metadata={op_name="w"}
  %h.1 = bf16[8,256]{1,0} parameter(2)
  %k.1 = bf16[256,10]{1,0} parameter(3)
  %input_transpose_fusion = bf16[16,3,3,16]{3,2,1,0} fusion(%w.1), kind=kInput, calls=%fused_transpose
  %cudnn-conv.1 = (bf16[8,4,4,16]{3,2,1,0}, u8[1024]{0}) custom-call(%x.1, %input_transpose_fusion), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(step)/conv1/conv_general_dilated" stack_frame_id=3}, backend_config={"cudnn_conv_backend_config":{"activation_mode":"kNone"}}
  %get-tuple-element.1 = bf16[8,4,4,16]{3,2,1,0} get-tuple-element(%cudnn-conv.1), index=0
  %input_reduce_fusion = f32[16]{0} fusion(%get-tuple-element.1), kind=kInput, calls=%fused_reduce, metadata={op_name="jit(step)/bn1/reduce_sum"}
  %loop_maximum_fusion = bf16[8,4,4,16]{3,2,1,0} fusion(%get-tuple-element.1, %input_reduce_fusion), kind=kLoop, calls=%fused_relu
  %cudnn-conv-bw-filter.1 = (f32[16,3,3,16]{3,2,1,0}, u8[0]{0}) custom-call(%x.1, %loop_maximum_fusion), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %get-tuple-element.2 = f32[16,3,3,16]{3,2,1,0} get-tuple-element(%cudnn-conv-bw-filter.1), index=0
  %cudnn-conv-bw-input.1 = (bf16[8,4,4,16]{3,2,1,0}, u8[0]{0}) custom-call(%loop_maximum_fusion, %input_transpose_fusion), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %get-tuple-element.3 = bf16[8,4,4,16]{3,2,1,0} get-tuple-element(%cudnn-conv-bw-input.1), index=0
  %gemm_fusion_dot = f32[8,10]{1,0} fusion(%h.1, %k.1), kind=kCustom, calls=%gemm_fusion_dot_computation, backend_config={"operation_queue_id":"0","fusion_backend_config":{"kind":"__triton_nested_gemm_fusion","block_level_fusion_config":{"num_warps":"2"}}}
  %call.1 = f32[16]{0} call(%input_reduce_fusion), to_apply=%command_buffer
  %all-reduce.1 = f32[16]{0} all-reduce(%call.1), replica_groups={}, to_apply=%region_add
  %copy.1 = f32[16]{0} copy(%all-reduce.1)
  %bitcast.1 = f32[16]{0} bitcast(%copy.1)
  ROOT %tuple.1 = (f32[16,3,3,16]{3,2,1,0}, bf16[8,4,4,16]{3,2,1,0}, f32[8,10]{1,0}, f32[16]{0}) tuple(%get-tuple-element.2, %get-tuple-element.3, %gemm_fusion_dot, %bitcast.1)
}

"""

# name -> (group, bytes read, bytes written), in program order.
EXPECTED = {
    "input_transpose_fusion": ("transpose fusions", 9216, 4608),
    "cudnn-conv.1": ("conv forward", 4096 + 4608, 4096),  # the u8 workspace is not counted
    "input_reduce_fusion": ("reduction fusions", 4096, 64),
    "loop_maximum_fusion": ("elementwise fusions", 4096 + 64, 4096),
    "cudnn-conv-bw-filter.1": ("conv backward filter", 4096 + 4096, 9216),
    "cudnn-conv-bw-input.1": ("conv backward input", 4096 + 4608, 4096),
    "gemm_fusion_dot": ("gemm", 4096 + 5120, 320),
    "loop_multiply_fusion": ("elementwise fusions", 64, 64),  # inside the command buffer
    "all-reduce.1": ("collectives", 64, 64),  # its reducer region launches nothing
    "copy.1": ("copies", 64, 64),
}


@pytest.mark.parametrize("type_text, nbytes", [
    ("f32[]", 4), ("bf16[2,3]{1,0}", 12), ("(bf16[2,3]{1,0}, u8[0]{0})", 12), ("pred[10]{0}", 10),
    ("s4[3]{0}", 2), ("f32[<=8,4]{1,0}", 128), ("token[]", 0), ("c64[2]{0}", 16),
    ("f8e4m3fn[5]{0}", 5), ("(f32[2]{0}, (s32[], u8[3]{0}))", 15),
])
def test_shape_bytes(type_text, nbytes):
    assert hlo.shape_bytes(type_text) == nbytes


def test_kernels_groups_and_bytes():
    comps = hlo.parse_hlo(HLO)
    assert [c.name for c in comps.values() if c.entry] == ["main.9"]
    kernels = hlo.entry_kernels(comps)
    got = {k.name: (k.group, k.bytes_read, k.bytes_written) for k in kernels}
    assert got == EXPECTED
    assert [k.name for k in kernels] == list(EXPECTED)
    by_name = {k.name: k for k in kernels}
    assert by_name["cudnn-conv.1"].kind == "__cudnn$convForward"
    assert by_name["cudnn-conv.1"].op_name == "jit(step)/conv1/conv_general_dilated"
    assert by_name["gemm_fusion_dot"].kind == "kCustom:__triton_nested_gemm_fusion"
    assert by_name["loop_multiply_fusion"].computation == "command_buffer"


def test_report_json_lines(tmp_path, capsys):
    path = tmp_path / "step.hlo.txt"
    path.write_text(HLO)
    gpu_hlo.main(["report", str(path), "--bandwidth-gbs", "1", "--top", "3"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    groups = {r["group"]: r for r in rows if "group" in r and "rank" not in r}
    assert list(groups) == ["conv forward", "conv backward input", "conv backward filter", "gemm",
                            "reduction fusions", "transpose fusions", "elementwise fusions",
                            "copies", "collectives", "total"]
    ew = groups["elementwise fusions"]
    assert (ew["kernels"], ew["bytes_read"], ew["bytes_written"]) == (2, 4224, 4160)
    assert ew["kinds"] == {"kLoop": 2}
    total = groups["total"]
    assert (total["kernels"], total["bytes_read"], total["bytes_written"]) == (10, 52480, 26688)
    assert total["bytes"] == 79168 and total["min_ms"] == 0.0792  # 79168 B at 1 GB/s
    top = [r for r in rows if "rank" in r]
    assert [(r["rank"], r["kernel"]) for r in top] == [
        (1, "cudnn-conv-bw-filter.1"), (2, "input_transpose_fusion"), (3, "cudnn-conv.1")]
    assert top[0]["min_us"] == 17.41  # (8192 + 9216) B at 1 GB/s
    assert all(r["hlo"] == "step.hlo.txt" for r in rows)


def test_report_joins_measured_times(tmp_path, capsys):
    path, ops = tmp_path / "a.hlo.txt", tmp_path / "a.ops.json"
    path.write_text(HLO)
    ops.write_text(json.dumps({"ops": [
        {"name": "cudnn-conv-bw-filter.1", "group": "conv backward filter", "events": 5,
         "ns_per_step": 1000},
        {"name": "input_reduce_fusion", "group": "reduction fusions", "events": 5,
         "ns_per_step": 4160},
        {"name": "not-in-this-hlo", "group": "other", "events": 5, "ns_per_step": 7}]}))
    gpu_hlo.main(["report", str(path), "--ops", str(ops), "--top", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    red = next(r for r in rows if r.get("group") == "reduction fusions" and "rank" not in r)
    assert (red["measured_kernels"], red["measured_ms"], red["achieved_gbs"]) == (1, 0.0042, 1.0)
    total = next(r for r in rows if r.get("group") == "total")
    assert total["measured_kernels"] == 2 and total["measured_ms"] == 0.0052
    assert total["achieved_gbs"] == round((17408 + 4160) / 5160, 1)
    top = next(r for r in rows if "rank" in r)
    assert top["kernel"] == "cudnn-conv-bw-filter.1" and top["measured_us"] == 1.0


def test_operand_types_written_inline_and_nested_control_flow():
    """Older HLO text spells each operand's type; while bodies and conditional branches are
    walked (each kernel once)."""
    text = """\
HloModule m

%body (p: (s32[], f32[256])) -> (s32[], f32[256]) {
  %p = (s32[], f32[256]{0}) parameter(0)
  %g = f32[256]{0} get-tuple-element((s32[], f32[256]{0}) %p), index=1
  %i = s32[] get-tuple-element((s32[], f32[256]{0}) %p), index=0
  %fusion.1 = f32[256]{0} fusion(f32[256]{0} %g), kind=kLoop, calls=%f1
  ROOT %t = (s32[], f32[256]{0}) tuple(s32[] %i, f32[256]{0} %fusion.1)
}

%cond (p.1: (s32[], f32[256])) -> pred[] {
  %p.1 = (s32[], f32[256]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element((s32[], f32[256]{0}) %p.1), index=0
  %c = s32[] constant(3)
  ROOT %lt = pred[] compare(s32[] %i.1, s32[] %c), direction=LT
}

%f1 (q: f32[256]) -> f32[256] {
  %q = f32[256]{0} parameter(0)
  ROOT %n = f32[256]{0} negate(f32[256]{0} %q)
}

%branch_a (a: f32[256]) -> f32[256] {
  %a = f32[256]{0} parameter(0)
  ROOT %copy.2 = f32[256]{0} copy(f32[256]{0} %a)
}

%branch_b (b: f32[256]) -> f32[256] {
  %b = f32[256]{0} parameter(0)
  ROOT %transpose.3 = f32[256]{0} transpose(f32[256]{0} %b), dimensions={0}
}

ENTRY %e (x: f32[256], k: s32[]) -> f32[256] {
  %x = f32[256]{0} parameter(0)
  %k = s32[] parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[256]{0}) tuple(s32[] %zero, f32[256]{0} %x)
  %w = (s32[], f32[256]{0}) while((s32[], f32[256]{0}) %init), condition=%cond, body=%body
  %r = f32[256]{0} get-tuple-element((s32[], f32[256]{0}) %w), index=1
  ROOT %sel = f32[256]{0} conditional(s32[] %k, f32[256]{0} %r, f32[256]{0} %r), branch_computations={%branch_a, %branch_b}
}
"""
    kernels = hlo.entry_kernels(hlo.parse_hlo(text))
    got = [(k.name, k.group, k.bytes_read, k.bytes_written, k.computation) for k in kernels]
    assert got == [
        ("lt", "other", 8, 1, "cond"),  # an unfused compare in the loop condition
        ("fusion.1", "elementwise fusions", 1024, 1024, "body"),
        ("copy.2", "copies", 1024, 1024, "branch_a"),
        ("transpose.3", "transpose fusions", 1024, 1024, "branch_b"),
    ]


def test_cpu_compiled_hlo_parses():
    """The same parser reads what XLA prints for another backend: in the CPU-compiled HLO of
    a tiny function the first kernel reads and writes the whole f32[32,64] (x*x), the last
    writes the f32[] sum, and the scalar constant operand counts as 4 bytes read."""
    import jax
    import jax.numpy as jnp

    x = jax.ShapeDtypeStruct((32, 64), jnp.float32)
    text = jax.jit(lambda x: (x * x).sum()).lower(x).compile().as_text()
    kernels = hlo.entry_kernels(hlo.parse_hlo(text))
    assert (kernels[0].bytes_read, kernels[0].bytes_written) == (8192, 8192)
    assert kernels[0].op_name.endswith("/mul")
    assert kernels[-1].bytes_written == 4 and kernels[-1].group == "reduction fusions"


def test_target_configs_are_h100_and_h200():
    h100, h200 = gpu_hlo.target_config("h100"), gpu_hlo.target_config("h200", (9, 10, 2), (13, 0))
    assert "core_count: 132" in h100 and "cuda_compute_capability { major: 9 minor: 0 }" in h100
    assert "memory_bandwidth: 3350000000000" in h100
    assert "memory_bandwidth: 4800000000000" in h200 and 'device_description_str: "NVIDIA H200"' in h200
    assert "dnn_version_info { major: 9 minor: 10 patch: 2 }" in h200
    assert "runtime_version { major: 13 minor: 0 }" in h200
    # Everything else is the same chip.
    strip = {"memory_bandwidth", "device_memory_size", "device_description_str",
             "dnn_version_info", "runtime_version"}
    same = [ln for ln in h100.splitlines() if ln.split(":")[0].strip() not in strip]
    assert same == [ln for ln in gpu_hlo.target_config("h200").splitlines()
                    if ln.split(":")[0].strip() not in strip]


def test_operand_index_comments_are_not_types():
    """XLA:GPU writes /*index=5*/ before every fifth operand of a long operand list; that is
    not an inline type, and the operand's bytes come from its definition."""
    ins = hlo.parse_instruction(
        "%f = bf16[8,16]{1,0} fusion(%a, %b, %c, %d, %e, /*index=5*/%g, %h), kind=kLoop, "
        "calls=%fused")
    assert ins.operands == ["a", "b", "c", "d", "e", "g", "h"]
    assert ins.operand_types == {}
    typed = hlo.parse_instruction(
        "%f = f32[2]{0} fusion(f32[2]{0} %a, f32[2]{0} %b, f32[2]{0} %c, f32[2]{0} %d, "
        "f32[2]{0} %e, /*index=5*/f32[4]{0} %g), kind=kLoop, calls=%fused")
    assert typed.operand_types["g"] == "f32[4]{0}"
    assert hlo.shape_bytes(typed.operand_types["g"]) == 16


def test_profiled_ops_take_their_kernels_group_from_the_hlo():
    """``profile_step.py`` groups an op as ``report`` groups its kernel: a fusion named like
    an elementwise one that holds a reduce is a reduction; a name the HLO lacks goes by name."""
    text = """\
HloModule m

%region (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused (p: f32[64]) -> f32[] {
  %p = f32[64]{0} parameter(0)
  %z = f32[] constant(0)
  ROOT %r = f32[] reduce(%p, %z), dimensions={0}, to_apply=%region
}

ENTRY %e (x: f32[64]) -> f32[] {
  %x = f32[64]{0} parameter(0)
  ROOT %fusion.7 = f32[] fusion(%x), kind=kInput, calls=%fused
}
"""
    group = hlo.op_grouper(text)
    assert hlo.group_of_name("fusion.7") == "elementwise fusions"
    assert group("fusion.7") == "reduction fusions"
    assert group("memcpy") == "copies" and group("something-else") == "other"
    assert hlo.op_grouper(HLO)("cudnn-conv-bw-input.1") == "conv backward input"


def test_compile_builds_the_trainers_step_from_shapes():
    """``gpu_hlo.py compile``'s step is the loop's (``flaxcls.train.builder``) for the flags'
    config, on the given devices, and lowers without any array being made."""
    import jax
    import jax.numpy as jnp

    step, state, metrics, batch = gpu_hlo.abstract_step(
        "ResNet_tiny", 4, "float16", 32, "fused", jax.devices()[:1])
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == jnp.uint8
    assert batch["label"].shape == (4,) and set(metrics) >= {"loss", "count", "skipped_steps"}
    assert state.loss_scale is not None  # float16 trains with a dynamic loss scale
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state))
    text = step.lower(state, metrics, batch).as_text()
    assert "f16" in text and len(jax.tree.leaves(state.params)) == 41
