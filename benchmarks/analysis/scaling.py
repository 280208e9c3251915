"""Data-parallel scaling on paper: the collectives one train step compiles to, and what the
gradient all-reduce would cost on 8 GPUs over NVLink and on 2-32 hosts over a network.

    # what XLA emits (run with fake devices on a CPU, or on real ones):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python benchmarks/scaling.py hlo --model ResNet_tiny --image-size 32
    # the estimate, from a measured single-GPU step time (ms) at the per-GPU batch:
    python benchmarks/scaling.py estimate --model ResNet50 --step-ms STEP_MS
    python benchmarks/scaling.py estimate --results bench_out/results.jsonl

The estimate uses the textbook ring all-reduce cost, ``2 (n - 1) / n * bytes / bandwidth +
2 (n - 1) * latency``, hierarchically across hosts (reduce-scatter over NVLink, all-reduce
of one eighth across hosts on each GPU's own NIC, all-gather over NVLink). Bandwidths and
latencies are ASSUMPTIONS given as arguments (defaults: NVLink 4 bus bandwidth 400 GB/s per
GPU; 400 Gb/s InfiniBand, one NIC per GPU, 45 GB/s; 15 us for a small all-reduce inside a
node, 5 us per tree level across hosts), not measurements. Efficiency is stated twice: with the all-reduce exposed (after the
backward pass) and with it overlapped with the backward pass (taken as 2/3 of the step).
Global-batch BatchNorm adds small latency-bound all-reduces per step; their count comes from
the compiled HLO (``hlo``) and is charged at the latency term only. With per-device BatchNorm
(``--bn-stats device``, ``config.bn_stats``) the step has one all-reduce, after the whole
backward pass, so nothing overlaps it: both columns then give the exposed cost.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

_ALL_REDUCE = re.compile(r"=\s*(\(.*?\)|\S+)\s+all-reduce(?:-start)?\(")
_ARRAY = re.compile(r"\b(pred|[fsu]\d+|bf16)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}


def _dtype_bytes(name: str) -> int:
    return _BYTES.get(name, max(int(re.sub(r"\D", "", name) or 8) // 8, 1))


def collective_summary(hlo_text: str) -> dict[str, Any]:
    """All-reduce instructions of a compiled HLO module: how many, how many operands, bytes,
    and the ones that carry rank >= 2 arrays (weight gradients, not BatchNorm statistics)."""
    ops = []
    for line in hlo_text.splitlines():
        m = _ALL_REDUCE.search(line)
        if not m:
            continue
        arrays = [(dt, [int(d) for d in dims.split(",") if d]) for dt, dims in
                  _ARRAY.findall(m.group(1))]
        ops.append({
            "operands": len(arrays),
            "bytes": sum(_dtype_bytes(dt) * _prod(shape) for dt, shape in arrays),
            "rank2_elements": sum(_prod(shape) for _, shape in arrays if len(shape) >= 2),
        })
    grad_ops = [o for o in ops if o["rank2_elements"]]
    return {
        "all_reduce_ops": len(ops),
        "all_reduce_operands": sum(o["operands"] for o in ops),
        "all_reduce_bytes": sum(o["bytes"] for o in ops),
        "ops_with_weight_gradients": len(grad_ops),
        "weight_gradient_elements": sum(o["rank2_elements"] for o in ops),
        "largest_op_bytes": max((o["bytes"] for o in ops), default=0),
    }


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def compiled_step_hlo(model_name: str, image_size: int, per_device_batch: int,
                      bn_stats: str = "global") -> tuple[str, dict]:
    """The train step's compiled HLO text on every visible device, from abstract inputs."""
    import jax
    import numpy as np

    import flaxcls
    from flaxcls import parallel
    from flaxcls.config import default_config
    from flaxcls.train import optim
    from flaxcls.train.state import create_train_state
    from flaxcls.train.step import TRAIN_METRICS, make_train_step

    cfg = flaxcls.get_model_cfg(model_name)
    size = image_size or cfg.input_size
    batch = per_device_batch * jax.device_count()
    c = default_config()
    c.model, c.num_classes, c.batch_size, c.bn_stats = cfg.name, 10, batch, bn_stats
    mesh = parallel.make_mesh()
    model = flaxcls.create_model(cfg.name, num_classes=10)
    tx = optim.make_optimizer(c, 0.1)
    rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    state = jax.eval_shape(lambda: create_train_state(model, tx, image_size=size, seed=0,
                                                      mesh=mesh))
    state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), state)
    metrics = {k: jax.ShapeDtypeStruct((), np.float32, sharding=rep) for k in TRAIN_METRICS}
    images = jax.ShapeDtypeStruct((batch, size, size, 3), np.uint8, sharding=data)
    labels = jax.ShapeDtypeStruct((batch,), np.int32, sharding=data)
    step = make_train_step(model, tx, c, mesh)
    text = step.lower(state, metrics, {"image": images, "label": labels}).compile().as_text()
    params = jax.tree.leaves(state.params)
    facts = {
        "model": cfg.name, "devices": jax.device_count(), "platform": jax.default_backend(),
        "image_size": size, "batch": batch, "bn_stats": bn_stats, "param_leaves": len(params),
        "params": sum(_prod(p.shape) for p in params),
        "weight_elements": sum(_prod(p.shape) for p in params if len(p.shape) >= 2),
        "batchnorms": len(jax.tree.leaves(state.batch_stats)) // 2,
        "batch_stats_elements": sum(_prod(s.shape) for s in jax.tree.leaves(state.batch_stats)),
        "jax": jax.__version__,
    }
    return text, facts


