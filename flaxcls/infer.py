"""``--mode=infer``: top-k classes (or pooled features) for an image, a folder or a list file.

Images go through the same eval transform as ``--mode=eval`` (`pipeline.eval_transform_fn`,
driven by the model's ModelCfg) and the same normalisation as the eval step; export uses the
same forward (`make_forward`). Tensorflow is imported only to read images.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxcls.layouts import CompiledForward
from flaxcls.preprocessing import EvalPreprocessing
from flaxcls.progress import TaskProgress
from flaxcls.specs import InputSpec, Specs

log = logging.getLogger("flaxcls")

IMAGENET_LABELS = os.path.join(os.path.dirname(__file__), "data", "imagenet_labels.txt")
# What a folder scan picks up (case-insensitive); tensorflow decodes the first five, Pillow the rest.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                  ".pgm", ".jfif")
PREDICTIONS = "predictions.jsonl"


class UnreadableImage(ValueError):
    """One input could not be read or decoded; the message says why."""


# ----------------------------------------------------------------------------- inputs and labels


def collect_inputs(path: str, data_dir: str = "") -> list[str]:
    """An image file -> [it]; a folder -> its images (recursive, sorted); any other file -> a
    list file: one image path per line (a trailing integer label is ignored, '#' starts a
    comment), relative paths taken from ``data_dir`` or else the list file's folder."""
    if not path:
        from flaxcls.config import ConfigError

        raise ConfigError("config.infer_path is empty: set it to an image, a folder of images or "
                          "a list file")
    if os.path.isdir(path):
        found = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                         if not f.startswith(".") and f.lower().endswith(IMAGE_SUFFIXES))
        if not found:
            from flaxcls.data.sources import DataError

            raise DataError(f"config.infer_path={path!r}: no image files in this folder "
                            f"(looked for {', '.join(IMAGE_SUFFIXES)})")
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.infer_path={path!r}: no such file or folder")
    if path.lower().endswith(IMAGE_SUFFIXES):
        return [path]
    root = data_dir or os.path.dirname(os.path.abspath(path))
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) == 2 and parts[1].lstrip("+-").isdigit():
                line = parts[0]
            out.append(line if os.path.isabs(line) else os.path.join(root, line))
    if not out:
        from flaxcls.data.sources import DataError

        raise DataError(f"config.infer_path={path!r}: a list file without any image path")
    return out


def read_label_file(path: str) -> list[str]:
    """One class per line, in class-index order; 'wnid<TAB>name' lines give the name."""
    labels = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.strip():
                labels.append(line.split("\t", 1)[-1].strip())
    return labels


def class_labels(config: Any) -> list[str]:
    """Readable names for class ids 0..num_classes-1.

    config.label_path; else the class folders of the configured data set; else ImageNet's
    names (shipped with the package) for a 1000-class model; else the ids as text.
    """
    n = int(config.num_classes)
    if config.label_path:
        labels = read_label_file(config.label_path)
        if len(labels) < n:
            from flaxcls.config import ConfigError

            raise ConfigError(f"config.label_path={config.label_path!r} lists {len(labels)} "
                              f"classes but config.num_classes={n}")
        return labels[:n]
    names = None
    if config.data_dir or config.tfds_name:
        from flaxcls.data import DataError, open_source
        from flaxcls.specs import DataSpec

        try:
            names = open_source(DataSpec.from_config(config)).class_names
        except (DataError, FileNotFoundError, OSError) as e:
            log.warning("no class names from the data set (%s); using class ids", e)
    if names:
        return [str(s) for s in names] + [str(i) for i in range(len(names), n)]
    if n == 1000:
        return read_label_file(IMAGENET_LABELS)
    return [str(i) for i in range(n)]


# ----------------------------------------------------------------------------- images


