"""``--mode=export``: a self-contained serving artifact (the original ``--save_inference``).

``<workdir>/export/model.jaxexport`` is a serialized ``jax.export`` function with the weights
baked in: images ``[batch, crop, crop, 3]`` (uint8, or float32 already normalised with
``config.export_input='float32'``; ``batch`` is symbolic) -> probabilities ``[batch, classes]``.
``model.json`` holds what a server needs around it: model name, input size and dtype, the eval
preprocessing (resize short side, crop, interpolation, mean/std) and the class labels.

`load_exported` needs only jax and numpy: no flaxcls model code, no tensorflow. Resize and crop
are not part of the artifact: use ``flaxcls.infer.ImageLoader`` (the eval transform itself) or
an equivalent resize with the settings in model.json.

With ``config.export_savedmodel`` the same function is also written as a TensorFlow SavedModel
(``export/saved_model``, via jax2tf; signature ``serving_default``: ``images`` -> ``probs``,
weights as TF variables) for TF Serving; only then is tensorflow imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

EXPORT_DIR = "export"
MODEL_FILE = "model.jaxexport"
META_FILE = "model.json"
FORMAT = "flaxcls.jaxexport/1"
SAVED_MODEL = "saved_model"


def load_exported(directory: str) -> tuple[Callable[[Any], np.ndarray], dict[str, Any]]:
    """``(predict, meta)`` from an export directory (or a workdir holding ``export/``).

    ``predict(images)`` takes a numpy/jax array ``[N, crop, crop, 3]`` of ``meta['input_dtype']``
    for any N and returns the probabilities as numpy ``[N, classes]``.
    """
    if not os.path.isfile(os.path.join(directory, MODEL_FILE)) and os.path.isfile(
            os.path.join(directory, EXPORT_DIR, MODEL_FILE)):
        directory = os.path.join(directory, EXPORT_DIR)
    model_path, meta_path = os.path.join(directory, MODEL_FILE), os.path.join(directory, META_FILE)
    for path in (model_path, meta_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not found (write it with --mode=export)")
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    with open(model_path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    size, dtype = int(meta["input_size"]), np.dtype(meta["input_dtype"])

    def predict(images: Any) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(f"images must be [N, {size}, {size}, 3], got {images.shape}")
        return np.asarray(exported.call(images.astype(dtype, copy=False)))

    return predict, meta


def export_model(config, workdir: str) -> str:
    """Writes ``<workdir>/export/{model.jaxexport, model.json}``; returns the directory."""
    import jax.numpy as jnp

    import flaxcls
    from flaxcls import parallel
    from flaxcls.infer import class_labels, load_for_serving, make_predict, serving_model
    from flaxcls.specs import resolve

    specs = resolve(config, need_data=False)
    prep = specs.preprocessing
    mesh = parallel.make_mesh(jax.local_devices()[:1])
    model, variables, source = load_for_serving(config, specs, workdir, mesh)
    host_vars = jax.tree.map(np.asarray, jax.device_get(variables))  # baked in as constants
    model, host_vars = serving_model(model, host_vars, prep, bool(config.fold_bn))
    predict = make_predict(model, host_vars, prep, config.dtype)
    dtype = jnp.uint8 if config.export_input == "uint8" else jnp.float32
    (batch,) = jax.export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, prep.crop_size, prep.crop_size, 3), dtype)
    exported = jax.export.export(jax.jit(predict), platforms=_platforms())(spec)
    out = os.path.join(workdir, EXPORT_DIR)
    cfg = flaxcls.get_model_cfg(config.model)
    meta = {
        "format": FORMAT,
        "model": cfg.name,
        "batchnorm_folded": bool(config.fold_bn),
        "num_classes": int(config.num_classes),
        "input_size": prep.crop_size,
        "input_dtype": np.dtype(dtype).name,
        "input_layout": "NHWC, RGB",
        "input_normalised": config.export_input != "uint8",
        "output": "probabilities (softmax of the logits)",
        "preprocessing": prep.to_json(),
        "platforms": list(exported.platforms),
        "checkpoint": source["checkpoint"],
        "step": source["step"],
        "weights": source["weights"],  # "ema" (the moving average) or "raw"
        "labels": class_labels(config),
        "jax_version": jax.__version__,
        "flaxcls_version": flaxcls.__version__,
    }
    if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        _write_atomic(os.path.join(out, MODEL_FILE), bytes(exported.serialize()))
        _write_atomic(os.path.join(out, META_FILE), json.dumps(meta, indent=2).encode())
        if config.export_savedmodel:
            _write_saved_model(os.path.join(out, SAVED_MODEL), model, host_vars, prep,
                               config.dtype, dtype)
    return out


def _write_saved_model(path: str, model, variables: Any, prep, compute_dtype: Any,
                       input_dtype: Any) -> None:
    """The export's function as a TF SavedModel: weights are tf.Variables (no 2 GB graph
    limit), the batch dimension is symbolic, the signature is images -> probs."""
    import shutil

    from jax.experimental import jax2tf

    from flaxcls.data.ops import tf  # hides the GPUs from tensorflow
    from flaxcls.infer import make_predict

    def fn(params, images):
        return make_predict(model, params, prep, compute_dtype)(images)

    size = prep.crop_size
    converted = jax2tf.convert(fn, polymorphic_shapes=[None, f"(b, {size}, {size}, 3)"],
                               with_gradient=False, native_serialization_platforms=_platforms())
    module = tf.Module()
    module.params = tf.nest.map_structure(lambda a: tf.Variable(a, trainable=False), variables)
    tf_dtype = tf.uint8 if np.dtype(input_dtype) == np.uint8 else tf.float32

    @tf.function(autograph=False,
                 input_signature=[tf.TensorSpec([None, size, size, 3], tf_dtype, name="images")])
    def serve(images):
        return {"probs": converted(module.params, images)}

    module.serve = serve
    tmp = f"{path}.tmp-{os.getpid()}"
    tf.saved_model.save(module, tmp, signatures={"serving_default": serve})
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def _platforms() -> tuple[str, ...]:
    """The platform this runs on, plus CUDA so a CPU-made artifact also serves on a GPU box."""
    here = {"gpu": "cuda"}.get(jax.default_backend(), jax.default_backend())
    return tuple(dict.fromkeys([here, "cpu", "cuda"]))


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
