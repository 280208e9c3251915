"""Train-step throughput on device-resident synthetic data; prints one JSON line per setting.

    python benchmarks/train_throughput.py --model resnet50 --batch 256,512 --dtype bfloat16
    python benchmarks/train_throughput.py --model resnet50 --batch 256 --torch-peer

Times the same jitted, sharded, donated step the trainer runs (normalise, forward, loss,
backward, momentum update, on-device metrics) over every local device, built as the loop
builds it (``flaxcls.train.builder`` from a default config with the fields below set). Per
setting: state creation, then the step's compile (``compile_s``; with ``--compile-cache DIR``
it is read from the persistent cache when a previous process compiled it), the first step,
warm-up steps, then ``--repeats`` timed windows of ``--steps`` steps each, every window ended
by ``block_until_ready``; reports the median window. Needs no TensorFlow and no data.

Comma lists in ``--model``, ``--batch``, ``--dtype``, ``--l2-decay-mode``,
``--pad-input-channels``, ``--stem`` and ``--bn-impl`` run every combination in one process. Levers:
``--l2-decay-mode loss`` puts the L2 term in the loss (the Flax example's way) instead of the
optimizer; ``--pad-input-channels 4`` feeds the stem 4 channels (the 4th all zero: same
outputs); ``--stem s2d`` runs the ResNet stem's stride-2 conv on the space-to-depth image
(``stem_space_to_depth``: same parameters, same outputs; ResNet family with a 'plain' or
'deep' stem only); ``--bn-impl fused`` trains with the hand-written BatchNorm backward
(``config.bn_impl``, ``flaxcls.models.batchnorm``: same numbers, fewer saved bytes);
``--xla-flags`` adds XLA flags. ``--grad-accum-steps 1,2,4`` splits each batch into that many
micro-batches inside the step (``config.grad_accum_steps``); ``--teacher none,ResNet50_vd``
adds a distillation teacher (random weights: the cost, not the accuracy) to the step; ``--device-data 0,50000`` times the
step drawing its batch from a device-resident split of that many images (shuffle, crop, flip
in the step) beside the fixed batch. Every
row reports the compiled step's device memory from XLA's memory analysis: ``peak_memory_mb``
(arguments + outputs + temporaries - donated aliases) and ``temp_memory_mb``. BatchNorm statistics are already one pass (Flax's
``use_fast_variance``) and the loop never syncs with the host. ``--torch-peer`` first
measures torchvision's ResNet50 (torch.compile, bf16 autocast, channels_last, SGD momentum)
at the same batch sizes in this process; ``--peer-only`` measures only that.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _common.add_model_lists(p, model="resnet50")
    p.add_argument("--l2-decay-mode", default="optimizer", help="comma list: optimizer,loss")
    p.add_argument("--pad-input-channels", default="0",
                   help="comma list; 0 = off, 4 = zero-pad RGB to 4 channels for the stem")
    p.add_argument("--stem", default="plain",
                   help="comma list: plain,s2d (s2d = the ResNet stem's stride-2 conv on the "
                        "space-to-depth image)")
    p.add_argument("--bn-impl", default="flax",
                   help="comma list: flax,fused (fused = BatchNorm with a hand-written backward)")
    p.add_argument("--grad-accum-steps", default="1",
                   help="comma list: micro-batches per step (config.grad_accum_steps)")
    p.add_argument("--teacher", default="none",
                   help="comma list: none or a registry model run as a distillation teacher "
                        "(random weights) inside the step")
    p.add_argument("--device-data", default="0",
                   help="comma list: 0 = a fixed synthetic batch (default); N > 0 = a "
                        "device-resident split of N random images the step draws its batches "
                        "from (config.device_resident_data: shuffle, crop, flip in the step)")
    p.add_argument("--setting", action="append", default=[],
                   help="MODEL:BATCH[:DTYPE[:L2MODE[:PAD[:STEM[:BN]]]]], repeatable; replaces "
                        "the product of the lists above")
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile-cache", default="",
                   help="persistent compilation cache dir ('' = off, as for a first run)")
    _common.add_run_flags(p, "train_throughput")
    args = p.parse_args(argv)
    args.models = _common.split_list(args.model)
    args.batches = _common.split_list(args.batch, int)
    args.dtypes = _common.split_list(args.dtype)
    args.l2_modes = _common.split_list(args.l2_decay_mode)
    args.pads = _common.split_list(args.pad_input_channels, int)
    args.stems = _common.split_list(args.stem)
    args.bn_impls = _common.split_list(args.bn_impl)
    args.accums = _common.split_list(args.grad_accum_steps, int)
    args.teachers = ["" if t.lower() == "none" else t for t in _common.split_list(args.teacher)]
    args.device_datas = _common.split_list(args.device_data, int)
    if any(a < 1 for a in args.accums):
        p.error(f"--grad-accum-steps {args.grad_accum_steps!r}: each must be >= 1")
    args.runs = []
    for text in args.setting:
        parts = text.split(":")
        bad_pad = len(parts) > 4 and not parts[4].isdigit()
        if not 2 <= len(parts) <= 7 or not parts[1].isdigit() or bad_pad:
            p.error(f"--setting {text!r}: expected MODEL:BATCH[:DTYPE[:L2MODE[:PAD[:STEM[:BN]]]]]")
        defaults = [None, None, args.dtypes[0], args.l2_modes[0], str(args.pads[0]),
                    args.stems[0], args.bn_impls[0]]
        parts += defaults[len(parts):]
        args.runs.append((parts[0], int(parts[1]), parts[2], parts[3], int(parts[4]), parts[5],
                          parts[6]))
    if not args.runs:
        args.runs = list(itertools.product(
            args.models, args.batches, args.dtypes, args.l2_modes, args.pads, args.stems,
            args.bn_impls))
    # runs: (model, batch, dtype, l2_mode, pad, stem, bn_impl) in order; settings: the first five.
    args.settings = [r[:5] for r in args.runs]
    args.batches = sorted({s[1] for s in args.runs})
    args.dtypes = sorted({s[2] for s in args.runs})
    args.l2_modes = sorted({s[3] for s in args.runs})
    args.pads = sorted({s[4] for s in args.runs})
    args.stems = sorted({s[5] for s in args.runs})
    args.bn_impls = sorted({s[6] for s in args.runs})
    _common.check_choices(p, "--dtype", args.dtypes, _common.DTYPES)
    _common.check_choices(p, "--l2-decay-mode", args.l2_modes, ("optimizer", "loss"))
    _common.check_choices(p, "--pad-input-channels", args.pads, (0, 4))
    _common.check_choices(p, "--stem", args.stems, ("plain", "s2d"))
    _common.check_choices(p, "--bn-impl", args.bn_impls, _common.BN_IMPLS)
    return args


def run_peer(args) -> None:
    import torch_peer

    for batch in args.batches:
        for dtype in args.dtypes:
            r = torch_peer.train_throughput(
                batch, steps=args.steps, warmup=args.warmup, repeats=args.repeats, dtype=dtype,
                image_size=args.image_size or 224, num_classes=args.num_classes,
                compile_mode=args.torch_compile_mode)
            if r is None:
                return
            _common.emit({**r, "tag": args.tag}, args.csv)
    torch_peer.release()


def padded_input_model(inner, channels: int):
    """Wraps a model so its stem sees ``channels`` input channels, the extra ones zero."""
    import jax.numpy as jnp
    from flax import linen as nn

    class PadInputChannels(nn.Module):
        model: nn.Module
        channels: int

        def __call__(self, x, train: bool = False, **kw):
            pad = self.channels - x.shape[-1]
            x = jnp.pad(x, ((0, 0),) * (x.ndim - 1) + ((0, pad),))
            return self.model(x, train=train, **kw)

    return PadInputChannels(inner, channels)


def _cache_entries(directory: str) -> int:
    if not directory or not os.path.isdir(directory):
        return 0
    return sum(len(files) for _, _, files in os.walk(directory))


def memory_mb(compiled) -> dict:
    """The compiled step's device memory (XLA's memory analysis), in MiB; empty where the
    backend does not report it."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        m = None
    if m is None:
        return {}
    mib = 1 / 2**20
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return {"peak_memory_mb": round(peak * mib, 1),
            "temp_memory_mb": round(m.temp_size_in_bytes * mib, 1)}