class ImageLoader:
    """Path -> uint8 [crop, crop, 3] through the eval pipeline's own transform.

    Tensorflow decodes JPEG (grey, RGB, CMYK), PNG (grey, palette, alpha), GIF, BMP and WebP;
    anything else Pillow can open (TIFF, ...) is converted to RGB PNG bytes first, so every
    image still takes the same resize and crop.
    """

    def __init__(self, spec: InputSpec):
        from flaxcls.data import ops, pipeline

        tf = ops.tf
        fn = pipeline.eval_transform_fn(spec)
        self._tf = tf
        self._transform = tf.function(lambda data: fn(data, None),
                                      input_signature=[tf.TensorSpec([], tf.string)])

    @classmethod
    def from_preprocessing(cls, prep: EvalPreprocessing | dict[str, Any]) -> ImageLoader:
        """A loader for an export's ``meta["preprocessing"]`` (or an EvalPreprocessing)."""
        return cls(InputSpec.for_eval(prep))

    def __call__(self, path: str) -> np.ndarray:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UnreadableImage(f"cannot read: {e.strerror or e}") from e
        if not data:
            raise UnreadableImage("empty file")
        try:
            return self._transform(self._tf.constant(data)).numpy()
        except self._tf.errors.OpError as first:
            reason = str(first).strip().splitlines()[0][:200]
        try:
            return self._transform(self._tf.constant(_to_png(data))).numpy()
        except UnreadableImage as e:
            raise UnreadableImage(f"not a decodable image ({reason}; {e})") from None
        except self._tf.errors.OpError as e:
            raise UnreadableImage(f"transform failed: {str(e).strip().splitlines()[0][:200]}") \
                from None


def _to_png(data: bytes) -> bytes:
    try:
        from PIL import Image
    except ImportError as e:
        raise UnreadableImage("Pillow is not installed") from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except Exception as e:  # Pillow raises many types for broken files; the reason is the point
        raise UnreadableImage(f"Pillow: {e}") from e
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue()


# ----------------------------------------------------------------------------- the forward


def make_forward(model, prep: EvalPreprocessing, dtype: Any = jnp.float32, *,
                 features: bool = False) -> Callable[[Any, jax.Array], jax.Array]:
    """(variables, images NHWC) -> probabilities [N, classes] (or pooled features [N, C] with
    ``features``).

    uint8 images are normalised like the eval step ((x/255 - mean) / std); float images are
    taken as already normalised. Not jitted: callers jit, compile or export it.
    """
    from flaxcls.train.step import normalize

    compute = jnp.dtype(dtype)

    def predict(variables: Any, images: jax.Array) -> jax.Array:
        if images.dtype == jnp.uint8:
            x = normalize(images, prep.mean, prep.std, compute)
        else:
            x = images.astype(compute)
        if features:
            _, feats = model.apply(variables, x, train=False, return_features=True)
            return feats["pooled"].astype(jnp.float32).reshape(x.shape[0], -1)
        logits = model.apply(variables, x, train=False).astype(jnp.float32)
        return jax.nn.softmax(logits, axis=-1)

    return predict


def serving_model(model, variables: Any, prep: EvalPreprocessing, fold: bool = True
                  ) -> tuple[Any, Any]:
    """(model, variables) for infer and export: with ``fold`` every BatchNorm that follows a
    convolution is folded into it (``flaxcls.models.fold``; float64 on the host, then the
    parameters' dtype), else the model as trained. Either result has ``.apply(variables, x,
    train=False, ...)``; folded variables come back as host arrays."""
    if not fold:
        return model, variables
    from flaxcls.models.fold import fold_batchnorm

    folded = fold_batchnorm(model, variables, (1, prep.crop_size, prep.crop_size, 3))
    log.info("BatchNorm folded into the convolution before it: %d of %d layer(s)",
             len(folded.pairs), _count_batchnorms(variables))
    return folded, folded.variables


def _count_batchnorms(variables: Any) -> int:
    """Modules with running statistics (``batch_stats/.../mean``)."""
    flat = jax.tree_util.tree_flatten_with_path(variables.get("batch_stats", {}))[0]
    return sum(1 for path, _ in flat if jax.tree_util.keystr(path[-1:]) == "['mean']")


def make_predict(model, variables: Any, prep: EvalPreprocessing, dtype: Any = jnp.float32, *,
                 features: bool = False) -> Callable[[jax.Array], jax.Array]:
    """images NHWC -> probabilities: ``make_forward`` with ``variables`` bound (export bakes
    them into the artifact this way)."""
    fn = make_forward(model, prep, dtype, features=features)
    return lambda images: fn(variables, images)


def load_for_serving(config: Any, specs: Specs, workdir: str, mesh) -> tuple[Any, Any, dict]:
    """(model, variables replicated on ``mesh``, where they came from) for infer and export:
    config.checkpoint or config.pretrained_model, else the workdir's newest checkpoint. The
    weights must fit the model exactly, head included."""
    from flaxcls import weights

    path, step = weights.serving_source(config.checkpoint, config.pretrained_model, workdir)
    if not (config.checkpoint or config.pretrained_model):
        weights.warn_if_unlike_training(config, workdir)
    variables, which = weights.inference_variables(
        specs.model, specs.preprocessing.crop_size, path, mesh, ema=specs.run.use_ema_weights)
    log.info("weights of %s from %s%s", specs.model.name, path, f" (step {step})" if step else "")
    return specs.model.build(), variables, {"checkpoint": path, "step": step, "weights": which}


