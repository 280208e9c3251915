r"""What the on-device augmentations cost per batch: random erasing, mixup, CutMix and the
auto_augment policies.

    python benchmarks/augment_cost.py --batch 256 --image-size 224 --dtype bfloat16

Times each op of ``flaxcls.train.augment`` jitted alone on a normalised batch, and each policy
of ``--auto-augment`` (``flaxcls.train.autoaugment_device.apply_batch``, op
``auto_augment:<spec>``) on a uint8 batch of smooth gradients plus noise (the median of
``--repeats`` windows of ``--iters`` calls, after a compiling call), beside the train step of
``--model`` at the same batch when ``--with-step`` is given, so the share of a step is read in
one run. Prints one JSON line per op and appends them to benchmarks/results/augment_cost.csv.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--dtype", default="bfloat16", choices=_common.DTYPES)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="ResNet50")
    p.add_argument("--with-step", action="store_true",
                   help="also time the model's train step at this batch (slow on a CPU)")
    p.add_argument("--auto-augment", default="rand-m9-n2-mstd0.5,trivial,autoaug",
                   help="comma list of config.auto_augment policies to time on device ('' = none)")
    p.add_argument("--csv", default=_common.default_csv("augment_cost"),
                   help="append results here ('' = don't)")
    args = p.parse_args(argv)
    if min(args.batch, args.image_size, args.iters, args.repeats) < 1:
        p.error("--batch, --image-size, --iters and --repeats must be >= 1")
    _common.prepare_environment()
    import jax
    import jax.numpy as jnp

    from flaxcls.data.augment_policy import parse
    from flaxcls.train import augment, autoaugment_device, losses

    try:
        policies = {spec: parse(spec) for spec in _common.split_list(args.auto_augment)}
    except ValueError as e:
        p.error(f"--auto-augment: {e}")

    dtype = jnp.dtype(args.dtype)
    n, s = args.batch, args.image_size
    images = jax.random.normal(jax.random.key(0), (n, s, s, 3), dtype)
    targets = losses.onehot(jnp.arange(n) % 1000, 1000, 0.1)
    ops = {
        "random_erasing_pixel": lambda k, x, t: augment.random_erasing(k, x, prob=0.25),
        "random_erasing_const": lambda k, x, t: augment.random_erasing(k, x, prob=0.25,
                                                                        mode="const"),
        "mixup": lambda k, x, t: augment.mixup(k, x, t, 0.2),
        "cutmix": lambda k, x, t: augment.cutmix(k, x, t, 1.0),
        "mixup_or_cutmix": lambda k, x, t: augment.mix_batch(k, x, t, mixup_alpha=0.2,
                                                             cutmix_alpha=1.0),
    }
    inputs = dict.fromkeys(ops, images)
    # The policies work on the uint8 batch, before normalisation: smooth gradients plus noise
    # (uneven histograms, as in photos). Fill: the ImageNet mean.
    ramp = jnp.arange(s, dtype=jnp.int32) * 200 // max(s - 1, 1)
    gradient = jnp.stack(jnp.broadcast_arrays(ramp[None, :], ramp[:, None],
                                              (ramp[None, :] + ramp[:, None]) // 2), -1)
    noise = jax.random.randint(jax.random.key(2), (n, s, s, 3), -20, 21)
    raw = jnp.clip(gradient[None] + noise + 20, 0, 255).astype(jnp.uint8)
    for spec, policy in policies.items():
        name = f"auto_augment:{spec}"
        ops[name] = lambda k, x, t, policy=policy: autoaugment_device.apply_batch(
            x, k, policy, (124, 116, 104))
        inputs[name] = raw
    info = _common.run_info()
    step_ms = None
    if args.with_step:
        trainer = _common.build_trainer(_common.bench_config(
            args.model, image_size=s, batch_size=n, dtype=args.dtype))
        state, metrics = trainer.init_state(), trainer.zeros_metrics()
        batch = _common.synthetic_batch(trainer)

        def step():
            nonlocal state, metrics
            state, metrics = trainer.train_step(state, metrics, batch)
            return metrics

        _, windows = _common.time_calls(step, jax.block_until_ready, warmup=1,
                                        calls=args.iters, repeats=args.repeats)
        step_ms = statistics.median(windows) * 1e3
    for name, op in ops.items():
        fn = jax.jit(op)
        keys = iter(jax.random.split(jax.random.key(1), 1 + args.iters * (args.repeats + 1)))
        _, windows = _common.time_calls(
            lambda fn=fn, keys=keys, x=inputs[name]: fn(next(keys), x, targets),
            jax.block_until_ready,
            warmup=0, calls=args.iters, repeats=args.repeats)
        ms = statistics.median(windows) * 1e3
        result = {**info, "op": name, "batch": n, "image_size": s, "dtype": args.dtype,
                  "ms_per_batch": round(ms, 3)}
        if step_ms is not None:
            result.update({"model": args.model, "step_ms": round(step_ms, 2),
                           "share_of_step": round(ms / step_ms, 4)})
        _common.emit(result, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