def measure(args, model_name: str, batch_size: int, dtype: str, l2_mode: str, pad: int,
            stem: str = "plain", bn_impl: str = "flax", accum: int = 1,
            teacher: str = "", device_data: int = 0) -> dict:
    import jax
    import numpy as np

    fields = {"distill_teacher": teacher} if teacher else {}
    c = _common.bench_config(
        model_name, image_size=args.image_size, num_classes=args.num_classes, dtype=dtype,
        batch_size=batch_size, l2_decay_mode=l2_mode, bn_impl=bn_impl,
        stem_space_to_depth=stem == "s2d", grad_accum_steps=accum, **fields)
    wrap = (lambda model: padded_input_model(model, pad)) if pad else None
    trainer = _common.build_trainer(c, wrap_model=wrap)
    if teacher:
        trainer.random_teacher()
    if device_data:
        from flaxcls.data.resident import to_devices

        rng = np.random.RandomState(0)
        trainer.use_resident(to_devices({
            "image": rng.randint(0, 256, (device_data, trainer.image_size, trainer.image_size,
                                          3)).astype(np.uint8),
            "label": rng.randint(0, c.num_classes, (device_data,)).astype(np.int32)},
            trainer.mesh))
    extra = trainer.step_inputs
    size = trainer.image_size
    entries_before = _cache_entries(args.compile_cache)

    t0 = time.perf_counter()
    state = trainer.init_state()
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    batch = trainer.resident if device_data else _common.synthetic_batch(trainer)
    metrics = trainer.zeros_metrics()

    t0 = time.perf_counter()
    step = trainer.train_step.lower(state, metrics, batch, *extra).compile()
    compile_s = time.perf_counter() - t0
    state, metrics = step(state, metrics, batch, *extra)
    jax.block_until_ready(state)
    first_step_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, metrics = step(state, metrics, batch, *extra)
    jax.block_until_ready(state)

    def run():
        nonlocal state, metrics
        state, metrics = step(state, metrics, batch, *extra)
        return state, metrics

    windows = _common.time_windows(run, jax.block_until_ready, calls=args.steps,
                                   repeats=args.repeats)
    step_s = float(np.median(windows))
    skipped = float(jax.device_get(metrics["skipped_steps"]))
    info = _common.run_info()
    return {
        "benchmark": "train_step",
        "framework": "jax",
        "model": c.model,
        "batch": batch_size,
        "image_size": size,
        "dtype": dtype,
        "images_per_sec": round(batch_size / step_s, 1),
        "images_per_sec_per_device": round(batch_size / step_s / jax.device_count(), 1),
        "step_ms": round(step_s * 1e3, 3),
        "step_ms_min": round(min(windows) * 1e3, 3),
        "init_s": round(init_s, 2),
        "compile_s": round(compile_s, 2),
        "first_step_s": round(first_step_s, 2),
        "l2_decay_mode": l2_mode,
        "pad_input_channels": pad,
        "stem_space_to_depth": stem == "s2d",
        "bn_impl": bn_impl,
        "grad_accum_steps": accum,
        "teacher": teacher,
        "device_data": device_data,
        **memory_mb(step),
        "skipped_steps": skipped,
        "compile_cache": "on" if args.compile_cache else "off",
        "cache_entries_added": _cache_entries(args.compile_cache) - entries_before,
        "steps": args.steps,
        "repeats": args.repeats,
        "tag": args.tag,
        **info,
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    peer = args.torch_peer or args.peer_only
    # With a peer in this process, jax must not grab most of the GPU before torch runs.
    _common.prepare_environment(args.xla_flags, preallocate=not peer)
    if peer:
        run_peer(args)
    if args.peer_only:
        return
    if args.compile_cache:
        from flaxcls import parallel

        parallel.enable_compilation_cache(os.path.abspath(args.compile_cache))
    failed = 0
    for (model_name, batch_size, dtype, l2_mode, pad, stem, bn_impl), accum, teacher, \
            device_data in itertools.product(args.runs, args.accums, args.teachers,
                                             args.device_datas):
        try:
            result = measure(args, model_name, batch_size, dtype, l2_mode, pad, stem, bn_impl,
                             accum, teacher, device_data)
        except Exception as e:
            if type(e).__name__ in ("ConfigError", "KeyError") and "model" in str(e).lower():
                raise
            traceback.print_exc()
            failed += 1
            result = {"benchmark": "train_step", "framework": "jax", "model": model_name,
                      "batch": batch_size, "dtype": dtype, "l2_decay_mode": l2_mode,
                      "pad_input_channels": pad, "stem_space_to_depth": stem == "s2d",
                      "bn_impl": bn_impl, "grad_accum_steps": accum, "teacher": teacher,
                      "device_data": device_data,
                      "error": f"{type(e).__name__}: {e}"[:300],
                      "tag": args.tag}
        _common.emit(result, args.csv)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