# ----------------------------------------------------------------------------- --mode=infer


def run_infer(config, workdir: str) -> list[dict[str, Any]]:
    """Predicts for every image of config.infer_path; writes <workdir>/predictions.jsonl (and
    features.npy with config.features) and prints a table. Returns the records."""
    from flaxcls import parallel
    from flaxcls.specs import resolve

    specs = resolve(config, need_data=False)
    prep = specs.preprocessing
    paths = collect_inputs(config.infer_path, config.data_dir)
    mesh = parallel.make_mesh(jax.local_devices())  # every process may infer on its own
    model, variables, source = load_for_serving(config, specs, workdir, mesh)
    model, variables = serving_model(model, variables, prep, bool(config.fold_bn))
    labels = [] if config.features else class_labels(config)
    k = min(int(config.topk), int(config.num_classes))
    n_dev = mesh.devices.size
    batch = max(n_dev, -(-int(config.test_batch_size) // n_dev) * n_dev)
    # The weights stay on device in the layouts the compiler picks for them (on a GPU, no
    # per-batch re-layout of every convolution kernel); see flaxcls.layouts.
    images_sharding = parallel.batch_sharding(mesh)
    forward = CompiledForward(
        make_forward(model, prep, config.dtype, features=bool(config.features)), variables,
        weights_sharding=parallel.replicated(mesh), input_sharding=images_sharding)
    log.info("infer: %d input(s) from %s with %s (%s); preprocessing %s", len(paths),
             config.infer_path, config.model, source["checkpoint"], prep.to_json())

    loader = ImageLoader(specs.input)
    records: list[dict[str, Any]] = []
    feature_rows: list[np.ndarray] = []
    skipped: list[str] = []
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        images = np.zeros((batch, prep.crop_size, prep.crop_size, 3), np.uint8)
        for i, (_, img) in enumerate(pending):
            images[i] = img
        out = np.asarray(jax.device_get(forward(jax.device_put(images, images_sharding))))
        out = out[:len(pending)]
        for (path, _), row in zip(pending, out):
            if config.features:
                feature_rows.append(row)
                records.append({"path": path, "features": [float(v) for v in row]})
                continue
            top = np.argsort(-row, kind="stable")[:k]
            records.append({"path": path, "class_ids": [int(c) for c in top],
                            "labels": [labels[c] for c in top],
                            "probs": [float(row[c]) for c in top]})
        pending.clear()

    meter = TaskProgress("infer", total=len(paths), enabled=jax.process_index() == 0)
    for path in paths:
        meter.update()
        try:
            pending.append((path, loader(path)))
        except UnreadableImage as e:
            skipped.append(path)
            log.warning("skipped %s: %s", path, e)
            continue
        if len(pending) == batch:
            flush()
    flush()
    meter.close()

    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        out_path = os.path.join(workdir, PREDICTIONS)
        with open(out_path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(out_path + ".tmp", out_path)
        if config.features:
            np.save(os.path.join(workdir, "features.npy"),
                    np.stack(feature_rows) if feature_rows else np.zeros((0, 0), np.float32))
        print(format_table(records, features=bool(config.features)), flush=True)
        log.info("%d image(s) -> %s%s", len(records), out_path,
                 f"; {len(skipped)} unreadable, skipped: {', '.join(skipped[:20])}"
                 if skipped else "")
    if not records:
        from flaxcls.data.sources import DataError

        raise DataError(f"config.infer_path={config.infer_path!r}: none of the {len(paths)} "
                        f"input(s) could be read (first: {skipped[:3]})")
    return records


def format_table(records: list[dict[str, Any]], *, features: bool = False) -> str:
    """The console view of the records: one row per image, the top-k as 'label (id) prob'."""
    if not records:
        return "(no predictions)"
    width = min(max(len(r["path"]) for r in records), 60)
    if features:
        return "\n".join(f"{_clip(r['path'], width):<{width}}  features[{len(r['features'])}]"
                         for r in records)
    k = len(records[0]["class_ids"])
    lines = [f"{'image':<{width}}  top-{k}: label (class id) probability"]
    for r in records:
        cells = [f"{label} ({cid}) {p:.4f}" for cid, label, p in
                 zip(r["class_ids"], r["labels"], r["probs"])]
        lines.append(f"{_clip(r['path'], width):<{width}}  " + " | ".join(cells))
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
