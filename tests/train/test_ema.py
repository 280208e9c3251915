"""The weights' moving average: the step's EMA against a host recomputation, and training,
evaluation, serving and a pretrained start with it."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from conftest import checkpoint_params, digits_run_config

from flaxcls import parallel
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import Specs
from flaxcls.train import builder
from flaxcls.train.step import TRAIN_METRICS, zeros_metrics

SIZE, BATCH = 16, 8


def _trainer(**overrides):
    c = default_config()
    c.model, c.num_classes, c.crop_size, c.resize_short_size = "ResNet_tiny", 10, SIZE, SIZE
    c.batch_size, c.lr = BATCH, 0.5
    c.update(overrides)
    resolve_preprocessing(c)
    return builder.build(Specs.from_config(c), parallel.make_mesh(), steps_per_epoch=10)


def _batch(mesh, seed):
    rng = np.random.RandomState(seed)
    return parallel.host_to_global({
        "image": rng.randint(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.uint8),
        "label": rng.randint(0, 10, (BATCH,)).astype(np.int32)}, mesh)


def _host(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(tree))


@pytest.mark.parametrize("every, warmup", [(1, False), (2, True)])
def test_the_ema_after_n_steps_equals_a_host_recomputation(every, warmup):
    decay = 0.9
    t = _trainer(ema_decay=decay, ema_every_steps=every, ema_warmup=warmup)
    state = t.init_state()
    ema = _host({"params": state.params, "batch_stats": state.batch_stats})
    assert jax.tree.all(jax.tree.map(np.array_equal, ema, _host(state.ema)))
    metrics = zeros_metrics(TRAIN_METRICS, t.mesh)
    for n in range(1, 6):
        state, metrics = t.train_step(state, metrics, _batch(t.mesh, n))
        now = _host({"params": state.params, "batch_stats": state.batch_stats})
        if n % every == 0:
            k = n // every
            d = min(decay, (1 + k) / (10 + k)) if warmup else decay
            ema = jax.tree.map(lambda e, v, d=d: d * e + (1 - d) * v, ema, now)
    got = _host(state.ema)
    moved = 0
    for (path, want), have, raw in zip(jax.tree_util.tree_leaves_with_path(ema),
                                       jax.tree.leaves(got), jax.tree.leaves(now)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))
        moved += not np.allclose(want, raw)
    assert moved > len(jax.tree.leaves(ema)) // 2  # the average is not the weights


def test_no_ema_by_default():
    t = _trainer()
    assert t.init_state().ema is None


@pytest.mark.parametrize("field, value, says", [
    ("ema_decay", 1.0, "config.ema_decay=1.0: must be in [0, 1)"),
    ("ema_decay", -0.1, "config.ema_decay=-0.1"),
    ("ema_every_steps", 0, "config.ema_every_steps=0: must be a whole number >= 1"),
])
def test_bad_values_name_the_field(field, value, says):
    c = default_config()
    c.data_dir = "unused"
    setattr(c, field, value)
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value).startswith(says)


@pytest.mark.heavy
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_training_evaluates_both_and_serving_takes_the_chosen(tmp_path, digits_dir):
    from flaxcls.evaluate import run_eval
    from flaxcls.train.loop import train_and_evaluate

    kw = {"num_epochs": 2, "batch_size": 128, "crop_size": 16, "resize_short_size": 16,
          "ema_decay": 0.8, "ema_warmup": True, "test_batch_size": 256}
    workdir = tmp_path / "run"
    result = train_and_evaluate(digits_run_config(digits_dir, **kw), str(workdir))
    saved = json.loads((workdir / "eval_results.json").read_text())
    assert saved["weights"] == "ema" and set(saved["raw"]) == set(saved["ema"]) == {
        "top1", "top5", "loss"}
    assert saved["top1"] == saved["ema"]["top1"] == result["top1"]
    assert saved["raw"] != saved["ema"]
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {"eval", "eval_ema"} <= {r["split"] for r in records}

    # --mode=eval: the checkpoint's EMA by default, its raw weights on request; the same
    # numbers as training's evaluation of each.
    for use_ema, key in ((True, "ema"), (False, "raw")):
        out = tmp_path / f"eval_{key}"
        got = run_eval(digits_run_config(digits_dir, **kw, use_ema_weights=use_ema,
                                         checkpoint=str(workdir / "checkpoints")), str(out))
        assert got["top1"] == pytest.approx(saved[key]["top1"], abs=1e-6), key
        assert json.loads((out / "eval_results.json").read_text())["weights"] == key

    # infer and export load through the same function: the EMA, and model.json says so
    from flaxcls.infer import load_for_serving
    from flaxcls.specs import resolve as resolve_specs

    serve_config = digits_run_config(digits_dir, **kw, checkpoint=str(workdir / "checkpoints"))
    _, served, where = load_for_serving(serve_config, resolve_specs(serve_config, need_data=False),
                                        str(tmp_path / "serve"), parallel.make_mesh())
    assert where["weights"] == "ema"
    want = checkpoint_params(workdir, ema=True)
    for p, v in jax.tree_util.tree_leaves_with_path(served):
        np.testing.assert_array_equal(np.asarray(v), want[jax.tree_util.keystr(p)])

    # A pretrained start takes the EMA, and its own EMA starts there.
    from flaxcls.checkpoint import Checkpointer
    from flaxcls.specs import resolve
    from flaxcls.train.loop import _starting_state

    ema = checkpoint_params(workdir, ema=True)
    config = digits_run_config(digits_dir, **kw, pretrained_model=str(workdir / "checkpoints"))
    t = builder.build(resolve(config), parallel.make_mesh(), steps_per_epoch=10)
    with Checkpointer(str(tmp_path / "fresh"), keep=1) as ckpt:
        state, step, _ = _starting_state(t, ckpt, 10)
    assert step == 0
    for tree in (state.variables(), state.ema_variables()):
        got = {jax.tree_util.keystr(p): np.asarray(v)
               for p, v in jax.tree_util.tree_leaves_with_path(tree)}
        assert got.keys() == ema.keys()
        for k, v in ema.items():
            np.testing.assert_array_equal(got[k], v, err_msg=k)
