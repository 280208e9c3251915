"""benchmarks/input_throughput.py runs the trainer's stream on a generated folder and reports JSON."""

from __future__ import annotations

import csv
import json
import runpy
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, subprocess_env
from PIL import Image

pytest.importorskip("flaxcls.data.pipeline")  # needs tensorflow
SCRIPT = REPO / "benchmarks" / "input_throughput.py"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A flat folder of <class>_<n>.jpg files, the ImageNet sample's layout."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(12):
        base = rng.integers(0, 256, (4, 4, 3)).astype(np.uint8)
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
        Image.fromarray(base).resize(size).save(root / f"c{i % 3}_{i}.jpg", "JPEG")
    return root


@pytest.mark.parametrize("fmt", ["original", "rewritten"])
def test_input_benchmark_reports_json_and_csv(photos, tmp_path, fmt, monkeypatch, capsys):
    out = tmp_path / "results.csv"
    monkeypatch.setattr(sys, "argv", [
        str(SCRIPT), "--data", str(photos), "--format", fmt, "--workers", "2", "--no-pin",
        "--batch", "4", "--crop", "32", "--seconds", "0.2", "--repeats", "2", "--warmup", "1",
        "--max-side", "48", "--shards", "2", "--csv", str(out)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["format"] == fmt and result["images"] == 12
    assert result["workers"] == 2 and result["batch"] == 4 and result["crop"] == 32
    assert result["img_per_sec"] > 0 and result["img_per_cpu_sec"] > 0
    assert result["img_per_sec_per_core"] == pytest.approx(result["img_per_sec"] / 2, abs=0.1)
    assert result["spread_min"] <= result["img_per_sec"] <= result["spread_max"]
    assert {"tf", "numpy", "cpu", "date"} <= set(result)
    assert result["max_side"] == (48 if fmt == "rewritten" else "")
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["format"] == fmt


@pytest.mark.subprocess
def test_input_benchmark_skips_without_data(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path / "absent.tar"),
                           "--csv", str(tmp_path / "r.csv")],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "absent.tar" in json.loads(proc.stdout)["skipped"]
    assert not (tmp_path / "r.csv").exists()
