"""Inference speed per model: batch-1 latency and large-batch throughput of the jitted forward,
BatchNorm folded into the convolutions; prints JSON lines and a table like the original README's.

    python benchmarks/infer_latency.py --models ResNet50,ResNet50_vd --batch 256 --dtype bfloat16
    python benchmarks/infer_latency.py --models ResNet50 --torch-peer

Input is a device-resident, already normalised batch in the compute dtype, so this is model
compute only (decode and resize are the input pipeline's). Parameters are folded in float64
on the host, then cast to the compute dtype once (``--param-dtype``). Batch 1: the median of
``--latency-iters`` calls, each ended by ``block_until_ready`` (the latency a single request
sees). Larger batches: the median of ``--repeats`` windows of ``--iters`` calls.
The weights are placed on device once, in the layouts the compiler chose for them
(``flaxcls.layouts.CompiledForward``: on a GPU, convolution kernels as cuDNN's OHWI, so the
program has no per-call weight transposes); ``--weights-layout default,compiler`` measures
the plain ``jax.jit`` program (weights in the default HWIO layout) beside it.
``--torch-peer`` times torchvision's ResNet50 (torch.compile, bf16 autocast, channels_last) at
the same batch sizes first, in this process. ``--stem-space-to-depth`` builds ResNet-family
models with ``stem_space_to_depth`` (the stem's stride-2 conv on the space-to-depth image;
same parameters and outputs). Needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="ResNet50", help="comma list of registered models")
    p.add_argument("--batch", default="1,256", help="comma list of batch sizes (1 = latency)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--param-dtype", default="", help="'' = the compute dtype; or float32")
    _common.add_input_size(p)
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm (for comparison)")
    p.add_argument("--stem-space-to-depth", action="store_true",
                   help="ResNet family: the stem's stride-2 conv on the space-to-depth image")
    p.add_argument("--weights-layout", default="compiler",
                   help="comma list: 'compiler' (weights placed once in the compiler's layouts) "
                        "and/or 'default' (plain jit, weights in the default layouts)")
    p.add_argument("--iters", type=int, default=20, help="calls per throughput window")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--latency-iters", type=int, default=200)
    p.add_argument("--markdown", default="", help="also write the table to this file")
    _common.add_run_flags(p, "infer_latency")
    args = p.parse_args(argv)
    args.model_list = _common.split_list(args.models)
    args.batches = _common.split_list(args.batch, int)
    args.layouts = _common.split_list(args.weights_layout)
    if not args.layouts or set(args.layouts) - {"compiler", "default"}:
        p.error(f"--weights-layout {args.weights_layout!r}: use 'compiler' and/or 'default'")
    if not args.batches or min(args.batches) < 1:
        p.error(f"--batch {args.batch!r}: needs batch sizes >= 1")
    return args


def forward_options(image_size: int, stem_space_to_depth: bool, dtype: str) -> argparse.Namespace:
    """The options ``build_forward`` / ``build_call`` read, for another script's call: folded,
    1000 classes, weights in ``dtype``."""
    return argparse.Namespace(image_size=image_size, stem_space_to_depth=stem_space_to_depth,
                              num_classes=1000, dtype=dtype, no_fold=False, param_dtype="")


def build_forward(name: str, args):
    """(cfg, image size, jitted forward(variables, x), variables, number of folded BatchNorms)
    for one model."""
    import jax
    import jax.numpy as jnp

    import flaxcls
    from flaxcls.models.fold import fold_batchnorm

    cfg = flaxcls.get_model_cfg(name)
    size = args.image_size or cfg.input_size
    overrides = {"stem_space_to_depth": True} if args.stem_space_to_depth else {}
    model = flaxcls.create_model(
        cfg.name, num_classes=args.num_classes, dtype=args.dtype, **overrides)
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    init = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, train=False))
    variables = jax.device_get(init())
    if args.no_fold:
        apply, folded_count = (lambda v, x: model.apply(v, x, train=False)), 0
    else:
        folded = fold_batchnorm(model, variables, (1, size, size, 3))
        apply, variables, folded_count = folded.apply, folded.variables, len(folded.pairs)
    param_dtype = jnp.dtype(args.param_dtype or args.dtype)
    variables = jax.tree.map(
        lambda a: jnp.asarray(a, param_dtype if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype),
        variables)
    return cfg, size, jax.jit(apply), variables, folded_count


def build_call(name: str, args, layout: str = "compiler"):
    """(cfg, image size, call, number of folded BatchNorms): ``call(x)`` runs the folded forward
    with its weights bound, placed in the compiler's layouts (``layout="compiler"``) or in the
    default ones (the plain ``jax.jit`` program); ``call.compiled(shape, dtype)`` is the
    executable."""
    from flaxcls.layouts import CompiledForward

    cfg, size, forward, variables, folded_count = build_forward(name, args)
    call = CompiledForward(forward, variables, auto_layout=layout == "compiler")
    return cfg, size, call, folded_count


def measure(args, name: str, layout: str = "compiler") -> list[dict]:
    import jax
    import numpy as np

    cfg, size, call, folded_count = build_call(name, args, layout)
    info = _common.run_info()
    results = []
    for batch in args.batches:
        rng = np.random.RandomState(0)
        x = jax.device_put(rng.normal(size=(batch, size, size, 3)).astype(args.dtype))
        # Batch 1: each call ended by block_until_ready (a single request's latency); larger
        # batches: windows of --iters calls (throughput).
        calls, repeats = (1, args.latency_iters) if batch == 1 else (args.iters, args.repeats)
        first_s, times = _common.time_calls(lambda x=x: call(x), jax.block_until_ready, warmup=5,
                                            calls=calls, repeats=repeats)
        t = float(np.median(times))
        results.append({
            "benchmark": "inference", "framework": "jax", "model": cfg.name, "batch": batch,
            "image_size": size, "dtype": args.dtype,
            "param_dtype": args.param_dtype or args.dtype, "folded_bn": not args.no_fold,
            "folded_batchnorms": folded_count,
            "stem_space_to_depth": args.stem_space_to_depth,
            # what ran: "compiler" falls back to "default" where the runtime cannot comply
            "weights_layout": "compiler" if call.auto_layout else "default",
            "latency_ms": round(t * 1e3, 4), "images_per_sec": round(batch / t, 1),
            "latency_ms_min": round(min(times) * 1e3, 4), "first_call_s": round(first_s, 2),
            "repeats": len(times), "top1": cfg.top1, "top5": cfg.top5, "tag": args.tag, **info,
        })
    return results


def markdown_table(results: list[dict]) -> str:
    """One row per model and framework: accuracy, batch-1 latency, throughput per batch size."""
    big = sorted({r["batch"] for r in results if r["batch"] > 1 and "error" not in r})
    head = ["Model", "Top-1", "Top-5", "dtype", "batch 1 (ms)"] + [
        f"batch {b} (img/s)" for b in big]
    rows: dict[tuple, dict] = {}
    for r in results:
        if "error" in r:
            continue
        key = (r["model"], r.get("framework", "jax"), r["dtype"],
               bool(r.get("stem_space_to_depth")), r.get("weights_layout", ""))
        rows.setdefault(key, {})[r["batch"]] = r
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (model, framework, dtype, s2d, layout), by_batch in rows.items():
        any_r = next(iter(by_batch.values()))

        def pct(v):
            return f"{100 * v:.2f}%" if isinstance(v, float) else "-"

        label = model if framework == "jax" else f"{model} ({framework})"
        label += " (space-to-depth stem)" if s2d else ""
        label += " (weights in default layout)" if layout == "default" else ""
        cells = [label, pct(any_r.get("top1")), pct(any_r.get("top5")), dtype,
                 f"{by_batch[1]['latency_ms']:.3f}" if 1 in by_batch else "-"]
        cells += [f"{by_batch[b]['images_per_sec']:,.0f}" if b in by_batch else "-" for b in big]
        lines.append("| " + " | ".join(cells) + " |")
    ok = [r for r in results if "error" not in r]
    r0 = next((r for r in ok if r.get("framework") == "jax"), ok[0] if ok else {})
    versions = (f"jax {r0['jax']}, flax {r0['flax']}" if "jax" in r0 else
                f"torch {r0.get('torch', '?')}, torchvision {r0.get('torchvision', '?')}")
    lines.append("")
    lines.append(f"Device: {r0.get('device', '?')}; {versions}; BatchNorm folded (jax rows): "
                 f"{r0.get('folded_bn', '?')}; {r0.get('date', '')}. Median of repeats; "
                 "device-resident normalised input.")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    peer = args.torch_peer or args.peer_only
    _common.prepare_environment(args.xla_flags, preallocate=not peer)
    results: list[dict] = []
    if peer:
        import torch_peer

        for r in torch_peer.inference(args.batches, iters=args.iters,
                                      latency_iters=args.latency_iters, repeats=args.repeats,
                                      dtype=args.dtype, image_size=args.image_size or 224,
                                      compile_mode=args.torch_compile_mode):
            r["tag"] = args.tag
            _common.emit(r, args.csv)
            results.append(r)
        torch_peer.release()
    failed = 0
    if not args.peer_only:
        for name, layout in ((n, lay) for n in args.model_list for lay in args.layouts):
            try:
                rows = measure(args, name, layout)
            except Exception as e:  # noqa: BLE001 - report and go on with the next model
                traceback.print_exc()
                failed += 1
                rows = [{"benchmark": "inference", "framework": "jax", "model": name,
                         "dtype": args.dtype, "batch": 0, "tag": args.tag,
                         "error": f"{type(e).__name__}: {e}"[:300]}]
            for r in rows:
                _common.emit(r, args.csv)
            results.extend(rows)
    table = markdown_table(results)
    print(table, flush=True)
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
