"""A small data set's train split decoded once and kept on the devices (``device_resident_data``).

The train images are decoded a single time at the train crop's size (the short side resized to
``round(crop * resize_short / eval_crop)``, i.e. the model's crop fraction, then the centre
crop: CIFAR's 32 px images stay as they are), saved to a cache file keyed by the file list, the
labels and the decode settings, and placed on every device as uint8 arrays. The train step then
draws its batch itself (``flaxcls.train.resident``): no host work per step. The eval split is
decoded once too, through the eval preprocessing, and its batches are sliced from memory.

Decoding goes through the tf.data pipeline's own eval transform where TensorFlow is installed
(the same pixels as streaming and ``--mode=eval``), else through Pillow, so a run with resident
data needs no TensorFlow (the GPU images have none). The two differ by a few grey levels
(TensorFlow's JPEG decoder uses the fast integer IDCT, Pillow the accurate one; Pillow's resize
filters are not tf.image.resize's): a model trained from Pillow's pixels and evaluated through
tf.data sees slightly other images. The cache key names the decoder.

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

from flaxcls.data.sources import EVAL, TRAIN, DataError, Source

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
                         "interpolation": spec.interpolation, "decoder": decoder()}).encode())
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
    _save(path, out)
    log.info("device_resident_data: decoded %d train images once, cached in %s",
             len(out["label"]), path)
    return out


PIL_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "area": 4, "lanczos3": 1,
               "lanczos5": 1}  # Image.Resampling: NEAREST, BILINEAR, BICUBIC, BOX, LANCZOS


def decode_image(path: str, crop: int, short: int, interpolation: str) -> np.ndarray:
    """One file -> uint8 [crop, crop, 3]: RGB, the short side resized to ``short`` (when it is
    not already), the centre ``crop`` (offsets rounded down, as the eval transform)."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
    w, h = rgb.size
    if min(w, h) != short:
        scale = short / min(w, h)
        rgb = rgb.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                         resample=PIL_FILTERS.get(interpolation, 2))
        w, h = rgb.size
    top, left = (h - crop) // 2, (w - crop) // 2
    return np.asarray(rgb.crop((left, top, left + crop, top + crop)), np.uint8)


def decoder() -> str:
    """"tf" where TensorFlow is installed (the streamed pipeline's own decode and resize, so
    training and ``--mode=eval`` see the same pixels), else "pillow"."""
    try:
        from flaxcls.data import ops  # imports tensorflow, every GPU hidden from it
    except ImportError:
        return "pillow"
    del ops
    return "tf"


def _decode_tf(paths: Any, crop: int, short: int, interpolation: str) -> list:
    """Every file through the eval transform of the tf.data pipeline (None: unreadable)."""
    from flaxcls.data import ops, pipeline
    from flaxcls.specs import InputSpec

    tf = ops.tf
    fn = pipeline.eval_transform_fn(InputSpec.for_eval(
        {"crop_size": crop, "resize_short_size": short, "interpolation": interpolation}))
    ds = tf.data.Dataset.from_tensor_slices(([str(p) for p in paths],
                                             np.arange(len(paths), dtype=np.int64)))
    ds = ds.map(lambda path, i: (fn(tf.io.read_file(path), None), i),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    out: list = [None] * len(paths)
    for images, index in ds.ignore_errors().batch(DECODE_BATCH).as_numpy_iterator():
        for img, i in zip(images, index):
            out[int(i)] = img
    return out


def _decode_pillow(paths: Any, crop: int, short: int, interpolation: str) -> list:
    """Every file with Pillow on all cores (None: unreadable)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> np.ndarray | None:
        try:
            return decode_image(str(paths[i]), crop, short, interpolation)
        except Exception:  # noqa: BLE001 - Pillow raises many types for broken files
            return None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(one, range(len(paths)), chunksize=64))


def decode_files(paths: Any, labels: Any, crop: int, short: int, interpolation: str,
                 describe: Any) -> dict[str, np.ndarray]:
    """Every file in order, with ``decoder()``; an unreadable one is named in the log and
    left out."""
    decode = _decode_tf if decoder() == "tf" else _decode_pillow
    decoded = decode(paths, crop, short, interpolation)
    keep = [i for i, img in enumerate(decoded) if img is not None]
    skipped = [i for i, img in enumerate(decoded) if img is None]
    if skipped:
        names = [describe(i) for i in skipped[:5]]
        log.warning("device_resident_data: skipped %d unreadable image(s): %s%s", len(skipped),
                    ", ".join(names), " ..." if len(skipped) > 5 else "")
    if not keep:
        raise DataError("device_resident_data: no image could be read")
    return {"image": np.stack([decoded[i] for i in keep]),
            "label": np.asarray([labels[i] for i in keep], np.int32)}


def _decode(source: Source, spec: InputSpec) -> dict[str, np.ndarray]:
    """The train split at the stored size, in order."""
    crop, short = stored_size(spec)
    return decode_files(source.train.paths, source.train.labels, crop, short,
                        spec.interpolation, lambda i: source.describe(TRAIN, i))


def load_eval_split(source: Source, spec: InputSpec, cache_dir: str) -> dict[str, np.ndarray]:
    """The eval split through the eval preprocessing (resize the short side, centre crop),
    decoded once with Pillow and cached like the train split."""
    split = source.split(EVAL)
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "crop": spec.eval_crop_size,
                                   "short": spec.resize_short_size,
                                   "interpolation": spec.interpolation,
                                   "decoder": decoder()}).encode())
    for path in split.paths:
        h.update(str(path).encode() + b"\0")
    h.update(np.ascontiguousarray(split.labels, np.int32).tobytes())
    path = os.path.join(cache_dir, f"eval-{h.hexdigest()[:20]}.npz")
    if os.path.isfile(path):
        with np.load(path) as f:
            return {"image": f["image"], "label": f["label"]}
    out = decode_files(split.paths, split.labels, spec.eval_crop_size, spec.resize_short_size,
                       spec.interpolation, lambda i: source.describe(EVAL, i))
    _save(path, out)
    log.info("device_resident_data: decoded %d eval images once, cached in %s",
             len(out["label"]), path)
    return out


def eval_batches(data: dict[str, np.ndarray], *, global_batch_size: int, process_index: int,
                 process_count: int):
    """One eval pass over decoded arrays: {"image", "label", "mask"} batches of this process,
    every example once over all processes (positions index, index + count, ... of each global
    batch, as the streamed eval), the last batch padded with mask False."""
    n = len(data["label"])
    for start in range(0, n, global_batch_size):
        pos = np.arange(start, start + global_batch_size)[process_index::process_count]
        mask = pos < n
        take = np.where(mask, pos, 0)
        yield {"image": data["image"][take], "label": data["label"][take], "mask": mask}


def _save(path: str, arrays: dict[str, np.ndarray]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def to_devices(data: dict[str, np.ndarray], mesh: Any) -> dict[str, Any]:
    """The arrays replicated on every device of ``mesh`` (every process passes the same data)."""
    import jax

    from flaxcls.parallel import replicated

    sharding = replicated(mesh)
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in data.items()}
