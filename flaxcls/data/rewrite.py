"""Rewrites an image data set into sharded TFRecord files of smaller JPEGs, for faster decoding.

    python -m flaxcls.data.rewrite --src DATA --out DIR --max-side 256 --quality 90 --shards 64

DATA is what `config.data_dir` accepts (a folder with list files or train/ val/ class folders),
a single class-folder tree, a flat folder of `<class>_<anything>.<ext>` files, a list file, or a
.tar/.tar.gz of any of these. Each train image whose bounded side (`--side`: the longer one by
default, the shorter one optionally) exceeds --max-side is scaled down (antialiased) and
re-encoded at --quality; an image that already fits and is a JPEG is stored byte for byte. The
eval split has its own bound, by default the shorter side at 256 (--eval-side, --eval-max-side):
the eval transform resizes the shorter side to resize_short_size (the model's, 256 for most
models) anyway, so evaluation sees the same geometry as from the original files;
`--model NAME` sets both bounds to that model's resize size (320 for the Inception family). The train
split is shuffled once (--seed) before sharding so every shard mixes the classes. DIR
receives `<split>-NNNNN-of-NNNNN.tfrecord` files of (image, label, index) and, written last,
records.json (classes, per-class counts, shard sizes, the settings). Train from it with
`--config.data_source=records --config.data_dir=DIR`.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Self

import numpy as np

from flaxcls.data.file_source import (
    IMAGE_SUFFIXES,
    FileSplit,
    parse_list_file,
    scan_class_folders,
)
from flaxcls.data.sources import RECORDS_FORMAT, RECORDS_INDEX, DataError, raise_problems

log = logging.getLogger(__name__)

SIDES = ("longer", "shorter")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_UNBOUNDED_CLASSES = 1 << 30


# ----------------------------------------------------------------------------- reading a source


class ImageSet:
    """The splits of a source as image files: {split name: FileSplit}, plus the class names."""

    def __init__(self, splits: dict[str, FileSplit], num_classes: int,
                 class_names: list[str] | None, tmp: str | None = None):
        self.splits, self.num_classes, self.class_names = splits, num_classes, class_names
        self._tmp = tmp

    def close(self) -> None:
        """Removes the folder a tar was extracted to, if any."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_images(src: str, num_classes: int = 0) -> ImageSet:
    """Finds the images and labels of `src` (see the module docstring for the layouts).

    A tar is extracted to a temporary folder first, removed by `ImageSet.close`.
    """
    if not os.path.exists(src):
        raise DataError(f"--src {src!r}: not found")
    if os.path.isfile(src) and src.lower().endswith(_TAR_SUFFIXES):
        tmp = tempfile.mkdtemp(prefix="flaxcls-rewrite-")
        try:
            _extract(src, tmp)
            entries = [e for e in os.listdir(tmp) if not e.startswith(".")]
            root = os.path.join(tmp, entries[0]) if len(entries) == 1 and os.path.isdir(
                os.path.join(tmp, entries[0])) else tmp
            images = open_images(root, num_classes)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        images._tmp = tmp
        return images
    bound = num_classes or _UNBOUNDED_CLASSES
    problems: list[str] = []
    if os.path.isfile(src):  # a list file: paths relative to its folder
        split = parse_list_file(src, os.path.dirname(src), bound, problems)
        raise_problems(problems, src)
        return ImageSet({"train": split}, num_classes or _label_count(split), None)
    if os.path.isfile(os.path.join(src, "train_list.txt")):
        splits = {}
        for name in ("train", "val"):
            path = os.path.join(src, f"{name}_list.txt")
            if os.path.isfile(path):
                splits[name] = parse_list_file(path, src, bound, problems)
        raise_problems(problems, "the list files")
        return ImageSet(splits, num_classes or max(_label_count(s) for s in splits.values()),
                        None)
    if os.path.isdir(os.path.join(src, "train")):
        roots = {n: os.path.join(src, n) for n in ("train", "val", "validation", "test")
                 if os.path.isdir(os.path.join(src, n))}
        return _class_folders(roots, num_classes)
    with os.scandir(src) as it:
        entries = list(it)
    if any(e.is_dir() and not e.name.startswith(".") for e in entries):
        return _class_folders({"train": src}, num_classes)
    return _flat_folder(src, [e.name for e in entries if e.is_file()], num_classes)


def _extract(tar_path: str, dest: str) -> None:
    with tarfile.open(tar_path) as tar:
        members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
        tar.extractall(dest, members=members, filter="data")


def _label_count(split: FileSplit) -> int:
    return int(split.labels.max()) + 1 if len(split) else 0


