"""The conversion CLI and Python API end to end: a released-style .tar -> checkpoint -> same logits.

A tiny ResNet's initial variables are written under Paddle's 2019 names as
``ResNet_tiny_pretrained.tar`` (one file per parameter in a top-level folder, plus optimizer
leftovers), converted by ``python -m flaxcls.convert paddle``, and read back the ways a user does.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest
from conftest import REPO, run_launch, subprocess_env
from flax import traverse_util
from paddle_writers import tensor_record

import flaxcls
from flaxcls.checkpoint import read_variables
from flaxcls.convert import paddle_name_map
from flaxcls.convert.__main__ import main as convert_main

MODEL, CLASSES, SIZE = "ResNet_tiny", 10, 32


def to_paddle(model_name: str, variables: dict, num_classes: int) -> dict[str, np.ndarray]:
    """Flax variables -> Paddle-named arrays in Paddle's layouts (the converter's inverse)."""
    flat = {(c, *path): np.asarray(v) for c in variables
            for path, v in traverse_util.flatten_dict(dict(variables[c])).items()}
    out = {}
    for name, target in paddle_name_map(model_name, num_classes).items():
        value = flat[(target.collection, *target.path)]
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif target.flatten_chw is not None:
            c, h, w = target.flatten_chw
            value = value.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)
        out[name] = np.ascontiguousarray(value, np.float32)
    return out


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(tar path, the Flax variables it holds, an NHWC input)."""
    model = flaxcls.create_model(MODEL, num_classes=CLASSES)
    x = np.random.RandomState(1).standard_normal((2, SIZE, SIZE, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    rng = np.random.RandomState(2)  # numpy draws (no init compile); no zero or 0/1 tensors

    def draw(s):
        fan_in = int(np.prod(s.shape[:-1])) or 1
        return (rng.standard_normal(s.shape) / np.sqrt(fan_in) + 0.1).astype(np.float32)

    variables = {
        "params": jax.tree.map(draw, dict(shapes["params"])),
        "batch_stats": jax.tree.map(lambda s: rng.uniform(0.5, 1.5, s.shape).astype(np.float32),
                                    dict(shapes["batch_stats"])),
    }
    arrays = to_paddle(MODEL, variables, CLASSES)
    arrays["conv1_weights_velocity_0"] = np.zeros_like(arrays["conv1_weights"])
    arrays["learning_rate_0"] = np.array([0.1], np.float32)
    path = tmp_path_factory.mktemp("released") / f"{MODEL}_pretrained.tar"
    with tarfile.open(path, "w") as tar:
        for name, array in arrays.items():
            data = tensor_record(array)
            info = tarfile.TarInfo(f"{MODEL}_pretrained/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path, variables, x


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory):
    """The CLI run as a user runs it: ``python -m flaxcls.convert paddle TAR --model --out``."""
    tar, _, _ = released
    out = tmp_path_factory.mktemp("weights") / "resnet_tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "flaxcls.convert", "paddle", str(tar), "--model", MODEL,
         "--out", str(out)],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def _logits(variables, x):
    model = flaxcls.create_model(MODEL, num_classes=CLASSES)
    with jax.default_matmul_precision("highest"):
        return np.asarray(model.apply(variables, x, train=False))


@pytest.mark.subprocess
def test_cli_checkpoint_gives_the_same_logits(released, converted):
    tar, variables, x = released
    out, stdout = converted
    assert "ignoring 2 training leftovers" in stdout and "learning_rate_0" in stdout
    sidecar = json.loads((out / "conversion.json").read_text())
    assert sidecar == {
        "model": MODEL, "num_classes": CLASSES, "source": tar.name,
        "source_sha256": hashlib.sha256(tar.read_bytes()).hexdigest(), "converter": "paddle",
        "converter_version": flaxcls.convert.CONVERTER_VERSION,
        "flaxcls_version": flaxcls.__version__,
    }
    restored = read_variables(str(out))
    assert jax.tree.structure(restored) == jax.tree.structure(variables)
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    direct = flaxcls.convert.from_paddle(tar, MODEL)
    want = _logits(variables, x)
    np.testing.assert_array_equal(_logits(restored, x), want)
    np.testing.assert_array_equal(_logits(direct, x), want)


@pytest.mark.subprocess
def test_cli_user_errors_exit_2(released, converted, tmp_path, capsys, caplog):
    tar, _, _ = released
    out, _ = converted
    cases = [
        (["paddle", str(tmp_path / "nope.tar"), "--model", MODEL, "--out", str(tmp_path / "a")],
         r"nope\.tar do not exist"),
        (["paddle", str(tar), "--model", "ResNet18", "--out", str(tmp_path / "b")],
         (r"cannot convert Paddle weights to ResNet18: \d+ tensor\(s\) differ:\n  conv1_weights: "
          r"Paddle weights \(16, 3, 3, 3\) vs model's name map \(64, 3, 7, 7\)\n")),
        (["paddle", str(tar), "--model", "ResNet_huge", "--out", str(tmp_path / "c")],
         r"Unknown model 'ResNet_huge'"),
        (["paddle", str(tar), "--model", MODEL, "--out", str(out)], r"already holds a checkpoint"),
    ]
    for argv, message in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="flaxcls"):
            assert convert_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err
        assert __import__("re").search(message, err), (message, err)
    with pytest.raises(SystemExit) as e:  # argparse: the missing --model
        convert_main(["paddle", str(tar), "--out", str(tmp_path / "d")])
    assert e.value.code == 2


