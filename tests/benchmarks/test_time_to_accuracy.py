"""benchmarks/time_to_accuracy.py and benchmarks/cifar_tensors.py: the tensors follow the
trainer's class-folder order and Pillow's pixels, whole runs report their timing and reuse one
decode, airbench94's tables parse, and the peer is skipped, not crashed, without torch."""

from __future__ import annotations

import csv
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, no_tensorflow_env, subprocess_env
from PIL import Image

sys.path.insert(0, str(REPO / "benchmarks"))
import cifar_tensors
import time_to_accuracy

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(scope="module")
def cifar_like(tmp_path_factory):
    """CIFAR-10-shaped class folders: 32x32 JPEGs, 8 train and 4 test images per class, with a
    nested folder, a grayscale image, an upper-case suffix and files the trainer skips."""
    root = tmp_path_factory.mktemp("cifar_like") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{n - i:02d}.jpg", quality=90)
        (root / split / "c3" / "sub").mkdir()
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L").save(
            root / split / "c3" / "sub" / "gray.JPG")
        (root / split / "c1" / ".hidden.jpg").write_bytes(b"not an image")
        (root / split / "c1" / "notes.txt").write_text("not an image")
    (root / "train" / ".cache").mkdir()  # a hidden folder is no class
    return root


def folder_source(data_dir):
    """The trainer's own listing of configs/cifar10.py on ``data_dir``."""
    from configs import cifar10
    from flaxcls.data import open_source
    from flaxcls.specs import DataSpec

    c = cifar10.get_config()
    c.data_dir = str(data_dir)
    return open_source(DataSpec.from_config(c))


def test_cifar_tensors_npz_follows_the_trainers_listing_and_pillows_pixels(cifar_like, tmp_path,
                                                                           capsys):
    from flaxcls.data.resident import decode_image
    from flaxcls.data.sources import EVAL

    out = tmp_path / "tensors"
    cifar_tensors.main(["--data-dir", str(cifar_like), "--out", str(out), "--format", "npz",
                        "--workers", "2"])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["train_images"] == 81 and line["test_images"] == 41
    assert line["classes"] == CLASSES and line["image_shape"] == [32, 32, 3]
    source = folder_source(cifar_like)
    assert source.class_names == CLASSES
    for name, split in (("train", source.train), ("test", source.split(EVAL))):
        with np.load(out / f"{name}.npz") as f:
            images, labels, classes = f["images"], f["labels"], list(f["classes"])
        assert classes == CLASSES and labels.dtype == np.int64 and images.dtype == np.uint8
        np.testing.assert_array_equal(labels, split.labels)
        assert images.shape == (len(split.paths), 32, 32, 3)
        for i, path in enumerate(split.paths):
            with Image.open(path) as im:
                np.testing.assert_array_equal(images[i], np.asarray(im.convert("RGB")))
            # what the trainer's device-resident split holds where it decodes with Pillow
            np.testing.assert_array_equal(images[i], decode_image(str(path), 32, 32, "bilinear"))
    assert any(str(p).endswith("gray.JPG") for p in source.train.paths)
    # --shuffle-train (airbench94's data): the same train pairs in one seeded order
    cifar_tensors.main(["--data-dir", str(cifar_like), "--out", str(tmp_path / "mixed"),
                        "--format", "npz", "--shuffle-train", "0"])
    assert json.loads(capsys.readouterr().out)["train_order"] == "shuffled (seed 0)"
    order = np.random.default_rng(0).permutation(81)
    for name, take in (("train", order), ("test", slice(None))):
        with np.load(out / f"{name}.npz") as plain, \
                np.load(tmp_path / "mixed" / f"{name}.npz") as mixed:
            np.testing.assert_array_equal(mixed["images"], plain["images"][take])
            np.testing.assert_array_equal(mixed["labels"], plain["labels"][take])


