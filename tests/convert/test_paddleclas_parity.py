"""Logits parity with PaddleClas 2.x's ``legendary_models`` (ResNet, ResNet_vd, MobileNetV1, VGG)
through their ``.pdparams`` state-dict keys, and PaddleClas's names in the registry.

The fixtures (tests/fixtures/paddleclas/*.json, copied from the shared paddleclas-fixtures set:
PaddleClas @ d178931fc on paddlepaddle 3.3.1) hold the state-dict keys, shapes and roles in
state-dict order, the ``StructuredToParameterName@@`` entry ``paddle.save`` writes (automatic
names such as ``conv2d_0.w_0``: not to be trusted), the numpy weight recipe of the 2019 fixtures
and PaddleClas's logits. The weights travel as a user's do: written as ``paddle.save`` writes a
state dict, read and converted by ``from_paddle``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from paddle_writers import write_pdparams
from reference import FIXTURES, PADDLECLAS_FIXTURES, load_manifest, regenerate

import flaxcls
from flaxcls.convert import from_paddle, paddle_to_flax
from flaxcls.convert import paddle as converter
from flaxcls.registry import PADDLECLAS_ALIASES, register_model
from flaxcls.zoo import param_counts

MODELS = sorted(p.stem for p in PADDLECLAS_FIXTURES.glob("*.json"))
SLOW = {"ResNet101_vd", "VGG16"}  # 44.6M and 138M parameters: CI's 2 cores
# Every registered model PaddleClas's legendary_models build (so with a state-dict map).
LEGENDARY = {
    *(f"ResNet{d}" for d in (18, 34, 50, 101, 152)),
    *(f"ResNet{d}_vd" for d in (18, 34, 50, 101, 152, 200)),
    "ResNet50_vd_v2",  # the 2019 distilled weights of ResNet50_vd's network
    "MobileNetV1", "MobileNetV1_x0_25", "MobileNetV1_x0_5", "MobileNetV1_x0_75",
    "VGG11", "VGG13", "VGG16", "VGG19",
    *(f"MobileNetV3_{size}_{w}" for size in ("large", "small")
      for w in ("x0_35", "x0_5", "x0_75", "x1_0", "x1_25")),
    *(f"PPLCNet_{w}" for w in ("x0_25", "x0_35", "x0_5", "x0_75", "x1_0", "x1_5", "x2_0",
                               "x2_5")),
}


def _manifest(name: str) -> dict:
    return load_manifest(name, PADDLECLAS_FIXTURES)


def _zeros(manifest: dict) -> dict[str, np.ndarray]:
    """The fixture's state dict with every tensor zero (for tests where only shapes matter)."""
    return {key: np.zeros(shape, np.float32) for key, shape, _ in manifest["params"]}


def _refusal(path, name: str) -> list[str]:
    with pytest.raises(ValueError) as err:
        from_paddle(path, name)
    return str(err.value).split("\n")


# ----------------------------------------------------------------------------- the maps


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_map_matches_paddleclas_keys(name):
    manifest = _manifest(name)
    mapping = converter.state_dict_name_map(name)
    assert mapping is not None
    assert sorted(mapping) == sorted(key for key, _, _ in manifest["params"])
    assert len(mapping) == manifest["num_param_tensors"]


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_match_paddleclas(name):
    manifest = _manifest(name)
    params, bn_stats = param_counts(name)
    assert params == manifest["total_params_trainable"]
    assert bn_stats == manifest["total_bn_stat_values"]


@pytest.mark.heavy  # about 9 s: the abstract shapes of 20 models
def test_every_legendary_model_has_a_complete_state_dict_map():
    """Beyond the fixtures' depths and widths: each map fills every leaf of its model, with
    each tensor's shape in Paddle's layout, and exactly the legendary models have one."""
    with_map = set()
    for name in flaxcls.list_models():
        mapping = converter.state_dict_name_map(name)
        if mapping is None:
            continue
        with_map.add(name)
        cfg = flaxcls.get_model_cfg(name)
        expected = converter._expected_shapes(flaxcls.create_model(name), cfg)
        zeros = {key: np.broadcast_to(np.float32(0), converter.paddle_layout_shape(
            expected[(t.collection, *t.path)], t)) for key, t in mapping.items()}
        variables = paddle_to_flax(zeros, name)
        assert len(jax.tree_util.tree_leaves(variables)) == len(expected), name
    assert with_map == LEGENDARY


