r"""What a checkpoint costs: its size, the checksums of its arrays, a save and a verified restore.

    python benchmarks/checkpoint_cost.py --model ResNet50 --repeats 5

Builds the train state of ``--model`` as the loop does (params, momentum, BatchNorm
statistics), then times: the jitted checksums of every array (its compile separately; the
median of ``--repeats``), a synchronous save to ``--dir`` (default: a temporary folder) and a
restore with its verification. Prints one JSON line and appends it to
benchmarks/results/checkpoint_cost.csv.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ResNet50")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", default="", help="where to save (default: a temporary folder)")
    p.add_argument("--csv", default=_common.default_csv("checkpoint_cost"),
                   help="append results here ('' = don't)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    _common.prepare_environment()
    import jax

    from flaxcls import checksum, storage
    from flaxcls.checkpoint import Checkpointer

    trainer = _common.build_trainer(_common.bench_config(args.model, batch_size=8))
    state = trainer.init_state()
    jax.block_until_ready(state)
    leaves = len(jax.tree.leaves(state))

    t0 = time.perf_counter()
    checksum.checksums(state)  # compiles
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        checksum.checksums(state)
        times.append(time.perf_counter() - t0)

    folder = args.dir or tempfile.mkdtemp(prefix="flaxcls-ckpt-cost-")
    try:
        with Checkpointer(folder, keep=1) as ckpt:
            t0 = time.perf_counter()
            ckpt.save(1, state, {"step": 1})
            ckpt.wait()
            save = time.perf_counter() - t0
            t0 = time.perf_counter()
            restored, _ = ckpt.restore(1, trainer.abstract_state())
            jax.block_until_ready(restored)
            restore = time.perf_counter() - t0
        on_disk = storage.tree_bytes(os.path.join(folder, "checkpoints"))
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    result = {**_common.run_info(), "model": args.model, "arrays": leaves,
              "state_mb": round(storage.state_bytes(state) / 1e6, 1),
              "on_disk_mb": round(on_disk / 1e6, 1),
              "checksum_first_s": round(first, 3),
              "checksum_s": round(statistics.median(times), 4),
              "save_s": round(save, 3), "restore_verified_s": round(restore, 3)}
    _common.emit(result, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
