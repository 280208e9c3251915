"""Storage failures as user errors: a full disk, a read-only file system, a permission refused,
a workdir that disappeared. One message names the operation, the path, the step, the bytes
needed and free, and the checkpoint a re-run resumes from; launch.py exits with ``EXIT_CODE``.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from typing import Any

log = logging.getLogger("flaxcls")

EXIT_CODE = 4

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "a folder on the path no longer exists",
    errno.EIO: "an input/output error of the device",
}
# TensorStore (under Orbax) reports the OS error in its message, not as an OSError.
_TENSORSTORE_CODE = re.compile(r"os_error_code='?(\d+)")
_TEXT = {"No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
         "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


class StorageError(OSError):
    """A write or read that the storage refused: ``errno`` says which, ``str()`` is the whole
    message."""

    def __str__(self) -> str:
        return str(self.strerror)


def storage_errno(e: BaseException) -> int | None:
    """The OS error behind ``e`` (searching its cause chain and TensorStore's messages) when it
    is one of the storage failures above, else None."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        if isinstance(e, StorageError):
            return e.errno
        if isinstance(e, OSError) and e.errno in _REASONS:
            return e.errno
        text = str(e)
        match = _TENSORSTORE_CODE.search(text)
        if match and int(match.group(1)) in _REASONS:
            return int(match.group(1))
        for phrase, code in _TEXT.items():
            if phrase in text:
                return code
        e = e.__cause__ or e.__context__
    return None


def free_bytes(path: str) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing parent)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def megabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def as_storage_error(e: BaseException, operation: str, path: str, *, step: int | None = None,
                     needed: int | None = None, resume: str = "") -> StorageError | None:
    """``e`` as one StorageError message, or None when ``e`` is not a storage failure.

    ``resume``: what a re-run does (the newest complete checkpoint), appended as the way on.
    """
    code = storage_errno(e)
    if code is None:
        return None
    if isinstance(e, StorageError):
        return e
    at = f" at step {step}" if step is not None else ""
    parts = [f"{operation} failed{at}: {_REASONS[code]} ({path})"]
    if code in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        sizes = ([f"it needs about {megabytes(needed)}"] if needed else []) + (
            [f"{megabytes(free)} free there"] if free is not None else [])
        if sizes:
            parts.append(", ".join(sizes))
    if resume:
        parts.append(resume)
    return StorageError(code, "; ".join(parts))


def state_bytes(tree: Any) -> int:
    """Bytes of the arrays of ``tree`` (the size of its checkpoint before compression)."""
    import jax

    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree.leaves(tree)))


def check_room_for_checkpoints(directory: str, checkpoint_bytes: int, keep: int) -> str | None:
    """A warning when the file system of ``directory`` cannot take ``keep + 1`` checkpoints of
    ``checkpoint_bytes`` (the newest ``keep`` plus one being written), counting the space the
    checkpoints already there take; None when they fit or the free space is unknown."""
    free = free_bytes(directory)
    if free is None:
        return None
    have = tree_bytes(directory)
    needed = (keep + 1) * checkpoint_bytes - have
    if free >= needed:
        return None
    return (f"the file system of {directory} has {megabytes(free)} free, but keeping "
            f"{keep} checkpoint(s) of about {megabytes(checkpoint_bytes)} while writing the next "
            f"needs {megabytes(needed)} more: a save will fail with a full disk. Free space, "
            "lower config.keep_checkpoints or use another --workdir")