# ----------------------------------------------------------------------------- logits


def _cases():
    for name in MODELS:
        yield pytest.param(name, marks=[pytest.mark.slow if name in SLOW else pytest.mark.heavy],
                           id=name)


@pytest.mark.parametrize("name", list(_cases()))
def test_logits_match_paddleclas(name, tmp_path):
    manifest = _manifest(name)
    arrays, x_nchw, want = regenerate(manifest)
    path = write_pdparams(tmp_path / f"{name}_pretrained.pdparams", arrays,
                          manifest["param_names"])
    del arrays
    variables = from_paddle(path, name)
    path.unlink()  # up to 553 MB; pytest keeps old tmp dirs
    model = flaxcls.create_model(name)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    got = np.asarray(got)[0]
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, f"{name}: max|ours - paddleclas| / max|paddleclas| = {rel:.3g}"
    assert got.argmax() == manifest["logits_stats"]["argmax"]


# ----------------------------------------------------------------------------- naming choice


@functools.cache
def _mobilenet_v1() -> tuple[dict, dict[str, np.ndarray]]:
    manifest = _manifest("MobileNetV1")
    arrays, _, _ = regenerate(manifest)
    return manifest, arrays


def test_state_dict_keys_are_used_whatever_the_parameter_names(tmp_path):
    manifest, arrays = _mobilenet_v1()
    want = arrays["blocks.3.depthwise_conv.conv.weight"].transpose(2, 3, 1, 0)
    # As paddle.save writes it; with the automatic names shuffled (another creation order);
    # and a hand-made state dict without the names entry.
    names = manifest["param_names"]
    shuffled = dict(zip(names, reversed(list(names.values())), strict=True))
    for param_names in (names, shuffled, None):
        path = write_pdparams(tmp_path / "MobileNetV1.pdparams", arrays, param_names)
        got = from_paddle(path, "MobileNetV1")
        np.testing.assert_array_equal(got["params"]["stage3_block0"]["dw_conv"]["kernel"], want)
        np.testing.assert_array_equal(got["batch_stats"]["stem_bn"]["var"],
                                      arrays["conv.bn._variance"])


def test_parameter_names_are_used_when_they_fit(tmp_path):
    """A .pdparams whose names are the 2019 ones (PaddleClas's model_zoo files, ParamAttr) converts
    by name even for a family with a state-dict map; the keys are ignored."""
    arrays, _, _ = regenerate(load_manifest("MobileNetV1", FIXTURES))
    state_dict = {f"layer{i}.weight": a for i, a in enumerate(arrays.values())}
    param_names = dict(zip(state_dict, arrays, strict=True))
    path = write_pdparams(tmp_path / "MobileNetV1.pdparams", state_dict, param_names)
    got = from_paddle(path, "MobileNetV1")
    want = paddle_to_flax(arrays, "MobileNetV1")
    for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(got),
                              jax.tree_util.tree_leaves_with_path(want), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(p))


def test_class_count_is_read_from_the_state_dict(tmp_path):
    manifest = _manifest("MobileNetV1")
    state_dict = {**_zeros(manifest), "fc.weight": np.zeros((1024, 7), np.float32),
                  "fc.bias": np.zeros((7,), np.float32)}
    path = write_pdparams(tmp_path / "MobileNetV1.pdparams", state_dict, manifest["param_names"])
    assert from_paddle(path, "MobileNetV1")["params"]["head"]["kernel"].shape == (1024, 7)


# ----------------------------------------------------------------------------- refusals


def test_2019_weights_for_a_paddleclas_name_are_refused():
    # ResNet50's 2019 tensors (a tar: no state-dict keys) given for the SSLD ResNet50_vd: the
    # vb and vd networks differ in the stem only (the vd shortcut's avg pool has no weights).
    arrays = _zeros(load_manifest("ResNet50", FIXTURES))
    with pytest.raises(ValueError) as err:
        paddle_to_flax(arrays, "ResNet50_vd_ssld")
    lines = str(err.value).split("\n")
    assert lines[0] == "cannot convert Paddle weights to ResNet50_vd: 20 tensor(s) differ:"
    assert lines[1] == "  conv1_1_weights: missing from the Paddle weights"
    assert lines[16] == "  conv1_weights: in the Paddle weights but not in the model's name map"


