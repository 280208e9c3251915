"""A job's start, shared by training and ``--mode=eval``: the config resolved into specs, a
built-in data set written, the mesh made and the data set opened and checked."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
from jax.sharding import Mesh

from flaxcls import parallel, workdir_lock
from flaxcls.config import ConfigError
from flaxcls.specs import Specs, resolve
from flaxcls.workdir_lock import WorkdirLock

log = logging.getLogger("flaxcls")


@dataclasses.dataclass(frozen=True)
class Job:
    specs: Specs
    mesh: Mesh
    source: Any  # flaxcls.data.sources.Source
    local_batch: int  # this process's share of the global train batch
    lock: WorkdirLock | None = None  # held by process 0 of a training job; the caller releases


def start(config: Any, workdir: str, hold_workdir: bool = False) -> Job:
    """The edge: everything below takes the specs and the source made here. ``hold_workdir``
    (training): take the workdir's lock before anything is written to it."""
    specs = resolve(config)  # a wrong value stops here, before anything is written
    lock = workdir_lock.hold(workdir) if hold_workdir else None
    try:
        return _start(config, workdir, specs, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _start(config: Any, workdir: str, specs: Specs, lock: WorkdirLock | None) -> Job:
    if config.builtin_dataset and not config.data_dir:
        config.data_dir = _prepare_builtin(config.builtin_dataset, workdir)
        specs = dataclasses.replace(
            specs, data=dataclasses.replace(specs.data, data_dir=config.data_dir))
    from flaxcls import data

    mesh = parallel.make_mesh()
    local_batch = parallel.check_batch_size(specs.run.batch_size, mesh, "batch_size")
    parallel.check_batch_size(specs.run.test_batch_size, mesh, "test_batch_size")
    parallel.check_grad_accum(specs.run.batch_size, mesh, specs.step.grad_accum_steps)
    source = data.open_source(specs.data)
    if source.num_classes > specs.model.num_classes:
        raise ConfigError(f"config.num_classes={specs.model.num_classes} but the data set has "
                          f"{source.num_classes} classes")
    return Job(specs, mesh, source, local_batch, lock)


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
