"""The training loop: data -> mesh -> jitted step, with logging, checkpoints, resume, eval and SIGTERM."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np

import flaxcls
from flaxcls import parallel
from flaxcls.checkpoint import Checkpointer, CheckpointError, read_variables
from flaxcls.config import ConfigError, validate
from flaxcls.preprocessing import preprocessing_of, resolve_preprocessing
from flaxcls.train import losses, optim
from flaxcls.train.state import TrainState, create_train_state
from flaxcls.train.step import (
    EVAL_METRICS,
    TRAIN_METRICS,
    fetch_metrics,
    make_eval_step,
    make_train_step,
    zeros_metrics,
)
from flaxcls.train.writer import MetricWriter, format_eta

log = logging.getLogger("flaxcls")


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite: the run stops, and the non-finite weights
    are never saved (the checkpoints written before stay as they are)."""


class _StopFlag:
    """Set by SIGTERM/SIGINT (a preempted job): the loop saves a checkpoint and exits cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received signal %d: saving a checkpoint and stopping", signum)

    def agreed(self) -> bool:
        """All processes must stop at the same step, so multi-host runs vote."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        votes = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
        return bool(np.max(votes))


def _setup(config: ml_collections.ConfigDict, workdir: str):
    resolve_preprocessing(config)  # fields left unset follow the model's ModelCfg
    validate(config)
    from flaxcls import data

    if config.builtin_dataset and not config.data_dir:
        config.data_dir = _prepare_builtin(config.builtin_dataset, workdir)

    mesh = parallel.make_mesh()
    local_batch = parallel.check_batch_size(config.batch_size, mesh, "batch_size")
    parallel.check_batch_size(config.test_batch_size, mesh, "test_batch_size")
    info = data.dataset_info(config)
    if info.num_classes > config.num_classes:
        raise ConfigError(
            f"config.num_classes={config.num_classes} but the data set has {info.num_classes} classes"
        )
    model = create_model(config)
    return data, mesh, local_batch, info, model


def create_model(config: ml_collections.ConfigDict):
    """The config's model: name, class count, compute dtype and the stem option."""
    extra = {"stem_space_to_depth": True} if config.get("stem_space_to_depth") else {}
    try:
        model = flaxcls.create_model(config.model, num_classes=config.num_classes,
                                     dtype=config.dtype, **extra)
    except ValueError as e:
        if extra:
            raise ConfigError(f"config.stem_space_to_depth=True: {e}") from e
        raise
    if extra and getattr(model, "stem", None) not in ("plain", "deep"):
        raise ConfigError(
            f"config.stem_space_to_depth=True: {config.model} has no stride-2 stem conv "
            f"(stem={getattr(model, 'stem', None)!r}); set it to False for this model"
        )
    return model


def _prepare_builtin(name: str, workdir: str) -> str:
    """Writes a data set that ships with a package (no download) under the workdir, once."""
    from flaxcls.data import digits

    out = os.path.join(workdir, "data", name)
    if jax.process_index() == 0:
        digits.write_digits_dataset(out)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"flaxcls builtin dataset {name}")
    log.info("built-in data set %r in %s", name, out)
    return out


def _steps(config, info) -> tuple[int, int]:
    steps_per_epoch = info.num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.batch_size={config.batch_size} is larger than the training set "
            f"({info.num_train} images): not one full batch per epoch"
        )
    total = config.num_epochs * steps_per_epoch
    if config.num_train_steps > 0:
        total = config.num_train_steps
    return steps_per_epoch, total


def _make_loss_scale(config):
    if config.dtype == "float16":
        return losses.DynamicScale.create(config.loss_scale)
    return None


