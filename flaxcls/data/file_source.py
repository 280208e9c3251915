"""Image files as a data set: list files (`<relative/path> <label>` lines, the original layout)
and class-folder trees (`<split>/<class>/**/*.jpg`). Read and checked without tensorflow."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from flaxcls.data.sources import (
    EVAL,
    MAX_REPORTED,
    TRAIN,
    DataError,
    Shard,
    Source,
    Split,
    raise_problems,
)

if TYPE_CHECKING:
    from flaxcls.specs import DataSpec, InputSpec

log = logging.getLogger(__name__)

# Suffixes a class-folder scan picks up (compared case-insensitively): what tf.io.decode_image reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_LABEL = re.compile(r"[+-]?\d+")


@dataclasses.dataclass(frozen=True)
class FileSplit:
    """One split as image files: `paths[i]` (joined with data_dir) has label `labels[i]`."""

    paths: np.ndarray  # str
    labels: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.paths)


class FileSource(Source):
    """A train and an optional eval split of image files; the keys are their paths, so any
    example is read directly (a permutation per epoch, no shuffle buffer)."""

    keys_are_paths = True
    repeats_examples = True

    def __init__(self, data_dir: str, train: FileSplit, eval: FileSplit | None, *,
                 num_classes: int, class_names: list[str] | None, total_images: int = 0,
                 eval_looked_for: str):
        super().__init__(train_size=len(train), num_eval=len(eval) if eval is not None else 0,
                         num_classes=num_classes, class_names=class_names,
                         total_images=total_images, eval_looked_for=eval_looked_for)
        self.data_dir, self.train, self.eval = data_dir, train, eval

    def add_unlabeled(self, where: str) -> int:
        """Appends the images of ``where`` (config.distill_unlabeled: a folder, every image
        under it, or a list file of paths relative to its folder) to the train split with label
        -1; returns how many. DataError naming the file and line for what cannot be read."""
        paths = read_unlabeled(where)
        self.train = FileSplit(
            np.concatenate([self.train.paths, np.array(paths, dtype=object)]),
            np.concatenate([self.train.labels, np.full(len(paths), -1, np.int32)]))
        self.train_size = len(self.train)
        return len(paths)

    def split(self, split: Split) -> FileSplit:
        if split == TRAIN:
            return self.train
        if self.eval is None:
            raise DataError(f"no eval data: looked for {self.eval_looked_for}")
        return self.eval

    def train_keys(self, spec: InputSpec, shard: Shard, *, steps_per_epoch: int,
                   start_epoch: int, skip: int) -> Iterator[Any]:
        from flaxcls.data import keys

        yield keys.indexed_train_batches(self.train.paths, self.train.labels, shard,
                                         steps_per_epoch=steps_per_epoch,
                                         start_epoch=start_epoch, skip=skip, seed=spec.seed,
                                         repeats=spec.repeated_augmentation)

    def eval_keys(self, spec: InputSpec, shard: Shard) -> Any:
        from flaxcls.data import keys

        split = self.split(EVAL)
        return keys.indexed_eval_batches(split.paths, split.labels, shard)

    def describe(self, split: Split, index: int) -> str:
        return str(self.split(split).paths[index])

    def explain(self, split: Split, index: int) -> str | None:
        """Re-reads one skipped file eagerly to surface the error that tf.data swallowed."""
        from flaxcls.data import ops

        tf = ops.tf
        try:
            ops.decode_rgb(tf.io.read_file(str(self.split(split).paths[index])))
        except (tf.errors.OpError, ValueError) as e:  # the decoder's message is the point
            return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
        return "decodes when read alone; the transform failed on it"


# ----------------------------------------------------------------------------- list files


class ListSource(FileSource):
    """`config.train_list` and `config.val_list` in data_dir; labels in [0, num_classes)."""

    kind = "list"

    @classmethod
    def from_spec(cls, spec: DataSpec) -> ListSource:
        data_dir = spec.data_dir
        train_list = os.path.join(data_dir, spec.train_list)
        val_list = os.path.join(data_dir, spec.val_list)
        if not os.path.isfile(train_list):
            raise DataError(f"train list file {train_list!r} not found "
                            f"(config.data_dir={data_dir!r}, config.train_list)")
        problems: list[str] = []
        train = parse_list_file(train_list, data_dir, spec.num_classes, problems)
        evals = parse_list_file(val_list, data_dir, spec.num_classes, problems) \
            if os.path.isfile(val_list) else None
        raise_problems(problems, "the list files")
        if not len(train):
            raise DataError(f"{train_list}: no examples (config.train_list)")
        if evals is None:
            log.warning("No eval list %r (config.val_list): evaluation is not possible.",
                        val_list)
        return cls(data_dir, train, evals, num_classes=spec.num_classes, class_names=None,
                   total_images=spec.total_images,
                   eval_looked_for=f"list file {val_list!r} (config.val_list)")


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


def read_unlabeled(where: str) -> list[str]:
    """The image paths of config.distill_unlabeled: a folder's images (recursively, sorted) or
    a list file's lines (a path each, relative to the list's folder; a trailing label is not
    allowed: these images have none)."""
    field = f"config.distill_unlabeled={where!r}"
    if os.path.isdir(where):
        paths = images_under(where)
        if not paths:
            raise DataError(f"{field}: no images under it (looked for "
                            f"{', '.join(IMAGE_SUFFIXES)} files)")
        return paths
    if not os.path.isfile(where):
        raise DataError(f"{field}: not found (a folder of images or a list file of paths)")
    problems, paths, root = [], [], os.path.dirname(os.path.abspath(where))
    with open(where, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        if len(line.rsplit(None, 1)) == 2 and _LABEL.fullmatch(line.rsplit(None, 1)[1]):
            problems.append(f"{where}:{lineno}: expected an image path alone (these images "
                            f"have no labels), got {line!r}")
            continue
        paths.append(os.path.join(root, line))
    for i in _missing_files(paths):
        problems.append(f"{where}: image not found: {paths[i]!r}")
    raise_problems(problems, field)
    if not paths:
        raise DataError(f"{field}: no image paths in it")
    return paths


# ----------------------------------------------------------------------------- class folders


class FolderSource(FileSource):
    """`data_dir/<config.train_split>/<class>/` and the same under config.eval_split; labels
    are the sorted train folder names' positions."""

    kind = "folder"

    @classmethod
    def from_spec(cls, spec: DataSpec) -> FolderSource:
        data_dir = spec.data_dir
        train_root = os.path.join(data_dir, spec.train_split)
        eval_root = os.path.join(data_dir, spec.eval_split)
        num_classes = spec.num_classes
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
                        "outputs no image is labelled with (--config.num_classes=%d unless that "
                        "is meant)", train_root, len(names), num_classes,
                        num_classes - len(names), len(names))
        if not any(train_classes.values()):
            raise DataError(f"{train_root}: no images (looked for {', '.join(IMAGE_SUFFIXES)} "
                            f"files under its class folders)")
        empty = [n for n, files in train_classes.items() if not files]
        if empty:
            log.warning("%s: %d class folder(s) without images (labels kept): %s", train_root,
                        len(empty), ", ".join(empty[:MAX_REPORTED]))
        index = {name: i for i, name in enumerate(names)}
        evals = None
        if os.path.isdir(eval_root):
            eval_classes = scan_class_folders(eval_root)
            unknown = [n for n in eval_classes if n not in index]
            raise_problems([f"{os.path.join(eval_root, n)}: class folder not in {train_root}"
                            for n in unknown], f"the eval split {eval_root}")
            evals = _folder_split(eval_classes, index)
        else:
            _warn_no_eval_folder(train_root, eval_root)
        return cls(data_dir, _folder_split(train_classes, index), evals,
                   num_classes=len(names), class_names=names, total_images=spec.total_images,
                   eval_looked_for=f"class-folder tree {eval_root!r} (config.eval_split)")


