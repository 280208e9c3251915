"""Device-resident small data sets: the split decoded once and cached, the batch drawn in the
step (every example once an epoch, a pure function of the step), crop and flip, the size check,
and training from it end to end."""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import checkpoint_params, digits_run_config

from flaxcls import parallel
from flaxcls.data.sources import DataError
from flaxcls.train import resident


def test_crop_and_flip_take_windows_of_the_padded_image():
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randint(1, 256, (64, 8, 8, 3)).astype(np.uint8))
    out = np.asarray(resident.crop_and_flip(images, jax.random.key(3), padding=2, flip=True))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    flipped, shifts = 0, set()
    for i in range(64):
        found = [(dy, dx, m) for dy in range(5) for dx in range(5) for m in (False, True)
                 if np.array_equal(out[i], (padded[i, dy:dy + 8, dx:dx + 8, :][:, ::-1]
                                            if m else padded[i, dy:dy + 8, dx:dx + 8, :]))]
        assert found, i
        flipped += found[0][2]
        shifts.add(found[0][:2])
    assert 15 < flipped < 49 and len(shifts) > 10
    same = resident.crop_and_flip(images, jax.random.key(3), padding=0, flip=False)
    assert np.array_equal(np.asarray(same), np.asarray(images))


def test_each_epoch_is_a_permutation_and_a_step_always_draws_the_same_batch():
    mesh = parallel.make_mesh()
    n, batch = 50, 8
    data = {"image": jnp.broadcast_to(jnp.arange(n, dtype=jnp.uint8)[:, None, None, None],
                                      (n, 4, 4, 3)),
            "label": jnp.arange(n, dtype=jnp.int32)}
    fn = jax.jit(resident.make_batch_fn(num_examples=n, batch_size=batch, seed=7, padding=0,
                                        flip=False, mesh=mesh))
    per_epoch = n // batch
    seen = [np.asarray(fn(data, jnp.int32(s))["label"]) for s in range(2 * per_epoch)]
    for e in range(2):
        labels = np.concatenate(seen[e * per_epoch:(e + 1) * per_epoch])
        assert len(set(labels.tolist())) == len(labels) == per_epoch * batch  # none twice
    assert not np.array_equal(seen[0], seen[per_epoch])  # another order next epoch
    again = fn(data, jnp.int32(per_epoch + 1))
    assert np.array_equal(np.asarray(again["label"]), seen[per_epoch + 1])
    assert np.array_equal(np.asarray(again["image"])[:, 0, 0, 0], seen[per_epoch + 1])


