"""The reference material the tests check against: the 2019 released model names and the
Paddle fixtures (tests/fixtures/paddle2019/<Model>.json: parameter list, weight recipe, logits),
and the PaddleClas 2.x fixtures of the same schema (tests/fixtures/paddleclas/<Model>.json)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "paddle2019"
PADDLE_BYTES = Path(__file__).resolve().parent / "fixtures" / "paddle_bytes"
PADDLECLAS_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "paddleclas"
README = Path(__file__).resolve().parents[1] / "README.md"

# The 56 released models of the 2019 table (ResNet50_vd_v2 shares ResNet50_vd's architecture).
RELEASED = ["AlexNet", "SqueezeNet1_0", "SqueezeNet1_1", "VGG11", "VGG13", "VGG16", "VGG19", "MobileNetV1", "MobileNetV2_x0_25", "MobileNetV2_x0_5", "MobileNetV2", "MobileNetV2_x1_5", "MobileNetV2_x2_0", "ShuffleNetV2_x0_25", "ShuffleNetV2_x0_33", "ShuffleNetV2_x0_5", "ShuffleNetV2", "ShuffleNetV2_x1_5", "ShuffleNetV2_x2_0", "ShuffleNetV2_swish", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet50_vc", "ResNet50_vd", "ResNet101_vd", "ResNet152_vd", "ResNet200_vd", "ResNeXt50_32x4d", "ResNeXt50_vd_32x4d", "ResNeXt50_64x4d", "ResNeXt50_vd_64x4d", "ResNeXt101_32x4d", "ResNeXt101_64x4d", "ResNeXt101_vd_64x4d", "ResNeXt152_32x4d", "ResNeXt152_64x4d", "DenseNet121", "DenseNet161", "DenseNet169", "DenseNet201", "DenseNet264", "SE_ResNeXt50_32x4d", "SE_ResNeXt101_32x4d", "SENet154_vd", "GoogLeNet", "Xception41", "InceptionV4", "DarkNet53", "ResNeXt101_32x8d_wsl", "ResNeXt101_32x16d_wsl", "ResNeXt101_32x32d_wsl", "ResNeXt101_32x48d_wsl", "Fix_ResNeXt101_32x48d_wsl"]


def load_manifest(name: str, folder: Path = FIXTURES) -> dict:
    path = folder / f"{name}.json"
    if not path.exists():
        pytest.skip(f"fixture {path.name} not present")
    return json.loads(path.read_text())


def _draw(rng: np.random.RandomState, shape: tuple, role: str, gains: dict) -> np.ndarray:
    """One parameter of the fixture's weight recipe (float64 draw, scaled by role)."""
    if role == "conv_w":
        return rng.standard_normal(shape) * gains["conv_gain"] / np.sqrt(np.prod(shape[1:]))
    if role == "fc_w":
        return rng.standard_normal(shape) * gains["fc_gain"] / np.sqrt(shape[0])
    if role == "bn_scale":
        low, high = gains["bn_scale_range"]
        return rng.uniform(low, high, shape)
    if role in ("bn_bias", "bn_mean"):
        return rng.standard_normal(shape) * 0.1
    if role == "bn_var":
        return rng.uniform(0.5, 1.5, shape)
    return rng.standard_normal(shape) * 0.05  # conv/fc bias and anything else


def regenerate(manifest: dict) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Paddle-named weights, the NCHW input and Paddle's logits, from a fixture manifest."""
    salt, gains = manifest["weight_recipe"]["salt"], manifest["gains"]
    arrays = {}
    for name, shape, role in manifest["params"]:
        seed = (zlib.crc32(name.encode("utf-8")) ^ salt) & 0xFFFFFFFF
        arrays[name] = _draw(np.random.RandomState(seed), tuple(shape), role, gains)
        arrays[name] = arrays[name].astype(np.float32)
    x = np.random.RandomState(manifest["input_seed"]).standard_normal(manifest["input_shape"])
    return arrays, x.astype(np.float32), np.asarray(manifest["logits"], np.float32)
