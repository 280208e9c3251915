"""How far a long job other than training is: count, rate and time left.

On a terminal a bar redrawn in place (at most a few times a second); when the output is a file
or a pipe, a log line every ``every_s`` seconds, so a job log shows progress without a line per
item. Used by the record rewrite, ``--mode=eval``, ``--mode=infer`` and the converter.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Self, TextIO

log = logging.getLogger("flaxcls")

BAR_WIDTH = 28


def format_eta(seconds: float) -> str:
    """``MM:SS``, ``H:MM:SS`` or, from a day on, ``Dd HH:MM:SS``."""
    seconds = max(0, int(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    if d:
        return f"{d}d {h:02d}:{m:02d}:{s:02d}"
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class TaskProgress:
    """``with TaskProgress("rewrite train", total=1_281_167, unit="images") as p: p.update(n)``.

    ``stream``: where the bar goes (default stderr) when it is a terminal; otherwise ``log``
    gets a line every ``every_s`` seconds and one at the end. ``total`` may be None (unknown).
    """

    def __init__(self, what: str, total: int | None, unit: str = "images", *,
                 stream: TextIO | None = None, every_s: float = 30.0,
                 logger: logging.Logger | None = None, enabled: bool = True):
        self.what, self.total, self.unit = what, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.every_s = every_s
        self.log = logger or log
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.t0 = self._last = time.monotonic()
        self._drawn = False

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty and now - self._last >= 0.2:
            self._draw(now)
        elif not self.tty and now - self._last >= self.every_s:
            self.log.info("%s", self.line(now))
            self._last = now

    def line(self, now: float | None = None) -> str:
        """'what: done/total unit (pct), rate unit/s, about T left'."""
        now = time.monotonic() if now is None else now
        seconds = max(now - self.t0, 1e-9)
        rate = self.done / seconds
        if self.total:
            done = min(self.done, self.total)
            left = (self.total - done) / rate if rate > 0 else float("inf")
            eta = f", about {format_eta(left)} left" if left != float("inf") else ""
            return (f"{self.what}: {done:,}/{self.total:,} {self.unit} "
                    f"({100 * done / self.total:.0f}%), {rate:,.1f} {self.unit}/s{eta}")
        return f"{self.what}: {self.done:,} {self.unit}, {rate:,.1f} {self.unit}/s"

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if self.total:
            filled = round(BAR_WIDTH * min(self.done, self.total) / self.total)
            text = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self._drawn, self._last = True, now

    def close(self) -> None:
        """Ends the bar; logs the total and the overall rate."""
        if not self.enabled:
            return
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
        seconds = time.monotonic() - self.t0
        self.log.info("%s: %s %s in %s (%.1f %s/s)", self.what, f"{self.done:,}", self.unit,
                      format_eta(seconds), self.done / max(seconds, 1e-9), self.unit)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
