"""Watching a run: the log interval (input wait, the log line, divergence and float16 checks)
and the stop that SIGTERM requests. The loop asks; this module tells the user."""

from __future__ import annotations

import logging
import math
import signal
import time
from typing import Any

import jax
import numpy as np

from flaxcls.progress import format_eta
from flaxcls.train import losses
from flaxcls.train.writer import MetricWriter

log = logging.getLogger("flaxcls")


class TrainingDiverged(RuntimeError):
    """The loss or the weights stopped being finite: the run stops, and the non-finite weights
    are never saved (the checkpoints written before stay as they are)."""


class StopFlag:
    """Set by SIGTERM/SIGINT (a preempted job): the loop saves a checkpoint and exits cleanly."""

    def __init__(self, lock: Any = None) -> None:
        self.requested = False
        self._lock = lock  # workdir_lock.WorkdirLock of process 0, or None
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
        """All processes must stop at the same step, so multi-host runs vote. A job that lost
        its workdir lock (another job took it over) raises WorkdirInUse on every process."""
        lost = self._lock is not None and self._lock.lost is not None
        if jax.process_count() == 1:
            votes = np.asarray([self.requested + 2 * lost])
        else:
            from jax.experimental import multihost_utils

            votes = multihost_utils.process_allgather(
                np.asarray(self.requested + 2 * lost, np.int32))
        if np.max(votes) >= 2:
            from flaxcls.workdir_lock import WorkdirInUse

            raise WorkdirInUse(self._lock.lost if lost else
                               "another job took over this workdir (process 0 names it)")
        return bool(np.max(votes))


class Progress:
    """The log interval: time blocked on input, the log line and ``metrics.jsonl`` record, and
    the checks that read the fetched metrics (divergence, float16 overflow, input-bound)."""

    def __init__(self, batch_size: int, schedule, steps_per_epoch: int, start_step: int,
                 writer: MetricWriter):
        self.batch_size, self.schedule, self.writer = batch_size, schedule, writer
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
        rate = steps * self.batch_size / seconds
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
            raise diverged(f"the mean loss of {which} is {m['loss']}", step, m["lr"],
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
def all_finite(tree: Any) -> jax.Array:
    return losses.all_finite(tree)


def diverged(what: str, step: int, lr: float, newest: int | None) -> TrainingDiverged:
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




class WeightCheck:
    """Before a save or an eval: one small reduction over the weights and a host sync, at most
    once per step. A checkpoint never holds non-finite weights, so a diverged run cannot
    rotate its good ones out."""

    def __init__(self, schedule, newest_checkpoint):
        self.schedule, self.newest_checkpoint = schedule, newest_checkpoint
        self.checked = -1  # the step whose weights were last found finite

    def __call__(self, step: int, variables: Any) -> None:
        if self.checked == step:
            return
        if not bool(jax.device_get(all_finite(variables))):
            raise diverged(f"the weights after step {step} are not all finite", step,
                           float(self.schedule(step - 1)), self.newest_checkpoint())
        self.checked = step
