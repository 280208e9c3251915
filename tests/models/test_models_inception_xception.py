"""InceptionV4 and Xception41/65/71: the structural details of the 2019 Paddle code (explicit
paddings, the stem's 7x1/1x7 pair, separable convs pointwise-first, shortcuts), parameter counts
and Fluid's x0.8 dropout at inference. The generic checks (ModelCfg, accuracies, a real
forward/backward, class counts, bf16) are in test_models.py; logits parity with Paddle in
tests/convert/test_paddle_parity.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import count, outputs_of, params_of, random_variables, variables_of

import flaxcls

NAMES = ["InceptionV4", "Xception41", "Xception65", "Xception71"]

# (trainable params, BN running-stat values). InceptionV4 and Xception41 are the fixture counts
# (paddle2019-param-counts). Xception65/71 have no fixture; derived from Xception41:
# * a middle block = 3 separable convs of 728: pointwise 728*728 + depthwise 728*9 + two BNs
#   (2*728 trainable each) = 539,448 trainable and 2*2*728 = 2,912 running stats per conv, so
#   1,618,344 / 8,736 per block. Xception65 = Xception41 + 8 middle blocks:
#   22,919,600 + 12,946,752 = 35,866,352 and 100,320 + 69,888 = 170,208.
# * Xception71 = Xception65 + two more entry blocks (cin -> F): shortcut cin*F, separable convs
#   cin*F + 13F and F*F + 13F, running stats 8F. 256 -> 256: 203,264 / 2,048; 728 -> 728:
#   1,608,880 / 5,824 (the 256 -> 728 block moves but keeps its shape). Total 37,678,496 / 178,080.
COUNTS = {
    "InceptionV4": (42_679_816, 63_168),
    "Xception41": (22_919_600, 100_320),
    "Xception65": (35_866_352, 170_208),
    "Xception71": (37_678_496, 178_080),
}


def abstract_features(name: str, size: int | None = None, batch: int = 1, **overrides):
    """((logits, features), variables) shapes, cached."""
    return outputs_of(name, size, batch=batch, **overrides), variables_of(name, size, **overrides)


# ---------------------------------------------------------------------- structure (no compile)


@pytest.mark.parametrize("name", NAMES)
def test_param_counts(name):
    variables = variables_of(name)
    assert (count(variables["params"]), count(variables["batch_stats"])) == COUNTS[name]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))


def test_inception_v4_maps_and_kernels():
    model = flaxcls.create_model("InceptionV4")
    assert tuple(model.stage_sizes) == (4, 7, 3) and model.head_dropout == 0.2
    (logits, feats), variables = abstract_features("InceptionV4")
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    # 299 -> 149 -> 147 -> 147 -> 73 -> 71 -> 35: only explicit paddings, default 0.
    assert feats["stem"].shape == (1, 35, 35, 384)
    assert feats["stage1"].shape == (1, 35, 35, 384)
    assert feats["stage2"].shape == (1, 17, 17, 1024)
    assert feats["stage3"].shape == (1, 8, 8, 1536)
    assert feats["pooled"].shape == (1, 1536)
    stem = variables["params"]["stem"]
    # Paddle's inception_stem2_1x7 is a 7x1 kernel and inception_stem2_7x1 a 1x7 one.
    assert stem["mixed2_branch1_conv2"]["conv"]["kernel"].shape == (7, 1, 64, 64)
    assert stem["mixed2_branch1_conv3"]["conv"]["kernel"].shape == (1, 7, 64, 64)
    assert stem["mixed3_conv"]["conv"]["kernel"].shape == (3, 3, 192, 192)
    b = variables["params"]["inception_b1"]
    assert b["branch2_conv2"]["conv"]["kernel"].shape == (1, 7, 192, 224)
    assert b["branch2_conv3"]["conv"]["kernel"].shape == (7, 1, 224, 256)
    c = variables["params"]["inception_c3"]
    assert c["branch3_conv4a"]["conv"]["kernel"].shape == (1, 3, 512, 256)
    assert c["branch3_conv4b"]["conv"]["kernel"].shape == (3, 1, 512, 256)
    assert "bias" not in c["branch0_conv1"]["conv"]
    assert variables["params"]["head"]["kernel"].shape == (1536, 1000)


def test_inception_v4_smallest_input():
    (_, feats), _ = abstract_features("InceptionV4", 75)
    assert feats["stem"].shape[1:3] == (7, 7) and feats["stage3"].shape[1:3] == (1, 1)
    with pytest.raises(ValueError, match="at least 75x75"):
        abstract_features("InceptionV4", 74)


@pytest.mark.parametrize("name", ["Xception41", "Xception65", "Xception71"])
def test_xception_maps_and_blocks(name):
    (logits, feats), variables = abstract_features(name)
    params = variables["params"]
    assert logits.shape == (1, 1000)
    assert feats["stem"].shape == (1, 150, 150, 64)
    assert feats["entry"].shape == feats["middle"].shape == (1, 19, 19, 728)
    assert feats["exit"].shape == (1, 10, 10, 2048) and feats["pooled"].shape == (1, 2048)
    entry = 5 if name == "Xception71" else 3
    middle = 8 if name == "Xception41" else 16
    assert {k for k in params if k.startswith("entry_block")} == {
        f"entry_block{b}" for b in range(1, entry + 1)
    }
    assert {k for k in params if k.startswith("middle_block")} == {
        f"middle_block{b}" for b in range(1, middle + 1)
    }
    # Separable conv = 1x1 pointwise (cin -> F) first, then the 3x3 depthwise, a BN after each.
    sep = params["entry_block1"]["sep1"]
    assert sep["pointwise"]["kernel"].shape == (1, 1, 64, 128)
    assert sep["depthwise"]["kernel"].shape == (3, 3, 1, 128)
    assert set(sep) == {"pointwise", "pointwise_bn", "depthwise", "depthwise_bn"}
    # Entry and exit blocks have a plain 1x1 conv shortcut (no BN); middle blocks add identity.
    for b in range(1, entry + 1):
        assert set(params[f"entry_block{b}"]) == {"sep1", "sep2", "shortcut"}
    assert set(params["middle_block1"]) == {"sep1", "sep2", "sep3"}
    assert params["exit_block"]["shortcut"]["kernel"].shape == (1, 1, 728, 1024)
    assert params["exit_sep2"]["depthwise"]["kernel"].shape == (3, 3, 1, 2048)


def test_xception71_stride_one_entry_blocks():
    params = params_of("Xception71")
    # 256 -> 256 at stride 1 still projects through a 1x1 conv.
    assert params["entry_block3"]["shortcut"]["kernel"].shape == (1, 1, 256, 256)
    assert params["entry_block5"]["shortcut"]["kernel"].shape == (1, 1, 728, 728)


# ------------------------------------------------------------------------------ head dropout


def test_inception_v4_dropout_scales_by_0_8_at_inference():
    # One block per stage keeps the compile short; the head is what is tested.
    model = flaxcls.create_model("InceptionV4", num_classes=10, stage_sizes=(1, 1, 1))
    variables = random_variables(model, 75)
    variables["params"]["head"]["bias"] = np.linspace(-1, 1, 10, dtype=np.float32)
    x = np.random.RandomState(2).standard_normal((2, 75, 75, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(variables, x)
    head = variables["params"]["head"]
    want = 0.8 * np.asarray(feats["pooled"]) @ head["kernel"] + head["bias"]
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)
