"""A small real data set on disk: scikit-learn's bundled handwritten digits as JPEG list files.

1,797 real 8x8 grey images (shipped inside the scikit-learn wheel, so no download), written in the
original list-file layout for CPU recipes and tests.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from flaxcls.data.sources import DatasetInfo

_MARKER = "digits.json"  # written last: its presence means the data set is complete


def write_digits_dataset(out_dir: str | os.PathLike, image_size: int = 32,
                         val_fraction: float = 0.2, seed: int = 0) -> DatasetInfo:
    """Writes out_dir/{train,val}/NNNNN.jpg and train_list.txt / val_list.txt; returns the counts.

    The split is stratified and a function of `seed`. Idempotent: a complete data set with the
    same parameters is left alone. Written to a temporary folder and renamed into place, so an
    interrupted run never leaves a partial data set that looks complete.
    """
    out_dir = os.fspath(out_dir)
    params = {"image_size": int(image_size), "val_fraction": float(val_fraction),
              "seed": int(seed)}
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction} must be in (0, 1)")
    done = _read_marker(out_dir)
    if done is not None:
        return _check_same(out_dir, done, params)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir!r} exists and is not an empty folder or a digits data set")

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".digits-", dir=parent)
    try:
        summary = _write(tmp, params)
        try:
            os.replace(tmp, out_dir)  # atomic; allowed onto an empty folder
        except OSError:
            done = _read_marker(out_dir)  # another writer finished first
            if done is None:
                raise
            return _check_same(out_dir, done, params)
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_marker(out_dir: str) -> dict | None:
    try:
        with open(os.path.join(out_dir, _MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _check_same(out_dir: str, done: dict, params: dict) -> DatasetInfo:
    if any(done.get(k) != v for k, v in params.items()):
        raise ValueError(f"{out_dir!r} holds a digits data set written with "
                         f"{ {k: done.get(k) for k in params} }, not {params}")
    return DatasetInfo(done["num_train"], done["num_eval"], 10, None)


def _split(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean 'is validation' per example: round(val_fraction * n) of each class, at random."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        is_val[rng.permutation(members)[:round(val_fraction * len(members))]] = True
    return is_val


def _write(root: str, params: dict) -> DatasetInfo:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    is_val = _split(labels, params["val_fraction"], params["seed"])
    size = params["image_size"]
    lines: dict[str, list[str]] = {"train": [], "val": []}
    for split in lines:
        os.makedirs(os.path.join(root, split))
    for i, (pixels, label) in enumerate(zip(digits.images, labels)):
        split = "val" if is_val[i] else "train"
        grey = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)  # values are 0..16
        image = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC)
        rel = f"{split}/{i:05d}.jpg"
        image.save(os.path.join(root, rel), quality=95)
        lines[split].append(f"{rel} {label}\n")
    for split, name in (("train", "train_list.txt"), ("val", "val_list.txt")):
        with open(os.path.join(root, name), "w") as f:
            f.writelines(lines[split])
    summary = DatasetInfo(len(lines["train"]), len(lines["val"]), 10, None)
    with open(os.path.join(root, _MARKER), "w") as f:
        json.dump({**params, "num_train": summary.num_train, "num_eval": summary.num_eval}, f)
    return summary
