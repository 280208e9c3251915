"""Dataset sources (list files, class folders, record shards, prepared TFDS builders), validated
before training.

Nothing here imports tensorflow except the TFDS source, and only when it is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Suffixes a class-folder scan picks up (compared case-insensitively): what tf.io.decode_image reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
MAX_REPORTED = 20  # problems listed in one DataError message
_LABEL = re.compile(r"[+-]?\d+")
# TFDS names the ImageNet-style held-out split "validation"; the original flag value is "val".
_SPLIT_ALIASES = {"val": ("validation",), "validation": ("val",), "eval": ("validation", "val")}
RECORDS_INDEX = "records.json"  # written last by `python -m flaxcls.data.rewrite`
RECORDS_FORMAT = "flaxcls-records-v1"


class DataError(ValueError):
    """The data set on disk does not match what the config says; the message names file and line."""


@dataclasses.dataclass
class DatasetInfo:
    num_train: int  # examples in the train split (all processes)
    num_eval: int  # examples in the eval split
    num_classes: int
    class_names: list[str] | None  # folder names for class folders, else None


@dataclasses.dataclass(frozen=True)
class FileSplit:
    """One split as image files: `paths[i]` (joined with data_dir) has label `labels[i]`."""

    paths: np.ndarray  # str
    labels: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class FileSource:
    kind: str  # "list" or "folder"
    data_dir: str
    train: FileSplit
    eval: FileSplit | None
    eval_looked_for: str  # what was looked for, for the error when eval is None
    num_classes: int  # classes seen (folders) or config.num_classes (lists)
    class_names: list[str] | None


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    name: str
    data_dir: str | None
    train_split: str
    eval_split: str | None
    eval_looked_for: str
    image_key: str
    label_key: str
    num_train: int
    num_eval: int
    num_classes: int
    class_names: list[str] | None

    def builder(self) -> Any:
        """The (validated, prepared) builder; made once, as each one rereads its metadata."""
        key = (self.name, self.data_dir)
        if key not in _builders:
            _builders[key] = _tfds_builder(self.name, self.data_dir)
        return _builders[key]


@dataclasses.dataclass(frozen=True)
class RecordSplit:
    """One split as TFRecord shards of (encoded JPEG, label, index); record k of the split is the
    example with index k, shards hold consecutive runs of it."""

    name: str
    files: tuple[str, ...]  # full paths
    counts: tuple[int, ...]  # records per shard

    def __len__(self) -> int:
        return sum(self.counts)

    def locate(self, index: int) -> str:
        """'<shard file> record #k' for an example index of this split."""
        for path, count in zip(self.files, self.counts):
            if index < count:
                return f"{path} record #{index}"
            index -= count
        return f"{self.name} example #{index} (past the last shard)"


@dataclasses.dataclass(frozen=True)
class RecordSource:
    """Sharded record files written by `python -m flaxcls.data.rewrite`, described by records.json."""

    data_dir: str
    train: RecordSplit
    eval: RecordSplit | None
    eval_looked_for: str
    num_classes: int
    class_names: list[str] | None
    settings: dict

    @property
    def num_train(self) -> int:
        return len(self.train)

    @property
    def num_eval(self) -> int:
        return len(self.eval) if self.eval is not None else 0


Source = FileSource | TfdsSource | RecordSource
_cache: dict[tuple, Source] = {}
_builders: dict[tuple, Any] = {}


def dataset_info(config) -> DatasetInfo:
    """Resolves and validates the configured data set; raises DataError listing what is wrong."""
    src = resolve_source(config)
    if isinstance(src, FileSource):
        num_train, num_eval = len(src.train), len(src.eval) if src.eval is not None else 0
    else:
        num_train, num_eval = src.num_train, src.num_eval
    if config.total_images > 0:  # like the original flag: the epoch length, whatever is on disk
        num_train = int(config.total_images)
    return DatasetInfo(num_train, num_eval, src.num_classes, src.class_names)


def resolve_source(config) -> Source:
    """The validated source for `config` (memoised on the config fields and file timestamps)."""
    kind = config.data_source
    if kind == "tfds":
        key = ("tfds", config.tfds_name, config.data_dir, config.train_split, config.eval_split,
               config.num_classes)
        if key not in _cache:
            _cache[key] = _tfds_source(config)
        return _cache[key]
    data_dir = str(config.data_dir)
    if not data_dir:
        raise DataError("config.data_dir is empty: set it to the folder holding the list files "
                        "or the class folders (or use data_source='tfds')")
    train_list = os.path.join(data_dir, config.train_list)
    train_root = os.path.join(data_dir, config.train_split)
    records_index = os.path.join(data_dir, RECORDS_INDEX)
    if kind == "auto":
        if os.path.isfile(train_list):
            kind = "list"
        elif os.path.isdir(train_root):
            kind = "folder"
        elif os.path.isfile(records_index):
            kind = "records"
        elif not os.path.isdir(data_dir):
            raise DataError(f"config.data_dir={data_dir!r} does not exist (or is not a folder)")
        else:
            raise DataError(
                f"config.data_dir={data_dir!r}: found neither a list file {train_list!r} "
                f"(config.train_list) nor a class-folder tree {train_root + os.sep!r} "
                f"(config.train_split) nor a record index {records_index!r}")
    if kind == "records":
        key = ("records", data_dir, _stamp(records_index), config.train_split, config.eval_split,
               config.num_classes)
        if key not in _cache:
            _cache[key] = _records_source(data_dir, config.train_split, config.eval_split,
                                          config.num_classes)
        return _cache[key]
    if kind == "list":
        val_list = os.path.join(data_dir, config.val_list)
        key = ("list", data_dir, _stamp(train_list), _stamp(val_list), config.num_classes)
        if key not in _cache:
            _cache[key] = _list_source(data_dir, train_list, val_list, config.num_classes)
        return _cache[key]
    if kind == "folder":
        eval_root = os.path.join(data_dir, config.eval_split)
        key = ("folder", data_dir, _tree_stamp(train_root), _tree_stamp(eval_root),
               config.num_classes)
        if key not in _cache:
            _cache[key] = _folder_source(data_dir, train_root, eval_root, config.num_classes)
        return _cache[key]
    raise DataError(f"config.data_source={config.data_source!r}: must be auto, list, folder, "
                    f"records or tfds")


def _stamp(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_mtime_ns, st.st_size)


def _tree_stamp(root: str) -> tuple:
    """Timestamps of a split folder and its class folders (adding a file to a class changes it)."""
    if not os.path.isdir(root):
        return (root, None)
    with os.scandir(root) as it:
        subs = sorted((e.name, e.stat().st_mtime_ns) for e in it if e.is_dir())
    return (_stamp(root), tuple(subs))


def _raise_problems(problems: list[str], what: str) -> None:
    if not problems:
        return
    shown = "\n  ".join(problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    raise DataError(f"{len(problems)} problem(s) in {what}:\n  {shown}{more}")


# ----------------------------------------------------------------------------- list files


def parse_list_file(list_path: str, data_dir: str, num_classes: int,
                    problems: list[str]) -> FileSplit:
    """Reads `<relative/path> <label>` lines; appends 'file:line: what (text)' to `problems`."""
    paths, labels, where = [], [], []
    with open(list_path, "rb") as f:
        raw_lines = f.read().splitlines()
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            problems.append(f"{list_path}:{lineno}: not valid UTF-8: {raw[:200]!r}")
            continue
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
            problems.append(f"{list_path}:{lineno}: expected '<image path> <integer label>', "
                            f"got {line!r}")
            continue
        label = int(parts[1])
        if not 0 <= label < num_classes:
            problems.append(f"{list_path}:{lineno}: label {label} is outside [0, {num_classes}) "
                            f"(config.num_classes={num_classes}): {line!r}")
            continue
        paths.append(os.path.join(data_dir, parts[0].strip()))
        labels.append(label)
        where.append((lineno, line))
    for i in _missing_files(paths):
        lineno, line = where[i]
        problems.append(f"{list_path}:{lineno}: image not found: {paths[i]!r} (line {line!r})")
    return FileSplit(np.array(paths, dtype=object), np.array(labels, dtype=np.int32))


def _missing_files(paths: list[str]) -> Iterable[int]:
    """Indices of paths that are not files; one directory listing per folder, not a stat per file."""
    listings: dict[str, set[str] | None] = {}
    for i, path in enumerate(paths):
        folder, name = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder or "."))
            except OSError:
                listings[folder] = None
        names = listings[folder]
        if names is None or (name not in names and not os.path.isfile(path)):
            yield i


def _list_source(data_dir: str, train_list: str, val_list: str, num_classes: int) -> FileSource:
    if not os.path.isfile(train_list):
        raise DataError(f"train list file {train_list!r} not found "
                        f"(config.data_dir={data_dir!r}, config.train_list)")
    problems: list[str] = []
    train = parse_list_file(train_list, data_dir, num_classes, problems)
    evals = parse_list_file(val_list, data_dir, num_classes, problems) \
        if os.path.isfile(val_list) else None
    _raise_problems(problems, "the list files")
    if not len(train):
        raise DataError(f"{train_list}: no examples (config.train_list)")
    if evals is None:
        log.warning("No eval list %r (config.val_list): evaluation is not possible.", val_list)
    return FileSource("list", data_dir, train, evals, f"list file {val_list!r} (config.val_list)",
                      num_classes, None)


# ----------------------------------------------------------------------------- class folders


def scan_class_folders(root: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} for `root/<class>/**/*.<image suffix>`, classes sorted."""
    classes = {}
    with os.scandir(root) as it:
        names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for name in names:
        files = []
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, name), followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                         if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
        classes[name] = files
    return classes


