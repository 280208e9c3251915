"""AlexNet, VGG11-19, SqueezeNet1_0/1_1 and GoogLeNet (the no-BN classics): feature-map geometry
(``jax.eval_shape``), inference-time dropout scaling, Paddle's pooling quirks, GoogLeNet's
auxiliary heads (parameters, outputs, converter layout), the flattened-fc layouts of the name
maps and the initialisers. The generic checks (ModelCfg, accuracies, counts, name maps, a real
forward/backward) are in test_models.py; logits parity with the fixtures in
tests/convert/test_paddle_parity.py (the VGGs there are in the slow set)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from model_checks import features_of, params_of, random_variables, variables_of
from reference import load_manifest, regenerate

import flaxcls
from flaxcls.convert import paddle_name_map, paddle_to_flax
from flaxcls.models import googlenet
from flaxcls.models.layers import DowngradeDropout


def _image(size: int, batch: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).standard_normal((batch, size, size, 3)).astype(np.float32)


# ------------------------------------------------------------------------- structure and shapes


def test_conv_biases_follow_the_2019_code():
    # VGG lost its conv biases in Aug 2019 ("fix vgg bias bug"); GoogLeNet never had any.
    for name in ("VGG11", "VGG19"):
        params = params_of(name)
        convs = [k for k in params if k.startswith("conv")]
        assert convs and all(set(params[k]) == {"kernel"} for k in convs), name
        assert all(set(params[f"fc{i}"]) == {"kernel", "bias"} for i in (6, 7, 8))
    google = traverse_util.flatten_dict(params_of("GoogLeNet"))
    conv_leaves = [k for k in google if len(google[k].shape) == 4]
    assert conv_leaves and all(k[-1] == "kernel" for k in conv_leaves)
    assert not any(k[-1] == "bias" and "conv" in k[-2] for k in google)
    assert not any(k[-1] == "bias" for k in google if k[0].startswith("ince"))
    # AlexNet and SqueezeNet: every conv biased.
    assert all(set(params_of("AlexNet")[f"conv{i}"]) == {"kernel", "bias"} for i in range(1, 6))
    squeeze = params_of("SqueezeNet1_1")
    assert set(squeeze["fire5"]["expand3x3"]) == {"kernel", "bias"}
    assert set(squeeze["conv10"]) == {"kernel", "bias"}


def test_vgg_depths():
    for name, sizes in {"VGG11": (1, 1, 2, 2, 2), "VGG13": (2, 2, 2, 2, 2),
                        "VGG16": (2, 2, 3, 3, 3), "VGG19": (2, 2, 4, 4, 4)}.items():
        params = params_of(name)
        for b, depth in enumerate(sizes, start=1):
            assert sum(k.startswith(f"conv{b}_") for k in params) == depth, (name, b)
    assert params_of("VGG16")["fc6"]["kernel"].shape == (25088, 4096)


def test_alexnet_and_vgg_maps():
    alex = features_of("AlexNet")
    assert alex["pool5"] == (1, 6, 6, 256) and alex["pooled"] == (1, 4096)
    assert params_of("AlexNet")["conv1"]["kernel"].shape == (11, 11, 3, 64)
    assert params_of("AlexNet")["fc6"]["kernel"].shape == (9216, 4096)
    vgg = features_of("VGG11")
    assert [vgg[f"block{b}"][1] for b in range(1, 6)] == [112, 56, 28, 14, 7]
    assert vgg["block5"] == (1, 7, 7, 512) and vgg["pooled"] == (1, 4096)


def test_squeezenet_pools_are_floor_mode():
    # Fluid's default ceil_mode=False (torchvision's SqueezeNet uses ceil mode: 55/27/13 for 1.0).
    # 1.0: conv1 7x7/2 pad 0 -> 109, pools -> 54, 26, 12. 1.1: conv1 3x3/2 pad 1 -> 112, then
    # 55, 27, 13.
    v10, v11 = features_of("SqueezeNet1_0"), features_of("SqueezeNet1_1")
    assert v10["fire9"] == (1, 12, 12, 512) and v11["fire9"] == (1, 13, 13, 512)
    assert v10["pooled"] == (1, 512)
    assert params_of("SqueezeNet1_0")["conv1"]["kernel"].shape == (7, 7, 3, 96)
    assert params_of("SqueezeNet1_1")["conv1"]["kernel"].shape == (3, 3, 3, 64)
    # The fire concat: expand1x1 then expand3x3.
    fire = params_of("SqueezeNet1_0")["fire9"]
    assert fire["squeeze1x1"]["kernel"].shape == (1, 1, 512, 64)
    assert fire["expand3x3"]["kernel"].shape == (3, 3, 64, 256)


def test_googlenet_maps_and_heads():
    feats = features_of("GoogLeNet")
    # Floor-mode stem pools: 112 -> 55 -> 27 (torchvision's ceil mode gives 56/28).
    assert feats["ince3a"] == (1, 27, 27, 256) and feats["ince3b"] == (1, 27, 27, 480)
    assert feats["ince4a"] == (1, 13, 13, 512) and feats["ince4d"] == (1, 13, 13, 528)
    assert feats["ince5b"] == (1, 6, 6, 1024) and feats["pooled"] == (1, 1024)
    assert feats["aux1"] == feats["aux2"] == (1, 1000)
    params = params_of("GoogLeNet")
    for i, cin in ((1, 512), (2, 528)):
        assert params[f"conv_o{i}"]["kernel"].shape == (1, 1, cin, 128)
        assert params[f"fc_o{i}"]["kernel"].shape == (1152, 1024)  # 128 x 3 x 3
        assert params[f"out{i}"]["kernel"].shape == (1024, 1000)
    assert params["out"]["kernel"].shape == (1024, 1000)
    assert params["ince4e"]["3x3_proj"]["kernel"].shape == (1, 1, 528, 128)
    assert params["ince5b"]["5x5"]["kernel"].shape == (5, 5, 48, 128)
    # Every class count follows num_classes, the aux heads' too.
    small = variables_of("GoogLeNet", num_classes=7)["params"]
    assert [small[k]["bias"].shape for k in ("out", "out1", "out2")] == [(7,)] * 3


def test_paddle_pool_sizes_truncate_like_c():
    assert googlenet.paddle_pool_size(6, 7, 7) == 1  # the main head: (6 - 7) / 7 -> 0, +1
    assert googlenet.paddle_pool_size(13, 5, 3) == 3
    assert googlenet.paddle_pool_size(9, 7, 7) == 1
    assert googlenet.paddle_pool_size(3, 5, 3) == 1
    with pytest.raises(ValueError, match="5/3 pool"):
        googlenet.paddle_pool_size(1, 5, 3)  # (1 - 5) / 3 -> -1: Paddle refuses as well


@pytest.mark.parametrize("size,window,stride", [(6, 7, 7), (9, 7, 7), (13, 5, 3), (8, 5, 3)])
def test_paddle_avg_pool(size, window, stride):
    x = np.random.RandomState(0).standard_normal((2, size, size, 3)).astype(np.float32)
    got = np.asarray(googlenet.paddle_avg_pool(jnp.asarray(x), window, stride))
    out = googlenet.paddle_pool_size(size, window, stride)
    want = np.zeros((2, out, out, 3))
    for i in range(out):
        for j in range(out):
            cells = x[:, i * stride:i * stride + window, j * stride:j * stride + window]
            want[:, i, j] = cells.mean(axis=(1, 2))  # windows clipped to the map: valid cells
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ inference dropout scaling


def _eval(name: str, size: int, num_classes: int = 5):
    model = flaxcls.create_model(name, num_classes=num_classes)
    variables = random_variables(model, size, random_bn=True)  # random biases too
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(
        variables, _image(size))
    p = jax.tree_util.tree_map(np.asarray, variables["params"])
    return np.asarray(logits), jax.tree_util.tree_map(np.asarray, feats), p


def _fc(x, layer):
    return x @ layer["kernel"] + layer["bias"]


def _relu(x):
    return np.maximum(x, 0)


def test_alexnet_dropout_scaling():
    # x0.5 on the flattened pool5 map before fc6 and on fc6's output before fc7; none before fc8.
    logits, feats, p = _eval("AlexNet", 67)
    flat = feats["pool5"].reshape(2, -1)
    np.testing.assert_allclose(feats["fc6"], _relu(_fc(0.5 * flat, p["fc6"])), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats["pooled"], _relu(_fc(0.5 * feats["fc6"], p["fc7"])),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, _fc(feats["pooled"], p["fc8"]), rtol=1e-4, atol=1e-4)


def test_vgg_dropout_scaling():
    # x0.5 after the ReLUs of fc6 and fc7; fc6 reads the block-5 map as is.
    logits, feats, p = _eval("VGG11", 32)
    flat = feats["block5"].reshape(2, -1)
    np.testing.assert_allclose(feats["fc6"], _relu(_fc(flat, p["fc6"])), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(feats["pooled"], _relu(_fc(0.5 * feats["fc6"], p["fc7"])),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, _fc(0.5 * feats["pooled"], p["fc8"]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["SqueezeNet1_0", "SqueezeNet1_1"])
def test_squeezenet_head(name):
    # x0.5 on fire9, then conv10 (1x1, biased) -> ReLU -> global average: scores >= 0.
    logits, feats, p = _eval(name, 64)
    conv10 = p["conv10"]
    scores = _relu(np.einsum("nhwc,cd->nhwd", 0.5 * feats["fire9"], conv10["kernel"][0, 0])
                   + conv10["bias"])
    np.testing.assert_allclose(logits, scores.mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)
    assert (logits >= 0).all()


def test_googlenet_main_head_dropout_scaling():
    # x0.6 (p = 0.4) on the pooled features; the output is the pre-softmax logits.
    logits, feats, p = _eval("GoogLeNet", 64)
    np.testing.assert_allclose(logits, _fc(0.6 * feats["pooled"], p["out"]), rtol=1e-4, atol=1e-4)
    model = flaxcls.create_model("GoogLeNet", num_classes=5)
    x = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    plain = jax.eval_shape(model.apply, variables_of("GoogLeNet", 64, 5), x)
    assert isinstance(plain, jax.ShapeDtypeStruct) and plain.shape == (2, 5)  # logits only


def test_downgrade_dropout_does_not_rescale_in_training():
    x = jnp.full((4, 1000), 3.0)
    drop = DowngradeDropout(0.7)
    y = np.asarray(drop.apply({}, x, train=True, rngs={"dropout": jax.random.key(0)}))
    assert set(np.unique(y)) == {0.0, 3.0}  # kept values unscaled (no 1 / keep)
    assert 0.25 < (y != 0).mean() < 0.35
    np.testing.assert_allclose(drop.apply({}, x), 0.3 * 3.0)


# ---------------------------------------------------------------------------------- name maps


def test_flattened_fc_layouts():
    # The fc layers fed by a flattened NCHW map in Paddle: their rows are reordered to NHWC.
    chw = {name: {n: t.flatten_chw for n, t in paddle_name_map(name).items() if t.flatten_chw}
           for name in ("AlexNet", "VGG16", "GoogLeNet", "SqueezeNet1_0")}
    assert chw["AlexNet"] == {"fc6_weights": (256, 6, 6)}
    assert chw["VGG16"] == {"fc6_weights": (512, 7, 7)}
    assert chw["GoogLeNet"] == {"fc_o1_weights": (128, 3, 3), "fc_o2_weights": (128, 3, 3)}
    assert chw["SqueezeNet1_0"] == {}
    assert "conv1_1_offset" not in paddle_name_map("VGG11")


def test_googlenet_aux_heads_follow_paddle():
    # Paddle's aux head, computed in NCHW with the Paddle-layout arrays: avg pool 5/3 -> conv_o
    # (1x1, linear) -> C,H,W flatten -> fc_o + ReLU -> x0.3 -> out{i}. Ours must agree, which
    # checks the fc_o row reorder of the converter (the fixture's logits cover only the main head).
    arrays, x_nchw, want = regenerate(load_manifest("GoogLeNet"))
    model = flaxcls.create_model("GoogLeNet")
    variables = paddle_to_flax(arrays, "GoogLeNet")
    with jax.default_matmul_precision("highest"):
        logits, feats = jax.jit(lambda v, x: model.apply(v, x, return_features=True))(
            variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    assert np.abs(np.asarray(logits)[0] - want).max() < 1e-4 * (1 + np.abs(want).max())
    for i, source in ((1, "ince4a"), (2, "ince4d")):
        m = np.asarray(feats[source], np.float64).transpose(0, 3, 1, 2)  # NCHW
        pooled = np.zeros(m.shape[:2] + (3, 3))
        for a in range(3):
            for b in range(3):
                pooled[:, :, a, b] = m[:, :, 3 * a:3 * a + 5, 3 * b:3 * b + 5].mean(axis=(2, 3))
        conv = np.einsum("nchw,oc->nohw", pooled, arrays[f"conv_o{i}_weights"][:, :, 0, 0])
        fc = _relu(conv.reshape(1, -1) @ arrays[f"fc_o{i}_weights"] + arrays[f"fc_o{i}_offset"])
        ref = (0.3 * fc) @ arrays[f"out{i}_weights"] + arrays[f"out{i}_offset"]
        got = np.asarray(feats[f"aux{i}"])
        assert np.abs(got - ref).max() < 1e-4 * (1 + np.abs(ref).max()), f"aux{i}"


def test_converter_reads_num_classes_from_every_head():
    arrays, _, _ = regenerate(load_manifest("GoogLeNet"))
    rng = np.random.RandomState(0)
    for head in ("out", "out1", "out2"):
        arrays[f"{head}_weights"] = rng.standard_normal((1024, 7)).astype(np.float32)
        arrays[f"{head}_offset"] = np.zeros((7,), np.float32)
    params = paddle_to_flax(arrays, "googlenet")["params"]
    assert [params[h]["kernel"].shape for h in ("out", "out1", "out2")] == [(1024, 7)] * 3
    squeeze, _, _ = regenerate(load_manifest("SqueezeNet1_1"))
    squeeze["conv10_weights"] = rng.standard_normal((3, 512, 1, 1)).astype(np.float32)
    squeeze["conv10_offset"] = np.zeros((3,), np.float32)
    assert paddle_to_flax(squeeze, "SqueezeNet1_1")["params"]["conv10"]["kernel"].shape == (
        1, 1, 512, 3)


def test_converter_rejects_conv_offsets_in_vgg():
    # Pre-Aug-2019 VGG weights had conv offsets; the late-2019 graph has nowhere to put them.
    arrays = {name: np.zeros(shape, np.float32) for name, shape, _ in
              load_manifest("VGG11")["params"] if not name.startswith("fc")}
    arrays["conv1_1_offset"] = np.zeros((64,), np.float32)
    with pytest.raises(ValueError) as err:
        paddle_to_flax(arrays, "VGG11")
    unexpected = [line for line in str(err.value).split("\n") if "but not in" in line]
    assert unexpected == ["  conv1_1_offset: in the Paddle weights but not in the model's name map"]


def test_init_follows_paddle():
    key = jax.random.key(0, impl="rbg")  # quick to compile; the initialisers are the models'
    alex = jax.jit(flaxcls.create_model("AlexNet").init)(key, jnp.zeros((1, 64, 64, 3)))["params"]
    # alexnet.py: weights and biases Uniform(+-1/sqrt(fan_in)).
    for layer, fan_in in (("conv1", 3 * 11 * 11), ("conv3", 192 * 9), ("fc7", 4096)):
        for leaf in ("kernel", "bias"):
            v = np.asarray(alex[layer][leaf])
            assert np.abs(v).max() <= fan_in**-0.5 and v.std() > 0.5 * fan_in**-0.5, layer
    # googlenet.py: conv_layer Uniform(+-sqrt(3 / (k*k*cin))); the 3x3_proj conv Fluid's default
    # MSRA normal. (One inception module: the whole net's init takes long to compile on a CPU.)
    module = googlenet.Inception(googlenet.INCEPTIONS["ince4a"])
    ince = jax.jit(module.init)(key, jnp.zeros((1, 5, 5, 480)))["params"]
    k = np.asarray(ince["5x5"]["kernel"])
    assert np.abs(k).max() <= np.sqrt(3 / (25 * 16))
    assert k.std() == pytest.approx(np.sqrt(1 / (25 * 16)), rel=0.1)
    k = np.asarray(ince["1x1"]["kernel"])
    assert np.abs(k).max() <= np.sqrt(3 / 480)
    proj = np.asarray(ince["3x3_proj"]["kernel"])
    assert proj.std() == pytest.approx(np.sqrt(2 / 480), rel=0.1)
    assert np.abs(proj).max() > np.sqrt(3 / 480)  # normal, not bounded like the uniform ones
