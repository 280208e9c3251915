r"""Kill a training job with SIGKILL at random moments and show that resuming loses nothing.

    python tools/fault_inject.py --kills 20 --seed 0 --workdir runs/faults

Trains the digits job once without interruption (``<workdir>/whole``), timing its start-up
(until the first checkpoint appears) and its training. Then trains it again in
``<workdir>/killed``, killing it with ``kill -9`` ``--kills`` times and re-running the same
command after each kill, as a user or a scheduler would; the last run goes to the end. The kill
moments are seeded: a quarter of them (at random) fall at a uniform moment of start-up (data
set, restore, compile), the others at points spread uniformly over training (sorted, so each
run gets to its point from where the one before stopped); a run that finishes before its
moment is no kill, and a start-up kill is added in its place. Then the final weights (params
and batch statistics of the newest checkpoint) of both runs are compared bit for bit.

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


def _run(workdir: str, extra: list[str], log_path: str,
         kill_after: float | None) -> tuple[int | None, float | None, float]:
    """Runs the job; kills it with SIGKILL after ``kill_after`` seconds unless it ended first.
    Returns (exit status or None when killed, seconds until its first new checkpoint appeared
    or None, seconds it ran)."""
    before = _newest_step(workdir)
    t0 = time.monotonic()
    first_checkpoint = None
    with open(log_path, "a") as log:
        proc = subprocess.Popen(_command(workdir, extra), cwd=REPO, env=_env(), stdout=log,
                                stderr=subprocess.STDOUT)
        while proc.poll() is None:
            now = time.monotonic() - t0
            if first_checkpoint is None and _newest_step(workdir) != before:
                first_checkpoint = now
            if kill_after is not None and now >= kill_after:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None, first_checkpoint, now
            time.sleep(0.02)
    return proc.returncode, first_checkpoint, time.monotonic() - t0


def _newest_step(workdir: str) -> int | None:
    root = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
    return max(steps) if steps else None


def _total_steps(workdir: str) -> int:
    """The step the finished run ended at (its newest checkpoint)."""
    step = _newest_step(workdir)
    if not step:
        raise SystemExit(f"no checkpoint in {workdir}")
    return step


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

    status, startup, span = _run(whole, extra, log_path, None)
    if status != 0 or startup is None:
        print(f"the uninterrupted run failed; see {log_path}", file=sys.stderr)
        return 1
    training = max(span - startup, 1.0)

    rng = np.random.default_rng(args.seed)
    in_startup = list(rng.random(args.kills) < 0.25)
    points = list(np.sort(rng.random(args.kills - sum(in_startup))))
    total = _total_steps(whole)
    steps_at_kill: list[int | None] = []
    kills = runs = 0
    while kills < args.kills and runs < 3 * args.kills:
        runs += 1
        done = (_newest_step(killed) or 0) / total
        # A run that finished before its moment leaves the rest of its kind to start-up.
        if (in_startup.pop(0) if in_startup else True) or not points or done >= 1:
            delay = float(rng.uniform(0.0, startup))
        else:
            delay = startup + max(float(points.pop(0)) - done, 0.0) * training
        status, _, _ = _run(killed, extra, log_path, delay)
        if status not in (None, 0):
            print(f"a run exited {status}; see {log_path}", file=sys.stderr)
            return 1
        if status is None:
            kills += 1
            steps_at_kill.append(_newest_step(killed))
    if _run(killed, extra, log_path, None)[0] != 0:
        print(f"the final run failed; see {log_path}", file=sys.stderr)
        return 1

    a, b = _weights(whole), _weights(killed)
    differ = [k for k in a if k not in b or not np.array_equal(a[k], b[k])]
    max_diff = max((float(np.max(np.abs(a[k] - b[k]))) for k in a if k in b), default=0.0)
    top1 = [json.loads(Path(w, "eval_results.json").read_text())["top1"] for w in (whole, killed)]
    print(json.dumps({
        "kills": kills, "runs_before_the_last": runs, "seed": args.seed,
        "startup_s": round(startup, 1), "training_s": round(training, 1),
        "newest_step_after_each_kill": steps_at_kill, "arrays": len(a),
        "arrays_differing": len(differ) + len(set(b) - set(a)), "max_abs_diff": max_diff,
        "top1_whole": top1[0], "top1_killed": top1[1],
    }))
    return 0 if not differ and set(a) == set(b) else 1


if __name__ == "__main__":
    sys.exit(main())
