"""Where the train step's time goes: a device trace of a few steps, summarised per XLA op.

    python benchmarks/profile_step.py --model ResNet50 --batch 256 --dtype bfloat16
    python benchmarks/profile_step.py --model ResNet50 --batch 256 --bn-impl fused
    python benchmarks/profile_step.py --infer --model ResNet50 --batch 1   # folded inference

Builds the trainer's own jitted step (the loop's builder, as ``train_throughput.py`` does),
runs it a few times under ``jax.profiler.trace`` and reads the trace back with
``jax.profiler.ProfileData`` (no TensorBoard, no TensorFlow). Prints one JSON line per op group
(``analysis/hlo.py``'s groups, as ``gpu_hlo.py report`` prints them: convolutions forward, the
two convolution backward passes, reduction / elementwise / transpose fusions, copies,
collectives ...; each op grouped as its kernel in the program's optimized HLO) with its share
of device time, then the slowest single ops. ``--keep DIR`` keeps the raw ``.xplane.pb`` for
other viewers.
``--infer`` traces the BatchNorm-folded forward of ``infer_latency.py`` instead, one blocked
call at a time, so that at batch 1 the device time per call can be set against the wall time
per call (the difference is launch and dispatch overhead).
``--dump DIR`` writes, for offline study on any machine, ``LABEL.hlo.txt`` (the optimized HLO
of the profiled program, as compiled on this device) and ``LABEL.ops.json`` (every op's name,
group, event count and total device time in the trace), which
``analysis/gpu_hlo.py report --ops`` joins by instruction name.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import sys
import tempfile
import time

# This folder (_common, infer_latency), analysis/ (hlo); _common adds the repository's.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import hlo


def build_step(model_name: str, batch_size: int, dtype: str, image_size: int,
               bn_impl: str = "flax", stem_space_to_depth: bool = False):
    """(compiled step, state, metrics, batch) of the trainer's step for a synthetic config, one
    step already taken; ``analysis/gpu_hlo.py`` compiles the same config's step without a GPU."""
    import jax

    c = _common.bench_config(model_name, image_size=image_size, batch_size=batch_size,
                             dtype=dtype, bn_impl=bn_impl, stem_space_to_depth=stem_space_to_depth)
    trainer = _common.build_trainer(c)
    state, metrics = trainer.init_state(), trainer.zeros_metrics()
    batch = _common.synthetic_batch(trainer)
    # Compiled once, outside the trace; the trace runs this executable and --dump writes its
    # HLO, so the dumped instruction names are the profiled ones.
    step = trainer.train_step.lower(state, metrics, batch).compile()
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

    if args.infer:
        call, x = build_infer(args)

        def run_once():
            return call(x)

        def hlo_text():
            return call.compiled(x.shape, x.dtype).as_text()
    else:
        step, state, metrics, batch = build_step(args.model, args.batch, args.dtype,
                                                 args.image_size, args.bn_impl,
                                                 args.stem_space_to_depth)

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
    group_of = op_groups(hlo_text())
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


def op_groups(hlo_text: str):
    """``group(op name)``: the group of the op's kernel in the profiled program's optimized HLO
    (``hlo.op_grouper``, the groups ``gpu_hlo.py report`` prints), else of its name."""
    try:
        return hlo.op_grouper(hlo_text)
    except ValueError as e:  # HLO text the parser cannot read: names alone still group most ops
        print(f"profile_step: {e}; ops grouped by their names", file=sys.stderr)
        return hlo.group_of_name


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