def _class_folders(roots: dict[str, str], num_classes: int) -> ImageSet:
    train = scan_class_folders(roots["train"])
    names = list(train)
    if num_classes and len(names) > num_classes:
        raise DataError(f"{roots['train']}: {len(names)} class folders but --num-classes "
                        f"{num_classes}")
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, root in roots.items():
        classes = train if split == "train" else scan_class_folders(root)
        unknown = [n for n in classes if n not in index]
        raise_problems([f"{os.path.join(root, n)}: class folder not in {roots['train']}"
                         for n in unknown], root)
        paths = [p for n in classes for p in classes[n]]
        labels = [index[n] for n in classes for _ in classes[n]]
        splits[split] = FileSplit(np.array(paths, dtype=object), np.array(labels, np.int32))
    return ImageSet(splits, num_classes or len(names), names)


def _flat_folder(root: str, files: list[str], num_classes: int) -> ImageSet:
    """`<class>_<rest>.<ext>` files (the ImageNet sample layout); classes sorted by name."""
    images = sorted(f for f in files if f.lower().endswith(IMAGE_SUFFIXES)
                    and not f.startswith("."))
    if not images:
        raise DataError(f"--src {root!r}: no images, list file or class folders found")
    classes = [re.split(r"[_.]", f, maxsplit=1)[0] for f in images]
    names = sorted(set(classes))
    if num_classes and len(names) > num_classes:
        raise DataError(f"{root}: {len(names)} classes (file-name prefixes) but --num-classes "
                        f"{num_classes}")
    index = {n: i for i, n in enumerate(names)}
    split = FileSplit(np.array([os.path.join(root, f) for f in images], dtype=object),
                      np.array([index[c] for c in classes], np.int32))
    return ImageSet({"train": split}, num_classes or len(names), names)


# ----------------------------------------------------------------------------- re-encoding


def reencode(data: bytes, *, max_side: int, side: str, quality: int) -> tuple[bytes, bool]:
    """(JPEG bytes, resized?): scaled so the bounded side is <= max_side, or unchanged if it fits.

    A JPEG that fits is returned as it is (no generation loss); other formats are re-encoded.
    Raises tf.errors.InvalidArgumentError for data that is no decodable image.
    """
    from flaxcls.data import ops

    tf = ops.tf
    image = ops.decode_rgb(tf.constant(data))
    h, w = int(image.shape[0]), int(image.shape[1])
    bounded = max(h, w) if side == "longer" else min(h, w)
    if bounded <= max_side:
        if tf.io.is_jpeg(data).numpy():
            return data, False
        return tf.io.encode_jpeg(image, quality=quality).numpy(), False
    scale = max_side / bounded
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    small = tf.image.resize(image, size, method="bilinear", antialias=True)
    small = tf.cast(tf.clip_by_value(tf.round(small), 0.0, 255.0), tf.uint8)
    return tf.io.encode_jpeg(small, quality=quality).numpy(), True


def _example(image: bytes, label: int, index: int) -> bytes:
    from flaxcls.data import ops

    tf = ops.tf
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[index])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _ordered_map(fn, items: list, workers: int) -> Iterator:
    """fn over items in `workers` threads (TF ops release the GIL), results in order, a bounded
    number in flight."""
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 4 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}.tfrecord"


