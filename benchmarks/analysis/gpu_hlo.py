"""The train step as XLA:GPU would run it on an H100/H200, compiled on a machine without a GPU,
and a per-kernel memory-traffic report of any optimized GPU HLO.

    # in a venv with jax[cuda13] (or jax-cuda13-plugin + jax-cuda13-pjrt) of the project's jax:
    python benchmarks/gpu_hlo.py compile --out r50_flax.hlo --bn-impl flax
    python benchmarks/gpu_hlo.py compile --out r50_fused.hlo --bn-impl fused --gpu h200
    python benchmarks/gpu_hlo.py compile --out r50_infer.hlo --infer --batch 1
    # anywhere (no jax needed):
    python benchmarks/gpu_hlo.py report r50_flax.hlo --bandwidth-gbs 4800 --top 20
    python benchmarks/gpu_hlo.py report DIR/LABEL.hlo.txt --ops DIR/LABEL.ops.json

``compile`` builds the trainer's own jitted step as ``profile_step.py: build_step`` does (same
config fields, model, optimizer, state and batch structure) but from shapes only
(``jax.eval_shape`` / ``jax.ShapeDtypeStruct``), places them on the compile-only devices of a
GPU topology described by a target config (``jax.experimental.topologies.get_topology_desc``
with a ``GpuTargetConfigProto`` text), and writes ``compiled.as_text()``: the HLO after XLA:GPU's
fusion, layout and scheduling passes. Nothing runs and no GPU is needed, but the CUDA plugin
must be installed. Without a device XLA cannot autotune: convolutions keep cuDNN's default
algorithm (workspace 0 bytes), Triton GEMMs a default tiling, so kernel *choices* inside a
custom call may differ on a real GPU; which ops fuse into which kernels does not depend on it.

``report`` parses an optimized GPU HLO text (from ``compile`` or dumped on a real GPU, e.g.
``profile_step.py --dump``) and, for every kernel-launching instruction reached from the entry
computation (fusions, cuDNN / cuBLAS custom calls, copies, collectives; the bodies of ``call``
- CUDA-graph command buffers -, ``while``, ``conditional`` and ``async-start`` are walked,
each kernel counted once), takes the bytes it reads (its distinct operands' shapes) and
writes (its result shape; a custom call's trailing ``u8`` workspace is left out). Prints JSON
lines: one per kernel group with counts, bytes and the time those bytes take at
``--bandwidth-gbs`` (a lower bound for a memory-bound kernel; compute-bound kernels such as
convolutions take longer), a total, then the top-N kernels by bytes. ``--ops`` joins the
per-op device times of ``profile_step.py --dump`` by instruction name and adds the achieved
bandwidth. Operand bytes over-count kernels that read only a slice of an operand or update a
buffer in place, and under-count kernels that re-read their inputs (cuDNN tiles).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# Target configs (stream_executor.GpuTargetConfigProto, text format). Public datasheet figures:
# H100 SXM5 80 GB: 132 SMs, compute capability 9.0, 3.35 TB/s HBM3, 50 MiB L2, 228 KiB shared
# memory per SM (227 KiB usable by one block), 64 Ki 32-bit registers per SM, 2048 threads per
# SM, boost clock 1.98 GHz, 81559 MiB visible. H200 SXM: the same chip with 4.8 TB/s HBM3e and
# 143771 MiB visible (141 GB). {dnn} and {runtime} are filled with the installed cuDNN / CUDA
# runtime versions when the CUDA plugin can report them.
# ---------------------------------------------------------------------------------------------

_GPU_DEVICE_INFO = """gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: {memory}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ {dnn} }}
runtime_version {{ {runtime} }}
device_description_str: "{name}"
"""

GPUS = {
    "h100": {"name": "NVIDIA H100 80GB HBM3", "bandwidth": 3_350_000_000_000,
             "memory": 81559 * 2**20},
    "h200": {"name": "NVIDIA H200", "bandwidth": 4_800_000_000_000, "memory": 143771 * 2**20},
}
# Used when the plugin cannot say (cuDNN 9.8.0, CUDA 12.8: what jax[cuda12] wheels shipped with
# in 2025); the target config only steers which cuDNN features XLA may use.
_DEFAULT_DNN = (9, 8, 0)
_DEFAULT_RUNTIME = (12, 8)


def target_config(gpu: str, dnn: tuple[int, int, int] = _DEFAULT_DNN,
                  runtime: tuple[int, int] = _DEFAULT_RUNTIME) -> str:
    spec = GPUS[gpu]
    return _GPU_DEVICE_INFO.format(
        bandwidth=spec["bandwidth"], memory=spec["memory"], name=spec["name"],
        dnn=f"major: {dnn[0]} minor: {dnn[1]} patch: {dnn[2]}",
        runtime=f"major: {runtime[0]} minor: {runtime[1]}")


def _installed_cuda_versions() -> tuple[tuple[int, int, int], tuple[int, int], str]:
    """(cuDNN, CUDA runtime, where from): the installed libraries' versions as the CUDA plugin
    reports them (no device needed), else its build versions, else the defaults above."""
    import importlib

    for mod in ("jax_cuda13_plugin", "jax_cuda12_plugin"):
        try:
            v = importlib.import_module(mod + "._versions")
        except ImportError:
            continue
        for how, dnn_fn, rt_fn in (("installed", "cudnn_get_version", "cuda_runtime_get_version"),
                                   ("plugin build", "cudnn_build_version",
                                    "cuda_runtime_build_version")):
            try:
                d, r = int(getattr(v, dnn_fn)()), int(getattr(v, rt_fn)())
            except Exception as e:  # noqa: BLE001 - a library the plugin could not load
                print(f"gpu_hlo: {mod} {dnn_fn}/{rt_fn}: {e}", file=sys.stderr)
            else:
                # cuDNN 9: major*10000 + minor*100 + patch; CUDA: major*1000 + minor*10.
                return ((d // 10000, d // 100 % 100, d % 100), (r // 1000, r // 10 % 100),
                        f"{mod} {how}")
    return _DEFAULT_DNN, _DEFAULT_RUNTIME, "defaults"


# ---------------------------------------------------------------------------------------------
# compile: deviceless AOT compile of the train step (or the folded inference forward)
# ---------------------------------------------------------------------------------------------

def gpu_topology(gpu: str, devices: int = 1):
    """Compile-only devices of ``devices`` GPUs of one host, described by a target config."""
    from jax.experimental import topologies

    dnn, runtime, source = _installed_cuda_versions()
    try:
        topo = topologies.get_topology_desc(
            f"{gpu}_x{devices}", platform="cuda", target_config=target_config(gpu, dnn, runtime),
            topology=f"1x1x{devices}")
    except NotImplementedError as e:
        raise SystemExit(f"gpu_hlo compile: {e}: this venv has no CUDA plugin of jax "
                         f"(pip install 'jax[cuda13]==<this jax version>')") from e
    return list(topo.devices), {"cudnn": ".".join(map(str, dnn)),
                                "cuda_runtime": ".".join(map(str, runtime)),
                                "versions_from": source}


def abstract_step(model_name: str, batch_size: int, dtype: str, image_size: int, bn_impl: str,
                  devices: list, **model_kw):
    """(jitted step, abstract state, metrics, batch) as ``profile_step.build_step`` builds
    them, on a mesh over ``devices``, from shapes only."""
    import jax
    import jax.numpy as jnp
    import profile_step

    from flaxcls import parallel
    from flaxcls.train.state import abstract_train_state, create_train_state
    from flaxcls.train.step import TRAIN_METRICS, make_train_step

    c, model, tx, scale, size = profile_step.step_parts(model_name, batch_size, dtype,
                                                        image_size, bn_impl, **model_kw)
    mesh = parallel.make_mesh(devices)
    state = abstract_train_state(
        lambda: create_train_state(model, tx, image_size=size, seed=0, mesh=mesh,
                                   loss_scale=scale), mesh)
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    metrics = {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=rep) for k in TRAIN_METRICS}
    batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8, sharding=data),
             "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=data)}
    return make_train_step(model, tx, c, mesh), state, metrics, batch


def with_auto_state_layouts(step, state, metrics, batch):
    """The same step jitted with ``Layout.AUTO`` for the train state and metrics, in and out
    (donated as before): what the step would compile to if the trainer kept its state in the
    layouts the compiler picks (convolution kernels as OHWI on a GPU). An experiment; the
    trainer passes its state in the default layouts."""
    import jax
    from jax.experimental.layout import Format, Layout

    def auto(tree):
        return jax.tree.map(lambda a: Format(Layout.AUTO, a.sharding), tree)

    return jax.jit(step.__wrapped__, in_shardings=(auto(state), auto(metrics),
                                                    batch["image"].sharding),
                   out_shardings=(auto(state), auto(metrics)), donate_argnums=(0, 1))


def abstract_infer(args, devices: list):
    """The folded forward of ``infer_latency.build_call`` compiled for the first of ``devices``
    (weights in the compiler's layouts, or the default ones with ``--weights-layout default``);
    its initialisation and folding run on the host CPU. Returns the compiled executable."""
    import infer_latency
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from flaxcls.layouts import CompiledForward

    ns = infer_latency.forward_options(args.image_size, args.stem_space_to_depth, args.dtype)
    _, size, forward, variables, _ = infer_latency.build_forward(args.model, ns)
    rep = NamedSharding(Mesh(np.asarray(devices[:1]), ("data",)), PartitionSpec())
    call = CompiledForward(forward, variables, weights_sharding=rep,
                           auto_layout=args.weights_layout == "compiler")
    return call.compiled((args.batch, size, size, 3), args.dtype)


def cmd_compile(args) -> None:
    if "jax" in sys.modules:
        raise RuntimeError("gpu_hlo compile must set up the environment before jax loads")
    # No GPU here: the CPU is the only backend to initialise; the CUDA plugin is still loaded
    # and provides the GPU compiler behind the topology.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import _common

    _common.prepare_environment(args.xla_flags)
    import jax

    devices, versions = gpu_topology(args.gpu, args.devices)
    kw = {"stem_space_to_depth": True} if args.stem_space_to_depth else {}
    t0 = time.perf_counter()
    if args.infer:  # traced, lowered and compiled in one go
        lower_s, t0 = 0.0, time.perf_counter()
        text = abstract_infer(args, devices).as_text()
    else:
        fn, *fn_args = abstract_step(args.model, args.batch, args.dtype, args.image_size,
                                     args.bn_impl, devices, **kw)
        if args.state_layout == "compiler":
            fn = with_auto_state_layouts(fn, *fn_args)
        lowered = fn.lower(*fn_args)
        lower_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        text = lowered.compile().as_text()
    compile_s = time.perf_counter() - t0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    kernels = entry_kernels(parse_hlo(text))
    print(json.dumps({
        "benchmark": "gpu_hlo_compile", "out": os.path.basename(args.out),
        "program": "infer" if args.infer else "train_step", "model": args.model,
        "batch": args.batch, "dtype": args.dtype, "bn_impl": None if args.infer else args.bn_impl,
        "weights_layout": args.weights_layout if args.infer else None,
        "state_layout": None if args.infer else args.state_layout,
        "stem_space_to_depth": args.stem_space_to_depth, "gpu": args.gpu,
        "device_kind": devices[0].device_kind, "devices": args.devices, **versions,
        "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "trace_lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
        "kernels": len(kernels), "hlo_chars": len(text)}))


# ---------------------------------------------------------------------------------------------
# report: parse optimized HLO text, bytes per kernel
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Instr:
    name: str
    type: str  # the result type text: "bf16[8,4]{1,0}" or a tuple "(f32[2]{0}, u8[0]{0})"
    opcode: str
    operands: list[str]  # operand instruction names
    operand_types: dict[str, str]  # types written inline with the operands (older HLO text)
    attrs: str  # everything after the operand list


@dataclasses.dataclass
class Computation:
    name: str
    entry: bool
    instrs: dict[str, Instr]


@dataclasses.dataclass
class Kernel:
    name: str
    opcode: str
    kind: str  # fusion kind / custom-call target / backend fusion kind
    group: str
    bytes_read: int
    bytes_written: int
    op_name: str
    computation: str


def _dtype_bits(dtype: str) -> int:
    if dtype == "pred":
        return 8
    if dtype in ("token", "opaque") or dtype.startswith("opaque"):
        return 0
    if dtype == "bf16":
        return 16
    if dtype.startswith("f8"):
        return 8
    if dtype.startswith("f6"):
        return 6
    if dtype.startswith("f4"):
        return 4
    m = re.fullmatch(r"[suf](\d+)", dtype) or re.fullmatch(r"c(\d+)", dtype)
    if m:
        return int(m.group(1))
    raise ValueError(f"unknown HLO element type {dtype!r}")


_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([^\]]*)\]")


def array_shapes(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
    """[(element type, dims)] of every array in a (possibly tuple) HLO type text."""
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        out.append((dtype, tuple(int(d.strip().lstrip("<=")) for d in dims.split(",") if d.strip())))
    return out


def shape_bytes(type_text: str) -> int:
    return sum(math.ceil(_dtype_bits(dt) * math.prod(dims) / 8)
               for dt, dims in array_shapes(type_text))


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Splits at ``sep`` outside (), [], {} and quotes."""
    parts, depth, start, quote = [], 0, 0, False
    for i, ch in enumerate(text):
        if ch == '"' and (i == 0 or text[i - 1] != "\\"):
            quote = not quote
        elif quote:
            continue
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _matching(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``text[start]``."""
    pairs, depth, quote = {"(": ")", "{": "}", "[": "]"}, 0, False
    opener = text[start]
    for i in range(start, len(text)):
        ch = text[i]
        if ch == '"' and text[i - 1] != "\\":
            quote = not quote
        elif quote:
            continue
        elif ch == opener:
            depth += 1
        elif ch == pairs[opener]:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opener!r} in: {text[:200]}")


_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-$]+)\s.*\{\s*$")
_NAME = re.compile(r"%?([\w.\-$]+)\s*=\s*")
_COMMENT = re.compile(r"/\*.*?\*/")


def parse_instruction(line: str) -> Instr | None:
    s = line.strip().removeprefix("ROOT ")
    m = _NAME.match(s)
    if not m:
        return None
    rest = s[m.end():]
    if rest.startswith("("):
        end = _matching(rest, 0)
        type_text, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        type_text, _, rest = rest.partition(" ")
    paren = rest.find("(")
    if paren < 0:
        return None
    opcode = rest[:paren].strip()
    close = _matching(rest, paren)
    operand_text, attrs = rest[paren + 1:close], rest[close + 1:]
    operands, operand_types = [], {}
    if opcode not in ("constant", "parameter", "iota"):
        for piece in _split_top(operand_text):
            piece = _COMMENT.sub("", piece)  # XLA marks every fifth operand /*index=N*/
            om = re.search(r"%([\w.\-$]+)\s*$", piece)
            if not om:
                continue
            operands.append(om.group(1))
            if piece[:om.start()].strip():
                operand_types[om.group(1)] = piece[:om.start()].strip()
    return Instr(m.group(1), type_text, opcode, operands, operand_types, attrs)


def parse_hlo(text: str) -> dict[str, Computation]:
    """Computations of an HLO module text by name; the entry one has ``entry=True``."""
    comps: dict[str, Computation] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and not line.startswith((" ", "\t", "HloModule")):
                current = Computation(m.group(2), bool(m.group(1)), {})
            continue
        if line.startswith("}"):
            comps[current.name] = current
            current = None
            continue
        ins = parse_instruction(line)
        if ins is not None:
            current.instrs[ins.name] = ins
    return comps


# Instructions that launch no kernel: buffer views, tuples, markers, the second half of
# async pairs. Control flow (call, while, conditional, async-start) is walked into instead.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "opt-barrier",
         "after-all", "add-dependency", "domain", "partition-id", "replica-id",
         "get-dimension-size", "all-reduce-done", "all-gather-done", "collective-permute-done",
         "copy-done", "async-done", "async-update", "send-done", "recv-done"}
_DESCEND = {"call": ("to_apply",), "while": ("condition", "body"),
            "conditional": ("branch_computations", "true_computation", "false_computation"),
            "async-start": ("calls",)}
_COLLECTIVES = {"all-reduce", "all-reduce-start", "all-gather", "all-gather-start",
                "reduce-scatter", "collective-permute", "collective-permute-start", "all-to-all",
                "ragged-all-to-all", "collective-broadcast", "send", "recv"}
_VIEW_OPS = {"parameter", "bitcast", "reshape", "constant", "tuple", "get-tuple-element"}

GROUPS = ("conv forward", "conv backward input", "conv backward filter", "gemm",
          "reduction fusions", "pooling / scatter fusions", "transpose fusions",
          "elementwise fusions", "copies", "collectives", "other")


def _called(attrs: str, key: str) -> list[str]:
    m = re.search(rf"\b{key}=(\{{[^}}]*\}}|%?[\w.\-$]+)", attrs)
    if not m:
        return []
    return [n.strip().lstrip("%") for n in m.group(1).strip("{}").split(",") if n.strip()]


def _attr(attrs: str, key: str) -> str:
    m = re.search(rf'\b{key}=("[^"]*"|[\w.\-$%]+)', attrs)
    return m.group(1).strip('"').replace("\\'", "'") if m else ""


def _fused_opcodes(comps: dict[str, Computation], name: str, seen=None) -> set[str]:
    """Opcodes inside a fused computation, nested fusions included."""
    seen = set() if seen is None else seen
    if name in seen or name not in comps:
        return set()
    seen.add(name)
    ops = set()
    for ins in comps[name].instrs.values():
        ops.add(ins.opcode)
        if ins.opcode == "fusion":
            for callee in _called(ins.attrs, "calls"):
                ops |= _fused_opcodes(comps, callee, seen)
    return ops


def _custom_call_group(target: str) -> str:
    t = target.lower()
    if "backwardfilter" in t or "bw-filter" in t:
        return "conv backward filter"
    if "backwardinput" in t or "bw-input" in t:
        return "conv backward input"
    if t.startswith("__cudnn$conv"):
        return "conv forward"
    if "gemm" in t or "matmul" in t or "cublas" in t:
        return "gemm"
    return "other"


def _fusion_group(ops: set[str], kind: str) -> str:
    if ops & {"dot", "ragged-dot", "scaled-dot"} or "gemm" in kind:
        return "gemm"
    if "convolution" in ops:
        return "conv forward"
    if "reduce" in ops:
        return "reduction fusions"
    if ops & {"reduce-window", "select-and-scatter", "scatter"}:
        return "pooling / scatter fusions"
    if "transpose" in ops:
        return "transpose fusions"
    if "copy" in ops and ops <= _VIEW_OPS | {"copy"}:
        return "copies"
    return "elementwise fusions"


def classify(ins: Instr, comps: dict[str, Computation]) -> tuple[str, str]:
    """(group, kind) of one kernel-launching instruction."""
    op = ins.opcode
    if op == "custom-call":
        target = _attr(ins.attrs, "custom_call_target")
        return _custom_call_group(target), target
    if op == "fusion":
        kind = _attr(ins.attrs, "kind")
        backend = re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"', ins.attrs)
        if backend:
            kind = f"{kind}:{backend.group(1)}"
        ops = set()
        for callee in _called(ins.attrs, "calls"):
            ops |= _fused_opcodes(comps, callee)
        if backend and backend.group(1).startswith("__cudnn"):
            return ("conv forward" if "convolution" in ops else
                    "gemm" if "dot" in ops else "other"), kind
        return _fusion_group(ops, kind), kind
    if op in ("copy", "copy-start"):
        return "copies", op
    if op == "transpose":
        return "transpose fusions", op
    if op in _COLLECTIVES:
        return "collectives", op
    if op in ("dot", "ragged-dot"):
        return "gemm", op
    if op == "convolution":
        return "conv forward", op
    if op == "reduce":
        return "reduction fusions", op
    if op in ("reduce-window", "select-and-scatter", "scatter"):
        return "pooling / scatter fusions", op
    return "other", op


def _written_bytes(ins: Instr) -> int:
    if ins.opcode == "copy-start":  # (destination, source, context): the copy writes one
        arrays = array_shapes(ins.type)
        return shape_bytes(f"{arrays[0][0]}[{','.join(map(str, arrays[0][1]))}]") if arrays else 0
    if ins.opcode == "custom-call" and ins.type.startswith("("):
        parts = _split_top(ins.type[1:-1])
        if len(parts) > 1 and parts[-1].startswith("u8["):  # cuDNN / cuBLAS workspace
            parts = parts[:-1]
        return sum(shape_bytes(p) for p in parts)
    return shape_bytes(ins.type)


def entry_kernels(comps: dict[str, Computation]) -> list[Kernel]:
    """Every kernel-launching instruction reached from the entry computation, in order."""
    entry = next((c for c in comps.values() if c.entry), None)
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    out: list[Kernel] = []

    def walk(comp: Computation, seen: tuple[str, ...]) -> None:
        for ins in comp.instrs.values():
            if ins.opcode in _FREE:
                continue
            if ins.opcode in _DESCEND:
                for key in _DESCEND[ins.opcode]:
                    for callee in _called(ins.attrs, key):
                        if callee in comps and callee not in seen:
                            walk(comps[callee], (*seen, callee))
                continue
            group, kind = classify(ins, comps)
            read = 0
            for name in dict.fromkeys(ins.operands):  # each distinct operand once
                t = ins.operand_types.get(name) or (
                    comp.instrs[name].type if name in comp.instrs else "")
                read += shape_bytes(t)
            out.append(Kernel(ins.name, ins.opcode, kind, group, read, _written_bytes(ins),
                              _attr(ins.attrs, "op_name"), comp.name))

    walk(entry, (entry.name,))
    return out


def _us(nbytes: int, bandwidth_gbs: float) -> float:
    return nbytes / (bandwidth_gbs * 1e3)


def summarize(kernels: list[Kernel], bandwidth_gbs: float, top: int = 20,
              ops_ns: dict[str, float] | None = None) -> list[dict]:
    """JSON-ready rows: one per group (GROUPS order, empty groups left out), the total, then
    the ``top`` kernels by bytes moved. ``ops_ns``: measured ns per step by instruction name."""
    rows = []
    total_bytes = sum(k.bytes_read + k.bytes_written for k in kernels) or 1
    by_group = collections.defaultdict(list)
    for k in kernels:
        by_group[k.group].append(k)

    def measured(ks):
        if ops_ns is None:
            return {}
        hit = [k for k in ks if k.name in ops_ns]
        ns = sum(ops_ns[k.name] for k in hit)
        moved = sum(k.bytes_read + k.bytes_written for k in hit)
        return {"measured_kernels": len(hit), "measured_ms": round(ns / 1e6, 4),
                "achieved_gbs": round(moved / ns, 1) if ns else None}

    for group in GROUPS:
        ks = by_group.get(group)
        if not ks:
            continue
        r, w = sum(k.bytes_read for k in ks), sum(k.bytes_written for k in ks)
        rows.append({"group": group, "kernels": len(ks), "bytes_read": r, "bytes_written": w,
                     "bytes": r + w, "share_bytes": round((r + w) / total_bytes, 4),
                     "min_ms": round(_us(r + w, bandwidth_gbs) / 1e3, 4),
                     "kinds": dict(collections.Counter(k.kind for k in ks).most_common()),
                     **measured(ks)})
    r = sum(k.bytes_read for k in kernels)
    w = sum(k.bytes_written for k in kernels)
    rows.append({"group": "total", "kernels": len(kernels), "bytes_read": r, "bytes_written": w,
                 "bytes": r + w, "min_ms": round(_us(r + w, bandwidth_gbs) / 1e3, 4),
                 "bandwidth_gbs": bandwidth_gbs, **measured(kernels)})
    ranked = sorted(kernels, key=lambda k: k.bytes_read + k.bytes_written, reverse=True)
    for i, k in enumerate(ranked[:top], 1):
        row = {"rank": i, "kernel": k.name, "group": k.group, "kind": k.kind,
               "bytes_read": k.bytes_read, "bytes_written": k.bytes_written,
               "min_us": round(_us(k.bytes_read + k.bytes_written, bandwidth_gbs), 2),
               "op_name": k.op_name[-120:]}
        if ops_ns is not None and k.name in ops_ns:
            row["measured_us"] = round(ops_ns[k.name] / 1e3, 2)
        rows.append(row)
    return rows


def load_ops(path: str) -> dict[str, float]:
    """ns per step by op name from ``profile_step.py --dump``'s LABEL.ops.json."""
    with open(path) as f:
        data = json.load(f)
    return {op["name"]: float(op["ns_per_step"]) for op in data["ops"]}


def cmd_report(args) -> None:
    with open(args.hlo) as f:
        kernels = entry_kernels(parse_hlo(f.read()))
    ops_ns = load_ops(args.ops) if args.ops else None
    base = {"hlo": os.path.basename(args.hlo)}
    for row in summarize(kernels, args.bandwidth_gbs, args.top, ops_ns):
        print(json.dumps({**base, **row}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="deviceless compile for an H100/H200; needs the CUDA plugin")
    c.add_argument("--out", required=True, help="write the optimized HLO text here")
    c.add_argument("--gpu", default="h100", choices=sorted(GPUS))
    c.add_argument("--devices", type=int, default=1, help="GPUs of one host (data-parallel mesh)")
    c.add_argument("--model", default="ResNet50")
    c.add_argument("--batch", type=int, default=256, help="global batch")
    c.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    c.add_argument("--image-size", type=int, default=0)
    c.add_argument("--bn-impl", default="flax", choices=["flax", "fused"])
    c.add_argument("--state-layout", default="default", choices=["default", "compiler"],
                   help="train step: the state in the default layouts (as the trainer runs) or "
                        "in the layouts the compiler picks (an experiment)")
    c.add_argument("--stem-space-to-depth", action="store_true")
    c.add_argument("--infer", action="store_true",
                   help="the BatchNorm-folded forward of infer_latency.py instead of a train step")
    c.add_argument("--weights-layout", default="compiler", choices=["compiler", "default"],
                   help="--infer: weights in the compiler's layouts (as infer_latency.py) or the "
                        "default ones (plain jit: one transpose per convolution kernel per call)")
    c.add_argument("--xla-flags", default="", help="appended to $XLA_FLAGS")
    r = sub.add_parser("report", help="bytes per kernel of an optimized GPU HLO text")
    r.add_argument("hlo")
    r.add_argument("--bandwidth-gbs", type=float, default=4800.0,
                   help="HBM bandwidth for the lower-bound times (H200 4800, H100 SXM 3350)")
    r.add_argument("--top", type=int, default=20)
    r.add_argument("--ops", default="", help="LABEL.ops.json of profile_step.py --dump")
    args = p.parse_args(argv)
    (cmd_compile if args.cmd == "compile" else cmd_report)(args)


if __name__ == "__main__":
    main()
