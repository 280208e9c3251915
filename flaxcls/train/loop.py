"""The training loop: set up, restore, loop, log, save, evaluate; SIGTERM saves and stops.

Everything it hands down is built from specs (``flaxcls.job.start``, ``builder.build``);
weights, checkpoints and evaluation are their own modules.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

import flaxcls
from flaxcls import job, parallel, storage, weights
from flaxcls.checkpoint import Checkpointer, restore_from, workdir_checkpoint
from flaxcls.config import ConfigError
from flaxcls.evaluate import evaluate, write_json_atomic, write_results_file
from flaxcls.progress import format_eta
from flaxcls.specs import RunSpec
from flaxcls.train import builder
from flaxcls.train.monitor import Progress, StopFlag, TrainingDiverged, WeightCheck
from flaxcls.train.state import TrainState
from flaxcls.train.step import fetch_metrics
from flaxcls.train.writer import MetricWriter

log = logging.getLogger("flaxcls")

__all__ = ["TrainingDiverged", "train_and_evaluate"]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains ``config.model`` on ``config.data_dir``; resumes from the workdir's newest
    checkpoint. Returns the final evaluation result (also in ``workdir/eval_results.json``).

    The job holds the workdir (``workdir_lock``) from before its first write to its end. A
    storage failure anywhere (a full disk, a read-only folder) raises storage.StorageError."""
    at: dict[str, int] = {}  # the step reached, for the message of a storage failure
    try:
        with contextlib.ExitStack() as stack:
            return _train(config, workdir, stack, at)
    except Exception as e:
        path = str(getattr(e, "filename", None) or workdir)
        inside = os.path.abspath(path).startswith(os.path.abspath(workdir))
        if storage.storage_errno(e) == errno.ENOENT and not inside:
            raise  # a missing input file is not a storage failure
        newest = workdir_checkpoint(workdir)
        resume = (f"once fixed, re-run the same command to resume from step {newest[1]} "
                  f"({newest[0]})" if newest else "once fixed, re-run the same command")
        err = storage.as_storage_error(
            e, "writing to the workdir" if inside else f"reading or writing {path}", path,
            step=at.get("step"), resume=resume)
        if err is None:
            raise
        raise err from e


