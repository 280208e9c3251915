"""Knowledge distillation: the losses against numpy, the first step's loss against an
independent computation, the teacher's checks, and images without labels."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import digits_run_config

from flaxcls import parallel
from flaxcls.checkpoint import read_variables
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import Specs
from flaxcls.train import builder, losses
from flaxcls.train.step import TRAIN_METRICS, fetch_metrics, normalize, zeros_metrics

SIZE, BATCH = 32, 8


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_losses_against_numpy(temperature):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    ps, pt = _np_softmax(s / temperature), _np_softmax(t / temperature)
    kl = -np.sum(pt * np.log(ps), -1) * temperature ** 2
    m = (ps + pt) / 2
    js = 0.5 * (np.sum(ps * np.log(ps / m), -1) + np.sum(pt * np.log(pt / m), -1))
    np.testing.assert_allclose(losses.distillation(s, t, "kl", temperature), kl, rtol=1e-5)
    np.testing.assert_allclose(losses.distillation(s, t, "js", temperature),
                               js * temperature ** 2, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(losses.distillation(t, s, "js", temperature),
                               losses.distillation(s, t, "js", temperature), rtol=1e-5)
    assert np.allclose(losses.distillation(s, s, "js", temperature), 0.0, atol=1e-6)


def _trainer(tiny_checkpoint, **overrides):
    c = default_config()
    c.model, c.num_classes, c.crop_size, c.resize_short_size = "ResNet_tiny", 10, SIZE, SIZE
    c.batch_size, c.lr = BATCH, 0.1
    c.distill_teacher, c.distill_teacher_weights = "ResNet_tiny", str(tiny_checkpoint)
    c.data_dir = "unused"
    c.update(overrides)
    resolve_preprocessing(c)
    validate(c)
    return builder.build(Specs.from_config(c), parallel.make_mesh(), steps_per_epoch=10), c


@pytest.mark.parametrize("kind", ["kl", "soft_hard"])
def test_first_step_loss_is_the_cross_entropy_against_the_teachers_softmax(tiny_checkpoint,
                                                                           kind):
    """Teacher = the student's initial weights, kl at temperature 1: the step's loss is the
    cross-entropy of the student (train mode) against the teacher's softmax (eval mode)."""
    t, c = _trainer(tiny_checkpoint, distill_loss=kind, distill_alpha=0.3)
    t.load_teacher()
    weights = read_variables(str(tiny_checkpoint))
    state = t.init_state()
    state = state.replace(params=jax.device_put(weights["params"], parallel.replicated(t.mesh)),
                          batch_stats=jax.device_put(weights["batch_stats"],
                                                     parallel.replicated(t.mesh)))
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, (BATCH,)).astype(np.int32)

    x = normalize(jnp.asarray(images), c.image_mean, c.image_std, jnp.float32)
    student, _ = t.model.apply(weights, x, train=True, mutable=["batch_stats"])
    teacher = t.model.apply(weights, x, train=False)
    p_t, log_p_s = _np_softmax(np.asarray(teacher, np.float64)), np.log(
        _np_softmax(np.asarray(student, np.float64)))
    soft = -np.sum(p_t * log_p_s, -1)
    hard = -log_p_s[np.arange(BATCH), labels]
    want = np.mean(soft if kind == "kl" else 0.3 * soft + 0.7 * hard)
    assert not np.allclose(soft, -np.sum(p_t * np.log(p_t), -1))  # train != eval mode

    _, metrics = t.train_step(state, zeros_metrics(TRAIN_METRICS, t.mesh),
                              parallel.host_to_global({"image": images, "label": labels}, t.mesh),
                              *t.step_inputs)
    assert fetch_metrics(metrics)["loss"] == pytest.approx(want, rel=1e-5)


def test_a_teacher_with_another_class_count_names_the_field(tiny_checkpoint):
    t, _ = _trainer(tiny_checkpoint, num_classes=12)
    with pytest.raises(ConfigError) as e:
        t.load_teacher()
    assert str(e.value).startswith("config.distill_teacher_weights="), e.value
    assert "num_classes=12" in str(e.value)


