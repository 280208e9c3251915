"""Released Paddle weights -> flaxcls variables, and -> an Orbax checkpoint with a JSON sidecar.

``from_paddle(path, model)`` reads any form ``readers.load_paddle_weights`` knows and converts
strictly (``paddle.paddle_to_flax``, which picks the 2019 parameter names or, for PaddleClas's
``legendary_models`` ``.pdparams``, their state-dict keys). ``convert_to_checkpoint`` writes
``<out>/checkpoints/0/`` (params and batch_stats, what ``--config.pretrained_model`` reads)
and ``<out>/conversion.json`` (model, source file, its sha256, converter and flaxcls versions).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from flaxcls.checkpoint import CONVERSION_SIDECAR
from flaxcls.checksum import file_sha256
from flaxcls.convert.paddle import paddle_name_map, paddle_to_flax
from flaxcls.convert.readers import load_paddle_weights
from flaxcls.registry import get_model_cfg

CONVERTER_VERSION = "1"
SIDECAR = CONVERSION_SIDECAR
_UNFINISHED = ".converting"  # inside --out while a conversion runs


def from_paddle(path: str | os.PathLike, model_name: str) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` (numpy float32) for ``model.apply(variables, x, train=False)``.

    ``path``: a folder of per-variable files, a ``.tar``/``.tar.gz``/``.zip`` of one, a
    combined params file or a ``.pdparams`` pickle (the 2019 names, or PaddleClas 2.x's
    state-dict keys). The class count is read from the weights.
    """
    cfg = get_model_cfg(model_name)
    weights = load_paddle_weights(path, names=list(paddle_name_map(cfg.name)))
    return paddle_to_flax(weights.arrays, cfg.name, weights.state_dict_keys)


def convert_to_checkpoint(path: str | os.PathLike, model_name: str,
                          out: str | os.PathLike) -> dict[str, Any]:
    """Converts ``path`` and writes the checkpoint and sidecar in ``out``; returns the sidecar."""
    import flaxcls
    from flaxcls.checkpoint import CHECKPOINTS, Checkpointer

    source, out = Path(path), Path(out)
    if (out / CHECKPOINTS).exists() or (out / SIDECAR).exists():
        raise FileExistsError(f"{out} already holds a checkpoint; choose another --out or "
                              "remove it")
    cfg = get_model_cfg(model_name)
    variables = from_paddle(source, cfg.name)
    head = variables["params"]
    for part in cfg.classifier.split("/"):
        head = head[part]
    sidecar = {
        "model": cfg.name,
        "num_classes": int(np.shape(head["kernel"])[-1]),
        "source": source.name,
        "source_sha256": file_sha256(source),
        "converter": "paddle",
        "converter_version": CONVERTER_VERSION,
        "flaxcls_version": flaxcls.__version__,
    }
    # Written into a hidden folder inside ``out`` and moved into place at the end (the
    # checkpoint, then the sidecar), so a killed conversion never leaves a half-written
    # checkpoint where a reader would take it; its leftover folder is removed by the next run.
    tmp = out / _UNFINISHED
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with Checkpointer(tmp, keep=1) as ckpt:
        ckpt.save(0, variables, metadata=sidecar)
        ckpt.wait()
    (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp / CHECKPOINTS, out / CHECKPOINTS)
    os.replace(tmp / SIDECAR, out / SIDECAR)
    tmp.rmdir()
    return sidecar
