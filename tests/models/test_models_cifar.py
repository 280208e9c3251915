"""The CIFAR-sized models (not in the 2019 zoo): structure, counts, statistics, a train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_checks import train_step_checks

import flaxcls
from flaxcls.models.resnet import CIFAR10_MEAN, CIFAR10_STD


def _shapes(name: str, size: int = 32):
    model = flaxcls.create_model(name)
    return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                                 jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))


def test_resnet18_cifar_is_the_common_cifar_baseline():
    """ResNet-18 on a 3x3/1 stem without max pool and an identity first shortcut: 11,173,962
    parameters for 10 classes, the count the common CIFAR-10 ResNet-18 has."""
    cfg = flaxcls.get_model_cfg("resnet18_cifar")
    assert (cfg.family, cfg.num_classes, cfg.input_size, cfg.crop_size,
            cfg.resize_short_size) == ("cifar", 10, 32, 32, 32)
    assert (cfg.mean, cfg.std) == (CIFAR10_MEAN, CIFAR10_STD)
    model, v = _shapes("ResNet18_cifar")
    assert sum(x.size for x in jax.tree.leaves(v["params"])) == 11_173_962
    params = v["params"]
    assert params["stem_conv1"]["kernel"].shape == (3, 3, 3, 64)
    assert "shortcut_conv" not in params["stage1_block0"]  # identity on the first block
    assert params["stage2_block0"]["shortcut_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert params["head"]["kernel"].shape == (512, 10)
    # 32 px in, 4x4 before the pool: three stride-2 stages after a stride-1 stem
    feats = jax.eval_shape(
        lambda x: model.apply(jax.tree.map(jnp.zeros_like, v), x, return_features=True),
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))[1]
    assert feats["stem"].shape == (2, 32, 32, 64) and feats["stage4"].shape == (2, 4, 4, 512)


def test_the_paddle_resnet18_still_projects_its_first_block():
    _, v = _shapes("ResNet18", 64)
    assert "shortcut_conv" in v["params"]["stage1_block0"]


def test_speednet_is_three_pooled_groups_on_a_stem():
    """Stem 3x3 conv (32 px), then per group conv -> max pool -> BN -> GELU -> conv -> BN ->
    GELU at widths 64, 256, 256, a global max pool and a bias-free head: 1,978,016 parameters
    (stem 864 + 64; groups 55,552 + 738,304 + 1,180,672; head 2,560), and a quarter of the
    convolution weights at half the widths."""
    cfg = flaxcls.get_model_cfg("speednet_cifar")
    assert (cfg.family, cfg.num_classes, cfg.crop_size, cfg.mean) == ("cifar", 10, 32,
                                                                      CIFAR10_MEAN)
    model, v = _shapes("SpeedNet_cifar")
    params = v["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == 1_978_016
    assert params["group2_conv1"]["kernel"].shape == (3, 3, 64, 256)
    assert params["head"] == {"kernel": jax.ShapeDtypeStruct((256, 10), jnp.float32)}
    feats = jax.eval_shape(
        lambda x: model.apply(jax.tree.map(jnp.zeros_like, v), x, return_features=True),
        jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32))[1]
    assert [feats[k].shape[1:] for k in ("stem", "group1", "group2", "group3", "pooled")] == [
        (32, 32, 32), (16, 16, 64), (8, 8, 256), (4, 4, 256), (256,)]
    _, half = _shapes("SpeedNet_cifar_x0_5")
    assert sum(x.size for x in jax.tree.leaves(half["params"])) == 495_952


def test_speednet_scales_its_logits_and_pools_the_maximum():
    model = flaxcls.create_model("SpeedNet_cifar_x0_5")
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    v = model.init(jax.random.key(0), x)
    logits, feats = model.apply(v, x, return_features=True)
    want = (feats["group3"].max(axis=(1, 2)) @ v["params"]["head"]["kernel"]) / 9
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_speednet_trains():
    train_step_checks(flaxcls.create_model("SpeedNet_cifar_x0_5"), 32)


@pytest.mark.heavy
def test_resnet18_cifar_trains():
    train_step_checks(flaxcls.create_model("ResNet18_cifar"), 32)


def test_cifar_statistics_are_those_of_the_training_images():
    """The mean/std on the 0-1 scale of every 10th CIFAR-10 JPEG training image where they
    are at hand (../shared/data), within 0.01: the rounding of the 4 digits plus the JPEG
    loss."""
    import tarfile
    from io import BytesIO

    from conftest import REPO
    from PIL import Image

    tarball = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    if not tarball.exists():
        pytest.skip(f"{tarball} not present")
    sums, squares, n, seen = np.zeros(3), np.zeros(3), 0, 0
    with tarfile.open(tarball) as tar:
        for member in tar:
            if "/train/" not in member.name or not member.name.endswith(".jpg"):
                continue
            seen += 1
            if seen % 10 == 0:  # every 10th: 5,000 images across all classes
                img = np.asarray(Image.open(BytesIO(tar.extractfile(member).read())).convert(
                    "RGB"), np.float64) / 255.0
                sums += img.mean((0, 1))
                squares += (img ** 2).mean((0, 1))
                n += 1
    mean = sums / n
    std = np.sqrt(squares / n - mean ** 2)
    np.testing.assert_allclose(mean, CIFAR10_MEAN, atol=0.01)
    np.testing.assert_allclose(std, CIFAR10_STD, atol=0.01)
