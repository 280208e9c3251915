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
import contextlib
import hashlib
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
    # Deterministic: the feature map in key order, so the same image gives the same bytes in
    # every process (a resumed rewrite equals an uninterrupted one byte for byte).
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


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


PLAN = "rewrite.json"  # the arguments of a rewrite in progress; records.json replaces it
_DONE_LOG = "rewrite-shards.jsonl"  # one line per shard moved into place
_UNFINISHED = ".tmp"  # a shard being written


class _AlreadyDone(Exception):
    """--out holds a finished rewrite of the same arguments and source."""


def _split_digest(split: FileSplit) -> str:
    """Identifies a split's images and labels (by file name, so a tar extracted to another
    temporary folder reads the same)."""
    h = hashlib.sha256()
    for path, label in zip(split.paths, split.labels, strict=True):
        h.update(f"{os.path.basename(str(path))}\0{int(label)}\n".encode())
    return h.hexdigest()


def _plan(images: ImageSet, settings: dict, shards: int) -> dict:
    return {"format": RECORDS_FORMAT, "settings": {**settings, "shards": shards},
            "num_classes": int(images.num_classes), "classes": images.class_names,
            "splits": {n: {"count": len(s), "digest": _split_digest(s)}
                       for n, s in images.splits.items()}}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'field: was X, now Y' for each leaf where two plans differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: was {a!r}, now {b!r}")
    return out


def _resume_state(out_dir: str, plan: dict) -> dict[str, dict]:
    """{shard file: its record} of the shards an interrupted rewrite of the same plan finished;
    raises DataError when ``out_dir`` holds anything else."""
    if not (os.path.isdir(out_dir) and os.listdir(out_dir)):
        return {}
    plan_path = os.path.join(out_dir, PLAN)
    if not os.path.exists(plan_path):
        index_path = os.path.join(out_dir, RECORDS_INDEX)
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as f:
                if json.load(f).get("plan") == plan:
                    raise _AlreadyDone
        what = ("a finished rewrite of other arguments or another source (records.json)"
                if os.path.exists(index_path) else "files that are not an interrupted rewrite")
        raise DataError(f"--out {out_dir!r} exists and is not empty: it holds {what}; choose "
                        "an empty or new folder")
    with open(plan_path, encoding="utf-8") as f:
        old = json.load(f)
    differ = _differences(old, plan)
    if differ:
        raise DataError(f"--out {out_dir!r} holds an interrupted rewrite with other arguments or "
                        f"another source ({'; '.join(differ[:6])}); re-run it with the same "
                        "arguments to finish it, or choose another --out")
    done: dict[str, dict] = {}
    log_path = os.path.join(out_dir, _DONE_LOG)
    if os.path.exists(log_path):
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the line being written when it was killed
                    continue
                path = os.path.join(out_dir, record["file"])
                # Complete only if moved into place and of the size written.
                if os.path.isfile(path) and os.path.getsize(path) == record["bytes"]:
                    done[record["file"]] = record
    for name in os.listdir(out_dir):
        if name.endswith(_UNFINISHED):
            os.remove(os.path.join(out_dir, name))
    return done


