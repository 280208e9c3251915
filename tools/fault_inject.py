r"""Kill a training job with SIGKILL at random moments and show that resuming loses nothing.

    python tools/fault_inject.py --kills 20 --seed 0 --workdir runs/faults

Trains the digits job once without interruption (``<workdir>/whole``), then again in
``<workdir>/killed``, killing it with ``kill -9`` ``--kills`` times at moments drawn (seeded)
uniformly from the span of the uninterrupted run and re-running the same command after each
kill, as a user or a scheduler would; the last run goes to the end. Then the final weights
(params and batch statistics of the newest checkpoint) of both are compared bit for bit.
Prints one JSON line: the kills, the newest checkpoint step found after each, the number of
arrays compared and how many differ, the largest absolute difference and both top-1s. Exit
status 0 when every array is equal, 1 otherwise.

Extra ``--config.<field>=<value>`` arguments go to every run (the defaults: 30 epochs of the
digits job at crop 16, a checkpoint every 7 steps, 2 kept).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = ["--config.num_epochs=30", "--config.crop_size=16", "--config.resize_short_size=16",
            "--config.checkpoint_every_steps=7", "--config.keep_checkpoints=2",
            "--config.eval_every_epochs=1000", "--config.compilation_cache=False"]


def _command(workdir: str, extra: list[str]) -> list[str]:
    return [sys.executable, os.path.join(REPO, "launch.py"), "--config=configs/digits.py",
            f"--workdir={workdir}", *DEFAULTS, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


def _run(workdir: str, extra: list[str], log_path: str, kill_after: float | None) -> int | None:
    """Runs the job; kills it with SIGKILL after ``kill_after`` seconds unless it ended first.
    Returns its exit status, or None when it was killed."""
    with open(log_path, "a") as log:
        proc = subprocess.Popen(_command(workdir, extra), cwd=REPO, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=kill_after)
            return proc.returncode
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return None


def _newest_step(workdir: str) -> int | None:
    root = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
    return max(steps) if steps else None


def _weights(workdir: str) -> dict[str, np.ndarray]:
    import jax

    from flaxcls.checkpoint import read_variables

    variables = read_variables(workdir)
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(variables)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", required=True, help="a new folder: whole/ and killed/ go here")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith("--config.")]
    if bad:
        p.error(f"unknown arguments: {' '.join(bad)} (only --config.<field>=<value> pass through)")
    if os.path.exists(args.workdir) and os.listdir(args.workdir):
        p.error(f"--workdir {args.workdir} exists and is not empty")
    whole, killed = os.path.join(args.workdir, "whole"), os.path.join(args.workdir, "killed")
    os.makedirs(args.workdir, exist_ok=True)
    log_path = os.path.join(args.workdir, "runs.log")

    t0 = time.monotonic()
    if _run(whole, extra, log_path, None) != 0:
        print(f"the uninterrupted run failed; see {log_path}", file=sys.stderr)
        return 1
    span = time.monotonic() - t0

    rng = np.random.default_rng(args.seed)
    steps_at_kill: list[int | None] = []
    for _ in range(args.kills):
        status = _run(killed, extra, log_path, float(rng.uniform(0.0, span)))
        if status not in (None, 0):
            print(f"a run exited {status}; see {log_path}", file=sys.stderr)
            return 1
        steps_at_kill.append(_newest_step(killed))
    if _run(killed, extra, log_path, None) != 0:
        print(f"the final run failed; see {log_path}", file=sys.stderr)
        return 1

    a, b = _weights(whole), _weights(killed)
    differ = [k for k in a if k not in b or not np.array_equal(a[k], b[k])]
    max_diff = max((float(np.max(np.abs(a[k] - b[k]))) for k in a if k in b), default=0.0)
    top1 = [json.loads(Path(w, "eval_results.json").read_text())["top1"] for w in (whole, killed)]
    print(json.dumps({
        "kills": args.kills, "seed": args.seed, "span_s": round(span, 1),
        "newest_step_after_each_kill": steps_at_kill, "arrays": len(a),
        "arrays_differing": len(differ) + len(set(b) - set(a)), "max_abs_diff": max_diff,
        "top1_whole": top1[0], "top1_killed": top1[1],
    }))
    return 0 if not differ and set(a) == set(b) else 1


if __name__ == "__main__":
    sys.exit(main())
