"""The jitted steps: dtypes (bf16, fp16 with loss scaling), on-device metric sums, eval masking."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxcls import parallel
from flaxcls.config import default_config
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import Specs
from flaxcls.train import builder, optim
from flaxcls.train.step import (
    EVAL_METRICS,
    TRAIN_METRICS,
    fetch_metrics,
    make_train_step,
    normalize,
    zeros_metrics,
)

SIZE, BATCH = 16, 8


def _setup(dtype="float32", size=SIZE, **overrides):
    """The trainer's own chain (flaxcls.train.builder) for ResNet_tiny, and its fresh state."""
    c = default_config()
    c.model, c.num_classes, c.crop_size, c.resize_short_size = "ResNet_tiny", 10, size, size
    c.batch_size, c.dtype = BATCH, dtype
    for k, v in overrides.items():
        setattr(c, k, v)
    resolve_preprocessing(c)
    trainer = builder.build(Specs.from_config(c), parallel.make_mesh(), steps_per_epoch=10)
    return trainer, trainer.init_state()


def _batch(mesh, seed=0, n=BATCH, size=SIZE):
    rng = np.random.RandomState(seed)
    return parallel.host_to_global({
        "image": rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
        "label": rng.randint(0, 10, (n,)).astype(np.int32),
    }, mesh)


@pytest.mark.heavy
def test_float16_overflow_skips_the_step_and_halves_the_scale():
    t, state = _setup("float16", loss_scale=2.0**40)  # overflows float16 grads
    mesh, step = t.mesh, t.train_step
    before = jax.tree.map(np.asarray, state.params)
    metrics = zeros_metrics(TRAIN_METRICS, mesh)
    state, metrics = step(state, metrics, _batch(mesh))
    assert fetch_metrics(metrics)["skipped_steps"] == 1
    assert float(state.loss_scale.scale) == 2.0**39
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    # The optimizer's step counts advance with state.step (the lr schedule does not lag behind
    # after a skipped step); its moments stay as they were.
    counts, moments = [], []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.opt_state):
        is_count = getattr(path[-1], "name", None) == "count"
        (counts if is_count else moments).append(np.asarray(leaf))
    assert counts and all(int(n) == int(state.step) == 1 for n in counts)
    assert all(not np.any(m) for m in moments if m.ndim)  # momentum traces still zero


def _flat_params(state) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(state.params)}


# What bfloat16 and float16 steps may differ from float32 by, after 2 steps of ResNet_tiny
# (mixup, label smoothing) from one state on the same batches; measured on a 2-core AMD EPYC,
# jax 0.10.2, in brackets: the mean loss of each step, relative, and the parameter change of
# the 2 steps, as |change - float32 change| / |float32 change| over all parameters.
# Low-precision BatchNorm backward on 8 examples loses much, hence the wide update bounds; they
# still catch images not normalised with mean/std (bf16: 0.92), gradients left scaled (fp16:
# 3e4) or unscaled by twice the scale (0.50).
LOW_PRECISION_TOLERANCE = {  # dtype: (loss, update)
    "bfloat16": (3e-3, 0.35),  # (1.2e-3, 0.17)
    "float16": (2e-3, 0.2),  # (2.2e-4, 0.085)
}


@pytest.mark.heavy
@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_train_step_dtypes_keep_float32_params_and_follow_float32():
    """2 steps in float32, bfloat16 and float16 from the same initial state and batches: the
    parameters stay float32 and all move, no float16 step is skipped, and the low-precision
    losses and parameter changes are float32's within the tolerance above."""
    runs = {}
    for dtype in ("float32", "bfloat16", "float16"):
        t, state = _setup(dtype, use_mixup=True, use_label_smoothing=True)
        start, losses = _flat_params(state), []
        for i in range(2):
            state, metrics = t.train_step(state, zeros_metrics(TRAIN_METRICS, t.mesh),
                                          _batch(t.mesh, i))
            m = fetch_metrics(metrics)
            assert m["count"] == BATCH and np.isfinite(m["loss"]) and m["skipped_steps"] == 0
            losses.append(m["loss"])
        assert int(state.step) == 2
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params)), dtype
        end = _flat_params(state)
        assert all(not np.allclose(start[k], end[k]) for k in start), dtype
        runs[dtype] = start, np.asarray(losses), end

    start, want_losses, want = runs["float32"]
    change = sum(float(np.sum((want[k] - start[k]) ** 2)) for k in start)
    for dtype, (loss_tol, update_tol) in LOW_PRECISION_TOLERANCE.items():
        start_low, losses, got = runs[dtype]
        for k in start:  # parameters are float32 and initialised alike in every dtype
            np.testing.assert_array_equal(start_low[k], start[k], err_msg=k)
        np.testing.assert_allclose(losses, want_losses, rtol=loss_tol, err_msg=dtype)
        assert not np.array_equal(losses, want_losses), dtype  # really another dtype
        off = sum(float(np.sum((got[k] - want[k]) ** 2)) for k in start)
        assert (off / change) ** 0.5 < update_tol, (dtype, (off / change) ** 0.5)