def evaluate(
    config, model, variables, mesh, data, *, step: int, writer: MetricWriter | None, workdir: str,
    num_eval: int, extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One pass over the eval split; every example counted once. Writes eval_results.json."""
    if not num_eval:
        log.warning("no eval data (no val list or eval split): evaluation skipped")
        return {"step": int(step)}
    eval_step = make_eval_step(model, config, mesh)
    metrics = zeros_metrics(EVAL_METRICS, mesh)
    t0 = time.time()
    it = data.eval_iterator(
        config,
        global_batch_size=config.test_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    for batch in parallel.prefetch_to_mesh(it, mesh):
        metrics = eval_step(variables, metrics, batch)
    m = fetch_metrics(metrics)
    result = {
        "top1": m["top1"],
        "top5": m["top5"],
        "loss": m["loss"],
        "num_examples": round(m["count"]),
        "step": int(step),
    }
    seconds = time.time() - t0
    log.info(
        "eval @ step %d: top1 %.4f  top5 %.4f  loss %.4f  on %d images (%.1fs)",
        step, result["top1"], result["top5"], result["loss"], result["num_examples"], seconds,
    )
    if writer is not None:
        writer.write("eval", step, {**result, "seconds": seconds})
    if jax.process_index() == 0:
        _write_json_atomic(os.path.join(workdir, "eval_results.json"), {**result, **(extra or {})})
    return result


def _write_json_atomic(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _checkpoint_metadata(config, step: int, steps_per_epoch: int, skipped: int) -> dict[str, Any]:
    return {
        "step": int(step),
        "epoch": int(step // steps_per_epoch),
        "step_in_epoch": int(step % steps_per_epoch),
        "model": config.model,
        "num_classes": int(config.num_classes),
        "skipped_images": int(skipped),
        "flaxcls_version": flaxcls.__version__,
        "config": json.loads(config.to_json_best_effort()),
    }


def _restore_newest(ckpt: Checkpointer, step: int, abstract: Any) -> tuple[Any, dict[str, Any]]:
    """The workdir's newest checkpoint; one that cannot be read (a damaged disk, a file cut
    short outside our atomic save) stops the run naming it and the way back to an older one,
    which nothing deletes."""
    try:
        return ckpt.restore(step, abstract)
    except CheckpointError:
        raise
    except Exception as e:  # Orbax and TensorStore raise many kinds
        where = os.path.join(str(ckpt.directory), str(step))
        older = [s for s in ckpt.all_steps() if s < step]
        ckpt.close()
        reason = _root_reason(e)
        hint = (f"move {where} out of '{ckpt.directory}' (keep it until the run is back) and "
                f"re-run to resume from step {older[-1]}" if older else
                "no older checkpoint is left: move it aside to start afresh")
        raise CheckpointError(f"checkpoint {where} cannot be read ({reason}); {hint}") from e


def _root_reason(e: BaseException) -> str:
    """The first line of the innermost error of ``e``'s chain (TensorStore's, where Orbax wraps
    it), cut at its pointer to further details."""
    seen = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(seen):
        line = (str(err).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
        if line:
            return f"{type(err).__name__}: {line[:300]}"
    return type(seen[0]).__name__


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config.model`` on ``config.data_dir``; resumes from the workdir's newest checkpoint.

    Returns the final evaluation result (also written to ``workdir/eval_results.json``).
    """
    data, mesh, local_batch, info, model = _setup(config, workdir)
    steps_per_epoch, total_steps = _steps(config, info)
    schedule = optim.make_schedule(config, steps_per_epoch, config.batch_size)
    head = None
    if config.freeze_backbone or config.backbone_lr_mult != 1.0:
        head = {k.removeprefix("params/") for k in head_variable_names(config)}
        log.info("fine-tuning: head %s%s", sorted(head),
                 ", backbone frozen" if config.freeze_backbone
                 else f", backbone lr x{config.backbone_lr_mult}")
    tx = optim.make_optimizer(config, schedule, head)

    state = create_train_state(
        model, tx, image_size=config.crop_size, seed=config.random_seed, mesh=mesh,
        loss_scale=_make_loss_scale(config),
    )
    ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, async_save=True)
    start_step, skipped_before = 0, 0
    latest = ckpt.latest_step()
    if latest is not None and config.checkpoint:
        log.warning(
            "config.checkpoint=%s is not used: this workdir has checkpoints of its own (newest: "
            "step %d) and a re-run resumes from those. To start from %s, use a new workdir.",
            config.checkpoint, latest, config.checkpoint)
    if latest is not None:
        state, meta = _restore_newest(ckpt, latest, _abstract(state))
        start_step, skipped_before = int(latest), int(meta.get("skipped_images", 0))
        log.info("resumed from %s at step %d (%.4g epochs done)", ckpt.directory, latest,
                 latest / steps_per_epoch)
    elif config.checkpoint:
        state, meta = ckpt.restore_from(config.checkpoint, _abstract(state))
        start_step = int(jax.device_get(state.step))
        log.info("resumed from config.checkpoint=%s at step %d", config.checkpoint, start_step)
    elif config.pretrained_model:
        state = _load_pretrained(config.pretrained_model, state, config)

    writer = MetricWriter(workdir)
    if jax.process_index() == 0:
        _write_json_atomic(os.path.join(workdir, "config.json"),
                           json.loads(config.to_json_best_effort()))
    log.info(
        "model %s (%s), %d train / %d eval images, %d classes; global batch %d (%d per process) "
        "on %s; %d steps per epoch, %d steps in all",
        config.model, config.dtype, info.num_train, info.num_eval, info.num_classes,
        config.batch_size, local_batch, parallel.local_device_summary(), steps_per_epoch,
        total_steps,
    )

    train_step = make_train_step(model, tx, config, mesh, head)
    metrics = zeros_metrics(TRAIN_METRICS, mesh)
    host_iter = data.train_iterator(
        config,
        global_batch_size=config.batch_size,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    batches = parallel.prefetch_to_mesh(host_iter, mesh)
    stop = _StopFlag()
    stop.install()
    result: dict[str, Any] = {}
    step = start_step
    progress = _Progress(config, schedule, steps_per_epoch, start_step, writer)
    t_epoch = time.time()

    def skipped() -> int:
        return skipped_before + int(getattr(host_iter, "num_skipped", 0))

    checked = [-1]  # the step whose weights were last found finite

    def check_finite(step: int, state: TrainState) -> None:
        """Before a save or an eval (one small reduction and a host sync, once per step): a
        checkpoint never holds non-finite weights, so a diverged run cannot rotate its good
        ones out."""
        if checked[0] == step:
            return
        if not bool(jax.device_get(_all_finite(state.variables()))):
            raise _diverged(f"the weights after step {step} are not all finite", step,
                            float(schedule(step - 1)), ckpt.latest_step())
        checked[0] = step

    def save(step: int, state: TrainState, force: bool = False) -> None:
        check_finite(step, state)
        ckpt.save(step, state, _checkpoint_metadata(config, step, steps_per_epoch, skipped()),
                  force=force)

    try:
        while step < total_steps:
            batch = progress.next_batch(batches)
            state, metrics = train_step(state, metrics, batch)
            step += 1
            at_log = step % config.log_every_steps == 0 or step == total_steps
            at_epoch_end = step % steps_per_epoch == 0
            if at_log:
                m = fetch_metrics(metrics)  # the only host sync in the loop
                metrics = zeros_metrics(TRAIN_METRICS, mesh)
                progress.report(step, m, state.loss_scale, skipped(), ckpt.latest_step)
            if step % config.checkpoint_every_steps == 0 or step == total_steps:
                save(step, state)
            if at_epoch_end:
                epoch = step // steps_per_epoch
                took = time.time() - t_epoch
                left = total_steps - step
                log.info("epoch %d done in %s%s", epoch, format_eta(took),
                         f"; about {format_eta(took * left / steps_per_epoch)} to go for the "
                         f"{left / steps_per_epoch:.4g} epochs left at this pace" if left > 0
                         else "")
                t_epoch = time.time()
                if epoch % config.eval_every_epochs == 0 and step != total_steps:
                    check_finite(step, state)
                    result = evaluate(config, model, state.variables(), mesh, data, step=step,
                                      writer=writer, workdir=workdir, num_eval=info.num_eval)
            if (at_log or jax.process_count() == 1) and stop.agreed():
                save(step, state, force=True)
                ckpt.wait()
                log.warning("stopped at step %d on request; re-run the same command to resume",
                            step)
                return {"stopped_at_step": step}
        if step == total_steps and result.get("step") != step:
            check_finite(step, state)
            result = evaluate(config, model, state.variables(), mesh, data, step=step,
                              writer=writer, workdir=workdir, num_eval=info.num_eval)
            if latest is not None and latest == total_steps:
                log.info("training was already complete at step %d", step)
        ckpt.wait()
        return result
    finally:
        stop.uninstall()
        batches.close()
        writer.close()
        ckpt.close()


class _Progress:
    """The log interval: time blocked on input, the log line and ``metrics.jsonl`` record, and
    the checks that read the fetched metrics (divergence, float16 overflow, input-bound)."""

    def __init__(self, config, schedule, steps_per_epoch: int, start_step: int,
                 writer: MetricWriter):
        self.config, self.schedule, self.writer = config, schedule, writer
        self.steps_per_epoch = steps_per_epoch
        self.t_log, self.step_log = time.time(), start_step
        self.waited = 0.0  # seconds blocked on the next batch since the last log line
        self.intervals = 0
        self.told_input_bound = False

    def next_batch(self, batches):
        t = time.perf_counter()
        batch = next(batches)
        self.waited += time.perf_counter() - t
        return batch

    def report(self, step: int, m: dict[str, Any], loss_scale: Any, skipped_images: int,
               newest_checkpoint: Any) -> None:
        """Logs the interval ending at ``step`` from its fetched metrics ``m``; raises
        TrainingDiverged if its loss is not finite (float32/bfloat16)."""
        now, spe = time.time(), self.steps_per_epoch
        seconds, steps = max(now - self.t_log, 1e-9), step - self.step_log
        rate = steps * self.config.batch_size / seconds
        in_epoch = step % spe or spe
        eta = (spe - in_epoch) * seconds / max(steps, 1)
        # The step runs asynchronously: while the devices keep up with the input, the loop
        # waits for batches; while they do not, it waits in fetch_metrics.
        input_wait = min(self.waited / seconds, 1.0)
        self.waited, self.intervals = 0.0, self.intervals + 1
        m.update(lr=float(self.schedule(step - 1)), images_per_sec=rate, epoch=step / spe,
                 skipped_images=skipped_images, input_wait=input_wait)
        self.writer.write("train", step, m)
        if loss_scale is None and not math.isfinite(m["loss"]):
            # float32/bfloat16: a non-finite loss means non-finite gradients, which the
            # update has already written into the weights
            which = f"steps {self.step_log + 1}-{step}" if steps > 1 else f"step {step}"
            raise _diverged(f"the mean loss of {which} is {m['loss']}", step, m["lr"],
                            newest_checkpoint())
        if loss_scale is not None and m["skipped_steps"] >= steps:
            log.warning(
                "float16: every step since step %d overflowed and was skipped (loss scale now "
                "%g); if this goes on, the run has diverged: lower config.lr or train in "
                "bfloat16", self.step_log, float(loss_scale.scale))
        log.info(
            "epoch %d [%d/%d] step %d  loss %.4f  top1 %.4f  top5 %.4f  lr %.5f  "
            "%.0f img/s  input wait %.0f%%  epoch ETA %s%s%s",
            step // spe + (0 if step % spe == 0 else 1), in_epoch, spe, step, m["loss"],
            m["top1"], m["top5"], m["lr"], rate, 100 * input_wait, format_eta(eta),
            f"  skipped images {m['skipped_images']}" if m["skipped_images"] else "",
            f"  float16 overflow: {m['skipped_steps']:.0f} step(s) skipped"
            if m.get("skipped_steps") else "",
        )
        # The first interval holds the compile and the input's warm-up.
        if self.intervals >= 2 and input_wait > 0.5 and not self.told_input_bound:
            self.told_input_bound = True
            log.warning(
                "input-bound: the loop waited for batches %.0f%% of the time since step %d, "
                "so the devices idle that long. More CPU for the input (config.reader_thread=0 "
                "uses every core the process may use), or records rewritten with smaller JPEGs "
                "(python -m flaxcls.data.rewrite, README 'Input pipeline') feed faster",
                100 * input_wait, self.step_log)
        self.t_log, self.step_log = now, step


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return losses.all_finite(tree)


def _diverged(what: str, step: int, lr: float, newest: int | None) -> TrainingDiverged:
    """The error for a run whose loss or weights are no longer finite: what was seen, and the
    way back (the newest checkpoint, which was checked when it was saved)."""
    if newest is not None:
        back = (f"the newest checkpoint, step {newest}, was saved before that and is kept, "
                "and a re-run in this workdir resumes from it")
    else:
        back = "no checkpoint was saved before that, so a re-run starts afresh"
    return TrainingDiverged(
        f"training diverged: {what} (lr {lr:.4g}), so nothing from here on is saved; {back}. "
        "Before re-running, lower config.lr, lengthen the warm-up (config.warm_up_epochs) or "
        "look for bad inputs")


def _abstract(state: TrainState) -> Any:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def _load_pretrained(path: str, state: TrainState, config) -> TrainState:
    """Starts from another run's (or a converted release's) params/batch_stats.

    Every tensor must match the model by name and shape, except the classifier head (the
    tensors whose shape follows num_classes): with another class count it is re-initialised
    and named in the log. Anything else that differs is another architecture: CheckpointError.
    """
    restored = read_variables(os.path.abspath(path))
    target = {"params": state.params, "batch_stats": state.batch_stats}
    merged, reinit = match_variables(restored, target, config, path, allow_new_head=True)
    if reinit:
        log.info("pretrained_model: classifier head re-initialised for num_classes=%d "
                 "(%d tensor(s) of another shape): %s", config.num_classes, len(reinit),
                 ", ".join(reinit))
    log.info("loaded pretrained weights from %s", path)
    return state.replace(params=merged["params"], batch_stats=merged.get("batch_stats", {}))


def head_variable_names(config) -> set[str]:
    """'params/...' names of the tensors whose shape follows num_classes: the classifier head
    (ModelCfg.classifier) and any auxiliary heads. Found by comparing two abstract inits."""
    n, size = int(config.num_classes), preprocessing_of(config).crop_size

    def shapes(classes: int) -> dict[str, tuple]:
        model = flaxcls.create_model(config.model, num_classes=classes)
        x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
        v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
        return {"/".join(k): tuple(a.shape) for k, a in _flatten(v).items()}

    a, b = shapes(n), shapes(n + 1)
    return {k for k in a if a[k] != b.get(k)}


def match_variables(source: dict, target: Any, config, path: str, *,
                    allow_new_head: bool) -> tuple[dict, list[str]]:
    """Checkpoint variables ``source`` placed like ``target`` (arrays or ShapeDtypeStructs with
    shardings). Returns (variables, names of head tensors kept from ``target``).

    Raises CheckpointError listing every mismatch outside the head; with ``allow_new_head=False``
    (eval, infer, export) a head of another class count is an error too.
    """
    flat_t = {"/".join(k): v for k, v in _flatten(target).items()}
    flat_s = {"/".join(k): v for k, v in _flatten(source).items()}
    head = head_variable_names(config)
    shape_diff = [k for k in flat_t if k in flat_s
                  and tuple(np.shape(flat_s[k])) != tuple(flat_t[k].shape)]
    missing = [k for k in flat_t if k not in flat_s]
    unexpected = [k for k in flat_s if k not in flat_t]
    cfg = flaxcls.get_model_cfg(config.model)
    problems = [f"{k}: checkpoint {tuple(np.shape(flat_s[k]))} vs model {tuple(flat_t[k].shape)}"
                for k in shape_diff if k not in head]
    problems += [f"{k}: not in the checkpoint" for k in missing if k not in head]
    problems += [f"{k}: in the checkpoint but not in {cfg.name}" for k in unexpected
                 if k not in head]
    if problems:
        shown = "\n  ".join(problems[:_MAX_PROBLEMS])
        more = (f"\n  ... and {len(problems) - _MAX_PROBLEMS} more"
                if len(problems) > _MAX_PROBLEMS else "")
        raise CheckpointError(
            f"{path} does not fit config.model={config.model!r} (a checkpoint of another "
            f"architecture?): {len(problems)} tensor(s) outside the classifier head "
            f"{cfg.classifier!r} differ:\n  {shown}{more}")
    new_head = sorted(k for k in head if k in flat_t and (k not in flat_s or k in shape_diff))
    if new_head and not allow_new_head:
        detail = "; ".join(f"{k}: checkpoint {tuple(np.shape(flat_s[k]))} vs model "
                           f"{tuple(flat_t[k].shape)}" if k in flat_s else f"{k}: missing"
                           for k in new_head[:_MAX_PROBLEMS])
        raise CheckpointError(
            f"{path}: the classifier head {cfg.classifier!r} was trained for another class "
            f"count than config.num_classes={config.num_classes} ({detail}); set "
            f"--config.num_classes to the checkpoint's")
    out = {}
    for k, value in flat_t.items():
        if k in new_head:
            out[tuple(k.split("/"))] = value
        else:
            out[tuple(k.split("/"))] = jax.device_put(
                np.asarray(flat_s[k], value.dtype), value.sharding)
    return _unflatten(out), new_head


_MAX_PROBLEMS = 20


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: tree}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict:
    root: dict = {}
    for path, v in flat.items():
        node = root
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return root