@pytest.mark.subprocess
@pytest.mark.slow
def test_launch_eval_accepts_the_converted_weights(converted, digits_dir, tmp_path):
    """``launch.py --mode=eval --config.pretrained_model=<converted>`` accepts the output."""
    out, _ = converted
    workdir = tmp_path / "eval"
    proc = run_launch(["--config=configs/digits.py", "--mode=eval", f"--workdir={workdir}",
                       f"--config.data_dir={digits_dir}", "--config.builtin_dataset=",
                       f"--config.pretrained_model={out}", "--config.compilation_cache=False"])
    logs = proc.stdout + proc.stderr
    assert f"weights of {MODEL} from {out}" in logs  # eval loads strictly: every tensor fits
    result = json.loads((workdir / "eval_results.json").read_text())
    num_val = len((digits_dir / "val_list.txt").read_text().splitlines())
    assert result["num_examples"] == num_val and 0 <= result["top1"] <= result["top5"] <= 1


def _eval_released():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_released",
                                                  REPO / "benchmarks" / "eval_released.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_released_names_and_table(tmp_path):
    bench = _eval_released()
    assert bench.model_name_from_file(REPO / "ResNet50_vd_pretrained.tar") == "ResNet50_vd"
    assert bench.model_name_from_file(REPO / "DarkNet53_ImageNet1k_pretrained.tar") == "DarkNet53"
    assert bench.model_name_from_file(REPO / "ResNet50_vd_ssld_pretrained.pdparams") == (
        "ResNet50_vd_ssld")
    with pytest.raises(ValueError, match="expected <Model>_pretrained.tar or "
                                         "<Model>_pretrained.pdparams"):
        bench.model_name_from_file(REPO / "ResNet50.zip")
    # An SSLD release is compared with PaddleClas's figures, not the network's 2019 ones
    assert bench.published("ResNet50_vd_ssld") == (0.83, 0.964)
    assert bench.published("resnet50_vd") == (0.7912, 0.9444)
    rows = [{"model": "ResNet50", "top1": 0.7651, "top5": 0.93, "published_top1": 0.765,
             "published_top5": 0.9300, "num_examples": 50000},
            {"model": "Odd", "error": "ValueError: cannot convert\n  missing ..."}]
    assert bench.format_table(rows).splitlines()[2:] == [
        "| ResNet50 | 76.51 | 76.50 | +0.01 | 93.00 | 93.00 | 50000 |",
        "| Odd | failed: ValueError: cannot convert |  |  |  |  |  |",
    ]
    with pytest.raises(SystemExit):
        bench.parse_args(["--weights_dir", str(tmp_path / "none"), "--data_dir", "x"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--weights_dir", str(tmp_path), "--data_dir", "x", "--set", "lr"])
    args = bench.parse_args(["--weights_dir", str(tmp_path), "--data_dir", "d",
                             "--set", "crop_size=32", "--set", "interpolation=bicubic"])
    c = bench.make_config("ResNet_tiny", tmp_path, args, 10)
    assert (c.crop_size, c.interpolation, c.num_classes, c.data_dir) == (32, "bicubic", 10, "d")
    assert bench.main(["--weights_dir", str(tmp_path), "--data_dir", "d"]) == 2  # no tars


@pytest.mark.slow
def test_eval_released_runs_on_a_fake_release(released, digits_dir, tmp_path, capsys):
    """The whole script on a fake release: a ResNet_tiny tar evaluated on the digits val list."""
    tar, variables, _ = released
    weights = tmp_path / "downloads"
    weights.mkdir()
    (weights / tar.name).write_bytes(tar.read_bytes())
    work = tmp_path / "work"
    argv = ["--weights_dir", str(weights), "--data_dir", str(digits_dir), "--work_dir", str(work),
            "--batch_size", "64", "--set", "crop_size=32", "--set", "resize_short_size=32"]
    assert _eval_released().main(argv) == 0
    table = capsys.readouterr().out
    (row,) = json.loads((work / "results.json").read_text())
    num_val = len((digits_dir / "val_list.txt").read_text().splitlines())
    assert row["model"] == MODEL and row["num_examples"] == num_val and 0 <= row["top1"] <= 1
    assert (f"| {MODEL} | {100 * row['top1']:.2f} |  |  | {100 * row['top5']:.2f} |  "
            f"| {num_val} |") in table
    jax.tree.map(np.testing.assert_array_equal, read_variables(str(work / "weights" / MODEL)),
                 variables)


def test_interrupted_conversion_leaves_no_checkpoint_and_reruns(released, tmp_path, monkeypatch,
                                                                capsys):
    """A conversion that dies while its checkpoint is being written leaves nothing a reader
    would take for weights (only the hidden unfinished folder); the same command then
    converts, the source beside the result, and reports how far it read."""

    from flaxcls.checkpoint import Checkpointer
    from flaxcls.convert.__main__ import main

    tar, variables, _ = released
    out = tmp_path / "weights"
    out.mkdir()
    (out / tar.name).write_bytes(tar.read_bytes())  # the download beside its conversion
    real_save = Checkpointer.save

    def dies_midway(self, *a, **kw):
        real_save(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        main(["paddle", str(out / tar.name), "--model", MODEL, "--out", str(out)])
    assert {p.name for p in out.iterdir()} == {".converting", tar.name}
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["paddle", str(out / tar.name), "--model", MODEL, "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"checkpoints", "conversion.json", tar.name}
    logged = capsys.readouterr().out  # the CLI logs to stdout
    assert f"reading {out / tar.name}: " in logged and " tensors in " in logged
    restored = read_variables(str(out))  # its source beside it: the sha256 is checked
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
