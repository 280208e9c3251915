"""DenseNet121-264 and DarkNet53: widths and feature maps (``jax.eval_shape``, no compile) and
Fluid's dropout inside a dense layer. The generic checks (ModelCfg, accuracies, counts, a real
forward/backward, class counts, bf16) are in test_models.py; logits parity with Paddle in
tests/convert/test_paddle_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import outputs_of, params_of, random_variables

import flaxcls

DENSENETS = {  # name: (stem width, growth, layers per block, final width) from densenet.py
    "DenseNet121": (64, 32, (6, 12, 24, 16), 1024),
    "DenseNet161": (96, 48, (6, 12, 36, 24), 2208),
    "DenseNet169": (64, 32, (6, 12, 32, 32), 1664),
    "DenseNet201": (64, 32, (6, 12, 48, 32), 1920),
    "DenseNet264": (64, 32, (6, 12, 64, 48), 2688),
}


# ---------------------------------------------------------------------- structure (no compile)


@pytest.mark.parametrize("name", list(DENSENETS))
def test_densenet_widths_and_maps(name):
    stem, growth, blocks, final = DENSENETS[name]
    model = flaxcls.create_model(name)
    assert (model.stem_width, model.growth_rate, tuple(model.block_sizes)) == (stem, growth, blocks)
    assert model.num_features()[-1] == final and model.dropout_rate == 0.0
    logits, feats = outputs_of(name)
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    assert feats["stem"].shape == (1, 56, 56, stem)
    widths = model.num_features()
    for b, depth in enumerate(blocks):
        # Block b's output: its input plus depth * growth channels, at stride 4 * 2**b.
        assert feats[f"stage{b + 1}"].shape == (1, 56 >> b, 56 >> b, widths[b] + depth * growth)
    assert feats["pooled"].shape == (1, final)


def test_densenet_layer_and_transition_shapes():
    params = params_of("DenseNet121")
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
    assert tuple(flaxcls.create_model("DarkNet53").stage_sizes) == (1, 2, 8, 8, 4)
    params = params_of("DarkNet53")
    assert params["stem"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert params["stem_downsample"]["conv"]["kernel"].shape == (3, 3, 32, 64)
    assert params["stage1_block0"]["reduce"]["conv"]["kernel"].shape == (1, 1, 64, 32)
    assert params["stage5_block3"]["expand"]["conv"]["kernel"].shape == (3, 3, 512, 1024)
    assert params["stage4_downsample"]["conv"]["kernel"].shape == (3, 3, 512, 1024)
    assert "stage5_downsample" not in params
    assert params["head"]["kernel"].shape == (1024, 1000)
    _, feats = outputs_of("DarkNet53")
    assert feats["stem"].shape == (1, 128, 128, 64)
    for s in range(5):
        assert feats[f"stage{s + 1}"].shape == (1, 128 >> s, 128 >> s, 64 << s)
    assert feats["pooled"].shape == (1, 1024)


# ----------------------------------------------------------------------------------- dropout


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