def _warn_no_eval_folder(train_root: str, eval_root: str) -> None:
    parent = os.path.dirname(eval_root.rstrip(os.sep))
    others = sorted(n for n in ("val", "validation", "test", "valid")
                    if os.path.isdir(os.path.join(parent, n))
                    and os.path.join(parent, n) != os.path.normpath(train_root))
    hint = (f"; found {', '.join(repr(n) for n in others)} beside it: "
            f"--config.eval_split={others[0]} evaluates on it" if others else "")
    log.warning("No eval folder %r (config.eval_split): evaluation is not possible%s.",
                eval_root, hint)


def scan_class_folders(root: str) -> dict[str, list[str]]:
    """{class name: sorted image paths} for `root/<class>/**/*.<image suffix>`, classes sorted."""
    classes = {}
    with os.scandir(root) as it:
        names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    for name in names:
        classes[name] = images_under(os.path.join(root, name))
    return classes


def images_under(folder: str) -> list[str]:
    """The image files under ``folder`` (recursively, links followed, hidden entries skipped),
    sorted folder by folder."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
    return files


def _folder_split(classes: dict[str, list[str]], index: dict[str, int]) -> FileSplit:
    paths = [p for name in classes for p in classes[name]]
    labels = [index[name] for name in classes for _ in classes[name]]
    return FileSplit(np.array(paths, dtype=object), np.array(labels, dtype=np.int32))
