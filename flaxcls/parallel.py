"""Devices and data placement: the mesh, the two shardings we use, and host batches -> global arrays."""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over every device of every process, axis name ``data``."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh, field: str = "batch_size") -> int:
    """Returns the per-process batch; raises a message naming the config field when it won't split."""
    from flaxcls.config import ConfigError

    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ConfigError(
            f"config.{field}={global_batch} is not divisible by the {n_dev} devices of the mesh "
            f"({jax.process_count()} process(es) x {jax.local_device_count()} local); "
            f"use a multiple of {n_dev}"
        )
    return global_batch // jax.process_count()


def check_grad_accum(global_batch: int, mesh: Mesh, steps: int) -> None:
    """Gradient accumulation splits each device's share of the batch into ``steps``
    micro-batches: raises a message naming config.grad_accum_steps when it won't split."""
    from flaxcls.config import ConfigError

    per_device = global_batch // mesh.devices.size
    if per_device % steps:
        raise ConfigError(
            f"config.grad_accum_steps={steps} does not divide the batch of each device "
            f"({global_batch} over {mesh.devices.size} devices = {per_device}); use a divisor "
            f"of {per_device} or another batch_size")


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Each process hands in its own slice of the global batch; returns arrays sharded over ``data``."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def prefetch_to_mesh(
    iterator: Iterator[dict[str, np.ndarray]], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Moves the next ``size`` host batches to the devices on a background thread.

    The transfer of batch i+1 then overlaps the step on batch i. Exceptions raised by the
    host iterator re-raise in the caller, in order.
    """
    if size <= 0:
        for batch in iterator:
            yield host_to_global(batch, mesh)
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def worker() -> None:
        try:
            for batch in iterator:
                if stop.is_set():
                    return
                q.put(host_to_global(batch, mesh))
            q.put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            q.put(e)

    thread = threading.Thread(target=worker, daemon=True, name="prefetch_to_mesh")
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Unblock the worker if it waits on a full queue.
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.1)


def local_device_summary() -> dict[str, Any]:
    kinds = collections.Counter(d.device_kind for d in jax.local_devices())
    return {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "local_devices": jax.local_device_count(),
        "global_devices": jax.device_count(),
        "device_kind": ", ".join(f"{n}x {k}" for k, n in kinds.items()),
        "platform": jax.default_backend(),
    }


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins a multi-process job when one is described (returns True); a no-op for a single
    process (False).

    Described by the arguments, by JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID, or by SLURM (more than one task); jax finds the rest itself.
    """
    import os

    env = os.environ
    coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    slurm = int(env.get("SLURM_NTASKS", "1")) > 1
    if coordinator_address is None and not slurm:
        return False
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError(
            "a multi-host run needs all of coordinator_address, num_processes and process_id "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r})"
        )
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def enable_compilation_cache(directory: str | None = None) -> str:
    """Persistent XLA compilation cache, so a restarted job does not compile its step again."""
    import os

    if directory is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        directory = os.path.join(base, "flaxcls", "jax")
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
