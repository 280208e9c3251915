"""What every benchmark script shares: environment set-up before jax loads, the record of
device and versions, timing helpers and the CSV / JSON-lines output."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def split_list(text: str, cast: Callable[[str], Any] = str) -> list[Any]:
    """'a, b,c' -> [cast('a'), cast('b'), cast('c')]."""
    return [cast(t.strip()) for t in str(text).split(",") if t.strip()]


def prepare_environment(xla_flags: str = "", preallocate: bool = True) -> None:
    """Must run before jax is imported: extra XLA flags (appended to $XLA_FLAGS) and, when
    another framework shares the GPU in this process, no up-front grab of GPU memory."""
    if "jax" in sys.modules:
        raise RuntimeError("prepare_environment() must run before jax is imported")
    if xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip()
    if not preallocate:
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_info() -> dict[str, Any]:
    """Date (UTC), device kind and count, platform, versions and the XLA flags in force."""
    import jax

    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": dev.device_kind,
        "devices": jax.device_count(),
        "platform": dev.platform,
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", ""),
        "flax": __import__("flax").__version__,
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def median_ms(seconds: Sequence[float]) -> float:
    return round(statistics.median(seconds) * 1e3, 4)


def emit(result: dict[str, Any], csv_path: str | None) -> None:
    """Prints one JSON line (flushed, so a later hang loses nothing) and appends to the CSV."""
    print(json.dumps(result), flush=True)
    if csv_path:
        append_csv(csv_path, result)


def append_csv(path: str, row: dict[str, Any]) -> None:
    """Appends ``row``; a file whose header lacks some of its columns is rewritten with them."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields, rows = list(row), None
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old = list(reader.fieldnames or [])
            missing = [k for k in fields if k not in old]
            fields = old + missing
            if missing:
                rows = list(reader)
    else:
        rows = []
    if rows is not None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)


def default_csv(name: str) -> str:
    return os.path.join(RESULTS, f"{name}.csv")