def ring_allreduce_s(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce over n participants at ``bandwidth`` bytes/s per participant."""
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def estimate(grad_bytes: float, step_s: float, small_allreduces: int, *, gpus_per_host: int = 8,
             nvlink_gbs: float = 400.0, nic_gbs: float = 45.0, node_latency_us: float = 15.0,
             net_latency_us: float = 5.0, hosts=(1, 2, 4, 8, 16, 32),
             can_overlap: bool = True) -> list[dict[str, Any]]:
    """All-reduce time and per-GPU efficiency for ``hosts`` x ``gpus_per_host`` GPUs.
    ``can_overlap=False``: the gradient all-reduce starts after the backward pass (one fused
    all-reduce per step), so the "overlapped" efficiency equals the exposed one."""
    rows = []
    nv, nic = nvlink_gbs * 1e9, nic_gbs * 1e9
    a_node, a_net = node_latency_us * 1e-6, net_latency_us * 1e-6
    g = gpus_per_host
    for h in hosts:
        # Reduce-scatter + all-gather inside the node: together one ring all-reduce's traffic.
        intra = ring_allreduce_s(grad_bytes, g, nv, a_node / (2 * (g - 1)))
        inter = ring_allreduce_s(grad_bytes / g, h, nic, a_net)
        grads = intra + inter
        # A small all-reduce costs latency only: one in-node step, plus a tree across hosts.
        small = small_allreduces * (a_node + (2 * math.log2(h) * a_net if h > 1 else 0.0))
        exposed = grads + small
        hidden = 2.0 / 3.0 * step_s if can_overlap else 0.0
        overlapped = max(0.0, grads - hidden) + small
        rows.append({
            "hosts": h, "gpus": h * g, "grad_allreduce_ms": round(grads * 1e3, 3),
            "batchnorm_allreduces_ms": round(small * 1e3, 3),
            "efficiency_exposed": round(step_s / (step_s + exposed), 3),
            "efficiency_overlapped": round(step_s / (step_s + overlapped), 3),
        })
    return rows


def _step_from_results(path: str, model: str) -> tuple[float, int]:
    """The fastest measured jax train step of ``model`` in a results.jsonl: (seconds, batch)."""
    best = None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.startswith("{")]
    for r in rows:
        if (r.get("benchmark") == "train_step" and r.get("framework", "jax") == "jax"
                and r.get("model") == model and "step_ms" in r and r.get("devices", 1) == 1
                and (best is None or r["images_per_sec"] > best["images_per_sec"])):
            best = r
    if best is None:
        raise SystemExit(f"{path}: no single-device train_step result for {model}")
    return best["step_ms"] / 1e3, best["batch"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("hlo", help="count the collectives of the compiled train step")
    h.add_argument("--model", default="ResNet_tiny")
    h.add_argument("--image-size", type=int, default=32)
    h.add_argument("--per-device-batch", type=int, default=2)
    h.add_argument("--bn-stats", choices=("global", "device"), default="global",
                   help="BatchNorm statistics over the global batch or per device")
    e = sub.add_parser("estimate", help="all-reduce time and efficiency on paper")
    e.add_argument("--model", default="ResNet50")
    e.add_argument("--step-ms", type=float, default=0.0,
                   help="measured single-GPU step time (fill in after measuring)")
    e.add_argument("--batch", type=int, default=0, help="per-GPU batch of that step")
    e.add_argument("--results", default="", help="read the step time from a results.jsonl")
    e.add_argument("--grad-bytes-per-param", type=int, default=4, help="4: float32 gradients")
    e.add_argument("--bn-stats", choices=("global", "device"), default="global",
                   help="device: per-device BatchNorm, no BatchNorm all-reduces and one "
                        "gradient all-reduce after the backward pass (config.bn_stats)")
    e.add_argument("--batchnorm-allreduces", type=int, default=-1,
                   help="small all-reduces per step (-1: 2 per BatchNorm, statistics forward "
                        "and their gradients backward; the 8-device CPU compile of ResNet50 "
                        "showed 96 for its 53 BatchNorms)")
    e.add_argument("--nvlink-gbs", type=float, default=400.0)
    e.add_argument("--nic-gbs", type=float, default=45.0)
    e.add_argument("--node-latency-us", type=float, default=15.0,
                   help="one small all-reduce inside a node (and per ring step of a large one "
                        "divided by the ring length)")
    e.add_argument("--net-latency-us", type=float, default=5.0, help="per tree level / hop")
    args = p.parse_args(argv)

    if args.cmd == "hlo":
        text, facts = compiled_step_hlo(args.model, args.image_size, args.per_device_batch,
                                        args.bn_stats)
        print(json.dumps({**facts, **collective_summary(text)}), flush=True)
        return

    import jax
    import jax.numpy as jnp

    import flaxcls

    model = flaxcls.create_model(args.model, num_classes=1000)
    size = flaxcls.get_model_cfg(args.model).input_size
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
    params = sum(_prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    bns = len(jax.tree.leaves(shapes.get("batch_stats", {}))) // 2
    step_s, batch = args.step_ms / 1e3, args.batch
    if args.results:
        step_s, batch = _step_from_results(args.results, flaxcls.get_model_cfg(args.model).name)
    if step_s <= 0:
        p.error("estimate needs --step-ms (the measured step time) or --results")
    small = 2 * bns if args.batchnorm_allreduces < 0 else args.batchnorm_allreduces
    if args.bn_stats == "device":
        small = 0
    grad_bytes = params * args.grad_bytes_per_param
    rows = estimate(grad_bytes, step_s, small, nvlink_gbs=args.nvlink_gbs,
                    nic_gbs=args.nic_gbs, node_latency_us=args.node_latency_us,
                    net_latency_us=args.net_latency_us,
                    can_overlap=args.bn_stats == "global")
    head = {"model": args.model, "params": params, "grad_bytes": grad_bytes, "step_ms":
            round(step_s * 1e3, 3), "per_gpu_batch": batch, "bn_stats": args.bn_stats,
            "batchnorm_allreduces": small,
            "nvlink_gbs": args.nvlink_gbs, "nic_gbs": args.nic_gbs, "assumed": True}
    print(json.dumps(head))
    print("| hosts | GPUs | gradient all-reduce (ms) | BN all-reduces (ms) | efficiency, exposed "
          "| efficiency, overlapped |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['hosts']} | {r['gpus']} | {r['grad_allreduce_ms']:.2f} | "
              f"{r['batchnorm_allreduces_ms']:.2f} | {r['efficiency_exposed']:.1%} | "
              f"{r['efficiency_overlapped']:.1%} |")


if __name__ == "__main__":
    main()
