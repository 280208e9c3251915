"""CIFAR-10 class folders as the tensor files airbench's loaders read; one JSON line.

    python benchmarks/cifar_tensors.py --data-dir ../shared/data/cifar10-jpeg.tar.gz \
        --out /tmp/airbench/cifar10                       # train.pt, test.pt (needs torch)
    python benchmarks/cifar_tensors.py --data-dir DIR --out OUT --format npz   # no torch

``--data-dir`` holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (or is a .tar.gz of
them, unpacked once into ``--cache-dir``, as ``recipe_compare.class_folders`` does). Writes
``OUT/train.pt`` and ``OUT/test.pt``: each a dict saved with ``torch.save``, ``{'images': uint8
tensor [N, H, W, 3], 'labels': int64 tensor [N], 'classes': [names]}`` (the format of
github KellerJordan/cifar10-airbench's ``cifar10/train.pt``, so it never downloads CIFAR-10);
``--format npz`` writes ``train.npz`` / ``test.npz`` with the same three arrays instead.

The images and labels are in the order flaxcls's class-folder source lists them
(``flaxcls.data.file_source.FolderSource``): classes are the train split's folder names in
sorted order (hidden ones skipped), a label is a class's position among them, the test split's
folders must be among them; files are walked recursively, sorted folder by folder, with the
same image suffixes. ``--shuffle-train SEED`` writes the train split in one fixed random order
instead (the same images and labels): airbench94 computes its first layer's whitening from the
first 5,000 train images, which in the original CIFAR-10 files are mixed classes but in
class-folder order would all be airplanes. Every file is decoded with Pillow as RGB, as flaxcls's device-resident
split is where TensorFlow is not installed (the GPU machines), so at CIFAR's 32 px both
trainers see the same pixels. All images must have one size. No TensorFlow, no jax.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_compare

REPO = recipe_compare.REPO
DEFAULT_DATA = recipe_compare.DEFAULT_DATA
# flaxcls.data.file_source.IMAGE_SUFFIXES (repeated: importing flaxcls loads jax).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
SPLITS = ("train", "test")


def images_under(folder: str) -> list[str]:
    """The image files under ``folder``, recursively, links followed, hidden entries skipped,
    sorted folder by folder (flaxcls.data.file_source.images_under)."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
    return files


def class_folders_of(root: str) -> dict[str, list[str]]:
    """{class name: image paths} of ``root/<class>/``, classes in sorted name order."""
    with os.scandir(root) as it:
        names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    return {name: images_under(os.path.join(root, name)) for name in names}


def list_splits(data_dir: str) -> tuple[list[str], dict[str, tuple[list[str], list[int]]]]:
    """(class names, {split: (paths, labels)}) in flaxcls's order; labels index the train
    split's sorted class folders."""
    train = class_folders_of(os.path.join(data_dir, "train"))
    classes = list(train)
    if not any(train.values()):
        raise SystemExit(f"{os.path.join(data_dir, 'train')}: no images under its class folders")
    index = {name: i for i, name in enumerate(classes)}
    out = {}
    for split in SPLITS:
        folders = train if split == "train" else class_folders_of(os.path.join(data_dir, split))
        unknown = [n for n in folders if n not in index]
        if unknown:
            raise SystemExit(f"{os.path.join(data_dir, split)}: class folder(s) not in the train "
                             f"split: {', '.join(unknown)}")
        out[split] = ([p for n in folders for p in folders[n]],
                      [index[n] for n in folders for _ in folders[n]])
    return classes, out


def decode_all(paths: list[str], workers: int):
    """uint8 [N, H, W, 3]: every file decoded with Pillow as RGB, in order."""
    import numpy as np
    from PIL import Image

    def one(path: str):
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), np.uint8)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        images = list(pool.map(one, paths, chunksize=256))
    first = images[0].shape if images else (32, 32, 3)
    for path, im in zip(paths, images):
        if im.shape != first:
            raise SystemExit(f"{path} is {im.shape[1]}x{im.shape[0]}, {paths[0]} "
                             f"{first[1]}x{first[0]}: airbench's tensors need one size")
    return np.stack(images) if images else np.zeros((0, *first), np.uint8)


def write_split(out_dir: str, split: str, images, labels, classes: list[str], fmt: str) -> str:
    """OUT/<split>.pt or .npz, written to a temporary name first."""
    import numpy as np

    labels = np.asarray(labels, np.int64)
    path = os.path.join(out_dir, f"{split}.{fmt}")
    tmp = f"{path}.tmp-{os.getpid()}"
    if fmt == "pt":
        import torch

        with open(tmp, "wb") as f:
            torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels),
                        "classes": list(classes)}, f)
    else:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, classes=np.array(classes))
    os.replace(tmp, path)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help="class folders (train/, test/) or a .tar.gz of them")
    p.add_argument("--cache-dir", default=os.path.join(REPO, "runs", "data"),
                   help="where a tarball is unpacked (once)")
    p.add_argument("--out", required=True, help="folder for train.pt and test.pt (or .npz)")
    p.add_argument("--format", choices=("pt", "npz"), default="pt",
                   help="pt: torch.save dicts (needs torch); npz: numpy, no torch")
    p.add_argument("--shuffle-train", type=int, default=-1, metavar="SEED",
                   help="write the train split permuted with this seed (-1: the trainer's order)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decode threads")
    args = p.parse_args(argv)
    if args.format == "pt":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"cifar_tensors --format pt needs torch ({e}); --format npz writes "
                             "the same arrays without it") from None
    data = recipe_compare.class_folders(args.data_dir, args.cache_dir)
    classes, splits = list_splits(data)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    result = {"benchmark": "cifar_tensors", "data_dir": args.data_dir, "format": args.format,
              "classes": classes}
    if args.shuffle_train >= 0:
        import numpy as np

        paths, labels = splits["train"]
        order = np.random.default_rng(args.shuffle_train).permutation(len(paths))
        splits["train"] = ([paths[i] for i in order], [labels[i] for i in order])
    result["train_order"] = (f"shuffled (seed {args.shuffle_train})" if args.shuffle_train >= 0
                             else "class folders")
    for split, (paths, labels) in splits.items():
        images = decode_all(paths, args.workers)
        write_split(args.out, split, images, labels, classes, args.format)
        result[f"{split}_images"] = len(paths)
        result["image_shape"] = list(images.shape[1:])
    result["decode_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