def _folder_split(classes: dict[str, list[str]], index: dict[str, int]) -> FileSplit:
    paths = [p for name in classes for p in classes[name]]
    labels = [index[name] for name in classes for _ in classes[name]]
    return FileSplit(np.array(paths, dtype=object), np.array(labels, dtype=np.int32))


def _folder_source(data_dir: str, train_root: str, eval_root: str, num_classes: int) -> FileSource:
    if not os.path.isdir(train_root):
        raise DataError(f"class-folder tree {train_root!r} not found "
                        f"(config.data_dir={data_dir!r}, config.train_split)")
    train_classes = scan_class_folders(train_root)
    names = list(train_classes)
    if len(names) > num_classes:
        raise DataError(f"{train_root}: {len(names)} class folders but config.num_classes="
                        f"{num_classes}; set num_classes to at least {len(names)}")
    if len(names) < num_classes:
        log.warning("%s: %d class folders but config.num_classes=%d: the classifier has %d "
                    "outputs no image is labelled with (--config.num_classes=%d unless that is "
                    "meant)", train_root, len(names), num_classes, num_classes - len(names),
                    len(names))
    if not any(train_classes.values()):
        raise DataError(f"{train_root}: no images (looked for {', '.join(IMAGE_SUFFIXES)} files "
                        f"under its class folders)")
    empty = [n for n, files in train_classes.items() if not files]
    if empty:
        log.warning("%s: %d class folder(s) without images (labels kept): %s", train_root,
                    len(empty), ", ".join(empty[:MAX_REPORTED]))
    index = {name: i for i, name in enumerate(names)}
    evals = None
    if os.path.isdir(eval_root):
        eval_classes = scan_class_folders(eval_root)
        unknown = [n for n in eval_classes if n not in index]
        _raise_problems([f"{os.path.join(eval_root, n)}: class folder not in {train_root}"
                         for n in unknown], f"the eval split {eval_root}")
        evals = _folder_split(eval_classes, index)
    else:
        parent = os.path.dirname(eval_root.rstrip(os.sep))
        others = sorted(n for n in ("val", "validation", "test", "valid")
                        if os.path.isdir(os.path.join(parent, n))
                        and os.path.join(parent, n) != os.path.normpath(train_root))
        hint = (f"; found {', '.join(repr(n) for n in others)} beside it: "
                f"--config.eval_split={others[0]} evaluates on it" if others else "")
        log.warning("No eval folder %r (config.eval_split): evaluation is not possible%s.",
                    eval_root, hint)
    return FileSource("folder", data_dir, _folder_split(train_classes, index), evals,
                      f"class-folder tree {eval_root!r} (config.eval_split)", len(names), names)


