"""Logits parity of every model with the 2019 Paddle code, through the Paddle-name converter.

The fixtures (tests/fixtures/paddle2019/*.json, copied from the shared reference set) hold the
parameter list Paddle built, a numpy-only weight recipe and the logits Paddle computed for a fixed
input. Matching those logits to float32 round-off proves the structure (padding, pooling, BN,
shortcut placement) and the converter's layout changes are exact. The weights travel the way a
user's do: written in Paddle's per-variable file format, read back by our reader, converted; a few
small models also go through every other form (.tar, .tar.gz, .zip, combined file, .pdparams).
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from paddle_writers import combined_bytes, tensor_record, write_per_variable
from reference import FIXTURES, load_manifest, regenerate

import flaxcls
from flaxcls.convert import from_paddle, load_paddle_arrays, paddle_name_map, paddle_to_flax

FIXTURE_MODELS = sorted(p.stem for p in FIXTURES.glob("*.json"))
# Bigger models run in the slow set only: CI's 2 cores, and the run under 15 minutes. Compile
# time grows with the number of tensors (DenseNet161-264: 806-1326; one DenseNet stays fast).
FAST_LIMIT = 50_000_000
FAST_TENSORS = 800


def _cases():
    for name in FIXTURE_MODELS:
        manifest = json.loads((FIXTURES / f"{name}.json").read_text())
        big = (manifest["total_params_trainable"] > FAST_LIMIT
               or len(manifest["params"]) > FAST_TENSORS)
        marks = [pytest.mark.slow] if big else [pytest.mark.heavy]
        yield pytest.param(name, marks=marks, id=name)


def _registered(name: str) -> None:
    try:
        flaxcls.get_model_cfg(name)
    except ValueError:
        pytest.skip(f"{name} is not in the registry yet")


@pytest.mark.parametrize("name", FIXTURE_MODELS)
def test_name_map_matches_paddle_parameter_list(name):
    _registered(name)
    manifest = load_manifest(name)
    mapping = paddle_name_map(name)
    assert sorted(mapping) == sorted(p[0] for p in manifest["params"])
    assert len(mapping) == manifest["num_param_tensors"]


@pytest.mark.parametrize("name", list(_cases()))
def test_logits_match_paddle(name, tmp_path):
    _registered(name)
    manifest = load_manifest(name)
    arrays, x_nchw, want = regenerate(manifest)
    folder = write_per_variable(tmp_path / f"{name}_pretrained", arrays)
    del arrays
    read = load_paddle_arrays(folder)
    shutil.rmtree(folder)  # up to 200 MB a model; pytest keeps old tmp dirs
    variables = paddle_to_flax(read, name)
    del read
    model = flaxcls.create_model(name)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    got = np.asarray(got)[0]
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, f"{name}: max|ours - paddle| / max|paddle| = {rel:.3g}"
    assert got.argmax() == manifest["logits_stats"]["argmax"]


def _conversion_error(arrays, name: str) -> list[str]:
    """The lines of the converter's refusal: the header naming the model, then one per tensor."""
    with pytest.raises(ValueError) as err:
        paddle_to_flax(arrays, name)
    return str(err.value).split("\n")


def test_converter_is_strict():
    arrays, _, _ = regenerate(load_manifest("ResNet18"))
    missing = dict(arrays)
    del missing["res3a_branch1_weights"], missing["bn5b_branch2b_variance"]
    assert _conversion_error(missing, "ResNet18") == [
        "cannot convert Paddle weights to ResNet18: 2 tensor(s) differ:",
        "  res3a_branch1_weights: missing from the Paddle weights",
        "  bn5b_branch2b_variance: missing from the Paddle weights",
    ]
    extra = {**arrays, "conv9_weights": np.zeros((1, 1, 1, 1))}
    assert _conversion_error(extra, "ResNet18") == [
        "cannot convert Paddle weights to ResNet18: 1 tensor(s) differ:",
        "  conv9_weights: in the Paddle weights but not in the model's name map",
    ]
    bad = {**arrays, "res2a_branch2a_weights": np.zeros((64, 64, 1, 1), np.float32)}
    assert _conversion_error(bad, "ResNet18") == [
        "cannot convert Paddle weights to ResNet18: 1 tensor(s) differ:",
        ("  res2a_branch2a_weights: Paddle weights (64, 64, 1, 1) vs model's name map "
         "(64, 64, 3, 3)"),
    ]
    # The vd tensors do not fit the plain ResNet18 (different stem).
    assert _conversion_error({**arrays, "conv1_1_weights": arrays["conv1_weights"]},
                             "ResNet18") == [
        "cannot convert Paddle weights to ResNet18: 1 tensor(s) differ:",
        "  conv1_1_weights: in the Paddle weights but not in the model's name map",
    ]