def test_cifar_tensors_refuse_pt_without_torch(cifar_like, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    with pytest.raises(SystemExit, match="needs torch"):
        cifar_tensors.main(["--data-dir", str(cifar_like), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.subprocess
def test_two_runs_report_timing_accuracy_and_share_one_decode(cifar_like, tmp_path):
    root, csv_path = tmp_path / "root", tmp_path / "tta.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"),
         "--data-dir", str(cifar_like), "--runs", "2", "--seed", "3",
         "--override", "model=SpeedNet_cifar_x0_5", "--override", "num_train_steps=3",
         "--override", "batch_size=32", "--override", "test_batch_size=64",
         "--override", "dtype=float32", "--override", "compilation_cache=False",
         "--workdir-root", str(root), "--csv", str(csv_path)],
        cwd=REPO, env=no_tensorflow_env(tmp_path), capture_output=True, text=True,
        timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    runs, (summary,) = lines[:2], lines[2:]
    assert [r["run"] for r in runs] == [0, 1] and [r["seed"] for r in runs] == [3, 4]
    for r in runs:
        assert r["what"] == "time_to_accuracy" and r["trainer"] == "flaxcls"
        assert r["model"] == "SpeedNet_cifar_x0_5" and r["steps"] == 3 and r["batch"] == 32
        assert r["dtype"] == "float32" and r["epochs"] == 1.5  # 81 images: 2 steps an epoch
        assert r["train_s"] > 0 and r["first_step_s"] > 0 and r["wall_s"] > r["train_s"]
        assert r["final_eval_s"] > 0 and r["decode_s"] >= 0
        assert r["train_and_final_eval_s"] == pytest.approx(r["train_s"] + r["final_eval_s"],
                                                            abs=2e-3)
        assert 0 <= r["top1"] <= 1 and r["weights"] == "ema" and 0 <= r["top1_raw"] <= 1
        assert r["device"] == "cpu" and r["jax"] and r["date"] and r["decoder"] == "pillow"
    assert [r["decode"] for r in runs] == ["fresh", "cached"]
    assert summary["what"] == "time_to_accuracy_summary" and summary["runs"] == 2
    assert summary["train_s_min"] <= summary["train_s_mean"] <= summary["train_s_max"]
    assert summary["top1_mean"] == pytest.approx((runs[0]["top1"] + runs[1]["top1"]) / 2,
                                                 abs=1e-4)
    assert summary["target"] == 0.94 and summary["reached_target"] == 0
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["what"] for r in rows] == ["time_to_accuracy"] * 2 + ["time_to_accuracy_summary"]
    # One decode for both runs, and the trainer's resident split is exactly the tensors
    # airbench94 would get: the same files, order, labels and pixels.
    (cache,) = [p for p in (root / "device_data").iterdir() if p.name.startswith("train-")]
    cifar_tensors.main(["--data-dir", str(cifar_like), "--out", str(tmp_path / "t"),
                        "--format", "npz"])
    with np.load(cache) as resident, np.load(tmp_path / "t" / "train.npz") as ours:
        np.testing.assert_array_equal(resident["label"], ours["labels"])
        np.testing.assert_array_equal(resident["image"], ours["images"])
    assert len(list(root.glob("flaxcls-*-run*-seed*/eval_results.json"))) == 2


# Printed by legacy/airbench94_compiled.py (its print_columns / print_training_details): the
# header, then per run one row per epoch, the run's number in its first row only, and a last
# row with epoch "eval"; the warm-up run first. Shortened to 3 epochs.
AIRBENCH_OUT = """\
------------------------------------------------------------------------------------------------------
|  run     |  epoch  |  train_loss  |  train_acc  |  val_acc  |  tta_val_acc  |  total_time_seconds  |
------------------------------------------------------------------------------------------------------
|  warmup  |      0  |      2.3127  |     0.1045  |   0.1000  |               |             41.2031  |
|          |      1  |      2.3041  |     0.0996  |   0.1000  |               |             41.5517  |
|          |      2  |      2.3032  |     0.1016  |   0.1000  |               |             41.8980  |
|          |   eval  |      2.3032  |     0.1016  |   0.1000  |       0.1000  |             42.0117  |
------------------------------------------------------------------------------------------------------
|       0  |      0  |      1.1934  |     0.6738  |   0.6522  |               |              0.3626  |
|          |      1  |      0.9612  |     0.7900  |   0.7941  |               |              0.7012  |
|          |      2  |      0.8003  |     0.8701  |   0.9378  |               |              3.0354  |
|          |   eval  |      0.8003  |     0.8701  |   0.9378  |       0.9412  |              3.1598  |
------------------------------------------------------------------------------------------------------
|       1  |      0  |      1.2011  |     0.6650  |   0.6480  |               |              0.3611  |
|          |      1  |      0.9588  |     0.7920  |   0.7965  |               |              0.7003  |
|          |      2  |      0.8050  |     0.8643  |   0.9361  |               |              3.0297  |
|          |   eval  |      0.8050  |     0.8643  |   0.9361  |       0.9394  |              3.1521  |
------------------------------------------------------------------------------------------------------
Mean: 0.9403    Std: 0.0013
"""