@pytest.mark.parametrize("n", [1, 2, 3, 50, 1024, 1025, 50_000])
def test_the_keyed_bijection_permutes_any_range(n):
    orders = [np.asarray(resident.permuted_positions(jnp.arange(n), n, jax.random.key(k)))
              for k in range(3)]
    for order in orders:
        assert np.array_equal(np.sort(order), np.arange(n))
    if n >= 1024:  # a shuffle, not a shift: unrelated to the position and to the other keys
        assert abs(np.corrcoef(orders[0], np.arange(n))[0, 1]) < 0.1
        assert abs(np.corrcoef(orders[0], orders[1])[0, 1]) < 0.1
        assert np.mean(orders[0] == orders[1]) < 0.01
    part = resident.permuted_positions(jnp.arange(n)[n // 2:], n, jax.random.key(0))
    assert np.array_equal(np.asarray(part), orders[0][n // 2:])  # any slice, alone


def test_where_an_example_lands_is_spread_over_the_epoch():
    n = 100
    where = [int(np.argmax(np.asarray(resident.permuted_positions(
        jnp.arange(n), n, jax.random.key(k))) == 0)) for k in range(400)]
    counts = np.histogram(where, bins=4, range=(0, n))[0]
    assert counts.min() > 60, counts  # 100 expected in each quarter


def test_a_split_too_large_is_refused_with_its_sizes_before_decoding(monkeypatch):
    from flaxcls.data import resident as data_resident
    from flaxcls.specs import InputSpec

    spec = InputSpec.for_eval({"crop_size": 32, "resize_short_size": 32,
                               "interpolation": "bilinear"})
    monkeypatch.setattr(data_resident, "device_memory_bytes", lambda d: (100 * 2**20, "HBM"))
    assert data_resident.check_fits(10_000, spec, None) == 10_000 * (32 * 32 * 3 + 4)
    with pytest.raises(DataError) as e:
        data_resident.check_fits(50_000, spec, None)
    msg = str(e.value)
    assert msg.startswith("config.device_resident_data=True: the train split needs 146.7 MiB")
    assert "50000 images of 32x32x3" in msg and "device_resident_data=False" in msg


@pytest.mark.parametrize("which", ["tf", "pillow"])
def test_an_unreadable_jpeg_is_named_and_left_out(tmp_path, digits_dir, caplog, monkeypatch,
                                                   which):
    from flaxcls.data import resident as data_resident

    paths = sorted(str(p) for p in (digits_dir / "train").rglob("*.jpg"))[:6]
    broken = tmp_path / "3" / "broken.jpg"
    broken.parent.mkdir()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    paths.insert(2, str(broken))
    if which == "pillow":
        monkeypatch.setattr(data_resident, "decoder", lambda: "pillow")
    elif data_resident.decoder() != "tf":
        pytest.skip("TensorFlow is not installed")
    caplog.set_level(logging.WARNING)
    out = data_resident.decode_files(paths, list(range(7)), 32, 32, "bilinear",
                                     describe=lambda i: paths[i])
    assert out["image"].shape == (6, 32, 32, 3)
    assert out["label"].tolist() == [0, 1, 3, 4, 5, 6]  # the others keep their labels
    assert f"skipped 1 unreadable image(s): {broken}" in caplog.text


@pytest.mark.heavy
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_training_from_the_devices_learns_resumes_and_caches(tmp_path, digits_dir, caplog):
    from flaxcls.train.loop import train_and_evaluate

    kw = {"device_resident_data": True, "crop_padding": 2, "num_epochs": 3,
          "batch_size": 128, "test_batch_size": 256, "log_every_steps": 5,
          "checkpoint_every_steps": 4, "device_data_cache": str(tmp_path / "cache")}
    caplog.set_level(logging.INFO)
    whole = tmp_path / "whole"
    result = train_and_evaluate(digits_run_config(digits_dir, **kw), str(whole))
    assert result["top1"] > 0.5, result
    assert "decoded 1438 train images once" in caplog.text
    assert "take 4.2 MiB on each device" in caplog.text
    records = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]

    # The evaluation from the decoded arrays equals --mode=eval streamed through tf.data
    # (digits are stored at 32 px: no resize, the same JPEG decoder)
    from flaxcls.evaluate import run_eval

    streamed = run_eval(digits_run_config(digits_dir, checkpoint=str(whole / "checkpoints"),
                                          test_batch_size=256), str(tmp_path / "streamed"))
    assert (streamed["top1"], streamed["num_examples"]) == (result["top1"],
                                                            result["num_examples"])
    assert streamed["loss"] == pytest.approx(result["loss"], rel=1e-5)

    caplog.clear()
    parts = tmp_path / "parts"
    train_and_evaluate(digits_run_config(digits_dir, num_train_steps=15, **kw), str(parts))
    assert "decoded 1438 train images once" not in caplog.text  # read from the cache:
    assert "1438 decoded train images from" in caplog.text
    train_and_evaluate(digits_run_config(digits_dir, **kw), str(parts))
    a, b = checkpoint_params(whole), checkpoint_params(parts)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_both_decoders_give_the_stored_images_in_order(digits_dir):
    """TensorFlow's decode is the streamed pipeline's, bit for bit; Pillow's (where there is no
    TensorFlow) is within a few grey levels of it (another IDCT)."""
    from flaxcls.data import pipeline, resident
    from flaxcls.specs import InputSpec

    paths = sorted((digits_dir / "train").rglob("*.jpg"))[:20]
    spec = InputSpec.for_eval({"crop_size": 32, "resize_short_size": 32,
                               "interpolation": "bilinear"})
    transform = pipeline.eval_transform_fn(spec)
    want = np.stack([transform(pipeline.tf.io.read_file(str(p)), None).numpy() for p in paths])
    tf_out = np.stack(resident._decode_tf(paths, 32, 32, "bilinear"))
    np.testing.assert_array_equal(tf_out, want)
    pil = np.stack(resident._decode_pillow(paths, 32, 32, "bilinear")).astype(int)
    diff = np.abs(pil - want.astype(int))
    # measured on these 20 files: max 15, mean 1.87 grey levels
    assert diff.max() <= 16 and diff.mean() < 2.5, (diff.max(), diff.mean())
    broken = digits_dir.parent / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    for decode in (resident._decode_tf, resident._decode_pillow):
        out = decode([paths[0], broken, paths[1]], 32, 32, "bilinear")
        assert out[1] is None and out[0] is not None and out[2] is not None


@pytest.mark.subprocess
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_training_from_the_devices_needs_no_tensorflow(tmp_path, digits_dir):
    """What the GPU machines have: jax without TensorFlow. A resident run trains, evaluates
    and checkpoints there."""
    import subprocess
    import sys

    from conftest import REPO, no_tensorflow_env

    env = no_tensorflow_env(tmp_path)
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch.py"), "--config=configs/digits.py",
         f"--workdir={workdir}", f"--config.data_dir={digits_dir}", "--config.builtin_dataset=",
         "--config.device_resident_data=True", "--config.num_epochs=2",
         "--config.compilation_cache=False"], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads((workdir / "eval_results.json").read_text())
    assert result["num_examples"] == 359 and result["top1"] > 0.1