def test_another_width_is_refused(tmp_path):
    manifest = _manifest("MobileNetV1")
    path = write_pdparams(tmp_path / "MobileNetV1_pretrained.pdparams", _zeros(manifest),
                          manifest["param_names"])
    lines = _refusal(path, "MobileNetV1_x0_5")
    # Every tensor but the classifier's bias has half the channels in MobileNetV1_x0_5.
    assert lines[0] == ("cannot convert Paddle weights to MobileNetV1_x0_5 (PaddleClas "
                        "state-dict keys): 136 tensor(s) differ:")
    assert lines[1] == ("  conv.conv.weight: Paddle weights (32, 3, 3, 3) vs model's name map "
                        "(16, 3, 3, 3)")
    assert lines[-1] == "  ... and 116 more"


def test_another_depth_or_version_is_refused(tmp_path):
    manifest = _manifest("ResNet18_vd")
    path = write_pdparams(tmp_path / "ResNet18_vd_pretrained.pdparams", _zeros(manifest),
                          manifest["param_names"])
    lines = _refusal(path, "ResNet34_vd_ssld")
    assert lines[0] == ("cannot convert Paddle weights to ResNet34_vd (PaddleClas state-dict "
                        "keys): 161 tensor(s) differ:")
    assert lines[1] == ("  blocks.2.conv0.conv.weight: Paddle weights (128, 64, 3, 3) vs model's "
                        "name map (64, 64, 3, 3)")
    assert lines[-1] == "  ... and 141 more"
    lines = _refusal(path, "ResNet18")  # the vd stem on the plain network
    assert lines[0] == ("cannot convert Paddle weights to ResNet18 (PaddleClas state-dict keys): "
                        "15 tensor(s) differ:")
    assert lines[1] == ("  stem.0.conv.weight: Paddle weights (32, 3, 3, 3) vs model's name map "
                        "(64, 3, 7, 7)")
    assert lines[6] == "  stem.1.conv.weight: in the Paddle weights but not in the model's name map"
    assert len(lines) == 16


# ----------------------------------------------------------------------------- registry


def test_paddleclas_names_resolve_to_our_models():
    for alias, (model, top1, top5) in PADDLECLAS_ALIASES.items():
        for spelling in (alias, alias.lower(), alias.upper().replace("_", "-")):
            assert flaxcls.get_model_cfg(spelling).name == model, spelling
        assert alias not in flaxcls.list_models()
        cfg = flaxcls.get_model_cfg(model)
        if top1 is not None:  # SSLD: better weights for the same network
            assert cfg.top1 < top1 < 1 and cfg.top5 < top5 < 1, alias
    assert flaxcls.get_model_cfg("ShuffleNetV2_x1_0").name == "ShuffleNetV2"
    assert flaxcls.create_model("ResNet50_vd_ssld").stage_sizes == (3, 4, 6, 3)
    with pytest.raises(ValueError, match="Did you mean: .*ResNet50_vd"):
        flaxcls.get_model_cfg("ResNet50_vd_sld")


def test_a_model_cannot_take_a_paddleclas_alias():
    with pytest.raises(ValueError, match=r"'resnet50_vd_ssld' is already an alias of ResNet50_vd"):
        register_model("ResNet50_vd_ssld", lambda **kw: None, family="resnet")
    assert "ResNet50_vd_ssld" not in flaxcls.list_models()


def test_ssld_weights_convert_under_their_name(tmp_path):
    manifest, arrays = _mobilenet_v1()
    path = write_pdparams(tmp_path / "MobileNetV1_ssld_pretrained.pdparams", arrays,
                          manifest["param_names"])
    got = from_paddle(path, "MobileNetV1_ssld")
    np.testing.assert_array_equal(got["params"]["head"]["kernel"], arrays["fc.weight"])


def test_fixture_copies_are_the_shared_ones():
    """tests/fixtures/paddleclas/ holds verbatim copies of the shared reference manifests."""
    shared = Path(__file__).resolve().parents[3] / "shared" / "reference" / "paddleclas-fixtures"
    if not shared.is_dir():
        pytest.skip(f"{shared} not present")
    for name in MODELS:
        assert json.loads((shared / f"{name}.json").read_text()) == _manifest(name), name
