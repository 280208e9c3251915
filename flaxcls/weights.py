"""Weights from disk into a model: a pretrained start (with a new classifier head where the
class count differs) and the weights eval, infer and export serve.

Serving imports this module, never the training loop. Every "does this fit?" question is
answered by the one report of ``flaxcls.mismatch``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from flaxcls import mismatch, parallel
from flaxcls.checkpoint import CheckpointError, read_variables, workdir_checkpoint
from flaxcls.config import ConfigError
from flaxcls.registry import get_model_cfg
from flaxcls.specs import ModelSpec

log = logging.getLogger("flaxcls")

COLLECTIONS = ("params", "batch_stats")


def head_names(model: ModelSpec, image_size: int) -> set[str]:
    """'params/...' names of the tensors whose shape follows num_classes: the classifier head
    (ModelCfg.classifier) and any auxiliary heads. Found by comparing two abstract inits."""
    def shapes(classes: int) -> dict[str, tuple]:
        net = ModelSpec(model.name, classes, "float32", False).build()
        x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
        return mismatch.flat_shapes(jax.eval_shape(
            lambda x: net.init(jax.random.key(0), x, train=False), x))

    a, b = shapes(model.num_classes), shapes(model.num_classes + 1)
    return {k for k in a if a[k] != b.get(k)}


def fit(source: dict, target: Any, model: ModelSpec, image_size: int, path: str, *,
        allow_new_head: bool) -> tuple[dict, list[str]]:
    """Checkpoint variables ``source`` placed like ``target`` (arrays or ShapeDtypeStructs with
    shardings). Returns (variables, names of the head tensors kept from ``target``).

    Raises CheckpointError listing every tensor outside the head that differs; with
    ``allow_new_head=False`` (eval, infer, export) a head of another class count is one too.
    """
    flat_s, flat_t = mismatch.flat(source), mismatch.flat(target)
    head = head_names(model, image_size)
    diff = mismatch.compare(flat_s, flat_t)
    cfg = get_model_cfg(model.name)
    others = diff.without(head)
    if others:
        raise CheckpointError(
            f"{path} does not fit config.model={model.name!r} (a checkpoint of another "
            f"architecture?): {len(others)} tensor(s) outside the classifier head "
            f"{cfg.classifier!r} differ:" + others.report(want=cfg.name))
    new_head = sorted(head & diff.names())
    if new_head and not allow_new_head:
        raise CheckpointError(
            f"{path}: the classifier head {cfg.classifier!r} was trained for another class "
            f"count than config.num_classes={model.num_classes}; set --config.num_classes to "
            f"the checkpoint's:" + diff.without(set(diff.names()) - head).report(want=cfg.name))
    out = {}
    for name, value in flat_t.items():
        key = tuple(name.split("/"))
        out[key] = value if name in new_head else jax.device_put(
            np.asarray(flat_s[name], value.dtype), value.sharding)
    return traverse_util.unflatten_dict(out), new_head


def load_pretrained(path: str, variables: dict, model: ModelSpec, image_size: int, *,
                    ema: bool = True) -> dict:
    """``variables`` ({"params", "batch_stats"} of a fresh model) with another run's or a
    converted release's weights.

    Every tensor must match the model by name and shape, except the classifier head (the
    tensors whose shape follows num_classes): with another class count it keeps its fresh
    initialisation and is named in the log. Anything else that differs is another
    architecture: CheckpointError. ``ema``: a checkpoint's moving average where it has one.
    """
    restored = read_variables(os.path.abspath(path), ema=ema)
    merged, reinit = fit(restored, variables, model, image_size, path, allow_new_head=True)
    if reinit:
        log.info("pretrained_model: classifier head re-initialised for num_classes=%d "
                 "(%d tensor(s) of another shape): %s", model.num_classes, len(reinit),
                 ", ".join(reinit))
    log.info("loaded pretrained weights from %s", path)
    return merged


def serving_source(checkpoint: str, pretrained_model: str, workdir: str) -> tuple[str, int]:
    """(absolute path, step) of the weights eval, infer and export use: config.checkpoint or
    config.pretrained_model (ours or a converted release; step 0), else the workdir's newest
    checkpoint, read-only (a training job may be writing to this workdir right now)."""
    path = checkpoint or pretrained_model
    if path:
        return os.path.abspath(path), 0  # Orbax reads absolute paths only
    found = workdir_checkpoint(workdir)
    if found is None:
        raise ConfigError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')} and neither "
            "config.checkpoint nor config.pretrained_model is set: train first, or point "
            "--config.pretrained_model at a checkpoint or a converted release")
    return os.path.abspath(found[0]), found[1]


def inference_variables(model: ModelSpec, image_size: int, path: str, mesh, *,
                        ema: bool = True) -> tuple[dict[str, Any], str]:
    """(the weights at ``path`` replicated on ``mesh``, "ema" or "raw"): the checkpoint's
    moving average where it has one and ``ema`` (config.use_ema_weights) asks for it, else
    its weights. They must fit the model exactly, head included."""
    net = model.build()
    rep = parallel.replicated(mesh)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), x)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                          {k: v for k, v in shapes.items() if k in COLLECTIONS})
    which: dict[str, str] = {}
    variables, _ = fit(read_variables(path, ema=ema, which=which), target, model, image_size,
                       path, allow_new_head=False)
    return variables, which["weights"]


# What decides which images and labels a workdir's weights were trained for.
TRAINING_DATA_FIELDS = ("data_dir", "builtin_dataset", "data_source", "tfds_name",
                        "num_classes", "label_path")


def warn_if_unlike_training(config: Any, workdir: str) -> None:
    """Eval, infer and export with the workdir's own weights but another data set or labels
    than its training run (``config.json``) is most often a forgotten override: say so."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            trained = json.load(f)
    except (OSError, ValueError):
        return

    def same(field: str) -> bool:
        a, b = trained.get(field), config[field]
        if field == "data_dir" and a and b:
            return os.path.abspath(a) == os.path.abspath(b)
        return a == b or field not in trained

    differ = [f for f in TRAINING_DATA_FIELDS if not same(f)]
    if differ:
        log.warning(
            "this workdir's weights were trained with %s; this run has %s. Pass the training "
            "run's values (see %s) unless another data set is what you mean.",
            ", ".join(f"{f}={trained.get(f)!r}" for f in differ),
            ", ".join(f"{f}={config[f]!r}" for f in differ),
            os.path.join(workdir, "config.json"))