@pytest.mark.heavy
def test_metrics_accumulate_on_device_without_reset():
    """One accumulator over 2 steps holds the sums of the 2 steps' own metrics: the means it
    gives are the count-weighted means of each step's."""
    t, state = _setup()
    mesh, step = t.mesh, t.train_step
    again = t.init_state()  # the same initial state for the step-by-step run
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    metrics = zeros_metrics(TRAIN_METRICS, mesh)
    seeds = (5, 6)  # batches on which the steps get some examples right: no sum is 0 + 0
    for seed in seeds:
        state, metrics = step(state, metrics, _batch(mesh, seed))
    assert isinstance(metrics["loss"], jax.Array)
    two = fetch_metrics(metrics)
    each = []
    for seed in seeds:
        again, m = step(again, zeros_metrics(TRAIN_METRICS, mesh), _batch(mesh, seed))
        each.append(fetch_metrics(m))
    assert [m["count"] for m in each] == [BATCH, BATCH] and two["count"] == 2 * BATCH
    for k in ("loss", "top1", "top5"):
        assert two[k] == pytest.approx(sum(m[k] * m["count"] for m in each) / two["count"],
                                       rel=1e-6), k
    assert each[0]["loss"] != pytest.approx(each[1]["loss"], rel=1e-3)  # two different steps
    assert all(0.0 < m["top1"] < m["top5"] < 1.0 for m in each), each
    assert each[0]["top1"] != each[1]["top1"] or each[0]["top5"] != each[1]["top5"], each
    assert two["skipped_steps"] == 0


@pytest.mark.heavy
def test_eval_padding_counts_nowhere():
    t, state = _setup()
    mesh, eval_step = t.mesh, t.eval_step
    real = _batch(mesh, 5, n=6)
    m_real = fetch_metrics(eval_step(state.variables(), zeros_metrics(EVAL_METRICS, mesh),
                                     {**real, "mask": jnp.ones(6, bool)}))
    rng = np.random.RandomState(5)
    images = rng.randint(0, 256, (6, SIZE, SIZE, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, (6,)).astype(np.int32)
    padded = parallel.host_to_global({
        "image": np.concatenate([images, np.full((2, SIZE, SIZE, 3), 255, np.uint8)]),
        "label": np.concatenate([labels, np.zeros(2, np.int32)]),
        "mask": np.array([True] * 6 + [False] * 2),
    }, mesh)
    m_pad = fetch_metrics(eval_step(state.variables(), zeros_metrics(EVAL_METRICS, mesh), padded))
    assert m_pad["count"] == m_real["count"] == 6
    for k in ("loss", "top1", "top5"):
        assert m_pad[k] == pytest.approx(m_real[k], rel=1e-5)


def test_eval_flip_averages_the_logits_of_the_image_and_its_mirror():
    """eval_flip: the loss is that of the mean of the model's logits on each image and on its
    mirror, computed here apart from the step; without it the step is as before."""
    t, state = _setup(eval_flip=True)
    plain, _ = _setup()
    rng = np.random.RandomState(7)
    images = rng.randint(0, 256, (BATCH, SIZE, SIZE, 3)).astype(np.uint8)
    labels = rng.randint(0, 10, (BATCH,)).astype(np.int32)
    batch = {"image": images, "label": labels, "mask": np.ones(BATCH, bool)}
    variables = state.variables()
    m_flip = fetch_metrics(t.eval_step(variables, zeros_metrics(EVAL_METRICS, t.mesh),
                                       parallel.host_to_global(batch, t.mesh)))
    m_plain = fetch_metrics(plain.eval_step(variables, zeros_metrics(EVAL_METRICS, t.mesh),
                                            parallel.host_to_global(batch, t.mesh)))

    def logits(x):
        x = normalize(jnp.asarray(x), t.specs.step.mean, t.specs.step.std, jnp.float32)
        return np.asarray(t.model.apply(variables, x, train=False), np.float64)

    def loss(z):
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(BATCH), labels]))

    assert m_flip["loss"] == pytest.approx(loss((logits(images) + logits(images[:, :, ::-1])) / 2),
                                           rel=1e-5)
    assert m_plain["loss"] == pytest.approx(loss(logits(images)), rel=1e-5)
    assert m_flip["loss"] != pytest.approx(m_plain["loss"], rel=1e-5)