# ----------------------------------------------------------------------------- record shards


def read_records_index(data_dir: str) -> dict:
    """The parsed records.json of `data_dir`; DataError naming the file when absent or malformed."""
    path = os.path.join(data_dir, RECORDS_INDEX)
    if not os.path.isfile(path):
        raise DataError(f"record index {path!r} not found (config.data_dir={data_dir!r}, "
                        f"data_source='records'); write one with "
                        f"`python -m flaxcls.data.rewrite --src <images> --out {data_dir}`")
    try:
        with open(path, encoding="utf-8") as f:
            index = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a valid record index: {e}") from e
    if not isinstance(index, dict) or index.get("format") != RECORDS_FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise DataError(f"{path}: format {found!r}, expected {RECORDS_FORMAT!r}")
    for field, kind in (("splits", dict), ("num_classes", int)):
        if not isinstance(index.get(field), kind):
            raise DataError(f"{path}: field {field!r} is missing or not a {kind.__name__}")
    return index


def _record_split(data_dir: str, path: str, name: str, entry: Any,
                  problems: list[str]) -> RecordSplit:
    files, counts = [], []
    shards = entry.get("shards") if isinstance(entry, dict) else None
    if not isinstance(shards, list) or not shards:
        problems.append(f"{path}: split {name!r} has no 'shards' list")
        return RecordSplit(name, (), ())
    for i, shard in enumerate(shards):
        try:
            file, count, size = str(shard["file"]), int(shard["count"]), int(shard["bytes"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{path}: splits.{name}.shards[{i}] needs 'file', 'count' and 'bytes'")
            continue
        full = os.path.join(data_dir, file)
        try:
            actual = os.path.getsize(full)
        except OSError:
            problems.append(f"{full}: shard {i} of split {name!r} is missing")
            continue
        if actual != size:
            problems.append(f"{full}: {actual} bytes, but {path} says {size} "
                            f"(truncated or replaced; rewrite the data set)")
            continue
        files.append(full)
        counts.append(count)
    return RecordSplit(name, tuple(files), tuple(counts))


def _records_source(data_dir: str, train_split: str, eval_split: str,
                    num_classes: int) -> RecordSource:
    index = read_records_index(data_dir)
    path = os.path.join(data_dir, RECORDS_INDEX)
    splits = index["splits"]

    def find(wanted: str) -> str | None:
        return next((n for n in (wanted, *_SPLIT_ALIASES.get(wanted, ())) if n in splits), None)

    train_name, eval_name = find(train_split), find(eval_split)
    if train_name is None:
        raise DataError(f"{path}: no split {train_split!r} (config.train_split; "
                        f"splits: {list(splits)})")
    if index["num_classes"] > num_classes:
        raise DataError(f"{path}: {index['num_classes']} classes but "
                        f"config.num_classes={num_classes}")
    problems: list[str] = []
    train = _record_split(data_dir, path, train_name, splits[train_name], problems)
    evals = None
    if eval_name is not None:
        evals = _record_split(data_dir, path, eval_name, splits[eval_name], problems)
    _raise_problems(problems, f"the record shards of {path}")
    if not len(train):
        raise DataError(f"{path}: split {train_name!r} has no examples")
    if evals is None:
        log.warning("%s: no split %r (config.eval_split): evaluation is not possible.", path,
                    eval_split)
    names = index.get("classes")
    return RecordSource(data_dir, train, evals,
                        f"split {eval_split!r} in {path} (config.eval_split)",
                        int(index["num_classes"]), list(names) if names else None,
                        dict(index.get("settings") or {}))


# ----------------------------------------------------------------------------- TFDS


def _tfds_builder(name: str, data_dir: str | None) -> Any:
    import tensorflow_datasets as tfds

    from flaxcls.data import ops  # noqa: F401  (hides the GPU from tensorflow)

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown or unreadable names
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]  # not the full list
        raise DataError(f"config.tfds_name={name!r}: no such TFDS data set "
                        f"(config.data_dir={data_dir!r}): {first_line}") from e


def _tfds_split(builder: Any, wanted: str) -> str | None:
    splits = builder.info.splits
    for name in (wanted, *_SPLIT_ALIASES.get(wanted, ())):
        if name in splits:
            return name
    return None


def _tfds_source(config) -> TfdsSource:
    name, data_dir = str(config.tfds_name), str(config.data_dir) or None
    if not name:
        raise DataError("config.tfds_name is empty: data_source='tfds' needs a TFDS name")
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        raise DataError(
            f"TFDS data set {name!r} is not prepared in data_dir={builder.data_dir!r} "
            f"(config.data_dir={config.data_dir!r}); flaxcls never downloads: prepare it first, "
            f"e.g. `tfds build {name} --data_dir=<data_dir> --manual_dir=<where the archives are>`")
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise DataError(f"TFDS data set {name!r} has no feature {key!r} "
                            f"(features: {list(features)})")
    train_split = _tfds_split(builder, config.train_split)
    if train_split is None:
        raise DataError(f"TFDS data set {name!r} has no split {config.train_split!r} "
                        f"(config.train_split; splits: {list(builder.info.splits)})")
    eval_split = _tfds_split(builder, config.eval_split)
    label = features[label_key]
    num_classes = int(getattr(label, "num_classes", 0) or config.num_classes)
    if num_classes > config.num_classes:
        raise DataError(f"TFDS data set {name!r} has {num_classes} classes but "
                        f"config.num_classes={config.num_classes}")
    names = list(label.names) if hasattr(label, "names") and label.names else None
    splits = builder.info.splits
    return TfdsSource(
        name, data_dir, train_split, eval_split,
        f"split {config.eval_split!r} (config.eval_split; splits: {list(splits)})",
        image_key, label_key, splits[train_split].num_examples,
        splits[eval_split].num_examples if eval_split else 0, num_classes, names)
