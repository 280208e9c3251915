"""Fine-tuning from a checkpoint with another class count: the head is re-initialised (and
named), every other tensor loads exactly, another architecture is refused with the list of
mismatches; freeze_backbone / backbone_lr_mult; a real fine-tune reaches an accuracy bar."""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest

import flaxcls
from configs import digits as digits_config
from flaxcls.checkpoint import CheckpointError
from flaxcls.config import default_config


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.fixture(scope="module")
def ten_class_ckpt(tiny_checkpoint):
    from flaxcls.checkpoint import read_variables

    return tiny_checkpoint, read_variables(str(tiny_checkpoint))


def _tiny_config(**kw):
    c = default_config()
    c.model, c.crop_size, c.resize_short_size = "ResNet_tiny", 32, 32
    for k, v in kw.items():
        setattr(c, k, v)
    return c


@pytest.mark.heavy
def test_other_class_count_reinitialises_only_the_head(ten_class_ckpt, caplog):
    from flaxcls import parallel
    from flaxcls.specs import Specs
    from flaxcls.train import builder
    from flaxcls.weights import load_pretrained

    path, saved = ten_class_ckpt
    specs = Specs.from_config(_tiny_config(num_classes=4))
    fresh = builder.build(specs, parallel.make_mesh(), steps_per_epoch=1).init_state()
    with caplog.at_level(logging.INFO, logger="flaxcls"):
        loaded = load_pretrained(str(path), fresh.variables(), specs.model, 32)
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "params/head/kernel" in log and "params/head/bias" in log and "re-initialised" in log

    got = _flat(loaded)
    want = _flat(saved)
    init = _flat({"params": fresh.params, "batch_stats": fresh.batch_stats})
    assert got.keys() == want.keys()
    head = {"params/head/kernel", "params/head/bias"}
    for k in got:
        if k in head:
            assert got[k].shape[-1] == 4
            np.testing.assert_array_equal(got[k], init[k])  # the new head's fresh init
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert len(got) - len(head) > 20


def test_another_architecture_is_refused_with_the_mismatches(ten_class_ckpt):
    from flaxcls.checkpoint import read_variables
    from flaxcls.specs import ModelSpec
    from flaxcls.weights import fit

    path, _ = ten_class_ckpt
    source = read_variables(str(path))
    c = _tiny_config(num_classes=10)
    shapes = jax.eval_shape(
        lambda x: flaxcls.create_model("ResNet_tiny", num_classes=10).init(
            jax.random.key(0), x), jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    target = {"params": shapes["params"], "batch_stats": shapes["batch_stats"]}
    # a backbone tensor of another shape and one missing: another architecture
    params = source["params"]
    stem = next(k for k in params if k != "head")
    first = _flat(params[stem])
    kernel_path = next(k for k in first if k.endswith("kernel"))
    node = params[stem]
    for part in kernel_path.split("/")[:-1]:
        node = node[part]
    node["kernel"] = np.zeros(node["kernel"].shape[:-1] + (3,), np.float32)
    dropped = next(k for k in params if k not in ("head", stem))
    del params[dropped]
    with pytest.raises(CheckpointError) as e:
        fit(source, target, ModelSpec.from_config(c), 32, "ckpt", allow_new_head=True)
    msg = str(e.value)
    assert "another architecture" in msg and f"params/{stem}/{kernel_path}" in msg
    assert f"params/{dropped}/" in msg and "missing from the checkpoint" in msg
    assert "params/head/" not in msg  # the head may differ: it is not a mismatch

    # a real other model: every mismatch outside the head listed, nothing loaded
    other = _tiny_config(model="ResNet18", num_classes=10, crop_size=32, resize_short_size=32)
    shapes18 = jax.eval_shape(
        lambda x: flaxcls.create_model("ResNet18", num_classes=10).init(jax.random.key(0), x),
        jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
    with pytest.raises(CheckpointError, match=r"ResNet18.*another architecture"):
        fit(read_variables(str(path)), dict(shapes18), ModelSpec.from_config(other), 32, "ckpt",
            allow_new_head=True)


def test_freeze_backbone_and_backbone_lr_mult():
    import optax

    from flaxcls.specs import OptimSpec
    from flaxcls.train import optim

    params = {"stem": {"kernel": np.ones((3, 3), np.float32)},
              "head": {"kernel": np.ones((3, 2), np.float32), "bias": np.ones(2, np.float32)}}
    grads = jax.tree.map(np.ones_like, params)
    head = {"head/kernel", "head/bias"}

    def step(**kw):
        c = _tiny_config(l2_decay=0.0, momentum_rate=0.0, **kw)
        tx = optim.make_optimizer(OptimSpec.from_config(c), 0.5, head)
        updates, state = tx.update(grads, tx.init(params), params)
        assert float(optim.learning_rate_of(state)) == pytest.approx(0.5)
        return _flat(optax.apply_updates(params, updates))

    frozen = step(freeze_backbone=True)
    np.testing.assert_array_equal(frozen["stem/kernel"], 1.0)
    np.testing.assert_allclose(frozen["head/kernel"], 0.5)
    slow = step(backbone_lr_mult=0.1)
    np.testing.assert_allclose(slow["stem/kernel"], 0.95)
    np.testing.assert_allclose(slow["head/bias"], 0.5)
    plain = step()
    np.testing.assert_allclose(plain["stem/kernel"], 0.5)


def _split_digits(digits_dir, out, keep: range):
    """A list-file data set of the digits in `keep`, relabelled 0..len(keep)-1."""
    out.mkdir()
    for name in ("train_list.txt", "val_list.txt"):
        lines = []
        for line in (digits_dir / name).read_text().splitlines():
            path, label = line.rsplit(None, 1)
            if int(label) in keep:
                lines.append(f"{digits_dir / path} {keep.index(int(label))}")
        (out / name).write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.slow
def test_finetune_to_new_classes_reaches_accuracy(tmp_path, digits_dir):
    """Train on digits 0-5 (6 classes), fine-tune on digits 6-9 (4 classes, relabelled) from
    that checkpoint: the new 4-way head is learnt and the held-out accuracy is high."""
    from flaxcls.train.loop import train_and_evaluate

    def cfg(data, classes, **kw):
        c = digits_config.get_config()
        c.data_dir, c.builtin_dataset, c.num_classes = str(data), "", classes
        c.compilation_cache, c.eval_every_epochs = False, 100
        for k, v in kw.items():
            setattr(c, k, v)
        return c

    first = _split_digits(digits_dir, tmp_path / "first", range(6))
    second = _split_digits(digits_dir, tmp_path / "second", range(6, 10))
    pre = train_and_evaluate(cfg(first, 6, num_epochs=6), str(tmp_path / "pre"))
    assert pre["top1"] > 0.8
    tuned = train_and_evaluate(
        cfg(second, 4, num_epochs=8, lr=0.05, backbone_lr_mult=0.2,
            pretrained_model=str(tmp_path / "pre")), str(tmp_path / "tuned"))
    assert tuned["top1"] >= 0.9, tuned
    result = json.loads((tmp_path / "tuned" / "eval_results.json").read_text())
    assert result["num_examples"] == len((second / "val_list.txt").read_text().split()) // 2
