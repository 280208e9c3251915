"""Markdown summary of a benchmark session's JSON lines (train steps, inference, the torch peer).

    python benchmarks/summarize.py bench_out/results.jsonl > bench_out/summary.md
"""

from __future__ import annotations

import json


def load(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    return rows


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


def summarize(rows: list[dict]) -> str:
    out = []
    train = [r for r in rows if r.get("benchmark") == "train_step"]
    if train:
        out += ["## Train step (synthetic device-resident data)", "",
                ("| framework | model | batch | dtype | l2 | pad | stem | BN | img/s | step ms "
                 "| compile s | first step s | cache | tag | vs torch |"),
                "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in train:
            if "error" in r:
                out.append(f"| {r.get('framework', '')} | {r.get('model')} | {r.get('batch')} | "
                           f"{r.get('dtype')} | | | | {r.get('bn_impl', '')} | "
                           f"error: {r['error'][:80]} | | | | | | |")
                continue
            peer = _peer(rows, "train_step", r["batch"])
            ratio = (f"{r['images_per_sec'] / peer['images_per_sec']:.2f}x"
                     if peer and r.get("framework") == "jax" else "")
            out.append(
                f"| {r.get('framework', 'jax')} | {r['model']} | {r['batch']} | {r['dtype']} | "
                f"{r.get('l2_decay_mode', '')} | {r.get('pad_input_channels', '')} | "
                f"{_stem(r)} | {r.get('bn_impl', '')} | {r['images_per_sec']:,.0f} | {r['step_ms']:.2f} | {r.get('compile_s', '')} | "
                f"{r.get('first_step_s', '')} | {r.get('compile_cache', '')} | "
                f"{r.get('tag', '')} | {ratio} |")
        out.append("")
    infer = [r for r in rows if r.get("benchmark") == "inference"]
    if infer:
        out += ["## Inference", "",
                ("| framework | model | batch | dtype | folded BN | stem | weights layout "
                 "| ms per call | min ms | img/s | tag | vs torch |"),
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in infer:
            if "error" in r:
                out.append(f"| {r.get('framework')} | {r.get('model')} | | | | | | "
                           f"error: {r['error'][:80]} | | | | |")
                continue
            peer = _peer(rows, "inference", r["batch"])
            ratio = (f"{r['images_per_sec'] / peer['images_per_sec']:.2f}x"
                     if peer and r.get("framework") == "jax" else "")
            out.append(f"| {r.get('framework')} | {r['model']} | {r['batch']} | {r['dtype']} | "
                       f"{r.get('folded_bn')} | {_stem(r)} | {r.get('weights_layout', '')} | "
                       f"{r['latency_ms']:.3f} | "
                       f"{r.get('latency_ms_min', '')} | {r['images_per_sec']:,.0f} | "
                       f"{r.get('tag', '')} | {ratio} |")
        out.append("")
    out += _profiles(rows)
    devices = sorted({r.get("device", "") for r in rows if r.get("device")})
    out.append(f"Devices: {', '.join(devices)}; jax {next((r['jax'] for r in rows if 'jax' in r), '?')}")
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="A markdown summary of a session's results.jsonl.")
    ap.add_argument("results", help="results.jsonl written by benchmarks/gpu_session.sh")
    print(summarize(load(ap.parse_args().results)))