def write_records(images: ImageSet, out_dir: str, *, max_side: int = 256, side: str = "longer",
                  quality: int = 90, shards: int = 16, seed: int = 0, workers: int = 0,
                  eval_max_side: int = 256, eval_side: str = "shorter",
                  source: str = "") -> dict:
    """Writes every split of `images` to `out_dir`; returns the index (also written as
    records.json, last). The train split is bounded by (max_side, side), the others by
    (eval_max_side, eval_side). Unreadable images are skipped, logged and listed in the index.

    Each shard is written under a temporary name and renamed when complete. Re-run with the
    same arguments on the folder of an interrupted rewrite, it keeps the finished shards and
    writes the rest; the result is byte for byte that of an uninterrupted rewrite."""
    from flaxcls.data import ops
    from flaxcls.progress import TaskProgress

    tf = ops.tf
    if side not in SIDES or eval_side not in SIDES:
        raise ValueError(f"side={side!r}, eval_side={eval_side!r}: must be one of {SIDES}")
    if min(max_side, eval_max_side) < 1 or not 1 <= quality <= 100 or shards < 1:
        raise ValueError(f"need max sides >= 1, quality in [1, 100], shards >= 1 "
                         f"(got {max_side}, {eval_max_side}, {quality}, {shards})")
    settings = {"max_side": max_side, "side": side, "eval_max_side": eval_max_side,
                "eval_side": eval_side, "quality": quality, "seed": seed,
                "source": os.path.basename(os.path.normpath(source)) if source else ""}
    plan = _plan(images, settings, shards)
    try:
        done = _resume_state(out_dir, plan)
    except _AlreadyDone:
        log.info("%s already holds this rewrite, complete: nothing to do", out_dir)
        with open(os.path.join(out_dir, RECORDS_INDEX), encoding="utf-8") as f:
            return json.load(f)
    os.makedirs(out_dir, exist_ok=True)
    if done:
        log.info("resuming the rewrite in %s: %d shard(s) already written", out_dir, len(done))
    else:
        _write_json(os.path.join(out_dir, PLAN), plan)
    done_log = open(os.path.join(out_dir, _DONE_LOG), "a", encoding="utf-8")  # noqa: SIM115
    workers = workers or len(os.sched_getaffinity(0))
    index: dict = {
        "format": RECORDS_FORMAT, "num_classes": int(images.num_classes),
        "classes": images.class_names, "splits": {}, "settings": settings,
        "plan": plan,  # what a re-run compares: the arguments and the source's identity
    }
    for name, split in images.splits.items():
        order = np.arange(len(split))
        if name == "train":
            order = np.random.default_rng(seed).permutation(len(split))
        n_shards = max(1, min(shards, len(split)))
        bounds = np.linspace(0, len(split), n_shards + 1).round().astype(int)
        files = [shard_name(name, s, n_shards) for s in range(n_shards)]
        todo = [s for s in range(n_shards) if files[s] not in done]

        bound = (max_side, side) if name == "train" else (eval_max_side, eval_side)

        def convert(i: int, split: FileSplit = split, bound: tuple = bound):
            path = str(split.paths[i])
            try:
                with open(path, "rb") as f:
                    return i, *reencode(f.read(), max_side=bound[0], side=bound[1],
                                        quality=quality)
            except (OSError, tf.errors.OpError) as e:
                return i, None, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"

        results = _ordered_map(
            convert, [int(order[k]) for s in todo for k in range(bounds[s], bounds[s + 1])],
            workers)
        progress = TaskProgress(f"rewrite {name}", total=int(sum(
            bounds[s + 1] - bounds[s] for s in todo)), logger=log)
        written = 0
        for s in range(n_shards):
            if files[s] in done:
                written += done[files[s]]["count"]
                continue
            record = _write_shard(tf, out_dir, files[s], results, bounds[s + 1] - bounds[s],
                                  split, written, images.num_classes, progress)
            written += record["count"]
            done[files[s]] = record
            done_log.write(json.dumps(record) + "\n")
            done_log.flush()
        progress.close()
        records = [done[f] for f in files]
        class_counts = np.sum([r["class_counts"] for r in records], axis=0, dtype=np.int64)
        index["splits"][name] = {
            "count": written, "resized": sum(r["resized"] for r in records),
            "skipped": [x for r in records for x in r["skipped"]],
            "shards": [{"file": r["file"], "count": r["count"], "bytes": r["bytes"]}
                       for r in records],
            "class_counts": [int(class_counts[k]) for k in range(images.num_classes)],
            "bytes": sum(r["bytes"] for r in records),
        }
    done_log.close()
    _write_json(os.path.join(out_dir, RECORDS_INDEX), index)
    for leftover in (PLAN, _DONE_LOG):  # records.json is the record from here on
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, leftover))
    return index


def _write_shard(tf, out_dir: str, file: str, results: Iterator, n: int, split: FileSplit,
                 first_index: int, num_classes: int, progress) -> dict:
    """Writes the next ``n`` results as one shard, under a temporary name until complete."""
    tmp = os.path.join(out_dir, file + _UNFINISHED)
    count, resized, skipped, class_counts = 0, 0, [], collections.Counter()
    with tf.io.TFRecordWriter(tmp) as writer:
        for _ in range(n):
            i, data, what = next(results)
            progress.update()
            if data is None:
                skipped.append(f"{split.paths[i]}: {what}")
                log.warning("skipped %s: %s", split.paths[i], what)
                continue
            label = int(split.labels[i])
            writer.write(_example(data, label, first_index + count))
            count += 1
            resized += bool(what)
            class_counts[label] += 1
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(out_dir, file))
    return {"file": file, "count": count, "bytes": os.path.getsize(os.path.join(out_dir, file)),
            "resized": resized, "skipped": skipped,
            "class_counts": [class_counts[k] for k in range(num_classes)]}


def _write_json(path: str, obj: dict) -> None:
    with open(path + _UNFINISHED, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + _UNFINISHED, path)


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
