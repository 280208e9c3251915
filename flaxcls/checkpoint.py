"""Orbax checkpoints of the train state: save, keep the newest N, find, resume, and read weights.

A checkpoint is ``<workdir>/checkpoints/<step>/`` holding ``state`` (the array pytree) and
``metadata`` (a small JSON dict). Orbax writes each step under ``<step>.orbax-checkpoint-tmp``
and renames it only when complete, so a job killed mid-save leaves the previous checkpoint
intact; the unfinished directory is never listed and is removed by the next writer.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from flaxcls import checksum, mismatch, storage

STATE = "state"
METADATA = "metadata"
CHECKPOINTS = "checkpoints"
UNFINISHED_MARK = ".orbax-checkpoint-tmp"


CHECKSUMS = "checksums"  # metadata key: '/'-joined array path -> checksum.checksums() value


class CheckpointError(ValueError):
    """A checkpoint that can't serve: unfinished, of another architecture, without weights, or
    whose arrays changed on disk since they were saved."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose bytes changed after it was saved (its checksums differ) or that can't
    be read at all."""


def _orbax_storage_noise(record: logging.LogRecord) -> bool:
    """Drops Orbax's background-thread error logs (each with a long traceback) for a storage
    failure: the same error reaches the saving thread, which reports it in one line."""
    exc = record.exc_info[1] if record.exc_info else None
    if exc is None and "raised an exception" in record.getMessage():
        exc = Exception(record.getMessage())
    return exc is None or storage.storage_errno(exc) is None


logging.getLogger("absl").addFilter(_orbax_storage_noise)


def _late_write_noise(unraisable: Any) -> None:
    """After a failed save, TensorStore finishes the writes still in flight and hands each
    result to the save's asyncio loop, which Orbax has already closed: every one would print
    an 'Event loop is closed' traceback after our one-line error. A result delivered from
    native code (the traceback starts in ``call_soon_threadsafe``) into a closed loop has no
    reader left, so it is dropped; any other unraisable exception goes to the previous hook."""
    exc, tb = unraisable.exc_value, unraisable.exc_traceback
    if (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"
            and tb is not None and tb.tb_frame.f_code.co_name == "call_soon_threadsafe"):
        logging.getLogger(__name__).debug("a write finished after its save had failed")
        return
    _previous_unraisable_hook(unraisable)


_previous_unraisable_hook = sys.unraisablehook
sys.unraisablehook = _late_write_noise


def _manager(
    directory: epath.Path, *, keep: int | None = None, async_save: bool = False,
    read_only: bool = False,
) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        enable_async_checkpointing=async_save,
        # Unfinished step dirs of a killed run are deleted (before the first save) by writers.
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(
        directory,
        options=options,
        item_handlers={STATE: ocp.PyTreeCheckpointHandler(),
                       METADATA: ocp.JsonCheckpointHandler()},
    )


class Checkpointer:
    """Saves and restores the train state under ``<workdir>/checkpoints``, keeping the newest ``keep``.

    Every process calls every method (Orbax coordinates the hosts and writes the JSON on the
    primary one). With ``async_save`` the arrays are copied to host memory in ``save`` and
    written in the background; ``wait`` blocks until the last save is on disk.
    """

    def __init__(self, workdir: str | epath.PathLike, keep: int, async_save: bool = False):
        if keep < 1:
            raise ValueError(f"keep={keep}: must be >= 1 (config.keep_checkpoints)")
        workdir = os.fspath(workdir)
        if "://" not in workdir:  # a local folder: Orbax's writers need it absolute
            workdir = os.path.abspath(workdir)
        self.directory = epath.Path(workdir) / CHECKPOINTS
        self._pending: tuple[int, int] | None = None  # (step, bytes) of a save in flight
        self._failed, self._async = False, async_save
        try:
            self._manager = _manager(self.directory, keep=keep, async_save=async_save)
        except Exception as e:
            err = self._storage_error(e, "creating the checkpoint folder", None, None)
            if err is None:
                raise
            raise err from e

    def save(self, step: int, state_pytree: Any, metadata: dict[str, Any],
             force: bool = False) -> bool:
        """Saves ``state_pytree`` as step ``step`` with a checksum of each array in its
        metadata; False when that step is already saved. A storage failure of this save or of
        the one before it (saves run in the background) raises storage.StorageError."""
        step = int(step)
        if step in self._manager.all_steps():
            return False
        metadata = {**metadata, CHECKSUMS: checksum.checksums(state_pytree)}
        args = ocp.args.Composite(**{
            STATE: ocp.args.PyTreeSave(state_pytree),
            METADATA: ocp.args.JsonSave(_jsonable(metadata)),
        })
        size = storage.state_bytes(state_pytree)
        self._settle()  # the save before this one: its failure is reported as its own
        self._pending = (step, size)
        try:
            saved = bool(self._manager.save(step, args=args, force=force))
        except Exception as e:
            err = self._storage_error(e, "saving a checkpoint", step, size)
            if err is None:
                raise
            raise err from e
        if not self._async:
            self._pending = None
        return saved

    def _settle(self) -> None:
        """Waits for the save in flight; its storage failure raises StorageError."""
        if self._pending is None:
            return
        step, size = self._pending
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            err = self._storage_error(e, "saving a checkpoint", step, size)
            if err is None:
                raise
            raise err from e
        self._pending = None

    def _storage_error(self, e: BaseException, operation: str, step: int | None,
                       size: int | None) -> storage.StorageError | None:
        newest = _newest_on_disk(str(self.directory))
        resume = (f"the newest complete checkpoint is {newest[0]}: make room (or fix the "
                  f"folder) and re-run the same command to resume from step {newest[1]}"
                  if newest else "no checkpoint was completed: a re-run starts afresh")
        err = storage.as_storage_error(e, operation, str(self.directory), step=step,
                                       needed=size, resume=resume)
        if err is not None:
            self._failed = True
            self._pending = None
        return err

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, step: int | None, abstract_state: Any,
                partial: bool = False) -> tuple[Any, dict[str, Any]]:
        """Restores step ``step`` (None: the newest) onto the shardings of ``abstract_state``.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` with shardings (or of arrays,
        whose shardings are used). ``partial=True`` restores only the leaves it names.
        Returns ``(state, metadata)``.
        """
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no finished checkpoint in {self.directory}")
        return _restore(self._manager, self.directory, int(step), abstract_state, partial)

    def restore_newest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, metadata) of the newest finished checkpoint, or None when there is
        none. One that cannot be read (a damaged disk, a file cut short outside our atomic
        save) stops the run naming it and the way back to an older one, which nothing
        deletes."""
        step = self.latest_step()
        if step is None:
            return None
        try:
            state, meta = self.restore(step, abstract_state)
        except CheckpointError as e:
            if not isinstance(e, DamagedCheckpoint):
                raise
            reason = str(e)
        except Exception as e:  # noqa: BLE001 - Orbax and TensorStore raise many kinds
            reason = f"checkpoint {self.directory / str(step)} cannot be read ({_root_reason(e)})"
        else:
            return step, state, meta
        where = self.directory / str(step)
        older = [s for s in self.all_steps() if s < step]
        self.close()
        hint = (f"move {where} out of '{self.directory}' (keep it until the run is back) "
                f"and re-run to resume from step {older[-1]}" if older else
                "no older checkpoint is left: move it aside to start afresh")
        raise DamagedCheckpoint(f"{reason}; {hint}")

    def wait(self) -> None:
        self._settle()

    def close(self) -> None:
        """Waits for the last save and closes. After a reported storage failure it only
        releases Orbax's threads (the failure is not raised twice)."""
        try:
            if not self._failed:
                self._settle()
        finally:
            try:
                self._manager.close()
            except Exception as e:
                if not self._failed and storage.storage_errno(e) is None:
                    raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def restore_from(path: str | epath.PathLike, abstract_state: Any,
                 partial: bool = False) -> tuple[Any, dict[str, Any]]:
    """Restores an explicit checkpoint (``config.checkpoint``): a ``.../checkpoints/<step>``
    directory, a ``.../checkpoints`` directory or a workdir (their newest step). Read-only."""
    directory, step = _resolve(path)
    manager = _manager(directory, read_only=True)
    try:
        if step is None:
            step = _latest_or_raise(manager, directory)
        return _restore(manager, directory, step, abstract_state, partial)
    finally:
        manager.close()


def workdir_checkpoint(workdir: str) -> tuple[str, int] | None:
    """(path, step) of the workdir's newest finished checkpoint, or None; reads the folder
    names only, so it never disturbs a training job writing to this workdir right now."""
    return _newest_on_disk(os.path.join(workdir, CHECKPOINTS))


def _newest_on_disk(root: str) -> tuple[str, int] | None:
    """(path, step) of the newest finished step folder under ``root``, from the names only."""
    try:
        names = os.listdir(root)
    except OSError:
        return None
    steps = [int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(root, n))]
    if not steps:
        return None
    return os.path.join(root, str(max(steps))), max(steps)


def read_variables(path: str | epath.PathLike, ema: bool = False,
                   which: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``params`` and ``batch_stats`` of a checkpoint as nested dicts of numpy arrays; with
    ``ema``, those of its moving average where it has one (``config.use_ema_weights``).

    For starting from another run's weights (``config.pretrained_model``), where the model
    may differ (another head) and the optimizer state is not wanted, and for serving.
    ``path`` as in ``restore_from``. ``which``, when given, gets ``{"weights": "ema"}`` or
    ``{"weights": "raw"}``: what was read.
    """
    directory, step = _resolve(path)
    _check_conversion_source(directory.parent)
    manager = _manager(directory, read_only=True)
    try:
        if step is None:
            step = _latest_or_raise(manager, directory)
        tree = _saved_tree(manager, step)
        if ema and isinstance(tree, dict) and isinstance(tree.get("ema"), dict):
            logging.getLogger("flaxcls").info("weights: the moving average (EMA) of %s (config.use_ema_weights)",
                     directory / str(step))
            wanted = {"ema": {k: v for k, v in tree["ema"].items() if k == "params" or v}}
        else:
            wanted = {k: tree[k] for k in ("params", "batch_stats")
                      if isinstance(tree, dict) and k in tree}
        if not wanted:
            raise CheckpointError(f"checkpoint {directory / str(step)} has no 'params' "
                             f"(top-level entries: {sorted(tree) if isinstance(tree, dict) else tree})")
        item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        items = {STATE: ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                               partial_restore=True)}
        has_metadata = (directory / str(step) / METADATA).exists()
        if has_metadata:
            items[METADATA] = ocp.args.JsonRestore()
        out = manager.restore(step, args=ocp.args.Composite(**items))
        _verify(out[STATE], dict(out[METADATA] or {}) if has_metadata else {},
                directory / str(step))
        if which is not None:
            which["weights"] = "ema" if "ema" in wanted else "raw"
        return dict(out[STATE]["ema"] if "ema" in wanted else out[STATE])
    finally:
        manager.close()


CONVERSION_SIDECAR = "conversion.json"  # written by flaxcls.convert beside its checkpoints/


def _check_conversion_source(out: epath.Path) -> None:
    """A converted checkpoint read with its source file beside it (in its folder or the folder
    above): the source's sha256 must be the one the conversion recorded."""
    sidecar = out / CONVERSION_SIDECAR
    if not sidecar.exists():
        return
    try:
        record = json.loads(sidecar.read_text())
        name, recorded = record["source"], record["source_sha256"]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{sidecar} is not a conversion record (JSON with 'source' and "
                              "'source_sha256')") from None
    for folder in (out, out.parent):
        source = folder / name
        if source.exists() and os.path.realpath(source) != os.path.realpath(out):
            digest = checksum.file_sha256(str(source))
            if digest != recorded:
                raise DamagedCheckpoint(
                    f"{out} was converted from a {name} with sha256 {recorded[:16]}... "
                    f"({CONVERSION_SIDECAR}), but {source} has sha256 {digest[:16]}...: one of "
                    f"them changed (another release, a damaged copy). Convert {source} again "
                    "into a new folder, or move it away to use the checkpoint as it is")
            return


def _resolve(path: str | epath.PathLike) -> tuple[epath.Path, int | None]:
    """``path`` -> (directory of step dirs, step or None for the newest)."""
    p = epath.Path(path)
    if UNFINISHED_MARK in p.name:
        raise CheckpointError(f"checkpoint {p} is unfinished (its save was interrupted); "
                         "use a step directory without the tmp suffix")
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if (p / CHECKPOINTS).is_dir():
        return p / CHECKPOINTS, None
    if p.name.isdigit() and (p / STATE).exists():
        return p.parent, int(p.name)
    return p, None


def _latest_or_raise(manager: ocp.CheckpointManager, directory: epath.Path) -> int:
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(
            f"no finished checkpoint in {directory} (expected a workdir, its '{CHECKPOINTS}' "
            "directory or a '<step>' directory inside it)")
    return step


def _saved_tree(manager: ocp.CheckpointManager, step: int) -> Any:
    meta = manager.item_metadata(step)[STATE]
    return getattr(meta, "tree", meta)


def _restore(manager: ocp.CheckpointManager, directory: epath.Path, step: int,
             abstract_state: Any, partial: bool) -> tuple[Any, dict[str, Any]]:
    where = directory / str(step)
    abstract = _with_shardings(abstract_state)
    _check_matches(_saved_tree(manager, step), abstract, where, partial)
    items = {STATE: ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=partial,
    )}
    has_metadata = (where / METADATA).exists()
    if has_metadata:
        items[METADATA] = ocp.args.JsonRestore()
    out = manager.restore(step, args=ocp.args.Composite(**items))
    meta = dict(out[METADATA] or {}) if has_metadata else {}
    _verify(out[STATE], meta, where)
    meta.pop(CHECKSUMS, None)  # verified; the caller gets back what it saved
    return out[STATE], meta


def _verify(tree: Any, meta: dict[str, Any], where: epath.Path) -> None:
    """Checks the restored arrays against the checksums saved with them (checkpoints written
    before checksums were recorded have none, and are taken as they are)."""
    if CHECKSUMS in meta:
        try:
            checksum.verify(tree, meta[CHECKSUMS], f"checkpoint {where}")
        except checksum.ChecksumMismatch as e:
            raise DamagedCheckpoint(f"{e}: the files changed on disk after the save (a "
                                    "flipped bit, a bad copy)") from None


def _with_shardings(abstract_state: Any) -> Any:
    """Arrays -> ShapeDtypeStructs; every leaf must say where it goes."""

    def one(path: Any, leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        if getattr(leaf, "sharding", None) is None:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            raise ValueError(
                f"abstract_state leaf {name!r} has no sharding: restore needs "
                "jax.ShapeDtypeStruct(shape, dtype, sharding=...) for every leaf")
        return leaf

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def _check_matches(saved_tree: Any, abstract: Any, where: epath.Path, partial: bool) -> None:
    """Raises one CheckpointError listing the tensors whose names or shapes differ."""
    diff = mismatch.compare(mismatch.flat(saved_tree), mismatch.flat(abstract), partial=partial)
    if diff:
        raise CheckpointError(f"checkpoint {where} does not match the model state (a checkpoint "
                              f"of another architecture?): {len(diff)} tensor(s) differ:"
                              + diff.report())


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


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    def default(o: Any) -> Any:
        if hasattr(o, "to_dict"):  # ml_collections.ConfigDict
            return o.to_dict()
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        raise TypeError(f"checkpoint metadata: a {type(o).__name__} is not JSON-serialisable")

    return json.loads(json.dumps(metadata, default=default))
