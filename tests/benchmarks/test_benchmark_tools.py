"""The benchmark scripts of the GPU session: inference latency, the torch peer's clean skip,
CSV output, the compiled collectives of a sharded step and the scaling estimate."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, no_tensorflow_env, subprocess_env

sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "benchmarks" / "analysis"))
import _common
import hlo
import scaling


def _no_tf_env(tmp_path, devices=1):
    return no_tensorflow_env(tmp_path, devices)


def _run(args, env, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.subprocess
def test_infer_latency_prints_json_csv_and_table_without_tensorflow(tmp_path):
    csv_path, md = tmp_path / "infer.csv", tmp_path / "table.md"
    proc = _run([REPO / "benchmarks" / "infer_latency.py", "--models", "resnet_tiny",
                 "--batch", "1,4", "--iters", "2", "--repeats", "2", "--latency-iters", "3",
                 "--weights-layout", "compiler,default",
                 "--csv", csv_path, "--markdown", md], _no_tf_env(tmp_path))
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["model"], r["batch"], r["weights_layout"]) for r in rows] == [
        ("ResNet_tiny", 1, "compiler"), ("ResNet_tiny", 4, "compiler"),
        ("ResNet_tiny", 1, "default"), ("ResNet_tiny", 4, "default")]
    for r in rows:
        assert r["folded_bn"] is True and r["folded_batchnorms"] == 13
        assert r["latency_ms"] > 0 and r["images_per_sec"] > 0 and r["dtype"] == "bfloat16"
        assert {"device", "jax", "flax", "date"} <= set(r)
    assert len(list(csv.DictReader(csv_path.open()))) == 4
    table = md.read_text()
    assert "| ResNet_tiny |" in table and "batch 4 (img/s)" in table
    assert "| ResNet_tiny (weights in default layout) |" in table


@pytest.mark.subprocess
def test_torch_peer_skips_cleanly_without_torch_or_cuda(tmp_path):
    env = _no_tf_env(tmp_path)
    env.pop("FLAXCLS_TORCH_PEER_CPU", None)
    for script in ("train_throughput.py", "infer_latency.py"):
        proc = _run([REPO / "benchmarks" / script, "--peer-only", "--batch", "2",
                     "--csv", tmp_path / "peer.csv"], env, timeout=120)
        assert "torch peer skipped" in proc.stderr
        assert not (tmp_path / "peer.csv").exists()


def test_train_setting_list_parses():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import train_throughput

    args = train_throughput.parse_args(["--setting", "ResNet50:512", "--setting",
                                        "ResNet18:256:float16:loss:4", "--dtype", "bfloat16"])
    assert args.settings == [("ResNet50", 512, "bfloat16", "optimizer", 0),
                             ("ResNet18", 256, "float16", "loss", 4)]
    assert train_throughput.parse_args(["--batch", "8,16"]).settings == [
        ("resnet50", 8, "bfloat16", "optimizer", 0), ("resnet50", 16, "bfloat16", "optimizer", 0)]
    runs = train_throughput.parse_args(["--setting", "ResNet50:256:bfloat16:optimizer:0:s2d:fused",
                                        "--setting", "ResNet50:256"]).runs
    assert runs == [("ResNet50", 256, "bfloat16", "optimizer", 0, "s2d", "fused"),
                    ("ResNet50", 256, "bfloat16", "optimizer", 0, "plain", "flax")]
    args = train_throughput.parse_args(["--grad-accum-steps", "1,2", "--teacher",
                                        "none,ResNet50_vd"])
    assert (args.accums, args.teachers) == ([1, 2], ["", "ResNet50_vd"])
    for bad in (["--setting", "ResNet50"], ["--bn-impl", "cudnn"], ["--grad-accum-steps", "0"],
                ["--setting", "ResNet50:256:bfloat16:optimizer:0:plain:fused:extra"]):
        with pytest.raises(SystemExit):
            train_throughput.parse_args(bad)


def test_bench_config_and_trainer_are_the_loops_chain():
    """The benchmarks' train step: a default config with the fields they vary, built by
    ``flaxcls.train.builder`` as the loop builds it; a wrapped model replaces only the model."""
    c = _common.bench_config("resnet_tiny", image_size=32, batch_size=4, dtype="float16",
                             bn_impl="fused", l2_decay_mode="loss", num_classes=10)
    assert c.model == "ResNet_tiny" and c.crop_size == c.resize_short_size == 32
    assert c.image_mean is not None and c.interpolation  # the rest from the model's ModelCfg
    with pytest.raises(KeyError, match="bn_implementation"):
        _common.bench_config("resnet_tiny", bn_implementation="fused")
    wrapped = []
    trainer = _common.build_trainer(c, wrap_model=lambda m: wrapped.append(m) or m)
    assert trainer.model is wrapped[0] and trainer.image_size == 32
    assert (trainer.model.num_classes, trainer.model.dtype) == (10, "float16")
    step = trainer.specs.step
    assert (step.bn_impl, step.l2_loss, step.dtype, step.bn_stats) == (
        "fused", 1e-4, "float16", "global")
    assert trainer.loss_scale() is not None and trainer.head is None
    batch = _common.synthetic_batch(trainer)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].shape == (4,) and int(batch["label"].max()) < 10
    again = _common.synthetic_batch(trainer)
    assert np.array_equal(np.asarray(batch["image"]), np.asarray(again["image"]))


def test_append_csv_keeps_old_rows_when_columns_grow(tmp_path):
    path = str(tmp_path / "r.csv")
    _common.append_csv(path, {"a": 1, "b": 2})
    _common.append_csv(path, {"a": 3, "b": 4})
    _common.append_csv(path, {"a": 5, "c": 6})
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["a"] for r in rows] == ["1", "3", "5"]
    assert rows[0]["c"] == "" and rows[2]["c"] == "6" and rows[2]["b"] == ""


@pytest.mark.subprocess
def test_sharded_step_reduces_gradients_in_few_combined_all_reduces(tmp_path):
    """8 fake CPU devices, jax's compiled step. Seen (jax 0.10.2, ResNet_tiny, 13 BatchNorms,
    41 parameter arrays): 20 all-reduces; 16 carry only BatchNorm statistics and their
    gradients (global-batch BN, combined per layer level), and the 14 weight gradients travel
    in 4 combined all-reduces. One all-reduce per parameter would give >= 41."""
    proc = _run([REPO / "benchmarks" / "analysis" / "scaling.py", "hlo", "--model", "ResNet_tiny",
                 "--image-size", "32", "--per-device-batch", "2"], subprocess_env(8))
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8 and r["param_leaves"] == 41 and r["batchnorms"] == 13
    # Every weight gradient is reduced exactly once ...
    assert r["weight_gradient_elements"] == r["weight_elements"]
    assert r["all_reduce_bytes"] >= 4 * r["params"]
    # ... and combined: far fewer all-reduces than parameters, few that carry weights.
    assert r["ops_with_weight_gradients"] <= 6
    assert r["all_reduce_ops"] < r["param_leaves"]
    assert r["all_reduce_ops"] <= 2 * r["batchnorms"]


@pytest.mark.subprocess
def test_per_device_batchnorm_compiles_to_one_all_reduce_per_step():
    proc = _run([REPO / "benchmarks" / "analysis" / "scaling.py", "hlo", "--model", "ResNet_tiny",
                 "--image-size", "32", "--per-device-batch", "2", "--bn-stats", "device"],
                subprocess_env(8))
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 8 and r["bn_stats"] == "device"
    # One all-reduce of one flat float32 buffer: every gradient, every BatchNorm statistic and
    # the 5 metric sums (loss, top1, top5, count, labeled).
    assert r["all_reduce_ops"] == 1 and r["all_reduce_operands"] == 1
    assert r["all_reduce_bytes"] == 4 * (r["params"] + r["batch_stats_elements"] + 5)


def test_collective_summary_parses_tuple_and_single_all_reduces():
    text = ("  %ar.1 = (f32[16]{0}, f32[3,3,4,16]{3,2,1,0}) all-reduce(%a, %b), channel_id=1\n"
            "  %ar.2 = bf16[8,8]{1,0} all-reduce-start(%c), channel_id=2\n"
            "  %ard = bf16[8,8]{1,0} all-reduce-done(%ar.2)\n"
            "  %x = f32[4]{0} add(%y, %z)\n")
    s = hlo.collective_summary(text)
    assert s["all_reduce_ops"] == 2 and s["all_reduce_operands"] == 3
    assert s["all_reduce_bytes"] == 4 * (16 + 576) + 2 * 64
    assert s["weight_gradient_elements"] == 576 + 64 and s["ops_with_weight_gradients"] == 2


def test_scaling_estimate_ring_cost_and_efficiency():
    # 2 (n-1)/n * bytes / bandwidth: 8 GPUs, 100 MB at 100 GB/s -> 1.75 ms (+ latency).
    assert scaling.ring_allreduce_s(100e6, 8, 100e9, 0.0) == pytest.approx(1.75e-3)
    assert scaling.ring_allreduce_s(100e6, 1, 100e9, 1e-3) == 0.0
    rows = scaling.estimate(102e6, 0.036, 60)
    assert [r["gpus"] for r in rows] == [8, 16, 32, 64, 128, 256]
    eff = [r["efficiency_exposed"] for r in rows]
    assert all(0 < e < 1 for e in eff) and eff == sorted(eff, reverse=True)
    assert all(r["efficiency_overlapped"] >= r["efficiency_exposed"] for r in rows)
    # Per-device BatchNorm: no small all-reduces, one gradient all-reduce nothing overlaps.
    device = scaling.estimate(102e6, 0.036, 0, can_overlap=False)
    assert all(r["batchnorm_allreduces_ms"] == 0 for r in device)
    assert all(r["efficiency_overlapped"] == r["efficiency_exposed"] for r in device)
    assert all(d["efficiency_exposed"] > r["efficiency_exposed"] for d, r in zip(device, rows))


@pytest.mark.subprocess
@pytest.mark.slow
def test_compile_cache_makes_the_restart_warm(tmp_path):
    """Two processes, one persistent cache dir: the second compiles nothing new."""
    cache, out = tmp_path / "cache", []
    for tag in ("cold", "warm"):
        proc = _run([REPO / "benchmarks" / "train_throughput.py", "--model", "resnet_tiny",
                     "--batch", "4", "--steps", "1", "--warmup", "0", "--repeats", "1",
                     "--compile-cache", cache, "--csv", "", "--tag", tag], _no_tf_env(tmp_path / tag))
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, warm = out
    assert cold["cache_entries_added"] >= 1 and warm["cache_entries_added"] == 0
    assert warm["compile_s"] < cold["compile_s"]


def test_summary_tells_levers_apart_and_reads_profiles():
    import summarize

    base = {"benchmark": "train_step", "framework": "jax", "model": "ResNet50", "batch": 256,
            "dtype": "bfloat16", "images_per_sec": 7000.0, "step_ms": 36.6}
    rows = [
        {**base, "bn_impl": "flax"},
        {**base, "bn_impl": "fused", "stem_space_to_depth": True, "images_per_sec": 7500.0},
        {"benchmark": "train_step", "framework": "torch", "model": "torchvision_resnet50",
         "batch": 256, "dtype": "bfloat16", "images_per_sec": 6000.0, "step_ms": 42.7},
        {"benchmark": "profile", "model": "ResNet50", "batch": 256, "dtype": "bfloat16",
         "bn_impl": "fused", "device_op_ms_per_step": 30.0, "wall_ms_per_step_traced": 31.0,
         "op_events": 900},
        {"benchmark": "profile", "model": "ResNet50", "batch": 256, "dtype": "bfloat16",
         "bn_impl": "fused", "group": "conv forward", "ms_per_step": 6.0, "share": 0.2,
         "ops_per_step": 53},
    ]
    text = summarize.summarize(rows)
    lines = [ln for ln in text.splitlines() if ln.startswith("| jax | ResNet50")]
    assert "| flax |" in lines[0] and "1.17x" in lines[0]
    assert "| s2d | fused |" in lines[1] and "1.25x" in lines[1]
    assert "## Profile: ResNet50 train step, batch 256, bfloat16, BN fused" in text
    assert "| conv forward | 6.0 | 20.0% | 53 |" in text


def test_summary_has_the_resident_split_and_time_to_accuracy():
    import summarize

    base = {"benchmark": "train_step", "framework": "jax", "model": "SpeedNet_cifar",
            "batch": 1024, "dtype": "bfloat16", "images_per_sec": 90000.0, "step_ms": 11.4,
            "grad_accum_steps": 1, "teacher": ""}
    rows = [{**base, "device_data": 0}, {**base, "device_data": 50000, "images_per_sec": 89000.0},
            {"what": "time_to_accuracy_summary", "trainer": "airbench94", "runs": 5,
             "train_s_mean": 3.1, "train_s_min": 3.0, "train_s_max": 3.3, "top1_mean": 0.9401,
             "top1_min": 0.938, "top1_max": 0.942, "reached_target": 3, "target": 0.94}]
    text = summarize.summarize(rows)
    lines = [ln for ln in text.splitlines() if ln.startswith("| jax | SpeedNet_cifar")]
    assert "| 1 |  | 0 | 90,000 |" in lines[0] and "| 1 |  | 50000 | 89,000 |" in lines[1]
    assert ("| airbench94 |  |  |  |  | 5 | 3.10 (3.00-3.30) | 0.9401 (0.9380-0.9420) | "
            "3 of 5 at 0.94 |") in text


def test_profile_groups_name_gpu_and_cpu_ops_and_keep_converts_out_of_convolutions():
    """An op the profiled program's HLO does not name is grouped by its name, into the groups
    of ``gpu_hlo.py report``."""
    import argparse

    import profile_step

    expect = {
        "cudnn-conv.12": "conv forward",
        "cudnn-conv-bias-activation.3": "conv forward",
        "cudnn-conv-bw-filter.4": "conv backward filter",
        "cudnn-conv-bw-input.7": "conv backward input",
        "convolution-base-dilated.1": "conv forward",
        "loop_convert_fusion.3": "elementwise fusions",
        "wrapped_convert.12": "other",
        "input_reduce_fusion.40": "reduction fusions",
        "loop_transpose_fusion.2": "transpose fusions",
        "select-and-scatter.1": "pooling / scatter fusions",
        "cublas-gemm.2": "gemm",
        "all-reduce-start.1": "collectives",
        "reduce-scatter.2": "collectives",
        "copy.9": "copies",
        "memcpy": "copies",
    }
    assert {name: hlo.group_of_name(name) for name in expect} == expect
    assert set(expect.values()) <= set(hlo.GROUPS)
    assert profile_step.op_groups("")("copy.9") == "copies"  # no HLO: names alone
    # HLO text the parser cannot read: names alone, and the profile still goes on.
    assert profile_step.op_groups("ENTRY %e {\n  %x = f32[2]{0} add(%a\n}\n") is hlo.group_of_name
    ns = argparse.Namespace(model="ResNet50", batch=256, dtype="bfloat16", infer=False,
                            bn_impl="fused", stem_space_to_depth=True, weights_layout="compiler")
    assert profile_step.dump_label(ns) == "ResNet50_256_bfloat16_fused_s2d"
    ns.infer, ns.batch, ns.stem_space_to_depth = True, 1, False
    assert profile_step.dump_label(ns) == "ResNet50_1_bfloat16_infer"
    ns.weights_layout = "default"
    assert profile_step.dump_label(ns) == "ResNet50_1_bfloat16_infer_default_layout"


@pytest.mark.heavy
def test_profile_infer_builds_the_folded_forward_of_infer_latency():
    """``profile_step.py --infer`` profiles the same folded forward as ``infer_latency.py``:
    its logits equal the unfolded model's up to float rounding."""
    import argparse

    import jax
    import numpy as np
    import profile_step

    import flaxcls

    ns = argparse.Namespace(model="ResNet_tiny", batch=2, dtype="float32", image_size=32,
                            stem_space_to_depth=False, weights_layout="compiler")
    call, x = profile_step.build_infer(ns)
    assert x.shape == (2, 32, 32, 3)
    model = flaxcls.create_model("ResNet_tiny", num_classes=1000)
    variables = model.init(jax.random.key(0, impl="rbg"), np.zeros((1, 32, 32, 3), np.float32),
                           train=False)
    want = model.apply(variables, x, train=False)
    got = call(x)
    assert got.shape == (2, 1000)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
