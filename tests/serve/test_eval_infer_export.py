"""Eval, infer and export of one checkpoint: exact counts on 8 devices, any image format, a
reloadable serving artifact, and the same probabilities from all three for the same JPEG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, digits_run_config, run_launch, subprocess_env

PIL = pytest.importorskip("PIL.Image")

NUM_CLASSES = 10


_config = digits_run_config


@pytest.fixture(scope="module")
def ckpt_dir(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    """A folder of awkward inputs: sizes, grey, RGBA, palette, CMYK, TIFF, and a broken file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("odd")
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    rgb.save(root / "a_rgb.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (300, 17, 3), dtype=np.uint8)).save(root / "b_tall.png")
    rgb.convert("L").save(root / "c_grey.jpg")
    rgb.convert("RGBA").save(root / "d_rgba.png")
    rgb.convert("P").save(root / "e_palette.png")
    rgb.convert("CMYK").save(root / "f_cmyk.jpg")
    rgb.save(root / "g_tiff.tif")
    (root / "h_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


@pytest.mark.subprocess
def test_eval_counts_every_image_once_on_8_devices(tmp_path, digits_dir, ckpt_dir):
    """359 eval images, a global eval batch of 64 (8 per device): the last batch is padded and
    masked; the result equals the single-device eval of the same checkpoint."""
    from flaxcls.evaluate import run_eval

    common = ["--config=configs/digits.py", f"--config.data_dir={digits_dir}",
              "--config.builtin_dataset=", f"--config.pretrained_model={ckpt_dir}",
              "--config.compilation_cache=False", "--mode=eval"]
    run_launch([*common, f"--workdir={tmp_path / 'eight'}", "--config.test_batch_size=64",
                "--config.batch_size=64"], devices=8)
    eight = json.loads((tmp_path / "eight" / "eval_results.json").read_text())
    num_val = len((digits_dir / "val_list.txt").read_text().split()) // 2
    assert num_val % 64 != 0
    assert eight["num_examples"] == num_val == 359

    one = run_eval(_config(digits_dir, pretrained_model=str(ckpt_dir), test_batch_size=100),
                        str(tmp_path / "one"))
    assert one["num_examples"] == num_val
    for k in ("top1", "top5", "loss"):
        assert eight[k] == pytest.approx(one[k], abs=1e-5), k
    assert eight["preprocessing"]["crop_size"] == 32  # ResNet_tiny's ModelCfg
    assert eight["eval_flip"] is False
    assert eight["checkpoint"] == str(ckpt_dir)


def test_eval_of_a_workdir_on_other_data_than_it_trained_on_warns(tmp_path, digits_dir, ckpt_dir,
                                                                   caplog):
    """A forgotten data override at eval time (the workdir's weights, another data set than
    its config.json) is named in a warning, and eval_results.json records the data used."""
    import logging

    from flaxcls.evaluate import run_eval

    work = tmp_path / "run"
    work.mkdir()
    (work / "checkpoints").symlink_to(ckpt_dir / "checkpoints")
    trained = {"data_dir": "/data/cifar10", "builtin_dataset": "", "num_classes": 10}
    (work / "config.json").write_text(json.dumps(trained))
    caplog.set_level(logging.WARNING)
    run_eval(_config(digits_dir), str(work))
    assert "trained with data_dir='/data/cifar10'" in caplog.text
    assert f"this run has data_dir='{digits_dir}'" in caplog.text
    data = json.loads((work / "eval_results.json").read_text())["data"]
    assert data["data_dir"] == str(digits_dir) and data["eval_split"] == "val"

    caplog.clear()
    (work / "config.json").write_text(json.dumps({**trained, "data_dir": str(digits_dir)}))
    run_eval(_config(digits_dir), str(work))
    assert "trained with" not in caplog.text


def test_eval_refuses_a_head_of_another_class_count(tmp_path, digits_dir, ckpt_dir):
    from flaxcls.checkpoint import CheckpointError
    from flaxcls.evaluate import run_eval

    with pytest.raises(CheckpointError, match=r"num_classes=12.*head.*|head.*num_classes=12"):
        run_eval(_config(digits_dir, pretrained_model=str(ckpt_dir), num_classes=12),
                      str(tmp_path))


def test_eval_without_a_checkpoint_says_what_to_do(tmp_path, digits_dir):
    from flaxcls.config import ConfigError
    from flaxcls.evaluate import run_eval

    with pytest.raises(ConfigError, match="no checkpoint in .*pretrained_model"):
        run_eval(_config(digits_dir), str(tmp_path))
    with pytest.raises(ConfigError, match="no checkpoint in"):  # before writing a data set
        run_eval(_config("", builtin_dataset="digits"), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_infer_any_format_and_skips_the_unreadable(tmp_path, ckpt_dir, odd_images, caplog):
    from flaxcls.config import default_config
    from flaxcls.infer import PREDICTIONS, run_infer

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"n{i:08d}\tthing {i}\n" for i in range(NUM_CLASSES)))
    c = default_config()
    c.model, c.num_classes, c.compilation_cache = "ResNet_tiny", NUM_CLASSES, False
    c.pretrained_model, c.infer_path, c.topk = str(ckpt_dir), str(odd_images), 3
    c.label_path, c.test_batch_size = str(labels), 4
    workdir = tmp_path / "run"
    with caplog.at_level("WARNING", logger="flaxcls"):
        records = run_infer(c, str(workdir))
    assert any("h_broken.jpg" in r.getMessage() and "skipped" in r.getMessage()
               for r in caplog.records)

    lines = (workdir / PREDICTIONS).read_text().splitlines()
    got = [json.loads(x) for x in lines]
    assert got == json.loads(json.dumps(records))
    names = [r["path"].rsplit("/", 1)[-1] for r in got]
    assert names == ["a_rgb.jpg", "b_tall.png", "c_grey.jpg", "d_rgba.png", "e_palette.png",
                     "f_cmyk.jpg", "g_tiff.tif"]  # h_broken.jpg skipped, the rest kept
    for r in got:
        assert len(r["class_ids"]) == 3 and len(set(r["class_ids"])) == 3
        assert r["labels"] == [f"thing {i}" for i in r["class_ids"]]
        assert r["probs"] == sorted(r["probs"], reverse=True) and sum(r["probs"]) <= 1 + 1e-6
    # alpha is dropped, grey is repeated over RGB, TIFF (Pillow) takes the same transform
    from PIL import Image

    from flaxcls.infer import ImageLoader
    from flaxcls.specs import InputSpec

    rgb_png = tmp_path / "rgb.png"
    with Image.open(odd_images / "d_rgba.png") as im:
        im.convert("RGB").save(rgb_png)
    load = ImageLoader(InputSpec.from_config(c))
    np.testing.assert_array_equal(load(str(odd_images / "d_rgba.png")), load(str(rgb_png)))
    np.testing.assert_array_equal(load(str(odd_images / "g_tiff.tif")), load(str(rgb_png)))
    grey = load(str(odd_images / "c_grey.jpg"))
    assert grey.shape == (32, 32, 3) and (grey[..., 0] == grey[..., 2]).all()

    c.features = True
    feats = run_infer(c, str(tmp_path / "feat"))
    assert len(feats) == 7 and all(len(r["features"]) == len(feats[0]["features"]) > 8
                                   for r in feats)
    npy = np.load(tmp_path / "feat" / "features.npy")
    np.testing.assert_allclose(npy[0], feats[0]["features"], rtol=1e-6)


def test_imagenet_labels_ship_with_the_package():
    from flaxcls.infer import IMAGENET_LABELS, read_label_file

    labels = read_label_file(IMAGENET_LABELS)
    assert len(labels) == 1000
    assert labels[0] == "tench" and labels[1] == "goldfish" and labels[999] == "toilet tissue"
    with open(IMAGENET_LABELS) as f:
        wnids = [line.split("\t")[0] for line in f.read().splitlines()]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ckpt_dir):
    from flaxcls.config import default_config
    from flaxcls.export import export_model

    c = default_config()
    c.model, c.num_classes, c.pretrained_model = "ResNet_tiny", NUM_CLASSES, str(ckpt_dir)
    c.export_savedmodel = True
    workdir = tmp_path_factory.mktemp("export")
    out = export_model(c, str(workdir))
    return workdir, out


