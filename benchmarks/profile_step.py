"""Where the train step's time goes: a device trace of a few steps, summarised per XLA op.

    python benchmarks/profile_step.py --model ResNet50 --batch 256 --dtype bfloat16
    python benchmarks/profile_step.py --model ResNet50 --batch 256 --bn-impl fused
    python benchmarks/profile_step.py --infer --model ResNet50 --batch 1   # folded inference

Builds the trainer's own jitted step (as ``train_throughput.py`` does), runs it a few times
under ``jax.profiler.trace`` and reads the trace back with ``jax.profiler.ProfileData`` (no
TensorBoard, no TensorFlow). Prints one JSON line per op group (convolutions forward, the two
convolution backward passes, fusions, copies, collectives ...) with its share of device time,
then the slowest single ops. ``--keep DIR`` keeps the raw ``.xplane.pb`` for other viewers.
``--infer`` traces the BatchNorm-folded forward of ``infer_latency.py`` instead, one blocked
call at a time, so that at batch 1 the device time per call can be set against the wall time
per call (the difference is launch and dispatch overhead).
``--dump DIR`` writes, for offline study on any machine, ``LABEL.hlo.txt`` (the optimized HLO
of the profiled program, as compiled on this device) and ``LABEL.ops.json`` (every op's name,
group, event count and total device time in the trace), which ``gpu_hlo.py report --ops``
joins by instruction name.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def step_parts(model_name: str, batch_size: int, dtype: str, image_size: int, bn_impl: str,
               **model_kw):
    """(config, model, optimizer, loss scale or None, image size) of the trainer's step for a
    synthetic benchmark; ``gpu_hlo.py`` builds its deviceless step from the same parts."""
    import flaxcls
    from flaxcls.config import default_config
    from flaxcls.train import losses, optim

    cfg = flaxcls.get_model_cfg(model_name)
    size = image_size or cfg.input_size
    c = default_config()
    c.model, c.dtype, c.batch_size, c.bn_impl = cfg.name, dtype, batch_size, bn_impl
    c.crop_size = c.resize_short_size = size
    model = flaxcls.create_model(cfg.name, num_classes=c.num_classes, dtype=dtype, **model_kw)
    tx = optim.make_optimizer(c, optim.make_schedule(c, 1000, batch_size))
    scale = losses.DynamicScale.create(c.loss_scale) if dtype == "float16" else None
    return c, model, tx, scale, size


def build_step(model_name: str, batch_size: int, dtype: str, image_size: int,
               bn_impl: str = "flax", **model_kw):
    import jax
    import numpy as np

    from flaxcls import parallel
    from flaxcls.train.state import create_train_state
    from flaxcls.train.step import TRAIN_METRICS, make_train_step, zeros_metrics

    c, model, tx, scale, size = step_parts(model_name, batch_size, dtype, image_size, bn_impl,
                                           **model_kw)
    mesh = parallel.make_mesh()
    state = create_train_state(model, tx, image_size=size, seed=0, mesh=mesh, loss_scale=scale)
    rng = np.random.RandomState(0)
    batch = parallel.host_to_global(
        {"image": rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
         "label": rng.randint(0, c.num_classes, (batch_size,)).astype(np.int32)},
        mesh,
    )
    metrics = zeros_metrics(TRAIN_METRICS, mesh)
    # Compiled once, outside the trace; the trace runs this executable and --dump writes its
    # HLO, so the dumped instruction names are the profiled ones.
    step = make_train_step(model, tx, c, mesh).lower(state, metrics, batch).compile()
    state, metrics = step(state, metrics, batch)
    jax.block_until_ready(state)
    return step, state, metrics, batch


def build_infer(args):
    """(``CompiledForward`` of the folded forward of ``infer_latency.py``, an input batch)."""
    import infer_latency
    import jax
    import numpy as np

    ns = infer_latency.forward_options(args.image_size, args.stem_space_to_depth, args.dtype)
    _, size, call, _ = infer_latency.build_call(args.model, ns, args.weights_layout)
    x = jax.device_put(np.random.RandomState(0).normal(
        size=(args.batch, size, size, 3)).astype(args.dtype))
    return call, x


_GROUPS = [
    ("conv backward filter", re.compile(r"bw-filter|backward.?filter|wgrad", re.IGNORECASE)),
    ("conv backward input", re.compile(r"bw-input|backward.?input|dgrad", re.IGNORECASE)),
    # "conv" but not "convert" (XLA names dtype-conversion fusions "..._convert_fusion").
    ("conv forward", re.compile(r"cudnn-conv|conv(?!ert)|fprop", re.IGNORECASE)),
    ("gemm", re.compile(r"gemm|cublas|dot", re.IGNORECASE)),
    ("all-reduce / collectives", re.compile(r"all-reduce|nccl|collective|all-gather", re.IGNORECASE)),
    ("reduction fusions (BN statistics)", re.compile(r"reduce", re.IGNORECASE)),
    ("other fusions (BN apply, ReLU, optimizer ...)", re.compile(r"fusion", re.IGNORECASE)),
    ("copies / transposes", re.compile(r"copy|transpose|memcpy|memset", re.IGNORECASE)),
]


def group_of(name: str) -> str:
    for label, pattern in _GROUPS:
        if pattern.search(name):
            return label
    return "other"


def _events(planes, line_filter) -> list[tuple[str, int]]:
    return [(ev.name, ev.duration_ns) for plane in planes for line in plane.lines
            if any(f in line.name for f in line_filter) for ev in line.events]


def device_op_events(path: str):
    """(name, duration_ns) of every op event on the device planes (GPU, else the host's XLA ops)."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(path)
    planes = list(data.planes)
    device = [p for p in planes if p.name.startswith("/device:") and "CPU" not in p.name]
    chosen, line_filter = device, ("XLA Ops",)
    if not chosen:  # a CPU run: the host plane's XLA op lines
        chosen, line_filter = planes, ("XLA Ops", "tf_XLAEigen", "tf_XLAPjRtCpuClient")
    events = _events(chosen, line_filter)
    if device and not events:  # no per-op line: fall back to the kernels on the streams
        events = _events(device, ("Stream",))
    lines_seen = sorted({f"{p.name} :: {ln.name}" for p in planes for ln in p.lines})
    return events, lines_seen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ResNet50")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--steps", type=int, default=5, help="steps inside the trace")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--keep", default="", help="copy the .xplane.pb here")
    p.add_argument("--dump", default="",
                   help="write LABEL.hlo.txt (optimized HLO) and LABEL.ops.json (per-op times) here")
    p.add_argument("--stem-space-to-depth", action="store_true")
    p.add_argument("--bn-impl", default="flax", choices=["flax", "fused"])
    p.add_argument("--weights-layout", default="compiler", choices=["compiler", "default"],
                   help="--infer: weights in the compiler's layouts (as infer_latency.py) or not")
    p.add_argument("--infer", action="store_true",
                   help="profile the BatchNorm-folded inference forward instead of a train step")
    args = p.parse_args()

    import jax

    kw = {"stem_space_to_depth": True} if args.stem_space_to_depth else {}
    if args.infer:
        call, x = build_infer(args)

        def run_once():
            return call(x)

        def hlo_text():
            return call.compiled(x.shape, x.dtype).as_text()
    else:
        step, state, metrics, batch = build_step(args.model, args.batch, args.dtype,
                                                 args.image_size, args.bn_impl, **kw)

        def hlo_text():
            return step.as_text()

        def run_once():
            nonlocal state, metrics
            state, metrics = step(state, metrics, batch)
            return state, metrics
    for _ in range(3):
        jax.block_until_ready(run_once())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with jax.profiler.trace(tmp):
            for _ in range(args.steps):
                out = run_once()
                if args.infer:  # one call at a time, as a latency-bound server would
                    jax.block_until_ready(out)
            jax.block_until_ready(out)
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        found = glob.glob(os.path.join(tmp, "**", "*.xplane.pb"), recursive=True)
        if not found:
            raise SystemExit("profile_step: the trace wrote no .xplane.pb")
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            dest = os.path.join(args.keep, f"{args.model}_{args.batch}_{args.dtype}.xplane.pb")
            with open(found[0], "rb") as src, open(dest, "wb") as dst:
                dst.write(src.read())
        events, lines_seen = device_op_events(found[0])

    base = {"benchmark": "profile_infer" if args.infer else "profile", "model": args.model,
            "batch": args.batch, "dtype": args.dtype, "device": jax.devices()[0].device_kind,
            "jax": jax.__version__, "steps": args.steps,
            "stem_space_to_depth": args.stem_space_to_depth, "bn_impl": args.bn_impl}
    if args.infer:  # the layout that ran (CompiledForward falls back to the default one)
        base["weights_layout"] = "compiler" if call.auto_layout else "default"
    total = sum(d for _, d in events)
    if not events:
        print(json.dumps({**base, "error": "no op events", "lines": lines_seen[:40]}))
        return
    print(json.dumps({**base, "wall_ms_per_step_traced": round(wall_ms, 3),
                      "device_op_ms_per_step": round(total / 1e6 / args.steps, 3),
                      "op_events": len(events) // args.steps}))
    by_group = collections.Counter()
    count = collections.Counter()
    by_name = collections.Counter()
    for name, d in events:
        g = group_of(name)
        by_group[g] += d
        count[g] += 1
        by_name[name] += d
    for g, d in by_group.most_common():
        print(json.dumps({**base, "group": g, "ms_per_step": round(d / 1e6 / args.steps, 3),
                          "share": round(d / total, 4), "ops_per_step": count[g] // args.steps}))
    for name, d in by_name.most_common(args.top):
        print(json.dumps({**base, "op": name, "group": group_of(name),
                          "ms_per_step": round(d / 1e6 / args.steps, 4),
                          "share": round(d / total, 4)}))
    if args.dump:
        events_by_name = collections.Counter(name for name, _ in events)
        label = dump_label(args)
        os.makedirs(args.dump, exist_ok=True)
        with open(os.path.join(args.dump, label + ".ops.json"), "w") as f:
            json.dump({**base, "wall_ms_per_step_traced": round(wall_ms, 3), "ops": [
                {"name": name, "group": group_of(name), "events": events_by_name[name],
                 "ns_per_step": round(d / args.steps)}
                for name, d in by_name.most_common()]}, f, indent=0)
        with open(os.path.join(args.dump, label + ".hlo.txt"), "w") as f:
            f.write(hlo_text())
        print(json.dumps({**base, "dumped": label, "ops": len(by_name)}))


def dump_label(args) -> str:
    """File stem for ``--dump``: model, batch, dtype, BN implementation or 'infer', stem."""
    parts = [args.model, str(args.batch), args.dtype, "infer" if args.infer else args.bn_impl]
    if args.infer and args.weights_layout == "default":
        parts.append("default_layout")
    if args.stem_space_to_depth:
        parts.append("s2d")
    return "_".join(parts)


if __name__ == "__main__":
    main()
