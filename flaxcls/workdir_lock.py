"""One training job per workdir: ``<workdir>/job.lock`` names the job that holds the workdir.

The lock records the holder's host, pid (and the pid's start time, so a reused pid is not
mistaken for the holder), a job id, the start time and a heartbeat that the holder refreshes
every ``HEARTBEAT_S`` seconds. Another job treats the lock as stale when its holder is gone:
on the same host when the pid is no longer that process; from another host when the heartbeat
is older than ``STALE_AFTER_S``. A stale lock is taken over with a warning; a live one stops the
new job before it writes anything. Multi-host jobs hold it through process 0.

Creation is atomic (``O_CREAT | O_EXCL``) and a take-over goes through a second exclusive file,
so of two jobs that find the same stale lock only one takes it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Self

log = logging.getLogger("flaxcls")

LOCK = "job.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # a lock from another host without a heartbeat for this long is stale
_TAKEOVER = LOCK + ".takeover"
_TAKEOVER_STALE_S = 60.0  # a take-over guard older than this was left by a job that died


class WorkdirInUse(RuntimeError):
    """Another live job holds the workdir (or took it over from this one)."""


def _pid_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of stat; the first two precede ')'
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    now = _pid_start(pid)
    return start is None or now is None or now == start


def _when(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(holder: dict[str, Any], now: float | None = None) -> str:
    """'job <id> (pid P on host H, started ..., heartbeat N s ago)'."""
    now = time.time() if now is None else now
    age = now - float(holder.get("heartbeat", 0))
    return (f"job {holder.get('job_id', '?')} (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, started {_when(float(holder.get('started', 0)))}, "
            f"last heartbeat {age:.0f} s ago)")


def stale_reason(holder: dict[str, Any], stale_after_s: float = STALE_AFTER_S,
                 now: float | None = None) -> str | None:
    """Why ``holder`` no longer holds its lock, or None when it may still be running."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname():
        if not _pid_alive(int(holder.get("pid", -1)), holder.get("pid_start")):
            return f"its process {holder.get('pid')} on this host is gone"
        return None
    age = now - float(holder.get("heartbeat", 0))
    if age > stale_after_s:
        return (f"its heartbeat is {age:.0f} s old (a lock held from another host is stale "
                f"after {stale_after_s:.0f} s)")
    return None


def read_holder(path: str) -> dict[str, Any] | None:
    """The lock's record; None when there is no lock. A lock that cannot be parsed (its writer
    died between creating and writing it) reads as a record without a pid or heartbeat."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        if isinstance(holder, dict):
            return holder
    except json.JSONDecodeError:
        pass
    return {"job_id": "?", "host": "?", "pid": -1, "started": os.path.getmtime(path),
            "heartbeat": os.path.getmtime(path)}


class WorkdirLock:
    """Holds ``<workdir>/job.lock`` from ``acquire`` to ``release``, refreshing its heartbeat
    in a daemon thread. ``check`` raises once another job has taken the lock over (this job
    was judged stale: its host was cut off, say); the loop calls it before every save."""

    def __init__(self, workdir: str, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.path = os.path.join(workdir, LOCK)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        now = time.time()
        self.record = {
            "job_id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _pid_start(os.getpid()), "started": now, "heartbeat": now,
            "command": " ".join(sys.argv)[:500],
        }
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Self:
        """Takes the lock or raises WorkdirInUse naming its holder and what to do."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(20):
            if self._create():
                break
            holder = read_holder(self.path)
            if holder is None:  # released between our attempts
                continue
            why = stale_reason(holder, self.stale_after_s)
            if why is None:
                raise WorkdirInUse(
                    f"workdir {os.path.dirname(self.path)} is in use by {describe(holder)}; "
                    "wait for it to finish or stop it, or use another --workdir. If that job is "
                    f"gone but its host is unreachable, remove {self.path} (a lock from "
                    f"another host is taken over once its heartbeat is "
                    f"{self.stale_after_s:.0f} s old)")
            if self._take_over(holder):
                log.warning("took over the stale lock of %s: %s", describe(holder), why)
                break
            time.sleep(0.2)  # another job is taking it over; look again
        else:
            raise WorkdirInUse(f"could not take {self.path}: it keeps changing (several jobs "
                               "starting on this workdir at once?)")
        self._thread = threading.Thread(target=self._beat, name="flaxcls-lock", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raises WorkdirInUse when this job no longer holds the lock."""
        if self.lost:
            raise WorkdirInUse(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = read_holder(self.path)
        if holder is not None and holder.get("job_id") == self.record["job_id"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals

    def _payload(self) -> bytes:
        return (json.dumps(self.record, indent=1) + "\n").encode()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._payload())
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _replace(self) -> None:
        tmp = f"{self.path}.{self.record['job_id']}.tmp"
        with open(tmp, "wb") as f:
            f.write(self._payload())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def _take_over(self, stale: dict[str, Any]) -> bool:
        """Replaces the stale lock with ours under an exclusive guard file; False when another
        job holds the guard (it is taking the lock over) or the lock changed meanwhile."""
        guard = os.path.join(os.path.dirname(self.path), _TAKEOVER)
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(guard) > _TAKEOVER_STALE_S:
                    os.remove(guard)
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            now = read_holder(self.path)
            if now is not None and now != stale:
                return False
            self.record["heartbeat"] = time.time()
            self._replace()
            return True
        finally:
            os.remove(guard)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = read_holder(self.path)
            if holder is None or holder.get("job_id") != self.record["job_id"]:
                self.lost = (f"this job no longer holds {self.path}: "
                             + (f"{describe(holder)} took it over" if holder else
                                "the lock file was removed")
                             + "; stopping without saving so as not to overwrite its checkpoints")
                log.error("%s", self.lost)
                return
            self.record["heartbeat"] = time.time()
            try:
                self._replace()
            except OSError as e:  # a full disk: the lock stays, with an older heartbeat
                log.warning("could not refresh the heartbeat of %s: %s", self.path, e)


def hold(workdir: str) -> WorkdirLock | None:
    """The workdir's lock for the whole job: process 0 takes it (None on the others); when it
    cannot, every process raises WorkdirInUse."""
    import jax

    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir).acquire()
        except WorkdirInUse as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        held = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not int(held) and error is None:
            error = WorkdirInUse(f"workdir {workdir} is in use by another job (process 0 of "
                                 "this job names it)")
    if error is not None:
        raise error
    return lock
