"""A small data set's train split decoded once and kept on the devices (``device_resident_data``).

The train images are decoded a single time at the train crop's size (the short side resized to
``round(crop * resize_short / eval_crop)``, i.e. the model's crop fraction, then the centre
crop: CIFAR's 32 px images stay as they are), saved to a cache file keyed by the file list, the
labels and the decode settings, and placed on every device as uint8 arrays. The train step then
draws its batch itself (``flaxcls.train.resident``): no host work per step.

The data are replicated, not split over the devices: each device gathers its share of every
batch from its own copy, so drawing a random batch needs no communication. That costs the
split's bytes on every device; a split above ``MAX_FRACTION`` of a device's memory is refused,
with the sizes, before anything is decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from flaxcls.data.sources import TRAIN, DataError, Shard, Source

if TYPE_CHECKING:
    from flaxcls.specs import InputSpec

log = logging.getLogger(__name__)

MAX_FRACTION = 0.4  # of one device's memory: the rest is the model's, its optimizer's, activations'
CACHE_VERSION = 1
DECODE_BATCH = 512


def stored_size(spec: InputSpec) -> tuple[int, int]:
    """(crop, short side before the crop) the train images are stored at."""
    crop = spec.crop_size
    short = max(crop, round(crop * spec.resize_short_size / max(spec.eval_crop_size, 1)))
    return crop, short


def device_memory_bytes(device: Any) -> tuple[int, str]:
    """(bytes one device may hold, where the figure comes from): the accelerator's limit, or
    the host's physical memory for CPU devices."""
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend reports memory
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"{device.device_kind} memory"
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(pages), "host memory (CPU devices)"


def check_fits(num_images: int, spec: InputSpec, device: Any) -> int:
    """The bytes of the stored split; DataError naming config.device_resident_data when they
    exceed MAX_FRACTION of ``device``'s memory."""
    crop, _ = stored_size(spec)
    need = num_images * (crop * crop * 3 + 4)
    have, what = device_memory_bytes(device)
    if need > MAX_FRACTION * have:
        raise DataError(
            f"config.device_resident_data=True: the train split needs {need / 2**20:,.1f} MiB "
            f"on every device ({num_images} images of {crop}x{crop}x3 uint8 and their labels), "
            f"more than {MAX_FRACTION:.0%} of the {have / 2**30:,.1f} GiB of {what}; set "
            "--config.device_resident_data=False to stream it from the host")
    return need


def _cache_key(source: Source, spec: InputSpec) -> str:
    crop, short = stored_size(spec)
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "crop": crop, "short": short,
                         "interpolation": spec.interpolation}).encode())
    for path in source.train.paths:
        h.update(str(path).encode() + b"\0")
    h.update(np.ascontiguousarray(source.train.labels, np.int32).tobytes())
    return h.hexdigest()[:20]


def load_train_split(source: Source, spec: InputSpec, cache_dir: str,
                     device: Any) -> dict[str, np.ndarray]:
    """{"image": uint8 [n, crop, crop, 3], "label": int32 [n]} of the train split: read from
    ``cache_dir`` when this split was decoded with these settings before, else decoded now (an
    unreadable image is named and left out, as in streaming) and cached there. First checks
    that it fits ``device`` (``check_fits``)."""
    if not hasattr(source, "train") or not source.keys_are_paths:
        raise DataError(f"config.device_resident_data=True needs list files or class folders, "
                        f"not a {source.kind} data set")
    check_fits(len(source.train.paths), spec, device)
    path = os.path.join(cache_dir, f"train-{_cache_key(source, spec)}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            out = {"image": f["image"], "label": f["label"]}
        log.info("device_resident_data: %d decoded train images from %s", len(out["label"]), path)
        return out
    out = _decode(source, spec)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    log.info("device_resident_data: decoded %d train images once, cached in %s",
             len(out["label"]), path)
    return out


def _decode(source: Source, spec: InputSpec) -> dict[str, np.ndarray]:
    """The train split through the eval transform at the stored size, in order."""
    import dataclasses

    from flaxcls.data import keys, pipeline

    crop, short = stored_size(spec)
    at = dataclasses.replace(spec, eval_crop_size=crop, resize_short_size=short)
    split = source.train
    batches = keys.indexed_eval_batches(split.paths, split.labels, Shard(0, 1, DECODE_BATCH))
    ds = pipeline._decode_batches(batches, pipeline.eval_transform_fn(at), DECODE_BATCH, at,
                                  train=False, read_files=True)
    images, labels, skipped = [], [], []
    for b in ds.as_numpy_iterator():
        keep = b["mask"]
        images.append(b["image"][keep])
        labels.append(b["label"][keep])
        expected, valid = b["expected"], b["valid"]
        skipped += sorted(set(expected[expected >= 0].tolist()) - set(valid.tolist()))
    if skipped:
        names = [source.describe(TRAIN, i) for i in skipped[:5]]
        log.warning("device_resident_data: skipped %d unreadable image(s): %s%s", len(skipped),
                    ", ".join(names), " ..." if len(skipped) > 5 else "")
    out = {"image": np.concatenate(images), "label": np.concatenate(labels).astype(np.int32)}
    if not len(out["label"]):
        raise DataError("device_resident_data: no train image could be read")
    return out


def to_devices(data: dict[str, np.ndarray], mesh: Any) -> dict[str, Any]:
    """The arrays replicated on every device of ``mesh`` (every process passes the same data)."""
    import jax

    from flaxcls.parallel import replicated

    sharding = replicated(mesh)
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in data.items()}