def test_normalize_matches_numpy():
    x = np.arange(0, 256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    want = (x / 255.0 - np.array(mean)) / np.array(std)
    got = np.asarray(normalize(jnp.asarray(x), mean, std, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # a GoogLeNet train step at 64 px; its aux losses run in test_forward_backward
def test_auxiliary_heads_are_trained():
    """GoogLeNet's aux heads get gradients through the 0.3-weighted aux losses, as in Paddle
    (googlenet's train.py: CE(main) + 0.3 CE(aux1) + 0.3 CE(aux2))."""
    t, state = _setup(size=64, model="GoogLeNet", l2_decay=0.0)
    assert t.model.aux_loss_weights == {"aux1": 0.3, "aux2": 0.3}
    mesh, step = t.mesh, t.train_step
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, zeros_metrics(TRAIN_METRICS, mesh), _batch(mesh, size=64))
    assert np.isfinite(fetch_metrics(metrics)["loss"])
    aux = [k for k in before if k.startswith(("out1", "out2", "fc_o", "conv_o"))]
    assert len(aux) == 6, sorted(before)
    for name in aux:
        assert not np.allclose(before[name]["kernel"], np.asarray(state.params[name]["kernel"]))
    # and every parameter of the net learns (no L2 term: a change is a gradient)
    after = jax.tree_util.tree_leaves_with_path(state.params)
    same = [jax.tree_util.keystr(p) for (p, a), b in zip(after, jax.tree_util.tree_leaves(before))
            if np.array_equal(np.asarray(a), b)]
    assert not same, f"parameters that did not move: {same}"


@pytest.mark.parametrize("dtype, bn_stats", [("float32", "global"), ("float16", "device")])
@pytest.mark.heavy
def test_frozen_backbone_gets_no_backward_pass(dtype, bn_stats):
    """freeze_backbone: only the head is differentiated. The backbone stays bit-equal, its
    BatchNorm statistics still follow the data, and the compiled step has no backward
    convolutions."""
    t, state = _setup(dtype, freeze_backbone=True, bn_stats=bn_stats)
    head = t.head  # the builder finds the classifier's tensors
    assert head == {"head/kernel", "head/bias"}
    mesh, model, tx = t.mesh, t.model, t.tx
    metrics = zeros_metrics(TRAIN_METRICS, mesh)

    def conv_count(step) -> int:
        return step.lower(state, metrics, _batch(mesh)).compile().as_text().count(" convolution(")

    frozen_step = t.train_step
    full_step = make_train_step(model, tx, t.specs.step, mesh)
    n_convs = sum(1 for p, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]
                  if optim.path_name(p).endswith("kernel") and not optim.path_name(p).startswith("head"))
    assert conv_count(frozen_step) <= n_convs
    # Without `head` the step differentiates everything; XLA drops the unused backbone
    # gradients by itself in float32 with global BN, but not when fp16's finite check or the
    # per-device psum reads them.
    assert (conv_count(full_step) > n_convs) == (dtype == "float16" or bn_stats == "device")

    def flat(tree):
        return {optim.path_name(p): np.asarray(v)
                for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

    params0, stats0 = flat(state.params), flat(state.batch_stats)
    for i in range(2):
        state, metrics = frozen_step(state, metrics, _batch(mesh, i))
    assert np.isfinite(fetch_metrics(metrics)["loss"]) and int(state.step) == 2
    params2, stats2 = flat(state.params), flat(state.batch_stats)
    for name, value in params0.items():
        if name in head:
            assert not np.allclose(value, params2[name]), name
        else:
            np.testing.assert_array_equal(value, params2[name], err_msg=name)
    assert all(not np.allclose(stats0[k], stats2[k]) for k in stats0)


@pytest.mark.slow  # the README's test command stays under 15 minutes; CI runs it
def test_auto_augment_on_device_runs_in_the_step_on_its_own_key():
    """auto_augment_on="device": the policy changes what the model sees (another loss), and
    the same key gives the same step; on the host (the default) the step is untouched."""
    batch = None
    losses = {}
    for name, fields in {"off": {}, "host": {"auto_augment": "trivial"},
                         "device": {"auto_augment": "trivial", "auto_augment_on": "device"}}.items():
        t, _ = _setup(**fields)
        batch = batch if batch is not None else _batch(t.mesh)
        runs = []
        for _ in range(2):  # a fresh state each time: the step donates it
            _, metrics = t.train_step(t.init_state(), zeros_metrics(TRAIN_METRICS, t.mesh),
                                      batch)
            runs.append(fetch_metrics(metrics)["loss"])
        assert runs[0] == runs[1], name  # a function of the state's key
        losses[name] = runs[0]
    assert losses["host"] == losses["off"]  # on the host the step has nothing to do
    assert losses["device"] != losses["off"]
