"""Input-pipeline throughput: the trainer's own train stream on real JPEGs; prints JSON lines.

    python benchmarks/input_throughput.py --format original --workers 1
    python benchmarks/input_throughput.py --format rewritten --workers 2 --max-side 256

--data is a folder or a .tar of images in any layout `python -m flaxcls.data.rewrite` reads
(default: ../shared/data/imagenet-sample-1000.tar from the repository root), or, with
--format rewritten, a folder that already holds records.json. Setup (extracting the tar,
writing the list file or the record shards) happens before any timing. The stream is
`flaxcls.data.train_iterator`, i.e. exactly what training runs: random-resized crop with
crop-window decode, flip, uint8 batches, plus what ``--set`` switches on (``--set
auto_augment=rand-m9-n2-mstd0.5``: any train-stream field of the config). The process is pinned to --workers CPUs (unless
--no-pin) and tf.data gets that many threads, so img/s per core = img/s / workers. Each of
--repeats windows runs --seconds (or --epochs passes over the images) after --warmup batches;
the JSON has the median and the spread, plus images per CPU-second of this process (which
other busy processes on the machine affect far less than wall-clock img/s).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEFAULT_DATA = os.path.join("..", "shared", "data", "imagenet-sample-1000.tar")
DEFAULT_CSV = os.path.join("benchmarks", "results", "input_throughput.csv")
CSV_FIELDS = ("date", "format", "data", "images", "workers", "batch", "crop", "img_per_sec",
              "img_per_sec_per_core", "img_per_cpu_sec", "spread_min", "spread_max", "repeats",
              "max_side", "side", "quality", "mean_kb", "load_avg_1m", "cpu", "cpus", "tf",
              "numpy", "python", "augment")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pin(workers: int) -> bool:
    """Restricts this process (and the threads TF starts later) to `workers` CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    if workers > len(cpus):
        print(f"warning: --workers {workers} > {len(cpus)} usable CPUs; not pinning",
              file=sys.stderr)
        return False
    os.sched_setaffinity(0, set(cpus[:workers]))
    return True


def _override(text: str) -> tuple[str, object]:
    """``FIELD=VALUE`` -> (field, value); VALUE is a Python literal or else a string."""
    import ast

    field, sep, value = text.partition("=")
    if not sep or not field:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE")
    try:
        return field, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return field, value


def _write_list(split, folder: str) -> str:
    """A list file naming the images by absolute path, so the list source reads them in place."""
    path = os.path.join(folder, "train_list.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{os.path.abspath(p)} {int(label)}\n"
                     for p, label in zip(split.paths, split.labels))
    return path