def _train(config: ml_collections.ConfigDict, workdir: str, stack: contextlib.ExitStack,
           at: dict[str, int]) -> dict[str, Any]:
    run = job.start(config, workdir, hold_workdir=True)
    if run.lock is not None:
        stack.callback(run.lock.release)
    specs, mesh, source = run.specs, run.mesh, run.source
    resident = resident_eval = None
    t_decode = time.perf_counter()
    if specs.input.device_resident:
        resident, resident_eval = _resident_split(specs, source, mesh, workdir)
    t_decode = time.perf_counter() - t_decode
    num_train = source.num_train if resident is None else int(resident["label"].shape[0])
    steps_per_epoch, total_steps = _steps(specs.run, num_train)
    trainer = builder.build(specs, mesh, steps_per_epoch=steps_per_epoch)
    if resident is not None:
        trainer.use_resident(resident)
    if trainer.head is not None:
        log.info("fine-tuning: head %s%s", sorted(trainer.head),
                 ", backbone frozen" if specs.optim.freeze_backbone
                 else f", backbone lr x{specs.optim.backbone_lr_mult}")
    if trainer.teacher is not None:
        trainer.load_teacher()
        log.info("distillation: teacher %s from %s, loss %s (temperature %g%s)",
                 specs.teacher.name, specs.run.distill_teacher_weights, specs.step.distill_loss,
                 specs.step.distill_temperature,
                 f", alpha {specs.step.distill_alpha:g}"
                 if specs.step.distill_loss == "soft_hard" else "")
    ckpt = stack.enter_context(
        Checkpointer(workdir, keep=specs.run.keep_checkpoints, async_save=True))
    state, start_step, skipped_before = _starting_state(trainer, ckpt, steps_per_epoch)
    if jax.process_index() == 0 and (room := storage.check_room_for_checkpoints(
            str(ckpt.directory), storage.state_bytes(state), specs.run.keep_checkpoints)):
        log.warning("%s", room)

    writer = MetricWriter(workdir)
    stack.callback(writer.close)
    config_json = json.loads(config.to_json_best_effort())  # resolved: what this run used
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "config.json"), config_json)
    log.info(
        "model %s (%s), %d train / %d eval images, %d classes; global batch %d (%d per process) "
        "on %s; %d steps per epoch, %d steps in all", specs.model.name, specs.model.dtype,
        source.num_train, source.num_eval, source.num_classes, specs.run.batch_size,
        run.local_batch, parallel.local_device_summary(), steps_per_epoch, total_steps)

    from flaxcls import data

    if resident is None:
        host_iter = data.train_iterator(
            source, specs.input, global_batch_size=specs.run.batch_size, start_step=start_step,
            process_index=jax.process_index(), process_count=jax.process_count())
        batches = parallel.prefetch_to_mesh(host_iter, mesh)
        stack.callback(batches.close)
    else:  # the step draws its batch from the resident split itself
        host_iter, batches = None, itertools.repeat(resident)
    train_step, metrics, step_inputs = trainer.train_step, trainer.zeros_metrics(), trainer.step_inputs
    stop = StopFlag(run.lock)
    stop.install()
    stack.callback(stop.uninstall)
    progress = Progress(specs.run.batch_size, trainer.schedule, steps_per_epoch, start_step,
                        writer)
    check_weights = WeightCheck(trainer.schedule, ckpt.latest_step)

    def skipped(step: int) -> int:
        """Images skipped so far in the batches of the steps trained (the prefetch reads
        ahead; the images it skipped there count once their steps run)."""
        count = getattr(host_iter, "skipped_in_first", None)
        return skipped_before + (int(count(step - start_step)) if count else 0)

    def save(step: int, state: TrainState, force: bool = False) -> None:
        check_weights(step, state.variables())
        if run.lock is not None:
            run.lock.check()  # never write into a workdir another job has taken over
        meta = {"step": int(step), "epoch": int(step // steps_per_epoch),
                "step_in_epoch": int(step % steps_per_epoch), "model": specs.model.name,
                "num_classes": specs.model.num_classes, "skipped_images": skipped(step),
                "flaxcls_version": flaxcls.__version__, "config": config_json}
        ckpt.save(step, state, meta, force=force)

    def run_eval(step: int, state: TrainState) -> dict[str, Any]:
        """The raw weights and, with an EMA, its average too: eval_results.json leads with
        the ones config.use_ema_weights serves and holds both."""
        check_weights(step, state.variables())
        extra = {"preprocessing": specs.preprocessing.to_json(),
                 "eval_flip": specs.step.eval_flip}

        def one(variables: dict[str, Any], name: str) -> dict[str, Any]:
            batches = None
            if resident_eval is not None:
                from flaxcls.data.resident import eval_batches

                batches = eval_batches(resident_eval, global_batch_size=specs.run.test_batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count())
            return evaluate(trainer.eval_step, variables, source, specs.input,
                            batch_size=specs.run.test_batch_size, mesh=mesh, step=step,
                            workdir=workdir, writer=writer, extra=extra, name=name,
                            write_results=state.ema is None, batches=batches)

        t = time.perf_counter()
        raw = one(state.variables(), "eval")
        if state.ema is None or "top1" not in raw:
            clock.eval_s += time.perf_counter() - t
            return raw
        avg = one(state.ema_variables(), "eval_ema")
        metrics = ("top1", "top5", "loss")
        use_ema = specs.run.use_ema_weights
        result = {**(avg if use_ema else raw), "weights": "ema" if use_ema else "raw",
                  "raw": {k: raw[k] for k in metrics}, "ema": {k: avg[k] for k in metrics}}
        write_results_file(workdir, result, extra)
        clock.eval_s += time.perf_counter() - t
        return result

    result: dict[str, Any] = {}
    clock = TrainClock(start_step, decode_s=t_decode if resident is not None else None)
    step, t_epoch = start_step, time.time()
    while step < total_steps:
        batch = progress.next_batch(batches)
        state, metrics = train_step(state, metrics, batch, *step_inputs)
        step = at["step"] = step + 1
        if step == start_step + 1:
            clock.first_step_done(state)
        at_log = step % specs.run.log_every_steps == 0 or step == total_steps
        if at_log:
            m = fetch_metrics(metrics)  # the only host sync in the loop
            if step == total_steps:
                clock.last_step_done(step)
            metrics = trainer.zeros_metrics()
            progress.report(step, m, state.loss_scale, skipped(step), ckpt.latest_step)
        if step % specs.run.checkpoint_every_steps == 0 or step == total_steps:
            save(step, state)
        if step % steps_per_epoch == 0:
            epoch, took, left = step // steps_per_epoch, time.time() - t_epoch, total_steps - step
            log.info("epoch %d done in %s%s", epoch, format_eta(took),
                     f"; about {format_eta(took * left / steps_per_epoch)} to go for the "
                     f"{left / steps_per_epoch:.4g} epochs left at this pace" if left else "")
            t_epoch = time.time()
            if epoch % specs.run.eval_every_epochs == 0 and step != total_steps:
                result = run_eval(step, state)
        if (at_log or jax.process_count() == 1) and stop.agreed():
            save(step, state, force=True)
            ckpt.wait()
            log.warning("stopped at step %d on request; re-run the same command to resume",
                        step)
            return {"stopped_at_step": step}
    if result.get("step") != step:
        result = run_eval(step, state)
        if start_step == total_steps:
            log.info("training was already complete at step %d", step)
    ckpt.wait()
    clock.report(writer)
    return result


class TrainClock:
    """Where a run's wall time went, for time-to-accuracy: the first step (the compile, or
    the compilation cache's load, and one step), the steps after it up to the last step's
    result (evals during training left out: they are timed apart), and the one-time decode
    of a device-resident split. Logged and written to ``metrics.jsonl`` as ``timing``."""

    def __init__(self, start_step: int, decode_s: float | None):
        self.start_step, self.decode_s = start_step, decode_s
        self.t0 = time.perf_counter()
        self.t1 = self.t_end = None
        self.eval_s = 0.0  # evals between the first step and the last
        self.steps = 0

    def first_step_done(self, state: TrainState) -> None:
        jax.block_until_ready(state.step)  # one sync: the compile ends here
        self.t1, self.eval_s = time.perf_counter(), 0.0

    def last_step_done(self, step: int) -> None:
        self.t_end, self.steps = time.perf_counter(), step - self.start_step
        self.eval_between = self.eval_s  # the final eval comes after: not in the steps' time

    def report(self, writer: MetricWriter) -> None:
        if self.t1 is None or self.t_end is None:
            return  # nothing trained in this process, or stopped early
        rest = max(self.t_end - self.t1 - self.eval_between, 0.0)
        timing = {"first_step_s": self.t1 - self.t0, "steps": self.steps,
                  "steps_after_first_s": rest, "eval_during_training_s": self.eval_between}
        if self.steps > 1:
            # the first step at the pace of the others: training time without the compile
            timing["train_s"] = rest * self.steps / (self.steps - 1)
        if self.decode_s is not None:
            timing["decode_s"] = self.decode_s
        writer.write("timing", self.steps + self.start_step, timing)
        log.info("timing: first step (compile) %.2f s, %d more steps %.2f s%s%s",
                 timing["first_step_s"], self.steps - 1, rest,
                 f" (evals between them {self.eval_between:.2f} s, not counted)"
                 if self.eval_between else "",
                 f"; device-resident decode {self.decode_s:.2f} s"
                 if self.decode_s is not None else "")


def _resident_split(specs, source, mesh, workdir: str) -> tuple[dict[str, Any], Any]:
    """(the train split on every device, the decoded eval split in host memory or None):
    ``flaxcls.data.resident``, each decoded once and cached."""
    from flaxcls.data import resident

    cache = specs.input.device_data_cache or os.path.join(workdir, "device_data")
    arrays = resident.load_train_split(source, specs.input, cache, jax.local_devices()[0])
    evals = resident.load_eval_split(source, specs.input, cache) if source.num_eval else None
    on_device = resident.to_devices(arrays, mesh)
    n, size = arrays["image"].shape[0], arrays["image"].shape[1]
    log.info("device_resident_data: %d train images of %dx%dx3 uint8 take %.1f MiB on each "
             "device; batches are drawn, cropped (padding %d) and flipped in the train step",
             n, size, size, (arrays["image"].nbytes + arrays["label"].nbytes) / 2**20,
             specs.input.crop_padding)
    return on_device, evals


def _steps(run: RunSpec, num_train: int) -> tuple[int, int]:
    """(steps per epoch, steps in all)."""
    steps_per_epoch = num_train // run.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"config.batch_size={run.batch_size} is larger than the training set "
            f"({num_train} images): not one full batch per epoch")
    if run.num_train_steps > 0:
        return steps_per_epoch, run.num_train_steps
    return steps_per_epoch, round(run.num_epochs * steps_per_epoch)