@pytest.mark.parametrize("fields, says", [
    ({"distill_teacher": "ResNet_tiny"}, "config.distill_teacher_weights='': is empty"),
    ({"distill_teacher": "ResNet5O"}, "config.distill_teacher='ResNet5O': Unknown model"),
    ({"distill_teacher_weights": "x"}, "config.distill_teacher='': is empty but"),
    ({"distill_unlabeled": "x"}, "config.distill_teacher='': is empty but distill_unlabeled"),
    ({"distill_loss": "mse"}, "config.distill_loss='mse': must be one of"),
    ({"distill_temperature": 0.0}, "config.distill_temperature=0.0"),
    ({"distill_alpha": 1.5}, "config.distill_alpha=1.5"),
])
def test_bad_values_name_the_field(fields, says):
    c = default_config()
    c.data_dir = "unused"
    c.update(fields)
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value).startswith(says), str(e.value)


def test_unlabeled_images_join_the_train_split(tmp_path, digits_dir):
    from flaxcls.data.sources import DataError, open_source
    from flaxcls.specs import DataSpec

    folder = tmp_path / "extra" / "any"
    folder.mkdir(parents=True)
    some = sorted((digits_dir / "train").rglob("*.jpg"))[:7]
    for i, p in enumerate(some):
        shutil.copy(p, folder / f"{i}.jpg")
    listing = tmp_path / "extra.txt"
    listing.write_text("".join(f"extra/any/{i}.jpg\n" for i in range(3)))
    base = {"data_source": "auto", "data_dir": str(digits_dir), "tfds_name": "",
                "train_list": "train_list.txt", "val_list": "val_list.txt", "train_split": "train",
                "eval_split": "val", "num_classes": 10, "total_images": 0}
    plain = open_source(DataSpec(**base))
    for where, n in ((tmp_path / "extra", 7), (listing, 3)):
        src = open_source(DataSpec(**base, unlabeled=str(where)))
        assert src.num_train == plain.num_train + n
        assert list(src.train.labels[-n:]) == [-1] * n
        assert np.array_equal(src.train.labels[:-n], plain.train.labels)
    bad = tmp_path / "bad.txt"
    bad.write_text("extra/any/0.jpg 3\nextra/any/missing.jpg\n")
    with pytest.raises(DataError) as e:
        open_source(DataSpec(**base, unlabeled=str(bad)))
    assert "bad.txt:1: expected an image path alone" in str(e.value)
    assert "missing.jpg" in str(e.value)


@pytest.mark.heavy
@pytest.mark.slow  # a teacher and a student trained through the loop
def test_distillation_with_unlabeled_images_trains_and_saves_no_teacher(tmp_path, digits_dir):
    """A digits teacher, then a student distilled from it with extra images that have no
    labels: the loss falls, accuracy counts the labelled images only, and the student's
    checkpoint holds the student alone."""
    from flaxcls.train.loop import train_and_evaluate

    kw = {"batch_size": 128, "crop_size": 16, "resize_short_size": 16, "test_batch_size": 256}
    teacher = tmp_path / "teacher"
    taught = train_and_evaluate(digits_run_config(digits_dir, num_epochs=3, **kw), str(teacher))
    extra = tmp_path / "extra"
    extra.mkdir()
    for i, p in enumerate(sorted((digits_dir / "val").rglob("*.jpg"))[:256]):
        shutil.copy(p, extra / f"{i}.jpg")
    student = tmp_path / "student"
    result = train_and_evaluate(digits_run_config(
        digits_dir, num_epochs=3, distill_teacher="ResNet_tiny",
        distill_teacher_weights=str(teacher / "checkpoints"), distill_loss="kl",
        distill_unlabeled=str(extra), log_every_steps=2, **kw), str(student))
    records = [json.loads(x) for x in (student / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]
    print("teacher", taught["top1"], "student", result["top1"])
    assert result["top1"] > 0.5 and taught["top1"] > 0.5, (result, taught)
    saved = read_variables(str(student / "checkpoints"))
    want = read_variables(str(teacher / "checkpoints"))
    flat = lambda tree: {jax.tree_util.keystr(p) for p, _ in
                         jax.tree_util.tree_leaves_with_path(tree)}
    assert flat(saved) == flat(want)  # the same architecture, once: no teacher inside
    meta = json.loads((student / "config.json").read_text())
    assert meta["distill_unlabeled"] == str(extra)
