"""What every benchmark script shares: environment set-up before jax loads, the common flags,
the trainer's chain for a synthetic config, the record of device and versions, timing helpers
and the CSV / JSON-lines output. Nothing here imports jax at module level: scripts import this
before ``prepare_environment`` sets the XLA flags."""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The values flaxcls.config accepts, repeated here because importing flaxcls loads jax, and
# flags are parsed before prepare_environment() may let it load.
DTYPES = ("float32", "bfloat16", "float16")
BN_IMPLS = ("flax", "fused")
# Synthetic data has no epochs; the learning-rate schedule needs a length (only lr values
# depend on it, not what the step computes or how long it takes).
STEPS_PER_EPOCH = 1000


def split_list(text: str, cast: Callable[[str], Any] = str) -> list[Any]:
    """'a, b,c' -> [cast('a'), cast('b'), cast('c')]."""
    return [cast(t.strip()) for t in str(text).split(",") if t.strip()]


def check_choices(parser: argparse.ArgumentParser, flag: str, values: Sequence[Any],
                  allowed: Sequence[Any]) -> None:
    """Exits through ``parser.error`` naming the flag when a comma-list value is not allowed."""
    for v in values:
        if v not in allowed:
            parser.error(f"{flag} {v!r}: must be one of {', '.join(map(str, allowed))}")


def add_model_lists(parser: argparse.ArgumentParser, model: str) -> None:
    """--model, --batch and --dtype as comma lists (every combination runs), --image-size and
    --num-classes."""
    parser.add_argument("--model", default=model, help="comma list of registered models")
    parser.add_argument("--batch", default="256", help="comma list of global batch sizes")
    parser.add_argument("--dtype", default="bfloat16", help=f"comma list: {','.join(DTYPES)}")
    add_input_size(parser)


def add_input_size(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-size", type=int, default=0, help="0: the model's native size")
    parser.add_argument("--num-classes", type=int, default=1000)


def add_run_flags(parser: argparse.ArgumentParser, csv_name: str) -> None:
    """The flags of a timed run on a device: CSV, XLA flags, tag and the torch peer."""
    parser.add_argument("--csv", default=default_csv(csv_name),
                        help="append results here ('' = don't)")
    parser.add_argument("--xla-flags", default="", help="extra XLA flags (appended to $XLA_FLAGS)")
    parser.add_argument("--tag", default="", help="free label stored with each result")
    parser.add_argument("--torch-peer", action="store_true",
                        help="also time torchvision ResNet50 at the same batch sizes (first)")
    parser.add_argument("--peer-only", action="store_true", help="only the torchvision peer")
    parser.add_argument("--torch-compile-mode", default="default")


def prepare_environment(xla_flags: str = "", preallocate: bool = True) -> None:
    """Must run before jax is imported: extra XLA flags (appended to $XLA_FLAGS) and, when
    another framework shares the GPU in this process, no up-front grab of GPU memory."""
    if "jax" in sys.modules:
        raise RuntimeError("prepare_environment() must run before jax is imported")
    if xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    if not preallocate:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_info() -> dict[str, Any]:
    """Date (UTC), device kind and count, platform, versions and the XLA flags in force."""
    import jax

    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": dev.device_kind,
        "devices": jax.device_count(),
        "platform": dev.platform,
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", ""),
        "flax": __import__("flax").__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def bench_config(model: str, *, image_size: int = 0, **fields: Any):
    """``flaxcls.config.default_config()`` for a synthetic benchmark: ``model`` under its
    registered name, square ``image_size`` crops with no resize beyond them (0: the model's
    input size), the other ``fields`` a benchmark varies (batch_size, dtype, bn_impl, ...) and
    the rest of the preprocessing filled from the model, as the loop fills it. A field the
    config does not have is an error, not a new field."""
    from flaxcls.config import default_config
    from flaxcls.preprocessing import resolve_preprocessing
    from flaxcls.registry import get_model_cfg

    cfg = get_model_cfg(model)
    c = default_config()
    unknown = sorted(set(fields) - set(c.keys()))
    if unknown:
        raise KeyError(f"bench_config: no config field {', '.join(unknown)}")
    c.model = cfg.name
    c.crop_size = c.resize_short_size = int(image_size or cfg.input_size)
    for name, value in fields.items():
        setattr(c, name, value)
    resolve_preprocessing(c)
    return c


def build_trainer(config, *, devices: Sequence[Any] | None = None,
                  wrap_model: Callable[[Any], Any] | None = None):
    """The loop's own chain (``flaxcls.train.builder.build``: model, schedule, optimizer, loss
    scale, state and jitted steps) for ``config``, on a mesh over ``devices`` (default: every
    device). ``wrap_model`` turns the config's model into the one to train (a benchmark's
    variant of it); the rest of the chain is the config's."""
    from flaxcls import parallel
    from flaxcls.specs import Specs
    from flaxcls.train import builder

    specs = Specs.from_config(config)
    mesh = parallel.make_mesh(None if devices is None else list(devices))
    parallel.check_batch_size(specs.run.batch_size, mesh)
    model = None if wrap_model is None else wrap_model(specs.model.build())
    return builder.build(specs, mesh, steps_per_epoch=STEPS_PER_EPOCH, model=model)


def synthetic_batch(trainer, seed: int = 0) -> dict[str, Any]:
    """A random batch of the trainer's batch size, image size and classes (uint8 images, int32
    labels, the same for the same seed), sharded over its mesh."""
    import numpy as np

    from flaxcls import parallel

    rng = np.random.RandomState(seed)
    n, size = trainer.specs.run.batch_size, trainer.image_size
    return parallel.host_to_global(
        {"image": rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
         "label": rng.randint(0, trainer.specs.step.num_classes, (n,)).astype(np.int32)},
        trainer.mesh)


def time_windows(run: Callable[[], Any], sync: Callable[[Any], Any], *, calls: int,
                 repeats: int) -> list[float]:
    """Seconds per call in each of ``repeats`` windows of ``calls`` calls of ``run``; each
    window ends with ``sync`` of the last call's result (the device has finished it)."""
    windows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = run()
        sync(out)
        windows.append((time.perf_counter() - t0) / calls)
    return windows


def time_calls(run: Callable[[], Any], sync: Callable[[Any], Any], *, warmup: int, calls: int,
               repeats: int) -> tuple[float, list[float]]:
    """(seconds of the first call, the compiling one, to its ``sync``; ``time_windows`` after
    ``warmup`` more calls)."""
    t0 = time.perf_counter()
    sync(run())
    first = time.perf_counter() - t0
    for _ in range(warmup):
        out = run()
    if warmup:
        sync(out)
    return first, time_windows(run, sync, calls=calls, repeats=repeats)


def emit(result: dict[str, Any], csv_path: str | None) -> None:
    """Prints one JSON line (flushed, so a later hang loses nothing) and appends to the CSV."""
    print(json.dumps(result), flush=True)
    if csv_path:
        append_csv(csv_path, result)


def append_csv(path: str, row: dict[str, Any]) -> None:
    """Appends ``row``; a file whose header lacks some of its columns is rewritten with them."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields, rows = list(row), None
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old = list(reader.fieldnames or [])
            missing = [k for k in fields if k not in old]
            fields = old + missing
            if missing:
                rows = list(reader)
    else:
        rows = []
    if rows is not None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)


def default_csv(name: str) -> str:
    return os.path.join(RESULTS, f"{name}.csv")


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """The JSON lines of a session's output; other lines (logs, a cut-off last line) are
    skipped."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows
