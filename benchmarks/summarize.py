"""Markdown summary of a benchmark session's JSON lines (train steps, inference, the torch peer).

    python benchmarks/summarize.py bench_out/results.jsonl > bench_out/summary.md
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common


def _peer(rows: list[dict], benchmark: str, batch: int) -> dict | None:
    return next((r for r in rows if r.get("framework") == "torch"
                 and r.get("benchmark") == benchmark and r.get("batch") == batch
                 and "error" not in r), None)


def _stem(r: dict) -> str:
    return "s2d" if r.get("stem_space_to_depth") else ""


def _profiles(rows: list[dict]) -> list[str]:
    """Per profile run: device vs wall time per step (or call), then time per op group."""
    out = []
    heads = [r for r in rows if r.get("benchmark", "").startswith("profile")
             and "device_op_ms_per_step" in r]
    for h in heads:
        what = "inference call" if h["benchmark"] == "profile_infer" else "train step"
        same = [r for r in rows if r.get("benchmark") == h["benchmark"] and "group" in r
                and "op" not in r and all(r.get(k) == h.get(k) for k in
                                          ("model", "batch", "dtype", "bn_impl"))]
        bn = "BN folded" if h["benchmark"] == "profile_infer" else f"BN {h.get('bn_impl', '')}"
        out += [f"## Profile: {h['model']} {what}, batch {h['batch']}, {h['dtype']}, {bn}", "",
                (f"Device op time {h['device_op_ms_per_step']} ms per {what.split()[-1]}, wall "
                f"{h['wall_ms_per_step_traced']} ms (traced), {h['op_events']} ops."), "",
                "| op group | ms | share | ops |", "|---|---|---|---|"]
        out += [f"| {r['group']} | {r['ms_per_step']} | {r['share']:.1%} | {r['ops_per_step']} |"
                for r in same]
        out.append("")
    return out


def _get(key: str, default: str = "") -> Callable[[dict], str]:
    return lambda r: f"{r.get(key, default)}"


# (header, cell, measured): an error row leaves the measured cells empty.
_TRAIN_COLUMNS = [
    ("framework", _get("framework", "jax"), False), ("model", _get("model"), False),
    ("batch", _get("batch"), False), ("dtype", _get("dtype"), False),
    ("l2", _get("l2_decay_mode"), False), ("pad", _get("pad_input_channels"), False),
    ("stem", _stem, False), ("BN", _get("bn_impl"), False),
    ("accum", _get("grad_accum_steps"), False), ("teacher", _get("teacher"), False),
    ("resident images", _get("device_data"), False),
    ("img/s", lambda r: f"{r['images_per_sec']:,.0f}", True),
    ("step ms", lambda r: f"{r['step_ms']:.2f}", True),
    ("peak MB", _get("peak_memory_mb"), True),
    ("compile s", _get("compile_s"), True), ("first step s", _get("first_step_s"), True),
    ("cache", _get("compile_cache"), False), ("tag", _get("tag"), False),
]
_INFER_COLUMNS = [
    ("framework", _get("framework", "jax"), False), ("model", _get("model"), False),
    ("batch", _get("batch"), False), ("dtype", _get("dtype"), False),
    ("folded BN", _get("folded_bn"), False), ("stem", _stem, False),
    ("weights layout", _get("weights_layout"), False),
    ("ms per call", lambda r: f"{r['latency_ms']:.3f}", True),
    ("min ms", _get("latency_ms_min"), True),
    ("img/s", lambda r: f"{r['images_per_sec']:,.0f}", True), ("tag", _get("tag"), False),
]


def _table(rows: list[dict], benchmark: str, title: str, columns: list) -> list[str]:
    """The ``benchmark`` rows as a table, each jax row with its img/s over the torch peer's at
    the same batch; an error row carries its message in the first measured column."""
    picked = [r for r in rows if r.get("benchmark") == benchmark]
    if not picked:
        return []
    heads = [head for head, _, _ in columns] + ["vs torch"]
    out = [title, "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in picked:
        if "error" in r:
            cells = ["" if measured else cell(r) for _, cell, measured in columns] + [""]
            first = next(i for i, (_, _, measured) in enumerate(columns) if measured)
            cells[first] = f"error: {r['error'][:80]}"
        else:
            peer = _peer(rows, benchmark, r["batch"])
            ratio = (f"{r['images_per_sec'] / peer['images_per_sec']:.2f}x"
                     if peer and r.get("framework") == "jax" else "")
            cells = [cell(r) for _, cell, _ in columns] + [ratio]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def _time_to_accuracy(rows: list[dict]) -> list[str]:
    """One line per trainer and config: runs, mean/min/max training time and test top-1."""
    summaries = [r for r in rows if r.get("what") == "time_to_accuracy_summary"
                 and "train_s_mean" in r]
    if not summaries:
        return []
    out = ["## Time to accuracy (CIFAR-10)", "",
           "| trainer | config | model | batch | dtype | runs | train s mean (min-max) | "
           "top-1 mean (min-max) | reached target |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summaries:
        out.append(
            f"| {r.get('trainer', '')} | {r.get('config', '')} | {r.get('model', '')} | "
            f"{r.get('batch', '')} | {r.get('dtype', '')} | {r['runs']} | "
            f"{r['train_s_mean']:.2f} ({r['train_s_min']:.2f}-{r['train_s_max']:.2f}) | "
            f"{r['top1_mean']:.4f} ({r['top1_min']:.4f}-{r['top1_max']:.4f}) | "
            f"{r.get('reached_target', '')} of {r['runs']} at {r.get('target', '')} |")
    return out + [""]


def summarize(rows: list[dict]) -> str:
    out = _table(rows, "train_step", "## Train step (device-resident data: synthetic, or a "
                 "resident split where \"resident images\" says)", _TRAIN_COLUMNS)
    out += _time_to_accuracy(rows)
    out += _table(rows, "inference", "## Inference", _INFER_COLUMNS)
    out += _profiles(rows)
    devices = sorted({r.get("device", "") for r in rows if r.get("device")})
    out.append(f"Devices: {', '.join(devices)}; jax {next((r['jax'] for r in rows if 'jax' in r), '?')}")
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="A markdown summary of a session's results.jsonl.")
    ap.add_argument("results", help="results.jsonl written by benchmarks/gpu_session.sh")
    print(summarize(_common.read_jsonl(ap.parse_args().results)))