def _prepare(args, tmp: str, stack: contextlib.ExitStack):
    """(source, input spec, number of train images, mean file KB, rewrite settings); all setup,
    untimed.

    An extracted tar stays on disk until `stack` closes (the list source reads it in place)."""
    from flaxcls import data
    from flaxcls.config import default_config
    from flaxcls.data import record_source, rewrite
    from flaxcls.preprocessing import resolve_preprocessing
    from flaxcls.specs import DataSpec, InputSpec

    c = default_config()
    c.crop_size = args.crop  # resize_short_size (eval only) stays the model's
    for field, value in args.set:
        c[field] = value
    c.reader_thread, c.random_seed = args.workers, 0
    settings = {"max_side": "", "side": "", "quality": ""}
    index_path = os.path.join(args.data, record_source.RECORDS_INDEX)
    if args.format == "rewritten" and os.path.isfile(index_path):
        c.data_dir, c.data_source = args.data, "records"
        index = record_source.read_records_index(args.data)
        c.num_classes = max(c.num_classes, int(index["num_classes"]))
        settings = {k: index.get("settings", {}).get(k, "") for k in settings}
    else:
        images = stack.enter_context(rewrite.open_images(args.data))
        c.num_classes = images.num_classes
        if args.format == "original":
            c.data_dir, c.data_source = tmp, "list"
            _write_list(images.splits["train"], tmp)
        else:
            out = os.path.join(tmp, "records")
            rewrite.write_records(images, out, max_side=args.max_side, side=args.side,
                                  quality=args.quality, shards=args.shards, seed=0)
            c.data_dir, c.data_source = out, "records"
            settings = {"max_side": args.max_side, "side": args.side, "quality": args.quality}
    resolve_preprocessing(c)
    src = data.open_source(DataSpec.from_config(c))
    if src.keys_are_paths:
        sizes = [os.path.getsize(p) for p in src.train.paths]
    else:
        sizes = [os.path.getsize(p) for p in src.train.files]
    n = src.train_size
    return src, InputSpec.from_config(c), n, sum(sizes) / n / 1024, settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=os.path.join(REPO, DEFAULT_DATA),
                   help="folder or .tar of images (default: %(default)s)")
    p.add_argument("--format", choices=["original", "rewritten"], default="original")
    p.add_argument("--workers", type=int, default=1, help="CPU threads the pipeline may use")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each timed window")
    p.add_argument("--epochs", type=float, default=0.0, help=">0: windows of this many passes")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--max-side", type=int, default=256, help="rewritten: bounded side, pixels")
    p.add_argument("--side", choices=["longer", "shorter"], default="longer")
    p.add_argument("--quality", type=int, default=90, help="rewritten: JPEG quality")
    p.add_argument("--shards", type=int, default=8, help="rewritten: record files")
    p.add_argument("--set", action="append", default=[], type=_override, metavar="FIELD=VALUE",
                   help="a config override of the train stream, e.g. "
                        "auto_augment=rand-m9-n2-mstd0.5 or color_jitter=True (repeatable)")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not restrict the process to --workers CPUs")
    p.add_argument("--csv", default=os.path.join(REPO, DEFAULT_CSV),
                   help="append the result here ('' for none)")
    args = p.parse_args()
    if not os.path.exists(args.data):
        print(json.dumps({"benchmark": "input_throughput", "skipped":
                          f"--data {args.data!r} not found (the default is {DEFAULT_DATA} "
                          f"from the repository root)"}))
        return
    pinned = _pin(args.workers) if args.pin else False  # before TensorFlow starts its threads

    import numpy as np

    from flaxcls.data import pipeline

    tf = pipeline.tf
    load_avg = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="flaxcls-input-bench-"))
        source, spec, n, mean_kb, settings = _prepare(args, tmp, stack)
        if n < args.batch:
            raise SystemExit(f"--batch {args.batch} is larger than the {n} images")
        it = pipeline.train_iterator(source, spec, global_batch_size=args.batch)
        for _ in range(args.warmup):
            next(it)
        batches = max(1, round(args.epochs * n / args.batch)) if args.epochs > 0 else 0
        rates, cpu_rates = [], []
        for _ in range(args.repeats):
            t0, c0, done = time.perf_counter(), time.process_time(), 0
            while (done < batches) if batches else (time.perf_counter() - t0 < args.seconds):
                b = next(it)
                done += 1
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            rates.append(done * args.batch / wall)
            cpu_rates.append(done * args.batch / cpu)
        if b["image"].shape != (args.batch, args.crop, args.crop, 3) or b["image"].dtype != np.uint8:
            raise SystemExit(f"unexpected batch {b['image'].shape} {b['image'].dtype}")
        del it, source  # stops the prefetching threads before the extracted files go
        gc.collect()

    rate = statistics.median(rates)
    result = {
        "benchmark": "input_throughput",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "format": args.format, "data": os.path.basename(os.path.normpath(args.data)),
        "images": n, "workers": args.workers, "pinned": pinned, "batch": args.batch,
        "crop": args.crop, "img_per_sec": round(rate, 1),
        "img_per_sec_per_core": round(rate / args.workers, 1),
        "img_per_cpu_sec": round(statistics.median(cpu_rates), 1),
        "spread_min": round(min(rates), 1), "spread_max": round(max(rates), 1),
        "repeats": args.repeats, **settings, "mean_kb": round(mean_kb, 1),
        "load_avg_1m": round(load_avg, 2), "cpu": _cpu_model(), "cpus": os.cpu_count(),
        "tf": tf.__version__, "numpy": np.__version__, "python": platform.python_version(),
        "augment": " ".join(f"{k}={v}" for k, v in args.set),
    }
    print(json.dumps(result), flush=True)
    if args.csv:
        os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(result)


if __name__ == "__main__":
    main()