def test_converter_reports_faults_of_the_name_map(monkeypatch):
    # A map bug (a target the model lacks, two tensors for one leaf, a leaf nobody fills) is
    # listed after the weights' own mismatches, never converted around.
    from flaxcls.convert import paddle

    arrays, _, _ = regenerate(load_manifest("SqueezeNet1_1"))
    family_map = paddle._NAME_MAPS["squeezenet"]

    def broken(model, cfg):
        mapping = dict(family_map(model, cfg))
        mapping["conv1_offset"] = paddle.Target("params", ("conv1", "kernel"))
        mapping["conv10_offset"] = paddle.Target("params", ("conv11", "bias"))
        return mapping

    monkeypatch.setitem(paddle._NAME_MAPS, "squeezenet", broken)
    assert _conversion_error({**arrays, "conv9_weights": np.zeros(3)}, "SqueezeNet1_1") == [
        "cannot convert Paddle weights to SqueezeNet1_1: 5 tensor(s) differ:",
        "  conv9_weights: in the Paddle weights but not in the model's name map",
        "  conv1_offset: a second tensor for params/conv1/kernel",
        "  conv10_offset maps to params/conv11/bias, which the model lacks",
        "  params/conv1/bias: a model leaf that no Paddle tensor fills",
        "  params/conv10/bias: a model leaf that no Paddle tensor fills",
    ]


def test_converter_reads_num_classes_from_fc():
    arrays, _, _ = regenerate(load_manifest("ResNet18"))
    rng = np.random.RandomState(0)
    arrays["fc_0.w_0"] = rng.standard_normal((512, 7)).astype(np.float32)
    arrays["fc_0.b_0"] = np.zeros((7,), np.float32)
    variables = paddle_to_flax(arrays, "resnet18")
    assert variables["params"]["head"]["kernel"].shape == (512, 7)
    assert variables["batch_stats"]["stage1_block0"]["shortcut_bn"]["var"].shape == (64,)


def test_training_leftovers_are_ignored():
    arrays, _, _ = regenerate(load_manifest("ResNet18"))
    extra = {"conv1_weights_velocity_0": np.zeros((64, 3, 7, 7), np.float32),
             "learning_rate_0": np.zeros((1,), np.float32),
             "@LR_DECAY_COUNTER@": np.zeros((1,), np.int64)}
    a = paddle_to_flax(arrays, "ResNet18")
    b = paddle_to_flax({**arrays, **extra}, "ResNet18")
    np.testing.assert_array_equal(a["params"]["stem_conv1"]["kernel"],
                                  b["params"]["stem_conv1"]["kernel"])


def write_archive(path, arrays: dict[str, np.ndarray], top: str) -> None:
    """Per-variable files under a top-level folder, in a .tar, .tar.gz or .zip as downloaded."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            for name, array in arrays.items():
                zf.writestr(f"{top}/{name}", tensor_record(array))
        return
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tar:
        for name, array in arrays.items():
            data = tensor_record(array)
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["SqueezeNet1_1", "ShuffleNetV2_x0_25"])
def test_every_file_form_converts_the_same(name, tmp_path):
    """.tar, .tar.gz, .zip, combined file and .pdparams give exactly the folder's variables."""
    _registered(name)
    arrays, _, _ = regenerate(load_manifest(name))
    want = paddle_to_flax(arrays, name)
    forms = [tmp_path / f"{name}_pretrained{ext}" for ext in (".tar", ".tar.gz", ".zip")]
    for path in forms:
        write_archive(path, arrays, f"{name}_pretrained")
    forms.append(tmp_path / "__params__")
    forms[-1].write_bytes(combined_bytes(arrays))
    forms.append(tmp_path / f"{name}.pdparams")
    forms[-1].write_bytes(pickle.dumps(arrays, protocol=4))
    for path in forms:
        got = from_paddle(path, name)
        flat_got = jax.tree_util.tree_leaves_with_path(got)
        flat_want = jax.tree_util.tree_leaves_with_path(want)
        assert [p for p, _ in flat_got] == [p for p, _ in flat_want], path.name
        for (p, a), (_, b) in zip(flat_got, flat_want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"{path.name}: {jax.tree_util.keystr(p)}")