def write_records(images: ImageSet, out_dir: str, *, max_side: int = 256, side: str = "longer",
                  quality: int = 90, shards: int = 16, seed: int = 0, workers: int = 0,
                  eval_max_side: int = 256, eval_side: str = "shorter",
                  source: str = "") -> dict:
    """Writes every split of `images` to `out_dir`; returns the index (also written as
    records.json, last). The train split is bounded by (max_side, side), the others by
    (eval_max_side, eval_side). Unreadable images are skipped, logged and listed in the index."""
    from flaxcls.data import ops

    tf = ops.tf
    if side not in SIDES or eval_side not in SIDES:
        raise ValueError(f"side={side!r}, eval_side={eval_side!r}: must be one of {SIDES}")
    if min(max_side, eval_max_side) < 1 or not 1 <= quality <= 100 or shards < 1:
        raise ValueError(f"need max sides >= 1, quality in [1, 100], shards >= 1 "
                         f"(got {max_side}, {eval_max_side}, {quality}, {shards})")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise DataError(f"--out {out_dir!r} exists and is not empty")
    os.makedirs(out_dir, exist_ok=True)
    workers = workers or len(os.sched_getaffinity(0))
    index: dict = {
        "format": RECORDS_FORMAT, "num_classes": int(images.num_classes),
        "classes": images.class_names, "splits": {},
        "settings": {"max_side": max_side, "side": side, "eval_max_side": eval_max_side,
                     "eval_side": eval_side, "quality": quality, "seed": seed,
                     "source": os.path.basename(os.path.normpath(source)) if source else ""},
    }
    for name, split in images.splits.items():
        order = np.arange(len(split))
        if name == "train":
            order = np.random.default_rng(seed).permutation(len(split))
        n_shards = max(1, min(shards, len(split)))
        bounds = np.linspace(0, len(split), n_shards + 1).round().astype(int)

        bound = (max_side, side) if name == "train" else (eval_max_side, eval_side)

        def convert(i: int, split: FileSplit = split, bound: tuple = bound):
            path = str(split.paths[i])
            try:
                with open(path, "rb") as f:
                    return i, *reencode(f.read(), max_side=bound[0], side=bound[1],
                                        quality=quality)
            except (OSError, tf.errors.OpError) as e:
                return i, None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"

        shard_info, skipped, written, resized, class_counts = [], [], 0, 0, collections.Counter()
        results = _ordered_map(convert, order.tolist(), workers)
        for s in range(n_shards):
            file = shard_name(name, s, n_shards)
            count = 0
            with tf.io.TFRecordWriter(os.path.join(out_dir, file)) as writer:
                for _ in range(bounds[s], bounds[s + 1]):
                    i, data, what = next(results)
                    if data is None:
                        skipped.append(f"{split.paths[i]}: {what}")
                        log.warning("skipped %s: %s", split.paths[i], what)
                        continue
                    label = int(split.labels[i])
                    writer.write(_example(data, label, written))
                    written, count = written + 1, count + 1
                    resized += bool(what)
                    class_counts[label] += 1
            shard_info.append({"file": file, "count": count,
                               "bytes": os.path.getsize(os.path.join(out_dir, file))})
        index["splits"][name] = {
            "count": written, "resized": resized, "skipped": skipped, "shards": shard_info,
            "class_counts": [class_counts[k] for k in range(images.num_classes)],
            "bytes": sum(s["bytes"] for s in shard_info),
        }
    with open(os.path.join(out_dir, RECORDS_INDEX + ".tmp"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=1)
    os.replace(os.path.join(out_dir, RECORDS_INDEX + ".tmp"), os.path.join(out_dir, RECORDS_INDEX))
    return index


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flaxcls.data.rewrite",
                                description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="data folder, list file, or .tar of either")
    p.add_argument("--out", required=True, help="an empty or new folder")
    p.add_argument("--model", default="",
                   help="size the bounds for this model: --max-side and --eval-max-side "
                        "default to its resize_short_size (256 for most models, 320 for the "
                        "Inception/Xception family) instead of 256")
    p.add_argument("--max-side", type=int, default=None,
                   help="bound on the --side side, pixels (default 256, or see --model)")
    p.add_argument("--side", choices=SIDES, default="longer", help="which side --max-side bounds")
    p.add_argument("--eval-max-side", type=int, default=None,
                   help="bound for the eval split (default 256, or see --model)")
    p.add_argument("--eval-side", choices=SIDES, default="shorter",
                   help="which side --eval-max-side bounds")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded images")
    p.add_argument("--shards", type=int, default=16, help="record files per split (>= processes)")
    p.add_argument("--seed", type=int, default=0, help="train shuffle before sharding")
    p.add_argument("--num-classes", type=int, default=0, help="0: counted from the source")
    p.add_argument("--workers", type=int, default=0, help="threads; 0: every CPU")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    bound = 256
    if args.model:
        from flaxcls.registry import get_model_cfg

        try:
            bound = int(get_model_cfg(args.model).resize_short_size)
        except (KeyError, ValueError) as e:
            print(f"error: --model {args.model!r}: {e}", file=sys.stderr)
            return 2
    args.max_side = bound if args.max_side is None else args.max_side
    args.eval_max_side = bound if args.eval_max_side is None else args.eval_max_side
    try:
        with open_images(args.src, args.num_classes) as images:
            index = write_records(images, args.out, max_side=args.max_side, side=args.side,
                                  quality=args.quality, shards=args.shards, seed=args.seed,
                                  workers=args.workers, eval_max_side=args.eval_max_side,
                                  eval_side=args.eval_side, source=args.src)
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, split in index["splits"].items():
        print(f"{name}: {split['count']} images ({split['resized']} resized, "
              f"{len(split['skipped'])} skipped) in {len(split['shards'])} shards, "
              f"{split['bytes'] / 1e6:.1f} MB")
    print(f"wrote {os.path.join(args.out, RECORDS_INDEX)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
