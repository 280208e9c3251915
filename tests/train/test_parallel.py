"""Data parallelism: 8 fake CPU devices and 2 processes give the numbers of 1 device."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, checkpoint_params, run_launch, subprocess_env

WORKER = REPO / "tests" / "train" / "sharded_step_worker.py"

from flaxcls import parallel
from flaxcls.config import ConfigError


def _run_worker(devices: int, out, *args: str) -> dict[str, np.ndarray]:
    subprocess.run([sys.executable, str(WORKER), str(out),
                    *args], env=subprocess_env(devices), check=True, cwd=REPO, timeout=300)
    return dict(np.load(out))


# EMA, gradient accumulation (2 micro-batches of 8: each device holds one example of each) and
# a teacher shard like the rest of the step.
EMA_ACCUM = ("ema_decay=0.9", "ema_warmup=True", "grad_accum_steps=2")


def _with_teacher(checkpoint) -> tuple[str, ...]:
    return ("distill_teacher='ResNet_tiny'", f"distill_teacher_weights='{checkpoint}'",
            "distill_loss='soft_hard'")


@pytest.mark.subprocess
@pytest.mark.parametrize("bn_impl, extra", [
    ("flax", ""), ("fused", ""),
    # in the slow set; the fast set runs them across 2 processes below
    pytest.param("flax", "all", marks=pytest.mark.slow)], ids=["flax", "fused", "ema-accum-teacher"])
def test_sharded_step_matches_single_device(tmp_path, bn_impl, extra, tiny_checkpoint):
    fields = (*EMA_ACCUM, *_with_teacher(tiny_checkpoint)) if extra else ()
    one = _run_worker(1, tmp_path / "one.npz", "ResNet_tiny", "global", bn_impl, *fields)
    eight = _run_worker(8, tmp_path / "eight.npz", "ResNet_tiny", "global", bn_impl, *fields)
    assert int(one["devices"]) == 1 and int(eight["devices"]) == 8
    np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5)
    keys = [k for k in one if k not in ("losses", "devices")]
    assert any("batch_stats" in k for k in keys) and any("params" in k for k in keys)
    assert any(k.startswith("ema/") for k in keys) == bool(fields)
    for k in keys:
        np.testing.assert_allclose(one[k], eight[k], rtol=2e-4, atol=2e-5, err_msg=k)


# The fused variant (about a minute of CPU) is in the slow set, which CI runs after the fast
# one (.ci/run); in the fast set the fused BatchNorm under shard_map on 8 devices is covered by
# tests/models/test_batchnorm.py::test_inside_shard_map_per_device_statistics and the
# 8-device global-BN check above.
@pytest.mark.subprocess
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
@pytest.mark.parametrize("bn_impl", ["flax", "fused"])
def test_per_device_batchnorm_equals_per_slice_gradients_averaged(tmp_path, bn_impl):
    """bn_stats="device" on 8 devices: each device's BatchNorm sees only its 2 examples, and the
    step equals plain per-slice gradients and statistics averaged, then one update (the
    reference always uses flax's BatchNorm, so bn_impl="fused" is checked against it too)."""
    out = _run_worker(8, tmp_path / "device.npz", "ResNet_tiny", "device", bn_impl)
    assert int(out["devices"]) == 8
    np.testing.assert_allclose(out["losses"], out["ref_losses"], rtol=1e-5)
    keys = [k for k in out if k.startswith(("params/", "batch_stats/"))]
    assert any("batch_stats" in k for k in keys) and len(keys) > 20
    for k in keys:
        np.testing.assert_allclose(out[k], out[f"ref/{k}"], rtol=2e-4, atol=2e-5, err_msg=k)
    # ... and per-device statistics really differ from the whole batch's
    assert not np.allclose(out["whole_losses"], out["ref_losses"], rtol=1e-4)


@pytest.mark.subprocess
@pytest.mark.slow  # per-device statistics: in the fast set on 8 devices (test_batchnorm)
def test_per_device_batchnorm_on_two_processes_equals_one_process(tmp_path):
    """bn_stats="device" across 2 processes (1 device each, jax.distributed on loopback) gives
    the numbers of 1 process with 2 devices: the shard_map step spans hosts unchanged."""
    one = _run_worker(2, tmp_path / "one.npz", "ResNet_tiny", "device")
    _run_two_processes(lambda i, coordinator: [
        str(WORKER), str(tmp_path / f"p{i}.npz"),
        "ResNet_tiny", "device", "flax", coordinator, "2", str(i)], timeout=300)
    for i in range(2):
        multi = dict(np.load(tmp_path / f"p{i}.npz"))
        assert int(multi["devices"]) == 2
        np.testing.assert_allclose(one["losses"], multi["losses"], rtol=1e-5)
        keys = [k for k in one if k.startswith(("params/", "batch_stats/"))]
        assert keys and keys == [k for k in multi if k.startswith(("params/", "batch_stats/"))]
        for k in keys:
            np.testing.assert_allclose(one[k], multi[k], rtol=2e-4, atol=2e-5, err_msg=k)


@pytest.mark.subprocess
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_ema_accumulation_and_teacher_on_two_processes_equal_one_process(tmp_path,
                                                                         tiny_checkpoint):
    """The step with an EMA, 2 micro-batches and a teacher across 2 processes (1 device each)
    gives the numbers of 1 process with 2 devices. Each process hands in a consecutive half of
    the global batch, as the one process's two devices hold it: which examples share a
    micro-batch (and so its BatchNorm statistics) follows the global batch's layout."""
    fields = (*EMA_ACCUM, *_with_teacher(tiny_checkpoint))
    one = _run_worker(2, tmp_path / "one.npz", "ResNet_tiny", "global", "flax", *fields)
    _run_two_processes(lambda i, coordinator: [
        str(WORKER), str(tmp_path / f"p{i}.npz"), "ResNet_tiny", "global", "flax", coordinator,
        "2", str(i), *fields], timeout=300)
    for i in range(2):
        multi = dict(np.load(tmp_path / f"p{i}.npz"))
        np.testing.assert_allclose(one["losses"], multi["losses"], rtol=1e-5)
        keys = [k for k in one if k.startswith(("params/", "batch_stats/", "ema/"))]
        assert any(k.startswith("ema/") for k in keys)
        assert keys == [k for k in multi if k.startswith(("params/", "batch_stats/", "ema/"))]
        for k in keys:
            np.testing.assert_allclose(one[k], multi[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_batch_not_divisible_names_the_field():
    assert parallel.check_batch_size(6, parallel.make_mesh()) == 6

    class EightDeviceMesh:  # only .devices.size is consulted
        devices = np.zeros(8)

    with pytest.raises(ConfigError, match="batch_size=12.*8 devices"):
        parallel.check_batch_size(12, EightDeviceMesh())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(argv_of, timeout: int) -> list[str]:
    """Starts ``python *argv_of(i, coordinator)`` for processes 0 and 1 (one CPU device each,
    jax.distributed on loopback); returns their outputs after both succeeded."""
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen([sys.executable, *argv_of(i, coordinator)], cwd=REPO,
                         env=subprocess_env(1), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    return outs


@pytest.mark.subprocess
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_two_processes_train_like_one(tmp_path, digits_dir, tiny_checkpoint):
    common = [
        "--config=configs/digits.py", f"--config.data_dir={digits_dir}",
        "--config.builtin_dataset=", "--config.num_train_steps=4", "--config.batch_size=32",
        "--config.crop_size=16", "--config.resize_short_size=16", "--config.log_every_steps=2",
        "--config.test_batch_size=64", "--config.compilation_cache=False",
        # the EMA and a teacher run across processes too (accumulation: in the worker test
        # above; here each process reads every other example of a batch, so the global batch's
        # order, and with it which examples share a micro-batch, depends on the process count)
        "--config.ema_decay=0.9", "--config.ema_warmup=True",
        "--config.distill_teacher=ResNet_tiny", "--config.distill_loss=soft_hard",
        f"--config.distill_teacher_weights={tiny_checkpoint}",
    ]
    single = tmp_path / "single"
    run_launch([*common, f"--workdir={single}"], devices=2)

    multi = tmp_path / "multi"
    outs = _run_two_processes(lambda i, coordinator: [
        str(REPO / "launch.py"), *common, f"--workdir={multi}",
        f"--coordinator_address={coordinator}", "--num_processes=2", f"--process_id={i}"],
        timeout=600)
    assert "2 process(es)" in outs[0] or "'process_count': 2" in outs[0], outs[0][-2000:]
    assert not (multi / "job.lock").exists()  # process 0 held the workdir and released it

    for ema in (False, True):
        a, b = checkpoint_params(single, ema=ema), checkpoint_params(multi, ema=ema)
        assert a.keys() == b.keys() and len(a) > 10
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=f"{ema} {k}")
    import json

    ra = json.loads((single / "eval_results.json").read_text())
    rb = json.loads((multi / "eval_results.json").read_text())
    num_val = len((digits_dir / "val_list.txt").read_text().split())  // 2
    assert ra["num_examples"] == rb["num_examples"] == num_val
    assert abs(ra["top1"] - rb["top1"]) < 1e-6



def _palindrome_batch(rng, devices: int, per_device: int, size: int, *,
                      within_shares: bool) -> dict[str, np.ndarray]:
    """A global batch that reads the same backwards within each device's share ([a, b, b, a]
    on every device) or as a whole (share i mirrors share devices-1-i, each share distinct)."""
    half = devices * per_device // 2
    out = {"image": rng.randint(0, 256, (half, size, size, 3)).astype(np.uint8),
           "label": rng.randint(0, 10, (half,)).astype(np.int32)}
    for k, x in out.items():
        if within_shares:
            shares = x.reshape(devices, per_device // 2, *x.shape[1:])
            out[k] = np.concatenate([shares, shares[:, ::-1]], 1).reshape(2 * half, *x.shape[1:])
        else:
            out[k] = np.concatenate([x, x[::-1]])
    return out


@pytest.mark.subprocess
@pytest.mark.devices(8)
def test_mixup_pairs_examples_within_each_devices_share():
    """bn_stats="device": mixup pairs each example with its partner in the reversed share of
    its own device (README, "Several GPUs"). A batch whose every share of 4 reads [a, b, b, a]
    is left as it is by that pairing, whatever lam: the step equals the step without mixup. A
    batch that reads the same backwards only as a whole (what mixup over the global batch would
    leave alone) is mixed: the step differs."""
    import jax

    import flaxcls
    from flaxcls.config import default_config
    from flaxcls.preprocessing import resolve_preprocessing
    from flaxcls.specs import Specs
    from flaxcls.train import builder
    from flaxcls.train.step import fetch_metrics

    assert jax.device_count() == 8
    mesh = parallel.make_mesh()
    size, batch = 16, 32

    def trainer(use_mixup: bool) -> builder.Trainer:
        c = default_config()
        c.model, c.num_classes, c.crop_size, c.resize_short_size = "ResNet_tiny", 10, size, size
        c.batch_size, c.lr, c.bn_stats = batch, 0.1, "device"
        c.use_mixup, c.mixup_alpha, c.use_label_smoothing = use_mixup, 1.0, True
        resolve_preprocessing(c)
        small = flaxcls.create_model("ResNet_tiny", num_classes=10, stage_sizes=(1, 1),
                                     widths=(8, 16))  # BatchNorm in every block; quick to compile
        return builder.build(Specs.from_config(c), mesh, steps_per_epoch=10, model=small)

    def one_step(t: builder.Trainer, host_batch) -> tuple[float, dict[str, np.ndarray]]:
        state, metrics = t.train_step(t.init_state(), t.zeros_metrics(),
                                      parallel.host_to_global(host_batch, mesh))
        return fetch_metrics(metrics)["loss"], {
            jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(state.params)}

    def worst(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
        """The largest parameter difference, relative to that tensor's largest value."""
        return max(float(np.abs(a[k] - b[k]).max() / np.abs(b[k]).max()) for k in a)

    mixup, plain = trainer(True), trainer(False)
    rng = np.random.RandomState(0)
    for within_shares in (True, False):
        b = _palindrome_batch(rng, 8, batch // 8, size, within_shares=within_shares)
        (loss_m, params_m), (loss_p, params_p) = one_step(mixup, b), one_step(plain, b)
        print(f"within_shares={within_shares}: loss {loss_m} vs {loss_p}, "
              f"params {worst(params_m, params_p):.3g}")
        if within_shares:
            assert loss_m == pytest.approx(loss_p, rel=1e-6)
            assert worst(params_m, params_p) < 1e-5
        else:
            assert abs(loss_m - loss_p) > 1e-3 * loss_p
            assert worst(params_m, params_p) > 1e-3


@pytest.mark.subprocess
@pytest.mark.devices(8)
def test_auto_augment_on_device_is_per_example_whatever_the_sharding():
    """auto_augment_on="device" over a batch split across 8 devices: the same images as on
    one device (each example's draws depend on the key and its place in the batch only), and
    the partitioned program moves no image between devices (no all-gather)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from flaxcls.data.augment_policy import parse
    from flaxcls.train import autoaugment_device

    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    key = jax.random.key(3)
    for spec in ("rand-m9-n2-mstd0.5", "autoaug", "trivial"):
        policy = parse(spec)
        fn = jax.jit(lambda x, k, policy=policy: autoaugment_device.apply_batch(
            x, k, policy, (124, 116, 104)))
        one = np.asarray(fn(jax.device_put(images, jax.devices()[0]), key))
        sharded = jax.device_put(images, NamedSharding(mesh, P(parallel.DATA_AXIS)))
        np.testing.assert_array_equal(np.asarray(fn(sharded, key)), one, err_msg=spec)
        hlo = fn.lower(sharded, key).compile().as_text()
        assert "all-gather" not in hlo and "all-to-all" not in hlo, spec
