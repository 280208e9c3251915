"""Time to accuracy on CIFAR-10: whole training runs of the trainer, each in a fresh process;
one JSON line per run and a summary; optionally the same for airbench94 on the same JPEGs.

    python benchmarks/time_to_accuracy.py --runs 5            # configs/cifar10.py, 5 seeds
    python benchmarks/time_to_accuracy.py --runs 2 --override num_epochs=2 \
        --override dtype=float32 --override model=SpeedNet_cifar_x0_5
    python benchmarks/time_to_accuracy.py --runs 5 --peer airbench94 --peer-dir ../cifar10-airbench

Data: ``--data-dir``, class folders ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` or a
.tar.gz of them (default ``../shared/data/cifar10-jpeg.tar.gz`` beside the repository,
unpacked once into ``--cache-dir``); nothing is downloaded, and where the data are missing the
script prints a ``skipped`` line and stops.

Each flaxcls run is ``python launch.py --config=CONFIG --workdir=W --config.data_dir=DATA
--config.random_seed=SEED+i --config.device_data_cache=ROOT/device_data [--config.FIELD=VALUE
...]`` in a new process and a fresh workdir under ``--workdir-root`` (default a temporary
folder, removed at the end when every run went well). The device-resident split is decoded
once, by the first run that needs it, into the shared cache; later runs load it (``decode``:
``fresh`` or ``cached``). From the run's ``metrics.jsonl`` and ``eval_results.json``:

- ``train_s``: the loop's timing record (``flaxcls.train.loop.TrainClock``): the train steps
  after the first, with the first counted at their pace. Not in it: the compile (in
  ``first_step_s``, which also holds one step), the decode or cache load (``decode_s``), evals,
  checkpoints, process start-up;
- ``final_eval_s``: the final evaluation's own time (the ``seconds`` of its ``eval`` and, with an
  EMA, ``eval_ema`` records: raw and averaged weights, each with eval_flip where the config has
  it); it includes compiling the eval step, which happens there first;
- ``train_and_final_eval_s``: the two added, the closest to what airbench94 times;
- ``wall_s``: the whole process, start-up, decode, compiles and checkpoint included;
- ``top1``: ``eval_results.json``'s (the weights the config serves: the EMA's in
  configs/cifar10.py; ``top1_raw`` / ``top1_ema`` both where there is an EMA).

Device, versions and the decoder the trainer's device-resident split uses ("tf" where
TensorFlow is installed, else "pillow") come from one short probe process before the runs.

``--peer airbench94 --peer-dir DIR`` (DIR: a checkout of github KellerJordan/cifar10-airbench,
run as it is, never copied) also runs its ``legacy/airbench94_compiled.py`` (``--peer-script
eager``, or where that file is absent: ``legacy/airbench94.py``) in a process of its own (torch's
and jax's CUDA libraries never share one), only where ``--peer-python`` imports torch and
torchvision and sees a CUDA device; otherwise a ``skipped`` line. Its data are
``cifar10/train.pt`` and ``cifar10/test.pt`` in its working folder under ``--workdir-root``,
written by ``benchmarks/cifar_tensors.py`` from the same JPEG folders: both trainers decode the
same files, with Pillow where the trainer's decoder is "pillow". The train tensors are in one
fixed random order, since airbench94 whitens its first layer with the first 5,000 train images,
all of one class in class-folder order. They are checked before it starts, and its CIFAR-10
download is replaced by an error. A small runner written there at run time imports the script
as a module (not as ``__main__``), builds the two compiled models as its ``__main__`` does
(``torch.compile``, ``--peer-compile-mode``, default its max-autotune), runs ``main('warmup')``
once (compiles and warms up; for the eager script too) and then ``--peer-runs`` timed runs, and
the tables it prints are parsed: per run, ``train_s`` is its ``total_time_seconds`` (CUDA events
around: the whitening initialisation, the training epochs and the final test-time-augmented
eval, tta_level 2 = 6 views; not its per-epoch evals and not the warm-up run), ``top1`` its
``tta_val_acc``; it sets no seed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import recipe_compare

REPO = _common.REPO
BENCH = os.path.join(REPO, "benchmarks")
DEFAULT_DATA = recipe_compare.DEFAULT_DATA
DEFAULT_CONFIG = os.path.join("configs", "cifar10.py")
PEER_SCRIPTS = {"compiled": os.path.join("legacy", "airbench94_compiled.py"),
                "eager": os.path.join("legacy", "airbench94.py")}
# The peer's train tensors are written in one fixed random order (cifar_tensors.py
# --shuffle-train): it whitens its first layer with the first 5,000 train images, all of one
# class in class-folder order.
PEER_SHUFFLE_SEED = 0
# airbench94's logging_columns_list, stripped; the header it prints overrides this.
AIRBENCH_COLUMNS = ("run", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc",
                    "total_time_seconds")
FLAXCLS_TIME = ("train steps, the first at the pace of the others; not the compile, decode, "
                "evals, checkpoints or process start")
AIRBENCH_TIME = ("whitening init from 5000 train images, the training epochs and the final "
                 "TTA eval (tta_level 2, 6 views); not its per-epoch evals, not the warm-up run")

# Run in a child: the device, versions and the decoder the trainer's resident split will use.
PROBE = f"""
import json, sys
sys.path.insert(0, {BENCH!r})
import _common
info = _common.run_info()
from flaxcls.data.resident import decoder
info["decoder"] = decoder()
print("PROBE " + json.dumps(info))
"""

TORCH_PROBE = """
import json, torch, torchvision
print("PROBE " + json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                             "cuda": torch.cuda.is_available()}))
"""

# Written next to the peer's data at run time and run there (a file of ours, not airbench's).
AIRBENCH_RUNNER = '''"""Written by flaxcls benchmarks/time_to_accuracy.py: airbench94 imported from its file (not
run as __main__), one warm-up run, then N runs, in this folder (cifar10/train.pt, test.pt)."""
import importlib.util
import inspect
import json
import sys

script, runs, compile_mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = importlib.util.spec_from_file_location("airbench94_peer", script)
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)
torch, torchvision = ab.torch, ab.torchvision


def no_download(*args, **kwargs):
    raise SystemExit("airbench94 wanted to download CIFAR-10: cifar10/train.pt or "
                     "cifar10/test.pt is missing in " + __import__("os").getcwd())


torchvision.datasets.CIFAR10 = no_download
print("PEER_INFO " + json.dumps({"torch": torch.__version__, "torchvision": torchvision.__version__,
                                 "device": torch.cuda.get_device_name(0), "hyp": ab.hyp}),
      flush=True)
if len(inspect.signature(ab.main).parameters) == 3:
    # airbench94_compiled.py: its __main__ compiles two models (whitening bias trained / frozen)
    # once; main() re-initialises them every run.
    trainbias, freezebias = ab.make_net(), ab.make_net()
    freezebias[0].bias.requires_grad = False
    trainbias = torch.compile(trainbias, mode=compile_mode)
    freezebias = torch.compile(freezebias, mode=compile_mode)

    def run(r):
        return ab.main(r, trainbias, freezebias)
else:  # airbench94.py: a new model inside main()
    run = ab.main
ab.print_columns(ab.logging_columns_list, is_head=True)
run("warmup")
for r in range(runs):
    run(r)
'''


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def read_records(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    return _common.read_jsonl(path) if os.path.isfile(path) else []


def read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def cache_files(folder: str) -> dict[str, float]:
    """{train-*.npz file: mtime} of a device_data cache."""
    if not os.path.isdir(folder):
        return {}
    return {n: os.path.getmtime(os.path.join(folder, n)) for n in os.listdir(folder)
            if n.startswith("train-") and n.endswith(".npz")}


def r4(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(float(x), digits)


def run_result(workdir: str) -> dict[str, Any]:
    """The numbers of one finished run from its workdir (None where one is missing)."""
    records = read_records(workdir)
    timing = next((r for r in reversed(records) if r.get("split") == "timing"), None)
    if timing is None:
        raise RuntimeError(f"{workdir}/metrics.jsonl has no timing record")
    final = [r for r in records if r.get("split") in ("eval", "eval_ema")
             and r.get("step") == timing["step"]]
    train = [r for r in records if r.get("split") == "train"]
    results = read_json(os.path.join(workdir, "eval_results.json"))
    config = read_json(os.path.join(workdir, "config.json"))
    eval_s = sum(r.get("seconds", 0.0) for r in final) if final else None
    train_s = timing.get("train_s")
    return {
        "model": config.get("model"),
        "train_s": r4(train_s, 3), "first_step_s": r4(timing.get("first_step_s"), 3),
        "steps_after_first_s": r4(timing.get("steps_after_first_s"), 3),
        "decode_s": r4(timing.get("decode_s"), 3), "final_eval_s": r4(eval_s, 3),
        "train_and_final_eval_s": r4(train_s + eval_s, 3)
        if train_s is not None and eval_s is not None else None,
        "top1": r4(results.get("top1")),
        "top1_raw": r4(results["raw"]["top1"]) if "raw" in results else None,
        "top1_ema": r4(results["ema"]["top1"]) if "ema" in results else None,
        "weights": results.get("weights", "raw"),
        "steps": timing.get("steps"), "batch": config.get("batch_size"),
        "dtype": config.get("dtype"),
        "epochs": r4(train[-1].get("epoch"), 3) if train else None,
    }


def probe(env: dict[str, str], timeout: float) -> dict[str, Any]:
    """run_info() and the resident decoder, from a child process (the parent never loads jax
    or TensorFlow)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[len("PROBE "):])
    raise SystemExit(f"the device probe failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def summary(rows: list[dict[str, Any]], target: float, **extra: Any) -> dict[str, Any]:
    train = [r["train_s"] for r in rows if r.get("train_s") is not None]
    top1 = [r["top1"] for r in rows if r.get("top1") is not None]
    out: dict[str, Any] = {"benchmark": "time_to_accuracy", "what": "time_to_accuracy_summary",
                           **extra, "runs": len(rows)}
    for name, values in (("train_s", train), ("top1", top1)):
        out[f"{name}_mean"] = r4(statistics.mean(values)) if values else None
        out[f"{name}_min"] = r4(min(values)) if values else None
        out[f"{name}_max"] = r4(max(values)) if values else None
    out["top1_std"] = r4(statistics.stdev(top1)) if len(top1) > 1 else None
    out["target"] = target
    out["reached_target"] = sum(t >= target for t in top1)
    return out


# ----------------------------------------------------------------------------- flaxcls


def run_flaxcls(args, config_path: str, data: str, root: str, stamp: str,
                info: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """``args.runs`` runs, each a fresh launch.py process; (rows, all went well)."""
    cache = os.path.join(root, "device_data")
    rows: list[dict[str, Any]] = []
    for i in range(args.runs):
        seed = args.seed + i
        name = f"flaxcls-{stamp}-run{i}-seed{seed}"
        workdir, log_path = os.path.join(root, name), os.path.join(root, f"{name}.log")
        if os.path.exists(workdir):
            raise SystemExit(f"{workdir} exists: each run needs a fresh workdir")
        cmd = [sys.executable, os.path.join(REPO, "launch.py"), f"--config={config_path}",
               f"--workdir={workdir}", f"--config.data_dir={data}",
               f"--config.random_seed={seed}", f"--config.device_data_cache={cache}",
               *(f"--config.{o}" for o in args.override)]
        before = cache_files(cache)
        log(f"time_to_accuracy: flaxcls run {i + 1}/{args.runs} (seed {seed}), log {log_path}")
        t0 = time.perf_counter()
        error = None
        with open(log_path, "w") as out:
            try:
                proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                      timeout=args.timeout, check=False)
                if proc.returncode:
                    error = f"launch.py exited {proc.returncode}"
            except subprocess.TimeoutExpired:
                error = f"timed out after {args.timeout} s"
        wall = time.perf_counter() - t0
        base = {"benchmark": "time_to_accuracy", "what": "time_to_accuracy",
                "trainer": "flaxcls", "config": args.config, "run": i, "seed": seed}
        if error is None:
            try:
                result = run_result(workdir)
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                error = f"no result in {workdir}: {e}"
        if error is not None:
            with open(log_path) as f:
                log(f"time_to_accuracy: run {i} failed ({error}); the end of {log_path}:\n"
                    f"{f.read()[-3000:]}")
            _common.emit({**base, "error": error, "wall_s": round(wall, 2), "date": now()},
                         args.csv)
            return rows, False  # the next runs would most likely fail the same way
        after = cache_files(cache)
        decode = ("fresh" if any(after.get(n) != before.get(n) for n in after)
                  else "cached" if after else None)
        row = {**base, **result, "decode": decode, "wall_s": round(wall, 2),
               "time_includes": FLAXCLS_TIME, "target": args.target,
               "reached_target": result["top1"] is not None and result["top1"] >= args.target,
               "overrides": " ".join(args.override), "data_dir": args.data_dir,
               "tag": args.tag, **info, "date": now()}
        _common.emit(row, args.csv)
        rows.append(row)
    return rows, True


# ----------------------------------------------------------------------------- airbench94


class AirbenchTable:
    """Reads airbench94's printed tables line by line; ``feed`` returns a timed run's result
    when its last row arrives: its number, ``tta_val_acc``, ``val_acc`` (the last epoch's, no
    TTA), ``total_time_seconds`` and the epochs printed. The run number is in the first row of
    its table only; the row with epoch ``eval`` ends a run; the warm-up run is left out."""

    def __init__(self):
        self.columns, self.current, self.epochs = list(AIRBENCH_COLUMNS), None, 0

    def feed(self, raw: str) -> dict[str, Any] | None:
        line = raw.strip()
        if len(line) < 2 or line[0] != "|" or line[-1] != "|":
            return None
        cells = [c.strip() for c in line[1:-1].split("|")]
        if "epoch" in cells and "tta_val_acc" in cells:
            self.columns = cells
            return None
        if len(cells) != len(self.columns):
            return None
        row = dict(zip(self.columns, cells))
        if row.get("run"):
            self.current, self.epochs = row["run"], 0
        if row.get("epoch") != "eval":
            self.epochs += 1
            return None
        run, self.current = self.current, None
        if run is None or run == "warmup":
            return None
        return {"run": int(run), "tta_val_acc": float(row["tta_val_acc"]),
                "val_acc": float(row["val_acc"]) if row.get("val_acc") else None,
                "total_time_seconds": float(row["total_time_seconds"]),
                "epochs_printed": self.epochs}


def parse_airbench(text: str) -> list[dict[str, Any]]:
    """Every timed run's result in airbench94's output (``AirbenchTable``)."""
    table = AirbenchTable()
    return [r for r in map(table.feed, text.splitlines()) if r is not None]


def peer_problem(python: str, env: dict[str, str]) -> tuple[str | None, dict[str, Any]]:
    """(why airbench94 cannot run here, or None; torch's versions)."""
    if python == sys.executable and importlib.util.find_spec("torch") is None:
        return "torch is not installed", {}
    try:
        proc = subprocess.run([python, "-c", TORCH_PROBE], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{python} could not be probed for torch: {e}", {}
    found = [json.loads(x[6:]) for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    if not found:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        return f"torch or torchvision is not importable by {python}: {why}", {}
    if not found[0].pop("cuda"):
        return "torch sees no CUDA device", found[0]
    return None, found[0]


def git_commit(folder: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None


def peer_script(peer_dir: str, which: str) -> str | None:
    """The airbench94 file to run: ``which``'s, or the eager one where the compiled is absent."""
    for name in ((which, "eager") if which == "compiled" else (which,)):
        path = os.path.join(peer_dir, PEER_SCRIPTS[name])
        if os.path.isfile(path):
            return path
    return None


def run_airbench(args, data: str, root: str, stamp: str) -> tuple[list[dict[str, Any]], bool]:
    env = dict(os.environ)
    base = {"benchmark": "time_to_accuracy", "what": "time_to_accuracy", "trainer": "airbench94"}
    reason, torch_info = peer_problem(args.peer_python, env)
    if reason:
        print(json.dumps({**base, "skipped": reason, "date": now()}), flush=True)
        return [], True
    script = peer_script(args.peer_dir, args.peer_script)
    work = os.path.join(root, f"airbench94-{stamp}")
    tensors = os.path.join(work, "cifar10")
    os.makedirs(tensors, exist_ok=True)
    log("time_to_accuracy: writing airbench94's cifar10/train.pt and test.pt from the JPEGs")
    proc = subprocess.run([args.peer_python, os.path.join(BENCH, "cifar_tensors.py"),
                           "--data-dir", data, "--out", tensors, "--format", "pt",
                           "--shuffle-train", str(PEER_SHUFFLE_SEED)],
                          env=env, capture_output=True, text=True, check=False)
    missing = [n for n in ("train.pt", "test.pt") if not os.path.isfile(os.path.join(tensors, n))]
    if proc.returncode or missing:
        log(f"time_to_accuracy: cifar_tensors.py failed (exit {proc.returncode}; missing "
            f"{missing}), airbench94 not started (it would download CIFAR-10):\n"
            f"{proc.stderr[-3000:]}")
        _common.emit({**base, "error": f"no cifar10/{' '.join(missing) or 'tensors'}",
                      "date": now()}, args.csv)
        return [], False
    runner = os.path.join(work, "airbench_runner.py")
    with open(runner, "w") as f:
        f.write(AIRBENCH_RUNNER)
    out_path, err_path = os.path.join(work, "airbench.out"), os.path.join(work, "airbench.err")
    log(f"time_to_accuracy: airbench94 ({os.path.relpath(script, args.peer_dir)}), a warm-up "
        f"and {args.peer_runs} runs; output in {out_path}")

    def settings(info: dict[str, Any]) -> dict[str, Any]:
        hyp = info.get("hyp", {}).get("opt", {})
        return {
            "script": os.path.relpath(script, args.peer_dir).replace(os.sep, "/"),
            "peer_commit": commit,
            "compile_mode": args.peer_compile_mode if "compiled" in script else "none",
            "train_order": f"shuffled (seed {PEER_SHUFFLE_SEED})",
            "batch": hyp.get("batch_size"), "dtype": "float16", "epochs": hyp.get("train_epochs"),
            "device": info.get("device"), "torch": info.get("torch", torch_info.get("torch")),
            "torchvision": info.get("torchvision", torch_info.get("torchvision")),
        }

    commit = git_commit(args.peer_dir)
    common, rows, table, error = settings({}), [], AirbenchTable(), None
    expired = threading.Event()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([args.peer_python, "-u", runner, script, str(args.peer_runs),
                                 args.peer_compile_mode], cwd=work, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        timer = threading.Timer(args.peer_timeout, lambda: (expired.set(), proc.kill()))
        timer.start()
        try:  # each run is reported as soon as its table ends
            for line in proc.stdout:
                out.write(line)
                out.flush()
                if line.startswith("PEER_INFO "):
                    common = settings(json.loads(line[len("PEER_INFO "):]))
                r = table.feed(line)
                if r is None:
                    continue
                row = {**base, "run": r["run"], "seed": None,
                       "train_s": r4(r["total_time_seconds"], 3), "time_includes": AIRBENCH_TIME,
                       "top1": r4(r["tta_val_acc"]), "top1_no_tta": r4(r["val_acc"]), **common,
                       "target": args.target, "reached_target": r["tta_val_acc"] >= args.target,
                       "data_dir": args.data_dir, "decoder": "pillow", "tag": args.tag,
                       "date": now()}
                _common.emit(row, args.csv)
                rows.append(row)
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
    if expired.is_set():
        error = f"timed out after {args.peer_timeout} s"
    elif code:
        error = f"exited {code}"
    if error is not None or len(rows) < args.peer_runs:
        with open(err_path) as f:
            log(f"time_to_accuracy: airbench94 {error or 'ended early'} after {len(rows)} of "
                f"{args.peer_runs} runs; the end of {err_path}:\n{f.read()[-3000:]}")
        _common.emit({**base, **common, "error": error or "ended early", "runs_done": len(rows),
                      "date": now()}, args.csv)
    if rows:
        _common.emit(summary(rows, args.target, trainer="airbench94", **common,
                             tag=args.tag, date=now()), args.csv)
    return rows, error is None and len(rows) == args.peer_runs


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="the trainer's config file (relative to here or to the repository)")
    p.add_argument("--data-dir", default=DEFAULT_DATA,
                   help="class folders (train/, test/) or a .tar.gz of them")
    p.add_argument("--cache-dir", default=os.path.join(REPO, "runs", "data"),
                   help="where a tarball is unpacked (once)")
    p.add_argument("--runs", type=int, default=5, help="flaxcls runs (0: the peer only)")
    p.add_argument("--seed", type=int, default=0, help="run i uses random_seed SEED+i")
    p.add_argument("--override", action="append", default=[], metavar="FIELD=VALUE",
                   help="a config override for every run (--config.FIELD=VALUE); repeatable")
    p.add_argument("--workdir-root", default="",
                   help="runs' workdirs and the shared decode cache go here (default: a "
                        "temporary folder, removed when every run went well)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per flaxcls run")
    p.add_argument("--target", type=float, default=0.94, help="top-1 counted as reached")
    p.add_argument("--csv", default=_common.default_csv("time_to_accuracy"),
                   help="append results here ('' = don't)")
    p.add_argument("--tag", default="", help="free label stored with each result")
    p.add_argument("--peer", choices=("airbench94",), default=None,
                   help="also run this peer (its own process) on the same JPEGs")
    p.add_argument("--peer-dir", default="", help="a checkout of KellerJordan/cifar10-airbench")
    p.add_argument("--peer-script", choices=tuple(PEER_SCRIPTS), default="compiled",
                   help="compiled: legacy/airbench94_compiled.py (else airbench94.py); eager: "
                        "legacy/airbench94.py")
    p.add_argument("--peer-runs", type=int, default=None, help="default: --runs (at least 1)")
    p.add_argument("--peer-python", default=sys.executable,
                   help="the python with torch, torchvision and CUDA that runs the peer")
    p.add_argument("--peer-compile-mode", default="max-autotune",
                   help="torch.compile mode of the compiled script (its own: max-autotune)")
    p.add_argument("--peer-timeout", type=float, default=3600,
                   help="seconds for the peer's process (warm-up and every run)")
    args = p.parse_args(argv)
    for o in args.override:
        if "=" not in o or o.startswith("="):
            p.error(f"--override {o!r}: expected FIELD=VALUE")
    if args.runs < 0:
        p.error("--runs must be >= 0")
    if args.peer_runs is None:
        args.peer_runs = max(args.runs, 1)
    if args.runs == 0 and not args.peer:
        p.error("--runs 0 runs nothing without --peer")
    if args.peer:
        if not args.peer_dir:
            p.error("--peer airbench94 needs --peer-dir (a checkout of "
                    "KellerJordan/cifar10-airbench)")
        if peer_script(args.peer_dir, args.peer_script) is None:
            p.error(f"--peer-dir {args.peer_dir}: no {PEER_SCRIPTS[args.peer_script]} in it")
        args.peer_dir = os.path.abspath(args.peer_dir)
    config_path = args.config
    if not os.path.isfile(config_path):
        config_path = os.path.join(REPO, args.config)
    if not os.path.isfile(config_path):
        p.error(f"--config {args.config}: not found")
    config_path = os.path.abspath(config_path)

    if not os.path.exists(args.data_dir):
        print(json.dumps({"benchmark": "time_to_accuracy", "what": "time_to_accuracy",
                          "skipped": f"--data-dir {args.data_dir!r} not found (the default is "
                                     "../shared/data/cifar10-jpeg.tar.gz beside the repository)",
                          "date": now()}), flush=True)
        return 0
    data = os.path.abspath(recipe_compare.class_folders(args.data_dir, args.cache_dir))
    made_root = not args.workdir_root
    root = os.path.abspath(args.workdir_root or tempfile.mkdtemp(prefix="time_to_accuracy-"))
    os.makedirs(root, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    ok = True
    if args.runs:
        # the probe only looks at the device: no up-front grab of its memory
        info = probe({**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}, args.timeout)
        rows, ok = run_flaxcls(args, config_path, data, root, stamp, info)
        if rows:
            first = rows[0]
            _common.emit(summary(
                rows, args.target, trainer="flaxcls", config=args.config, model=first["model"],
                batch=first["batch"], dtype=first["dtype"], epochs=first["epochs"],
                steps=first["steps"], overrides=" ".join(args.override),
                **{k: info.get(k) for k in ("device", "devices", "platform", "jax", "jaxlib",
                                            "flax", "python", "decoder")},
                failed=0 if ok else 1, tag=args.tag, date=now()), args.csv)
    if args.peer:
        _, peer_ok = run_airbench(args, data, root, stamp)
        ok = ok and peer_ok
    if made_root and ok:
        shutil.rmtree(root, ignore_errors=True)
    elif not ok:
        log(f"time_to_accuracy: logs and workdirs kept in {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    # `timeout` (gpu_session.sh) sends SIGTERM: exit through Python, so that subprocess.run and
    # the peer's Popen kill the run in progress instead of leaving it on the device.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