def _starting_state(trainer: builder.Trainer, ckpt: Checkpointer,
                    steps_per_epoch: int) -> tuple[TrainState, int, int]:
    """(state, step, images skipped so far): the workdir's newest checkpoint, else
    config.checkpoint (a step to resume from into a fresh workdir), else fresh weights or
    config.pretrained_model."""
    run = trainer.specs.run
    abstract = trainer.abstract_state()
    newest = ckpt.latest_step()
    if newest is not None and run.checkpoint:
        log.warning(
            "config.checkpoint=%s is not used: this workdir has checkpoints of its own (newest: "
            "step %d) and a re-run resumes from those. To start from %s, use a new workdir.",
            run.checkpoint, newest, run.checkpoint)
    restored = ckpt.restore_newest(abstract)
    if restored is not None:
        step, state, meta = restored
        log.info("resumed from %s at step %d (%.4g epochs done)", ckpt.directory, step,
                 step / steps_per_epoch)
        return state, step, int(meta.get("skipped_images", 0))
    if run.checkpoint:
        state, meta = restore_from(run.checkpoint, abstract)
        step = int(jax.device_get(state.step))
        log.info("resumed from config.checkpoint=%s at step %d", run.checkpoint, step)
        return state, step, int(meta.get("skipped_images", 0))
    state = trainer.init_state()
    if run.pretrained_model:
        merged = weights.load_pretrained(
            run.pretrained_model, {"params": state.params, "batch_stats": state.batch_stats},
            trainer.specs.model, trainer.image_size, ema=run.use_ema_weights)
        state = state.replace(params=merged["params"], batch_stats=merged.get("batch_stats", {})
                              ).with_ema_reset()
    return state, 0, 0
