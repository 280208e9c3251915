"""Data-parallel scaling on paper: the collectives one train step compiles to, and what the
gradient all-reduce would cost on 8 GPUs over NVLink and on 2-32 hosts over a network.

    # what XLA emits (run with fake devices on a CPU, or on real ones):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python benchmarks/analysis/scaling.py hlo --model ResNet_tiny --image-size 32
    # the estimate, from a measured single-GPU step time (ms) at the per-GPU batch:
    python benchmarks/analysis/scaling.py estimate --model ResNet50 --step-ms STEP_MS
    python benchmarks/analysis/scaling.py estimate --results bench_out/results.jsonl

The estimate uses the textbook ring all-reduce cost, ``2 (n - 1) / n * bytes / bandwidth + 2 (n
- 1) * latency``, hierarchically across hosts (reduce-scatter over NVLink, all-reduce of one
eighth across hosts on each GPU's own NIC, all-gather over NVLink). Bandwidths and latencies
are ASSUMPTIONS given as arguments (defaults: NVLink 4 bus bandwidth 400 GB/s per GPU; 400 Gb/s
InfiniBand, one NIC per GPU, 45 GB/s; 15 us for a small all-reduce inside a node, 5 us per tree
level across hosts), not measurements. Efficiency is stated twice: with the all-reduce exposed
(after the backward pass) and with it overlapped with the backward pass (taken as 2/3 of the
step). Global-batch BatchNorm adds small latency-bound all-reduces per step; their count comes
from the compiled HLO (``hlo``) and is charged at the latency term only. With per-device
BatchNorm (``--bn-stats device``, ``config.bn_stats``) the step has one all-reduce, after the
whole backward pass, so nothing overlaps it: both columns then give the exposed cost.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

# This folder (hlo), the benchmarks' (_common); _common adds the repository's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import hlo


def abstract_state(model_name: str, image_size: int, per_device_batch: int, **fields: Any):
    """(trainer, abstract train state) of the loop's chain for ``model_name`` on every visible
    device, ``per_device_batch`` images on each."""
    import jax

    c = _common.bench_config(model_name, image_size=image_size,
                             batch_size=per_device_batch * jax.device_count(), **fields)
    trainer = _common.build_trainer(c)
    return trainer, trainer.abstract_state()


def param_facts(state) -> dict[str, int]:
    """Parameter arrays and elements (all, and those of rank >= 2: weights) and BatchNorms."""
    import jax

    params = [p.shape for p in jax.tree.leaves(state.params)]
    stats = [s.shape for s in jax.tree.leaves(state.batch_stats)]
    return {"param_leaves": len(params), "params": sum(map(math.prod, params)),
            "weight_elements": sum(math.prod(p) for p in params if len(p) >= 2),
            "batchnorms": len(stats) // 2, "batch_stats_elements": sum(map(math.prod, stats))}


def compiled_step_hlo(model_name: str, image_size: int, per_device_batch: int,
                      bn_stats: str = "global") -> tuple[str, dict]:
    """The train step's compiled HLO text on every visible device, from abstract inputs (10
    classes, float32)."""
    import jax

    trainer, state = abstract_state(model_name, image_size, per_device_batch, num_classes=10,
                                    bn_stats=bn_stats)
    batch = trainer.specs.run.batch_size
    metrics, inputs = trainer.abstract_inputs(batch)
    text = trainer.train_step.lower(state, metrics, inputs).compile().as_text()
    facts = {
        "model": trainer.specs.model.name, "devices": jax.device_count(),
        "platform": jax.default_backend(), "image_size": trainer.image_size, "batch": batch,
        "bn_stats": bn_stats, **param_facts(state), "jax": jax.__version__,
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
    for r in _common.read_jsonl(path):
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
        print(json.dumps({**facts, **hlo.collective_summary(text)}), flush=True)
        return

    trainer, state = abstract_state(args.model, 0, 1)
    model = trainer.specs.model.name
    facts = param_facts(state)
    params, bns = facts["params"], facts["batchnorms"]
    step_s, batch = args.step_ms / 1e3, args.batch
    if args.results:
        step_s, batch = _step_from_results(args.results, model)
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
