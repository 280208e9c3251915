"""The throughput benchmark runs without TensorFlow (as on the GPU machines) and prints one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env


@pytest.mark.subprocess
def test_train_throughput_prints_json_without_tensorflow(tmp_path):
    blocker = tmp_path / "no_tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is not installed here')\n")
    env = subprocess_env(2)
    env["PYTHONPATH"] = f"{blocker.parent}:{env['PYTHONPATH']}"
    csv_path = tmp_path / "out.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--model", "resnet_tiny",
         "--batch", "8", "--dtype", "bfloat16", "--steps", "2", "--warmup", "1", "--repeats", "2",
         "--csv", str(csv_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "ResNet_tiny" and result["batch"] == 8
    assert result["dtype"] == "bfloat16" and result["devices"] == 2
    assert result["images_per_sec"] > 0 and result["step_ms"] > 0
    assert {"device", "jax", "image_size"} <= set(result)
    assert csv_path.read_text().count("\n") == 2


@pytest.mark.subprocess
def test_checkpoint_cost_prints_json(tmp_path):
    csv_path = tmp_path / "cost.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "checkpoint_cost.py"), "--model",
         "ResNet_tiny", "--repeats", "2", "--csv", str(csv_path)],
        cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "ResNet_tiny" and result["arrays"] > 10
    assert result["state_mb"] > 0 and result["on_disk_mb"] > 0
    assert result["checksum_s"] > 0 and result["save_s"] > 0 and result["restore_verified_s"] > 0
    assert csv_path.read_text().count("\n") == 2


@pytest.mark.subprocess
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_augment_cost_prints_json_per_op(tmp_path):
    csv_path = tmp_path / "aug.csv"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "augment_cost.py"), "--batch", "4",
         "--image-size", "16", "--iters", "2", "--repeats", "1", "--model", "ResNet_tiny",
         "--with-step", "--csv", str(csv_path)],
        cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=300,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert {r["op"] for r in rows} == {"random_erasing_pixel", "random_erasing_const", "mixup",
                                       "cutmix", "mixup_or_cutmix",
                                       "auto_augment:rand-m9-n2-mstd0.5", "auto_augment:trivial",
                                       "auto_augment:autoaug"}
    assert all(r["ms_per_batch"] > 0 and 0 < r["share_of_step"] for r in rows)
    assert csv_path.read_text().count("\n") == 9


@pytest.mark.subprocess
@pytest.mark.slow  # accumulating steps are slow on XLA's CPU backend (README)
def test_train_throughput_reports_memory_falling_with_micro_batches_and_a_teacher(tmp_path):
    """Peak device memory of the compiled step (XLA's memory analysis) falls with the number of
    micro-batches; a teacher in the step costs memory and time."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--model",
         "resnet_tiny", "--batch", "32", "--image-size", "16", "--dtype", "float32",
         "--grad-accum-steps", "1,4", "--teacher", "none,ResNet_tiny", "--steps", "1",
         "--warmup", "0", "--repeats", "1", "--csv", str(tmp_path / "out.csv")],
        cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=600,
        check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(r["grad_accum_steps"], r["teacher"]): r for r in map(
        json.loads, (x for x in proc.stdout.splitlines() if x.startswith("{")))}
    assert set(rows) == {(1, ""), (4, ""), (1, "ResNet_tiny"), (4, "ResNet_tiny")}
    assert rows[4, ""]["peak_memory_mb"] < rows[1, ""]["peak_memory_mb"]
    assert rows[1, "ResNet_tiny"]["peak_memory_mb"] > rows[1, ""]["peak_memory_mb"]
    assert all(r["images_per_sec"] > 0 for r in rows.values())


@pytest.mark.subprocess
def test_train_throughput_times_the_step_drawing_from_device_resident_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--model",
         "resnet_tiny", "--batch", "16", "--image-size", "16", "--dtype", "float32",
         "--device-data", "0,200", "--steps", "2", "--warmup", "1", "--repeats", "1",
         "--csv", ""], cwd=REPO, env=subprocess_env(2), capture_output=True, text=True,
        timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert [r["device_data"] for r in rows] == [0, 200]
    assert all(r["images_per_sec"] > 0 and r["devices"] == 2 for r in rows)
    # the resident split (200 x 16 x 16 x 3 bytes and labels) is an argument of the step
    assert rows[1]["peak_memory_mb"] > rows[0]["peak_memory_mb"]