def test_airbench_tables_parse_to_one_result_per_timed_run():
    runs = time_to_accuracy.parse_airbench(
        "W1206 04:40:00 torch/_inductor: some log line\n" + AIRBENCH_OUT)
    assert runs == [
        {"run": 0, "tta_val_acc": 0.9412, "val_acc": 0.9378, "total_time_seconds": 3.1598,
         "epochs_printed": 3},
        {"run": 1, "tta_val_acc": 0.9394, "val_acc": 0.9361, "total_time_seconds": 3.1521,
         "epochs_printed": 3},
    ]
    # cut off in the middle of run 1 (a timeout): run 0 only
    cut = AIRBENCH_OUT[:AIRBENCH_OUT.index("|          |   eval  |      0.8050")]
    assert [r["run"] for r in time_to_accuracy.parse_airbench(cut)] == [0]
    assert time_to_accuracy.parse_airbench("") == []


def fake_checkout(folder, main_args: str = "run, model_trainbias, model_freezebias"):
    """A stand-in for a cifar10-airbench checkout: its legacy script's names (torch and
    torchvision as stubs), whose main() needs cifar10/train.pt and prints a run's table."""
    script = folder / "legacy" / "airbench94_compiled.py"
    script.parent.mkdir(parents=True)
    script.write_text(f'''
import os, types
CALLS = []
torch = types.SimpleNamespace(
    __version__="0.0-fake", cuda=types.SimpleNamespace(get_device_name=lambda i: "Fake GPU"),
    compile=lambda model, mode: CALLS.append(("compile", mode)) or model)
torchvision = types.SimpleNamespace(__version__="0.0-fake",
                                    datasets=types.SimpleNamespace(CIFAR10=None))
hyp = {{"opt": {{"train_epochs": 9.9, "batch_size": 1024}}}}
logging_columns_list = ["run   ", "epoch", "train_loss", "train_acc", "val_acc", "tta_val_acc",
                        "total_time_seconds"]
class Net(list):
    pass
def make_net():
    CALLS.append("make_net")
    return Net([types.SimpleNamespace(bias=types.SimpleNamespace(requires_grad=True))])
def print_columns(cells, is_head=False, is_final_entry=False):
    line = "".join("|  %s  " % c for c in cells) + "|"
    if is_head:
        print("-" * len(line))
    print(line)
    if is_head or is_final_entry:
        print("-" * len(line))
def main({main_args}):
    if not os.path.exists(os.path.join("cifar10", "train.pt")):
        torchvision.datasets.CIFAR10("cifar10", download=True, train=True)
    assert CALLS == ["make_net", "make_net", ("compile", "max-autotune"),
                     ("compile", "max-autotune")], CALLS
    if run == int(os.environ.get("FAKE_HANG_RUN", "-1")):
        __import__("time").sleep(120)
    widths = [len(c) for c in logging_columns_list]
    t = 3.25 + (0 if run == "warmup" else run)
    for cells, last in (([str(run), "0", "1.0", "0.5", "0.6", "", "1.0000"], False),
                        (["", "eval", "0.9", "0.7", "0.9300", "0.9400", "%.4f" % t], True)):
        print_columns([c.rjust(w) for c, w in zip(cells, widths)], is_final_entry=last)
    return 0.94
''')
    return script


@pytest.mark.subprocess
def test_the_runner_imports_the_script_warms_up_and_refuses_to_download(tmp_path):
    script = fake_checkout(tmp_path / "checkout")
    work = tmp_path / "work"
    (work / "cifar10").mkdir(parents=True)
    runner = work / "airbench_runner.py"
    runner.write_text(time_to_accuracy.AIRBENCH_RUNNER)
    cmd = [sys.executable, "-u", str(runner), str(script), "2", "max-autotune"]
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 1 and "wanted to download CIFAR-10" in proc.stderr
    (work / "cifar10" / "train.pt").write_bytes(b"")
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.splitlines()[0][len("PEER_INFO "):])
    assert info["device"] == "Fake GPU" and info["hyp"]["opt"]["batch_size"] == 1024
    runs = time_to_accuracy.parse_airbench(proc.stdout)
    assert [(r["run"], r["total_time_seconds"], r["tta_val_acc"]) for r in runs] == [
        (0, 3.25, 0.94), (1, 4.25, 0.94)]