def _live_probs(ckpt_dir, images):
    import jax

    import flaxcls
    from flaxcls.checkpoint import read_variables
    from flaxcls.config import default_config
    from flaxcls.infer import make_predict
    from flaxcls.preprocessing import resolve_preprocessing

    c = default_config()
    c.model, c.num_classes = "ResNet_tiny", NUM_CLASSES
    model = flaxcls.create_model("ResNet_tiny", num_classes=NUM_CLASSES)
    predict = make_predict(model, read_variables(str(ckpt_dir)), resolve_preprocessing(c))
    return np.asarray(jax.jit(predict)(images))


@pytest.mark.subprocess
def test_export_reloads_in_a_fresh_process_without_model_code(tmp_path, ckpt_dir, exported):
    workdir, _ = exported
    meta = json.loads((workdir / "export" / "model.json").read_text())
    assert meta["model"] == "ResNet_tiny" and meta["input_size"] == 32
    assert meta["input_dtype"] == "uint8" and len(meta["labels"]) == NUM_CLASSES
    assert meta["preprocessing"]["resize_short_size"] == 32
    images = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "in.npy", images)
    script = (
        "import importlib.util, sys, numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('export', {str(REPO / 'flaxcls/export.py')!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        f"predict, meta = m.load_exported({str(workdir)!r})\n"
        f"x = np.load({str(tmp_path / 'in.npy')!r})\n"
        f"np.save({str(tmp_path / 'one.npy')!r}, predict(x[:1]))\n"
        f"np.save({str(tmp_path / 'three.npy')!r}, predict(x))\n"
        "bad = [k for k in sys.modules if k.startswith(('flaxcls', 'tensorflow', 'flax'))]\n"
        "assert not bad, bad\n"
    )
    env = subprocess_env(1)
    env["PYTHONPATH"] = ""  # nothing of the repo on the path: only the file itself
    proc = subprocess.run([sys.executable, "-c", script], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, three = np.load(tmp_path / "one.npy"), np.load(tmp_path / "three.npy")
    assert one.shape == (1, NUM_CLASSES) and three.shape == (3, NUM_CLASSES)
    live = _live_probs(ckpt_dir, images)
    np.testing.assert_allclose(three, live, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one[0], live[0], rtol=1e-5, atol=1e-6)
    assert np.ptp(live[:, 0]) > 1e-4  # the images are told apart: a real comparison


def test_export_is_lowered_for_cuda_and_takes_float32_when_asked(tmp_path, ckpt_dir, exported):
    """Made on a machine without a GPU, the artifact is lowered for CPU and CUDA (model.json and
    the serialized function say so). ``export_input="float32"`` takes images already normalised
    with model.json's mean/std and gives the uint8 artifact's probabilities."""
    import jax

    from flaxcls.config import default_config
    from flaxcls.export import MODEL_FILE, export_model, load_exported

    c = default_config()
    c.model, c.num_classes, c.pretrained_model = "ResNet_tiny", NUM_CLASSES, str(ckpt_dir)
    c.export_input = "float32"
    f32_dir = export_model(c, str(tmp_path))
    assert jax.default_backend() == "cpu"
    for directory in (exported[1], f32_dir):
        meta = json.loads(Path(directory, "model.json").read_text())
        with open(f"{directory}/{MODEL_FILE}", "rb") as f:
            serialized = jax.export.deserialize(bytearray(f.read()))
        assert sorted(meta["platforms"]) == sorted(serialized.platforms) == ["cpu", "cuda"]

    predict_u8, meta_u8 = load_exported(str(exported[1]))
    predict_f32, meta_f32 = load_exported(f32_dir)
    assert (meta_u8["input_dtype"], meta_u8["input_normalised"]) == ("uint8", False)
    assert (meta_f32["input_dtype"], meta_f32["input_normalised"]) == ("float32", True)
    prep = meta_f32["preprocessing"]
    assert prep == meta_u8["preprocessing"]
    images = np.random.default_rng(6).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    normalised = ((images / 255.0 - np.asarray(prep["mean"])) / np.asarray(prep["std"]))
    want = predict_u8(images)
    np.testing.assert_allclose(predict_f32(normalised.astype(np.float32)), want, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(want, _live_probs(ckpt_dir, images), rtol=1e-5, atol=1e-6)
    # the float32 artifact does not normalise again: raw pixel values give other answers
    assert not np.allclose(predict_f32(images.astype(np.float32)), want, atol=1e-3)


def test_export_saved_model_for_tf_serving(ckpt_dir, exported):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(exported[1] + "/saved_model"))
    serve = loaded.signatures["serving_default"]
    images = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    live = _live_probs(ckpt_dir, images)
    for n in (1, 3):
        got = serve(images=tf.constant(images[:n]))["probs"].numpy()
        np.testing.assert_allclose(got, live[:n], rtol=1e-5, atol=1e-6)


def test_same_jpeg_same_answer_in_eval_infer_and_export(tmp_path, ckpt_dir, exported):
    """One 61x45 JPEG (resized and cropped to 32): eval's loss is -log p of the label, infer's
    probability of that label, and the exported model's, all from the one eval transform."""
    from PIL import Image

    from flaxcls.config import default_config
    from flaxcls.data import eval_iterator, open_source
    from flaxcls.evaluate import run_eval
    from flaxcls.export import load_exported
    from flaxcls.infer import ImageLoader, run_infer
    from flaxcls.specs import resolve

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(
        data / "img" / "x.jpg", quality=85)

    c = default_config()
    c.model, c.num_classes, c.pretrained_model = "ResNet_tiny", NUM_CLASSES, str(ckpt_dir)
    c.infer_path, c.topk, c.compilation_cache = str(data / "img" / "x.jpg"), NUM_CLASSES, False
    (rec,) = run_infer(c, str(tmp_path / "infer"))
    probs = np.zeros(NUM_CLASSES)
    probs[rec["class_ids"]] = rec["probs"]
    label = rec["class_ids"][1]  # the runner-up: top-1 is 0, top-5 is 1

    (data / "train_list.txt").write_text(f"img/x.jpg {label}\n")
    (data / "val_list.txt").write_text(f"img/x.jpg {label}\n")
    ev = run_eval(_config(data, model="ResNet_tiny", pretrained_model=str(ckpt_dir),
                               crop_size=None, resize_short_size=None, batch_size=8,
                               test_batch_size=8), str(tmp_path / "eval"))  # unset: the model's
    assert ev["num_examples"] == 1 and ev["top1"] == 0.0 and ev["top5"] == 1.0
    assert ev["loss"] == pytest.approx(-np.log(probs[label]), abs=2e-5)

    predict, meta = load_exported(str(exported[1]))
    crop = ImageLoader.from_preprocessing(meta["preprocessing"])(str(data / "img" / "x.jpg"))
    np.testing.assert_allclose(predict(crop[None])[0], probs, rtol=1e-5, atol=1e-6)

    # and the eval pipeline's own uint8 crop is the infer loader's, byte for byte
    specs = resolve(_config(data, model="ResNet_tiny"))
    batch = next(iter(eval_iterator(open_source(specs.data), specs.input, global_batch_size=1)))
    np.testing.assert_array_equal(batch["image"][0], crop)


def test_preprocessing_follows_the_model_unless_the_config_overrides(monkeypatch):
    import dataclasses

    from flaxcls import preprocessing
    from flaxcls.config import default_config
    from flaxcls.infer import class_labels
    from flaxcls.preprocessing import resolve_preprocessing

    c = default_config()
    c.model = "InceptionV4"
    prep = resolve_preprocessing(c)
    assert (prep.crop_size, prep.resize_short_size) == (299, 320)
    assert (c.crop_size, c.resize_short_size) == (299, 320)  # eval and train read the config
    assert resolve_preprocessing(c) == prep  # idempotent

    c = default_config()
    c.model, c.resize_short_size, c.interpolation = "InceptionV4", 342, "bicubic"
    prep = resolve_preprocessing(c)
    assert (prep.crop_size, prep.resize_short_size, prep.interpolation) == (299, 342, "bicubic")

    c = default_config()
    c.model, c.image_shape = "ResNet_tiny", (3, 48, 48)
    prep = resolve_preprocessing(c)
    assert (prep.crop_size, prep.resize_short_size) == (48, 48)

    # A value the user sets is used even when it equals what the default used to be
    # (crop 224, bilinear, ImageNet mean/std); fields left unset follow the model.
    c = default_config()
    c.model, c.crop_size = "InceptionV4", 224
    assert (resolve_preprocessing(c).crop_size, c.resize_short_size) == (224, 320)
    real = preprocessing.get_model_cfg

    def bicubic_and_grey(name):
        return dataclasses.replace(real(name), interpolation="bicubic", mean=(0.5,) * 3,
                                   std=(0.5,) * 3)

    monkeypatch.setattr(preprocessing, "get_model_cfg", bicubic_and_grey)
    c = default_config()
    c.model, c.interpolation, c.image_std = "ResNet_tiny", "bilinear", (0.229, 0.224, 0.225)
    prep = resolve_preprocessing(c)
    assert (prep.interpolation, prep.mean, prep.std) == (
        "bilinear", (0.5, 0.5, 0.5), (0.229, 0.224, 0.225))
    c = default_config()
    c.model = "ResNet_tiny"
    assert resolve_preprocessing(c).interpolation == "bicubic" == c.interpolation
    monkeypatch.undo()

    c = default_config()  # a 1000-class model without a data set: ImageNet's names
    assert class_labels(c)[:2] == ["tench", "goldfish"] and len(class_labels(c)) == 1000
