"""Evaluation: one pass over the eval split that counts every example once, and ``--mode=eval``
(top-1/top-5/loss of a checkpoint or a converted release with the model's own preprocessing)."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax

from flaxcls import job, parallel, weights
from flaxcls.config import ConfigError
from flaxcls.progress import TaskProgress
from flaxcls.specs import InputSpec
from flaxcls.train.step import EVAL_METRICS, fetch_metrics, make_eval_step, zeros_metrics
from flaxcls.train.writer import MetricWriter

log = logging.getLogger("flaxcls")

RESULTS = "eval_results.json"
# Which images an eval ran on (recorded in eval_results.json).
EVAL_DATA_FIELDS = ("data_dir", "builtin_dataset", "data_source", "tfds_name", "eval_split",
                    "val_list")


def evaluate(eval_step, variables: Any, source: Any, spec: InputSpec, *, batch_size: int,
             mesh, step: int, workdir: str, writer: MetricWriter | None = None,
             extra: dict[str, Any] | None = None, progress: bool = False,
             name: str = "eval", write_results: bool = True,
             batches: Any = None) -> dict[str, Any]:
    """One pass of ``eval_step`` over the eval split of ``source`` in global batches of
    ``batch_size`` (the last one padded and masked). Logs and records it under ``name``
    ("eval"; "eval_ema" for the moving average) and, with ``write_results``, writes
    ``<workdir>/eval_results.json`` (with ``extra``); returns top1, top5, loss, num_examples
    and step. ``progress``: report how far the pass is (``--mode=eval``; process 0).
    ``batches``: this process's eval batches when they do not come from the tf.data stream
    (a device-resident data set's, decoded once)."""
    if not source.num_eval:
        log.warning("no eval data (no val list or eval split): evaluation skipped")
        return {"step": int(step)}
    metrics = zeros_metrics(EVAL_METRICS, mesh)
    t0 = time.time()
    if batches is None:
        from flaxcls import data

        batches = data.eval_iterator(source, spec, global_batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count())
    meter = TaskProgress("eval", total=source.num_eval,
                         enabled=progress and jax.process_index() == 0)
    for batch in parallel.prefetch_to_mesh(batches, mesh):
        metrics = eval_step(variables, metrics, batch)
        meter.update(batch_size)
    meter.close()
    m = fetch_metrics(metrics)
    result = {"top1": m["top1"], "top5": m["top5"], "loss": m["loss"],
              "num_examples": round(m["count"]), "step": int(step)}
    seconds = time.time() - t0
    log.info("%s @ step %d: top1 %.4f  top5 %.4f  loss %.4f  on %d images (%.1fs)",
             "eval (EMA weights)" if name == "eval_ema" else name, step, result["top1"],
             result["top5"], result["loss"], result["num_examples"], seconds)
    if writer is not None:
        writer.write(name, step, {**result, "seconds": seconds})
    if write_results:
        write_results_file(workdir, result, extra)
    return result


def write_results_file(workdir: str, result: dict[str, Any],
                       extra: dict[str, Any] | None = None) -> None:
    """``<workdir>/eval_results.json`` (process 0): the result and what it was computed with."""
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, RESULTS), {**result, **(extra or {})})


def run_eval(config: Any, workdir: str) -> dict[str, Any]:
    """``--mode=eval``: config.pretrained_model (or config.checkpoint, or the workdir's newest
    checkpoint) on the eval split, with the model's own preprocessing unless the config
    overrides it. Writes eval_results.json, with where the weights and the images came from."""
    # Found first: a missing checkpoint stops the job before a built-in data set is written.
    path, step = weights.serving_source(config.checkpoint, config.pretrained_model, workdir)
    run = job.start(config, workdir)
    if not (config.checkpoint or config.pretrained_model):
        weights.warn_if_unlike_training(config, workdir)
    specs = run.specs
    if not run.source.num_eval:
        raise ConfigError("--mode=eval: the data set has no eval split (config.val_list, "
                          "config.eval_split)")
    size = specs.preprocessing.crop_size
    variables, which = weights.inference_variables(specs.model, size, path, run.mesh,
                                                   ema=specs.run.use_ema_weights)
    log.info("weights of %s from %s%s", specs.model.name, path, f" (step {step})" if step else "")
    prep = specs.preprocessing.to_json()
    log.info("eval preprocessing: %s", prep)
    eval_step = make_eval_step(specs.model.build(), specs.step, run.mesh)
    writer = MetricWriter(workdir)
    try:
        return evaluate(eval_step, variables, run.source, specs.input,
                        batch_size=specs.run.test_batch_size, mesh=run.mesh, step=step,
                        workdir=workdir, writer=writer,
                        extra={"checkpoint": path, "weights": which, "model": config.model,
                               "data": {f: config[f] for f in EVAL_DATA_FIELDS},
                               "preprocessing": prep,
                               "eval_flip": specs.step.eval_flip}, progress=True)
    finally:
        writer.close()


def write_json_atomic(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)