@pytest.mark.subprocess
def test_the_peer_runs_on_tensors_of_the_same_jpegs(cifar_like, tmp_path):
    """The whole peer path with stand-ins: a torch that "sees" CUDA and pickles, and the fake
    checkout above."""
    fake = tmp_path / "fake_torch"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text(
        "import pickle\n__version__ = '0.0-fake'\n"
        "class cuda:\n    is_available = staticmethod(lambda: True)\n"
        "def from_numpy(a):\n    return a\n"
        "def save(obj, f):\n    pickle.dump(obj, f)\n")
    (fake / "torchvision").mkdir()
    (fake / "torchvision" / "__init__.py").write_text("__version__ = '0.0-fake'\n")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{fake}{os.pathsep}{env['PYTHONPATH']}"
    fake_checkout(tmp_path / "checkout")
    root, csv_path = tmp_path / "root", tmp_path / "tta.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--data-dir",
         str(cifar_like), "--runs", "0", "--peer", "airbench94", "--peer-dir",
         str(tmp_path / "checkout"), "--peer-runs", "2", "--workdir-root", str(root),
         "--csv", str(csv_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    *runs, summary = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(r["run"], r["train_s"], r["top1"]) for r in runs] == [(0, 3.25, 0.94),
                                                                     (1, 4.25, 0.94)]
    for r in runs:
        assert r["trainer"] == "airbench94" and r["device"] == "Fake GPU"
        assert r["script"] == "legacy/airbench94_compiled.py" and r["batch"] == 1024
        assert r["epochs"] == 9.9 and r["reached_target"] and "TTA" in r["time_includes"]
    assert summary["what"] == "time_to_accuracy_summary" and summary["runs"] == 2
    assert summary["train_s_mean"] == 3.75 and summary["reached_target"] == 2
    assert csv_path.read_text().count("\n") == 4
    (tensors,) = root.glob("airbench94-*/cifar10")
    with open(tensors / "train.pt", "rb") as f:
        train = pickle.load(f)
    with open(tensors / "test.pt", "rb") as f:
        test = pickle.load(f)
    assert train["classes"] == test["classes"] == CLASSES
    assert train["images"].shape == (81, 32, 32, 3) and train["images"].dtype == np.uint8
    assert train["labels"].dtype == np.int64 and list(test["labels"]) == sorted(test["labels"])
    assert list(train["labels"][:20]) != sorted(train["labels"][:20])  # mixed classes
    assert np.bincount(train["labels"]).tolist() == [8, 8, 8, 9] + [8] * 6
    # a peer that hangs in its second run: the first is reported, then the timeout
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--data-dir",
         str(cifar_like), "--runs", "0", "--peer", "airbench94", "--peer-dir",
         str(tmp_path / "checkout"), "--peer-runs", "2", "--peer-timeout", "8",
         "--workdir-root", str(tmp_path / "root2"), "--csv", ""],
        cwd=REPO, env={**env, "FAKE_HANG_RUN": "1"}, capture_output=True, text=True,
        timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr[-4000:]
    done, failed, summary = [json.loads(x) for x in proc.stdout.splitlines()]
    assert done["run"] == 0 and done["train_s"] == 3.25
    assert failed["error"] == "timed out after 8.0 s" and failed["runs_done"] == 1
    assert summary["runs"] == 1 and "timed out" in proc.stderr


def test_the_peer_is_skipped_without_torch(cifar_like, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # as where torch is not installed
    fake_checkout(tmp_path / "checkout")
    csv_path = tmp_path / "tta.csv"
    assert time_to_accuracy.main(
        ["--data-dir", str(cifar_like), "--runs", "0", "--peer", "airbench94",
         "--peer-dir", str(tmp_path / "checkout"), "--csv", str(csv_path)]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["trainer"] == "airbench94" and line["skipped"] == "torch is not installed"
    assert not csv_path.exists()


@pytest.mark.subprocess
def test_the_peer_is_skipped_where_torch_does_not_import(cifar_like, tmp_path):
    blocker = tmp_path / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is broken here')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{blocker.parent}{os.pathsep}{env['PYTHONPATH']}"
    fake_checkout(tmp_path / "checkout")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "time_to_accuracy.py"), "--data-dir",
         str(cifar_like), "--runs", "0", "--peer", "airbench94", "--peer-dir",
         str(tmp_path / "checkout"), "--csv", ""],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    (line,) = [json.loads(x) for x in proc.stdout.splitlines()]
    assert "torch is broken here" in line["skipped"], line


def test_flags_are_checked_before_anything_runs(tmp_path, capsys):
    for argv, message in ((["--override", "lr"], "FIELD=VALUE"),
                          (["--runs", "0"], "runs nothing"),
                          (["--peer", "airbench94"], "needs --peer-dir"),
                          (["--peer", "airbench94", "--peer-dir", str(tmp_path)],
                           "no legacy/airbench94_compiled.py"),
                          (["--config", "configs/nope.py"], "not found")):
        with pytest.raises(SystemExit):
            time_to_accuracy.main(argv)
        assert message in capsys.readouterr().err
    assert time_to_accuracy.main(["--data-dir", str(tmp_path / "absent"), "--csv", ""]) == 0
    assert "skipped" in json.loads(capsys.readouterr().out)
