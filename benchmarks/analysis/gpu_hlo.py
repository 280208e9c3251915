"""The train step as XLA:GPU would run it on an H100/H200, compiled on a machine without a GPU,
and a per-kernel memory-traffic report of any optimized GPU HLO.

    # in a venv with jax[cuda13] (or jax-cuda13-plugin + jax-cuda13-pjrt) of the project's jax:
    python benchmarks/analysis/gpu_hlo.py compile --out r50_flax.hlo --bn-impl flax
    python benchmarks/analysis/gpu_hlo.py compile --out r50_fused.hlo --bn-impl fused --gpu h200
    python benchmarks/analysis/gpu_hlo.py compile --out r50_infer.hlo --infer --batch 1
    # anywhere (no jax needed):
    python benchmarks/analysis/gpu_hlo.py report r50_flax.hlo --bandwidth-gbs 4800 --top 20
    python benchmarks/analysis/gpu_hlo.py report DIR/LABEL.hlo.txt --ops DIR/LABEL.ops.json

``compile`` builds the trainer's own jitted step with the loop's builder, as
``profile_step.py`` does (same config fields, model, optimizer, state and batch structure), but
from shapes only (``Trainer.abstract_state``, ``abstract_inputs``), on the compile-only devices
of a GPU topology described by a target config
(``jax.experimental.topologies.get_topology_desc`` with a ``GpuTargetConfigProto`` text), and
writes ``compiled.as_text()``: the HLO after XLA:GPU's fusion, layout and scheduling passes.
Nothing runs and no GPU is needed, but the CUDA plugin must be installed. Without a device XLA
cannot autotune: convolutions keep cuDNN's default algorithm (workspace 0 bytes), Triton GEMMs
a default tiling, so kernel *choices* inside a custom call may differ on a real GPU; which ops
fuse into which kernels does not depend on it.

``report`` reads an optimized GPU HLO text (from ``compile`` or dumped on a real GPU, e.g.
``profile_step.py --dump``) with ``hlo.py``: every kernel-launching instruction reached from
the entry computation, its group and the bytes it reads and writes. Prints JSON lines: one per
kernel group with counts, bytes and the time those bytes take at ``--bandwidth-gbs`` (a lower
bound for a memory-bound kernel; compute-bound kernels such as convolutions take longer), a
total, then the top-N kernels by bytes. ``--ops`` joins the per-op device times of
``profile_step.py --dump`` by instruction name and adds the achieved bandwidth. Operand bytes
over-count kernels that read only a slice of an operand or update a buffer in place, and
under-count kernels that re-read their inputs (cuDNN tiles).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

# This folder (hlo), the benchmarks' (_common, infer_latency); _common adds the repository's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import hlo

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
                  devices: list, stem_space_to_depth: bool = False):
    """(jitted step, abstract state, metrics, batch): the trainer's step for the config that
    ``profile_step.build_step`` profiles, on a mesh over ``devices``, from shapes only."""
    c = _common.bench_config(model_name, image_size=image_size, batch_size=batch_size,
                             dtype=dtype, bn_impl=bn_impl, stem_space_to_depth=stem_space_to_depth)
    trainer = _common.build_trainer(c, devices=devices)
    metrics, batch = trainer.abstract_inputs(batch_size)
    return trainer.train_step, trainer.abstract_state(), metrics, batch


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
    _common.prepare_environment(args.xla_flags)
    import jax

    devices, versions = gpu_topology(args.gpu, args.devices)
    t0 = time.perf_counter()
    if args.infer:  # traced, lowered and compiled in one go
        lower_s, t0 = 0.0, time.perf_counter()
        text = abstract_infer(args, devices).as_text()
    else:
        fn, *fn_args = abstract_step(args.model, args.batch, args.dtype, args.image_size,
                                     args.bn_impl, devices, args.stem_space_to_depth)
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
    kernels = hlo.entry_kernels(hlo.parse_hlo(text))
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
# report: bytes per kernel of an optimized HLO text (parsed and grouped by hlo.py)
# ---------------------------------------------------------------------------------------------



def _us(nbytes: int, bandwidth_gbs: float) -> float:
    return nbytes / (bandwidth_gbs * 1e3)


def summarize(kernels: list[hlo.Kernel], bandwidth_gbs: float, top: int = 20,
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

    for group in hlo.GROUPS:
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
        kernels = hlo.entry_kernels(hlo.parse_hlo(f.read()))
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
