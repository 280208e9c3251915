"""Train-step throughput on device-resident synthetic data; prints one JSON line.

    python benchmarks/train_throughput.py --model resnet50 --batch 256 --dtype bfloat16

Times the same jitted, sharded, donated step the trainer runs (normalise, forward, loss,
backward, momentum update, on-device metrics) over every local device. Warm-up steps
first, then ``--repeats`` timed windows of ``--steps`` steps each, every window ended by
``block_until_ready``; reports the median window. Needs no TensorFlow and no data.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--batch", type=int, default=256, help="global batch (all local devices)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--image-size", type=int, default=0, help="0: the model's native size")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--csv", default="", help="also append the result to this CSV file")
    args = p.parse_args()

    import jax
    import numpy as np

    import flaxcls
    from flaxcls import parallel
    from flaxcls.config import default_config
    from flaxcls.train import losses, optim
    from flaxcls.train.state import create_train_state
    from flaxcls.train.step import TRAIN_METRICS, make_train_step, zeros_metrics

    cfg = flaxcls.get_model_cfg(args.model)
    size = args.image_size or cfg.input_size
    c = default_config()
    c.model, c.num_classes, c.dtype, c.batch_size = cfg.name, args.num_classes, args.dtype, args.batch
    c.crop_size = c.resize_short_size = size
    mesh = parallel.make_mesh()
    parallel.check_batch_size(args.batch, mesh)
    model = flaxcls.create_model(cfg.name, num_classes=args.num_classes, dtype=args.dtype)
    tx = optim.make_optimizer(c, optim.make_schedule(c, 1000, args.batch))
    loss_scale = losses.DynamicScale.create(c.loss_scale) if args.dtype == "float16" else None
    state = create_train_state(model, tx, image_size=size, seed=0, mesh=mesh,
                               loss_scale=loss_scale)
    step = make_train_step(model, tx, c, mesh)
    rng = np.random.RandomState(0)
    batch = parallel.host_to_global(
        {
            "image": rng.randint(0, 256, (args.batch, size, size, 3)).astype(np.uint8),
            "label": rng.randint(0, args.num_classes, (args.batch,)).astype(np.int32),
        },
        mesh,
    )
    metrics = zeros_metrics(TRAIN_METRICS, mesh)

    t0 = time.perf_counter()
    state, metrics = step(state, metrics, batch)
    jax.block_until_ready(state)
    first_step_s = time.perf_counter() - t0
    for _ in range(args.warmup):
        state, metrics = step(state, metrics, batch)
    jax.block_until_ready(state)

    windows = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, metrics, batch)
        jax.block_until_ready((state, metrics))
        windows.append((time.perf_counter() - t0) / args.steps)
    step_s = statistics.median(windows)
    dev = jax.devices()[0]
    result = {
        "benchmark": "train_step",
        "model": cfg.name,
        "batch": args.batch,
        "image_size": size,
        "dtype": args.dtype,
        "images_per_sec": round(args.batch / step_s, 1),
        "images_per_sec_per_device": round(args.batch / step_s / jax.device_count(), 1),
        "step_ms": round(step_s * 1e3, 3),
        "step_ms_min": round(min(windows) * 1e3, 3),
        "first_step_s": round(first_step_s, 2),
        "devices": jax.device_count(),
        "device": dev.device_kind,
        "platform": dev.platform,
        "jax": jax.__version__,
        "flax": __import__("flax").__version__,
        "python": platform.python_version(),
        "steps": args.steps,
        "repeats": args.repeats,
    }
    print(json.dumps(result))
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(result))
            if new:
                w.writeheader()
            w.writerow(result)


if __name__ == "__main__":
    main()
