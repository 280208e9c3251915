"""DenseNet121-264 and DarkNet53: registry entries, widths and feature maps (``jax.eval_shape``,
no compile), a real forward/backward at small resolution, class-count and bf16 overrides, and
Fluid's dropout inside a dense layer. Logits parity with Paddle is in test_paddle_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import abstract_variables, random_variables, train_step_checks

import flaxcls

DENSENETS = {  # name: (stem width, growth, layers per block, final width) from densenet.py
    "DenseNet121": (64, 32, (6, 12, 24, 16), 1024),
    "DenseNet161": (96, 48, (6, 12, 36, 24), 2208),
    "DenseNet169": (64, 32, (6, 12, 32, 32), 1664),
    "DenseNet201": (64, 32, (6, 12, 48, 32), 1920),
    "DenseNet264": (64, 32, (6, 12, 64, 48), 2688),
}


def abstract_features(model, size: int, batch: int = 1):
    """(logits, features) shapes, traced once together with init."""
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)

    def outputs(key, x):
        return model.init_with_output(key, x, return_features=True)[0]

    return jax.eval_shape(outputs, jax.random.key(0), x)



@pytest.mark.parametrize("name", [*DENSENETS, "DarkNet53"])
def test_model_cfg(name):
    cfg = flaxcls.get_model_cfg(name)
    assert cfg.snake_name == name.lower() and flaxcls.get_model_cfg(name.lower()).name == name
    assert cfg.family == ("darknet" if name == "DarkNet53" else "densenet")
    assert cfg.num_classes == 1000 and cfg.interpolation == "bilinear"
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    size = 256 if name == "DarkNet53" else 224
    assert (cfg.input_size, cfg.crop_size, cfg.resize_short_size) == (size, size, 256)
    assert 0.7 < cfg.top1 < cfg.top5 < 1.0
    assert cfg.first_conv == ("stem/conv" if name == "DarkNet53" else "stem_conv")
    assert cfg.classifier == "head"


def test_published_accuracies():
    # Rows of the PaddleCV README table (top-1 %, top-5 %).
    assert flaxcls.get_model_cfg("DenseNet121").top1 == pytest.approx(0.7566)
    assert flaxcls.get_model_cfg("DenseNet264").top5 == pytest.approx(0.9385)
    assert flaxcls.get_model_cfg("DarkNet53").top1 == pytest.approx(0.7804)
    assert flaxcls.get_model_cfg("DarkNet53").top5 == pytest.approx(0.9405)


# ---------------------------------------------------------------------- structure (no compile)


@pytest.mark.parametrize("name", list(DENSENETS))
def test_densenet_widths_and_maps(name):
    stem, growth, blocks, final = DENSENETS[name]
    model = flaxcls.create_model(name)
    assert (model.stem_width, model.growth_rate, tuple(model.block_sizes)) == (stem, growth, blocks)
    assert model.num_features()[-1] == final and model.dropout_rate == 0.0
    logits, feats = abstract_features(model, 224)
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    assert feats["stem"].shape == (1, 56, 56, stem)
    widths = model.num_features()
    for b, depth in enumerate(blocks):
        # Block b's output: its input plus depth * growth channels, at stride 4 * 2**b.
        assert feats[f"stage{b + 1}"].shape == (1, 56 >> b, 56 >> b, widths[b] + depth * growth)
    assert feats["pooled"].shape == (1, final)


def test_densenet_layer_and_transition_shapes():
    params = abstract_variables(flaxcls.create_model("DenseNet121"), 224)["params"]
    first, last = params["block1_layer1"], params["block4_layer16"]
    assert first["bn1"]["scale"].shape == (64,)  # pre-activation BN on the block input
    assert first["conv1"]["kernel"].shape == (1, 1, 64, 128)  # bn_size 4 * growth 32
    assert first["conv2"]["kernel"].shape == (3, 3, 128, 32)
    assert last["conv1"]["kernel"].shape == (1, 1, 992, 128)
    assert params["transition1"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert "transition4" not in params  # the last block ends in final_bn, no conv
    assert params["final_bn"]["scale"].shape == (1024,)
    assert params["head"]["kernel"].shape == (1024, 1000)


def test_darknet53_widths_and_maps():
    model = flaxcls.create_model("DarkNet53")
    assert tuple(model.stage_sizes) == (1, 2, 8, 8, 4)
    variables = abstract_variables(model, 256)
    params = variables["params"]
    assert params["stem"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert params["stem_downsample"]["conv"]["kernel"].shape == (3, 3, 32, 64)
    assert params["stage1_block0"]["reduce"]["conv"]["kernel"].shape == (1, 1, 64, 32)
    assert params["stage5_block3"]["expand"]["conv"]["kernel"].shape == (3, 3, 512, 1024)
    assert params["stage4_downsample"]["conv"]["kernel"].shape == (3, 3, 512, 1024)
    assert "stage5_downsample" not in params
    assert params["head"]["kernel"].shape == (1024, 1000)
    _, feats = abstract_features(model, 256)
    assert feats["stem"].shape == (1, 128, 128, 64)
    for s in range(5):
        assert feats[f"stage{s + 1}"].shape == (1, 128 >> s, 128 >> s, 64 << s)
    assert feats["pooled"].shape == (1, 1024)


# ----------------------------------------------------------------- real forward and backward


@pytest.mark.parametrize(
    "name,size,overrides",
    [
        # Every DenseNet layer has the same structure; 2 layers per block keep the compile short
        # (all 58 of DenseNet121 take about a minute on 2 cores) and still cover every kind of
        # module. The wide variant (stem 96, growth 48) at 40 px: stem 20 -> pool 10 -> block
        # maps 10, 5, 2 (the 2x2 pool drops an odd row, as Paddle's floor mode), 1.
        ("DenseNet161", 40, {"block_sizes": (2, 2, 2, 2)}),
        ("DarkNet53", 32, {}),  # all 52 convs; maps 16, 8, 4, 2, 1
    ],
    ids=["densenet", "darknet"],
)
def test_forward_backward(name, size, overrides):
    train_step_checks(flaxcls.create_model(name, num_classes=10, **overrides), size)


def test_num_classes_override_and_bfloat16():
    model = flaxcls.create_model("densenet121", num_classes=7, dtype="bfloat16",
                                 block_sizes=(1, 1, 1, 1))
    assert model.dtype == jnp.bfloat16
    darknet = abstract_variables(flaxcls.create_model("DarkNet53", num_classes=7), 64)
    assert darknet["params"]["head"]["kernel"].shape == (1024, 7)
    shapes = abstract_variables(model, 32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    assert shapes["params"]["head"]["kernel"].shape == (model.num_features()[-1], 7)
    variables = random_variables(model, 32)
    x = np.random.RandomState(2).standard_normal((2, 32, 32, 3)).astype(np.float32)

    @jax.jit
    def eval_and_train(variables, x):
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return model.apply(variables, x), train_logits, updates

    logits, train_logits, updates = eval_and_train(variables, x)
    for out in (logits, train_logits):
        assert out.shape == (2, 7) and out.dtype == jnp.float32
        assert np.isfinite(np.asarray(out)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(updates))


def test_densenet_dropout_is_fluids():
    """densenet.py's optional dropout (0 in every release) is Fluid's downgrade_in_infer:
    eval scales the new channels by 1 - p; training masks them without rescaling."""
    kw = {"num_classes": 4, "block_sizes": (1, 1)}
    plain = flaxcls.create_model("DenseNet121", **kw)
    dropped = flaxcls.create_model("DenseNet121", dropout_rate=0.25, **kw)
    variables = random_variables(plain, 16)
    x = np.random.RandomState(3).standard_normal((2, 16, 16, 3)).astype(np.float32)

    @jax.jit
    def run(variables, x):
        _, a = plain.apply(variables, x, return_features=True)
        _, b = dropped.apply(variables, x, return_features=True)
        (_, c), _ = dropped.apply(variables, x, train=True, return_features=True,
                                  rngs={"dropout": jax.random.key(0, impl="rbg")},
                                  mutable=["batch_stats"])
        return a["stage1"], b["stage1"], c["stage1"]

    a, b, c = (np.asarray(f) for f in run(variables, x))
    stem = 64
    # stage1 = [input, new]: the input part is untouched, the 32 new channels scaled by 0.75.
    np.testing.assert_array_equal(b[..., :stem], a[..., :stem])
    np.testing.assert_allclose(b[..., stem:], 0.75 * a[..., stem:], rtol=1e-5, atol=1e-6)
    assert 0.1 < np.mean(c[..., stem:] == 0) < 0.4  # about a quarter dropped, no rescale
