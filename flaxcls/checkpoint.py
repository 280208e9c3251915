"""Orbax checkpoints of the train state: save, keep the newest N, resume, and read weights.

A checkpoint is ``<workdir>/checkpoints/<step>/`` holding ``state`` (the array pytree) and
``metadata`` (a small JSON dict). Orbax writes each step under ``<step>.orbax-checkpoint-tmp``
and renames it only when complete, so a job killed mid-save leaves the previous checkpoint
intact; the unfinished directory is never listed and is removed by the next writer.
"""

from __future__ import annotations

import json
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

STATE = "state"
METADATA = "metadata"
CHECKPOINTS = "checkpoints"
UNFINISHED_MARK = ".orbax-checkpoint-tmp"
_MAX_LISTED = 5


class CheckpointError(ValueError):
    """A checkpoint that can't serve: unfinished, of another architecture, or without weights."""


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
        self.directory = epath.Path(workdir) / CHECKPOINTS
        self._manager = _manager(self.directory, keep=keep, async_save=async_save)

    def save(self, step: int, state_pytree: Any, metadata: dict[str, Any],
             force: bool = False) -> bool:
        """Saves ``state_pytree`` as step ``step``; False when that step is already saved."""
        step = int(step)
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(**{
            STATE: ocp.args.PyTreeSave(state_pytree),
            METADATA: ocp.args.JsonSave(_jsonable(metadata)),
        })
        return bool(self._manager.save(step, args=args, force=force))

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

    def reached_preemption(self, step: int) -> bool:
        """True on every host once any host was told it will be preempted (multi-host jobs)."""
        return self._manager.reached_preemption(int(step))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def restore_from(path: str | epath.PathLike, abstract_state: Any,
                     partial: bool = False) -> tuple[Any, dict[str, Any]]:
        return restore_from(path, abstract_state, partial)

    @staticmethod
    def read_variables(path: str | epath.PathLike) -> dict[str, Any]:
        return read_variables(path)


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


def read_variables(path: str | epath.PathLike) -> dict[str, Any]:
    """The ``params`` and ``batch_stats`` of a checkpoint as nested dicts of numpy arrays.

    For starting from another run's weights (``config.pretrained_model``), where the model
    may differ (another head) and the optimizer state is not wanted. ``path`` as in
    ``restore_from``.
    """
    directory, step = _resolve(path)
    manager = _manager(directory, read_only=True)
    try:
        if step is None:
            step = _latest_or_raise(manager, directory)
        tree = _saved_tree(manager, step)
        wanted = {k: tree[k] for k in ("params", "batch_stats") if isinstance(tree, dict) and k in tree}
        if not wanted:
            raise CheckpointError(f"checkpoint {directory / str(step)} has no 'params' "
                             f"(top-level entries: {sorted(tree) if isinstance(tree, dict) else tree})")
        item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        out = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)}))
        return dict(out[STATE])
    finally:
        manager.close()


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
    return out[STATE], dict(out[METADATA] or {}) if has_metadata else {}


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _with_shardings(abstract_state: Any) -> Any:
    """Arrays -> ShapeDtypeStructs; every leaf must say where it goes."""

    def one(path: Any, leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        if getattr(leaf, "sharding", None) is None:
            name = "/".join(_key_name(k) for k in path)
            raise ValueError(
                f"abstract_state leaf {name!r} has no sharding: restore needs "
                "jax.ShapeDtypeStruct(shape, dtype, sharding=...) for every leaf")
        return leaf

    return jax.tree_util.tree_map_with_path(one, abstract_state)


def _check_matches(saved_tree: Any, abstract: Any, where: epath.Path, partial: bool) -> None:
    """Raises one ValueError naming the first leaves whose names or shapes differ."""
    saved, wanted = _flat(saved_tree), _flat(abstract)
    missing = [k for k in wanted if k not in saved]
    unexpected = [] if partial else [k for k in saved if k not in wanted]
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(wanted[k].shape)}"
        for k in wanted
        if k in saved and getattr(saved[k], "shape", None) is not None
        and tuple(saved[k].shape) != tuple(wanted[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    for title, items in (("shape mismatch", shapes), ("missing from the checkpoint", missing),
                         ("in the checkpoint but not in the model", unexpected)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{title}: " + "; ".join(items[:_MAX_LISTED]) + more)
    raise CheckpointError(f"checkpoint {where} does not match the model state "
                     f"(checkpoint of another architecture?): " + ". ".join(parts))


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    def default(o: Any) -> Any:
        if hasattr(o, "to_dict"):  # ml_collections.ConfigDict
            return o.to_dict()
        if isinstance(o, (np.generic, np.ndarray)):
            return o.tolist()
        raise TypeError(f"checkpoint metadata: a {type(o).__name__} is not JSON-serialisable")

    return json.loads(json.dumps(metadata, default=default))