def inference_variables(config, workdir: str, mesh) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(model, variables replicated on the mesh, where they came from) for eval/infer/export.

    From config.checkpoint or config.pretrained_model (our checkpoint or a converted release),
    else the workdir's newest checkpoint. The weights must match the model exactly, head included.
    """
    model = create_model(config)
    path = config.checkpoint or config.pretrained_model
    step = 0
    if not path:
        path, step = _workdir_checkpoint(workdir)
        _warn_if_unlike_training(config, workdir)
    size = preprocessing_of(config).crop_size
    rep = parallel.replicated(mesh)
    x = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                          {k: v for k, v in shapes.items() if k in ("params", "batch_stats")})
    path = os.path.abspath(path)  # Orbax reads absolute paths only
    variables, _ = match_variables(read_variables(path), target, config, path,
                                   allow_new_head=False)
    log.info("weights of %s from %s%s", flaxcls.get_model_cfg(config.model).name, path,
             f" (step {step})" if step else "")
    return model, variables, {"checkpoint": str(path), "step": step}


def _workdir_checkpoint(workdir: str) -> tuple[str, int]:
    """(path, step) of the workdir's newest checkpoint, read-only: a training job may be
    writing to this workdir right now."""
    root = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in (os.listdir(root) if os.path.isdir(root) else [])
             if n.isdigit() and os.path.isdir(os.path.join(root, n))]
    if not steps:
        raise ConfigError(
            f"no checkpoint in {root} and neither config.checkpoint nor "
            "config.pretrained_model is set: train first, or point "
            "--config.pretrained_model at a checkpoint or a converted release")
    step = max(steps)
    return os.path.join(root, str(step)), step


# What decides which images and labels a workdir's weights were trained for.
_DATA_FIELDS = ("data_dir", "builtin_dataset", "data_source", "tfds_name", "num_classes",
                "label_path")
# Which images an eval ran on (recorded in eval_results.json).
_EVAL_DATA_FIELDS = ("data_dir", "builtin_dataset", "data_source", "tfds_name", "eval_split",
                     "val_list")


def _warn_if_unlike_training(config, workdir: str) -> None:
    """Eval, infer and export with the workdir's own weights but another data set or labels
    than its training run (``config.json``) is most often a forgotten override: say so."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            trained = json.load(f)
    except (OSError, ValueError):
        return

    def same(field: str) -> bool:
        a, b = trained.get(field), config.get(field)
        if field == "data_dir" and a and b:
            return os.path.abspath(a) == os.path.abspath(b)
        return a == b or field not in trained

    differ = [f for f in _DATA_FIELDS if not same(f)]
    if differ:
        log.warning(
            "this workdir's weights were trained with %s; this run has %s. Pass the training "
            "run's values (see %s) unless another data set is what you mean.",
            ", ".join(f"{f}={trained.get(f)!r}" for f in differ),
            ", ".join(f"{f}={config.get(f)!r}" for f in differ),
            os.path.join(workdir, "config.json"))


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """``--mode=eval``: top-1/top-5/loss and the image count of config.pretrained_model (or
    config.checkpoint, or the workdir's newest checkpoint) on the eval split, with the model's
    own preprocessing unless the config overrides it. Writes eval_results.json."""
    if not (config.checkpoint or config.pretrained_model):
        _workdir_checkpoint(workdir)  # before _setup writes a built-in data set there
    data, mesh, _, info, _ = _setup(config, workdir)
    if not info.num_eval:
        raise ConfigError("--mode=eval: the data set has no eval split (config.val_list, "
                          "config.eval_split)")
    model, variables, source = inference_variables(config, workdir, mesh)
    log.info("eval preprocessing: %s", _preprocessing_summary(config))
    writer = MetricWriter(workdir)
    try:
        result = evaluate(config, model, variables, mesh, data, step=source["step"],
                          writer=writer, workdir=workdir, num_eval=info.num_eval,
                          extra={"checkpoint": source["checkpoint"], "model": config.model,
                                 "data": {f: config.get(f) for f in _EVAL_DATA_FIELDS},
                                 "preprocessing": _preprocessing_summary(config)})
    finally:
        writer.close()
    return result


def _preprocessing_summary(config) -> dict[str, Any]:
    return resolve_preprocessing(config).to_json()
