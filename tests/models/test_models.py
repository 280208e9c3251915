"""The zoo through the registry, one family like another: look-ups, every ModelCfg, every model's
parameter counts and shapes against the 2019 fixtures (``jax.eval_shape``, no compile) and its
Paddle name map, any class count, a real forward/backward of each family's representative and
of the other structural kinds, and bfloat16 compute.

A family is a model file, a Paddle name map and its fixture: a new one is picked up here (its
smallest fixture model represents it, ``model_checks.representatives``) and by
tests/convert/test_paddle_parity.py (name map and logits of every fixture) with no test edit.
The tables below add what the 2019 files fix for the families that exist.
"""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO
from flax import traverse_util
from model_checks import (
    abstract_variables,
    classifier_of,
    count,
    fixture_param_counts,
    outputs_of,
    random_variables,
    representatives,
    train_step_checks,
    variables_of,
)
from reference import README, load_manifest

import flaxcls
from flaxcls import zoo
from flaxcls.convert import paddle_name_map
from flaxcls.registry import IMAGENET_MEAN, IMAGENET_STD

REPRESENTATIVES = representatives()
FIXTURE_COUNTS = fixture_param_counts()

# Each family's models as the 2019 files name them (the registry may hold more).
MEMBERS = {
    "alexnet": ("AlexNet",),
    "vgg": ("VGG11", "VGG13", "VGG16", "VGG19"),
    "squeezenet": ("SqueezeNet1_0", "SqueezeNet1_1"),
    "googlenet": ("GoogLeNet",),
    "resnet": ("ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet50_vc",
               "ResNet101_vc", "ResNet152_vc", "ResNet18_vd", "ResNet34_vd", "ResNet50_vd",
               "ResNet101_vd", "ResNet152_vd", "ResNet200_vd", "ResNet_tiny"),
    "resnext": tuple(f"ResNeXt{d}{vd}_{w}" for d in (50, 101, 152) for w in ("32x4d", "64x4d")
                     for vd in ("", "_vd")),
    "se_resnext": ("SE_ResNeXt50_32x4d", "SE_ResNeXt101_32x4d", "SE_ResNeXt152_32x4d",
                   "SE_ResNeXt50_vd_32x4d", "SE_ResNeXt101_vd_32x4d", "SENet154_vd"),
    "resnext_wsl": ("ResNeXt101_32x8d_wsl", "ResNeXt101_32x16d_wsl", "ResNeXt101_32x32d_wsl",
                    "ResNeXt101_32x48d_wsl", "Fix_ResNeXt101_32x48d_wsl"),
    "densenet": ("DenseNet121", "DenseNet161", "DenseNet169", "DenseNet201", "DenseNet264"),
    "darknet": ("DarkNet53",),
    "inception_v4": ("InceptionV4",),
    "xception": ("Xception41", "Xception65", "Xception71"),
    "mobilenet_v1": ("MobileNetV1", "MobileNetV1_x0_25", "MobileNetV1_x0_5", "MobileNetV1_x0_75"),
    "mobilenet_v2": ("MobileNetV2", "MobileNetV2_x0_25", "MobileNetV2_x0_5", "MobileNetV2_x0_75",
                     "MobileNetV2_x1_5", "MobileNetV2_x2_0"),
    "shufflenet_v2": ("ShuffleNetV2", "ShuffleNetV2_x0_25", "ShuffleNetV2_x0_33",
                      "ShuffleNetV2_x0_5", "ShuffleNetV2_x1_5", "ShuffleNetV2_x2_0",
                      "ShuffleNetV2_swish", "ShuffleNetV2_x0_5_swish", "ShuffleNetV2_x1_5_swish",
                      "ShuffleNetV2_x2_0_swish"),
    # PaddleClas 2.x (legendary_models/mobilenet_v3.py), not in the 2019 zoo.
    "mobilenet_v3": tuple(f"MobileNetV3_{size}_{w}" for size in ("large", "small")
                          for w in ("x0_35", "x0_5", "x0_75", "x1_0", "x1_25")),
    # PaddleClas 2.x (legendary_models/pp_lcnet.py), not in the 2019 zoo.
    "pp_lcnet": tuple(f"PPLCNet_{w}" for w in ("x0_25", "x0_35", "x0_5", "x0_75", "x1_0", "x1_5",
                                               "x2_0", "x2_5")),
    "cifar": ("ResNet18_cifar", "SpeedNet_cifar", "SpeedNet_cifar_x0_5"),  # not in the 2019 zoo
}
_R = ("stem_conv1", "head")
# (first conv, classifier) Flax paths of each family.
LAYERS = {
    "alexnet": ("conv1", "fc8"), "vgg": ("conv1_1", "fc8"), "squeezenet": ("conv1", "conv10"),
    "googlenet": ("conv1", "out"), "resnet": _R, "resnext": _R, "se_resnext": _R,
    "resnext_wsl": _R, "densenet": ("stem_conv", "head"), "darknet": ("stem/conv", "head"),
    "inception_v4": ("stem/conv1/conv", "head"), "xception": ("stem_conv1", "head"),
    "mobilenet_v1": ("stem_conv", "head"), "mobilenet_v2": ("stem_conv", "head"),
    "shufflenet_v2": ("stem_conv", "head"), "mobilenet_v3": ("stem_conv", "head"),
    "pp_lcnet": ("stem_conv", "head"),
}
# (input, crop, resize_short) where a family or a model is not 224 / 224 / 256.
SIZES = {"darknet": (256, 256, 256), "inception_v4": (299, 299, 320),
         "xception": (299, 299, 320), "Fix_ResNeXt101_32x48d_wsl": (320, 320, 320),
         "ResNet_tiny": (32, 32, 32)}
# Rows of the PaddleCV README table of 2019-12-30 (top-1, top-5); None: defined in the 2019 files
# (or here, ResNet_tiny), never released.
PUBLISHED = {
    "AlexNet": (0.5672, 0.7917), "VGG11": (0.6928, 0.8909), "VGG13": (0.7002, 0.8942),
    "VGG16": (0.7200, 0.9069), "VGG19": (0.7256, 0.9093), "SqueezeNet1_0": (0.5960, 0.8166),
    "SqueezeNet1_1": (0.6008, 0.8185), "GoogLeNet": (0.7070, 0.8966),
    "ResNet50": (0.7650, 0.9300), "ResNet50_vd": (0.7912, 0.9444),
    "ResNet200_vd": (0.8093, 0.9533), "ResNet101_vc": (None, None), "ResNet_tiny": (None, None),
    "ResNet18_cifar": (None, None), "SpeedNet_cifar": (None, None),
    "ResNeXt50_32x4d": (0.7775, 0.9382), "ResNeXt101_64x4d": (0.7835, 0.9452),
    "ResNeXt152_vd_64x4d": (0.8108, 0.9534), "SE_ResNeXt50_vd_32x4d": (0.8024, 0.9489),
    "SENet154_vd": (0.8140, 0.9548), "SE_ResNeXt152_32x4d": (None, None),
    "SE_ResNeXt101_vd_32x4d": (None, None), "Fix_ResNeXt101_32x48d_wsl": (0.8626, 0.9797),
    "ResNeXt101_32x8d_wsl": (0.8255, 0.9674),
    "DenseNet121": (0.7566, 0.9258), "DenseNet264": (0.7796, 0.9385),
    "DarkNet53": (0.7804, 0.9405), "InceptionV4": (0.8077, 0.9526),
    "Xception41": (0.7930, 0.9453), "Xception65": (0.8100, 0.9549),
    "Xception71": (0.8111, 0.9545),
    "MobileNetV1": (0.7099, 0.8968), "MobileNetV1_x0_25": (0.5143, 0.7546),
    "MobileNetV2_x2_0": (0.7523, 0.9258), "ShuffleNetV2": (0.6880, 0.8845),
    "ShuffleNetV2_swish": (0.7003, 0.8917),
    # PaddleClas's model list (PaddlePaddle/PaddleClas @ d178931fc,
    # docs/zh_CN/models/ImageNet1k/model_list.md).
    "MobileNetV3_large_x0_35": (0.6432, 0.8546), "MobileNetV3_large_x0_5": (0.6924, 0.8852),
    "MobileNetV3_large_x0_75": (0.7314, 0.9108), "MobileNetV3_large_x1_0": (0.7532, 0.9231),
    "MobileNetV3_large_x1_25": (0.7641, 0.9295), "MobileNetV3_small_x0_35": (0.5303, 0.7637),
    "MobileNetV3_small_x0_5": (0.5921, 0.8152), "MobileNetV3_small_x0_75": (0.6602, 0.8633),
    "MobileNetV3_small_x1_0": (0.6824, 0.8806), "MobileNetV3_small_x1_25": (0.7067, 0.8951),
    "PPLCNet_x0_25": (0.5186, 0.7565), "PPLCNet_x0_35": (0.5809, 0.8083),
    "PPLCNet_x0_5": (0.6314, 0.8466), "PPLCNet_x0_75": (0.6818, 0.8830),
    "PPLCNet_x1_0": (0.7132, 0.9003), "PPLCNet_x1_5": (0.7371, 0.9153),
    "PPLCNet_x2_0": (0.7518, 0.9227), "PPLCNet_x2_5": (0.7660, 0.9300),
}
# A floor under the published top-1 of every model of these families (the README table's).
TOP1_FLOOR = {"densenet": 0.7, "darknet": 0.7, "inception_v4": 0.79, "xception": 0.79}


# ------------------------------------------------------------------------------------ registry


def test_list_models_sorted_and_complete():
    names = flaxcls.list_models()
    assert names == sorted(names)
    for family, members in MEMBERS.items():
        assert {n for n in members if flaxcls.get_model_cfg(n).family == family} == set(members)


@pytest.mark.parametrize("alias", ["ResNet50_vd", "resnet50_vd", "RESNET50_VD", "Resnet50-VD"])
def test_names_resolve_case_insensitively(alias):
    assert flaxcls.get_model_cfg(alias).name == "ResNet50_vd"
    model = flaxcls.create_model(alias)
    assert model.avg_down and model.stem == "deep" and tuple(model.stage_sizes) == (3, 4, 6, 3)


def test_unknown_name_is_named_with_suggestions():
    with pytest.raises(ValueError, match="ResNet51_vd") as err:
        flaxcls.create_model("ResNet51_vd")
    assert "ResNet50_vd" in str(err.value)
    with pytest.raises(ValueError, match="NoSuchNet"):
        flaxcls.get_model_cfg("NoSuchNet")


def test_unknown_override_is_named():
    with pytest.raises(ValueError, match="depth_multiplier"):
        flaxcls.create_model("ResNet18", depth_multiplier=2)


def test_override_changes_the_architecture():
    model = flaxcls.create_model("ResNet50", stage_sizes=(1, 1, 1, 1))
    assert tuple(model.stage_sizes) == (1, 1, 1, 1)


@pytest.mark.subprocess
def test_import_does_not_pull_tensorflow():
    code = ("import sys, flaxcls, flaxcls.models; assert 'tensorflow' not in sys.modules; "
            "assert 'flaxcls.convert' not in sys.modules; import flaxcls.convert; "
            "assert 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", flaxcls.list_models())
def test_model_cfg(name):
    cfg = flaxcls.get_model_cfg(name)
    assert isinstance(cfg, flaxcls.ModelCfg) and cfg.name == name and cfg.family
    assert cfg.snake_name == name.lower() and flaxcls.get_model_cfg(name.lower()).name == name
    assert len(cfg.mean) == len(cfg.std) == 3 and min(cfg.std) > 0 and cfg.num_classes >= 1
    assert 0 < cfg.crop_size <= cfg.resize_short_size and cfg.first_conv and cfg.classifier
    assert (cfg.top1 is None) == (cfg.top5 is None)
    assert cfg.top1 is None or 0.0 < cfg.top1 < cfg.top5 < 1.0
    if cfg.family in LAYERS:  # the 2019 zoo: ImageNet statistics, 1000 classes, bilinear
        assert cfg.mean == IMAGENET_MEAN == (0.485, 0.456, 0.406)
        assert cfg.std == IMAGENET_STD == (0.229, 0.224, 0.225)
        assert cfg.interpolation == "bilinear" and cfg.num_classes == 1000
        assert (cfg.first_conv, cfg.classifier) == LAYERS[cfg.family]
        sizes = SIZES.get(name, SIZES.get(cfg.family, (224, 224, 256)))
        assert (cfg.input_size, cfg.crop_size, cfg.resize_short_size) == sizes
    if cfg.family in TOP1_FLOOR:
        assert cfg.top1 > TOP1_FLOOR[cfg.family]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_accuracies(name):
    cfg = flaxcls.get_model_cfg(name)
    want = tuple(None if v is None else pytest.approx(v) for v in PUBLISHED[name])
    assert (cfg.top1, cfg.top5) == want


# ------------------------------------------------------------------- shapes and param counts


README_TABLE = zoo.readme_table(README.read_text())


@pytest.mark.parametrize("name", flaxcls.list_models())
@pytest.mark.heavy
def test_param_counts_and_shapes(name):
    cfg = flaxcls.get_model_cfg(name)
    variables = variables_of(name)
    assert zoo.markdown_row(name) in README_TABLE, "run: python -m flaxcls.zoo --write"
    params, stats = variables["params"], variables.get("batch_stats", {})
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables))
    assert _path_exists(params, cfg.first_conv), cfg.first_conv
    assert _path_exists(params, cfg.classifier), cfg.classifier
    head = classifier_of(params, name)

    if name in FIXTURE_COUNTS:
        fixture = load_manifest(name)
        assert count(params) == fixture["total_params_trainable"]
        assert count(stats) == fixture["total_bn_stat_values"]
        # One Flax leaf per Paddle parameter file (conv kernel; BN scale/bias/mean/var; fc w/b).
        assert len(jax.tree_util.tree_leaves(variables)) == fixture["num_param_tensors"]

    # The family's Paddle name map targets each leaf exactly once (so the converter's
    # strictness holds for every member, fixture or not). Here, where the shapes are at hand.
    # The CIFAR-sized models have no Paddle release to convert.
    if cfg.family in LAYERS:
        targets = [(t.collection, *t.path) for t in paddle_name_map(name).values()]
        leaves = {(c, *p) for c in variables for p in traverse_util.flatten_dict(variables[c])}
        assert len(targets) == len(set(targets)) and set(targets) == leaves

    logits, feats = outputs_of(name)
    assert logits.shape == (1, cfg.num_classes) and logits.dtype == jnp.float32
    assert "pooled" in feats and feats["pooled"].ndim == 2
    if head["kernel"].ndim == 2:  # a Dense head sees the pooled features
        assert feats["pooled"].shape == (1, head["kernel"].shape[0])


def _path_exists(tree, path: str) -> bool:
    node = tree
    for part in path.split("/"):
        if part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("name", list(REPRESENTATIVES.values()))
@pytest.mark.heavy
def test_any_class_count(name):
    """Every family's head follows num_classes: the classifier's kernel and bias, and logits."""
    logits, feats = outputs_of(name, num_classes=7, batch=3)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    head = classifier_of(variables_of(name, num_classes=7)["params"], name)
    assert head["kernel"].shape[-1] == 7 and head["bias"].shape == (7,)
    if head["kernel"].ndim == 2:
        assert head["kernel"].shape == (feats["pooled"].shape[-1], 7)


# ----------------------------------------------------------------- real forward and backward

_S1 = {"stage_sizes": (1, 1, 1, 1)}
# A family's representative made small for the compile on a 2-core CPU: (input size,
# constructor overrides), the same structure with fewer blocks or channels. A family not listed
# here runs its representative as registered, at its input size.
SMALL = {
    "alexnet": (64, {}),
    "vgg": (32, {}),
    "squeezenet": (64, {}),
    "googlenet": (64, {}),
    "resnet": (64, {}),  # ResNet18: BasicBlock
    "resnext": (64, _S1),
    "se_resnext": (64, _S1),  # SE units and head dropout
    "resnext_wsl": (64, _S1),
    # Every DenseNet layer has the same structure; 2 layers per block keep the compile short and
    # still cover every kind of module. DenseNet161's widths (stem 96, growth 48) at 40 px: stem
    # 20 -> pool 10 -> block maps 10, 5, 2 (the 2x2 pool drops an odd row, as Paddle's floor
    # mode), 1.
    "densenet": (40, {"block_sizes": (2, 2, 2, 2), "stem_width": 96, "growth_rate": 48}),
    "darknet": (32, {}),  # all 52 convs; maps 16, 8, 4, 2, 1
    "inception_v4": (75, {"stage_sizes": (1, 1, 1)}),  # the smallest input: 1x1 at the end
    # Xception71's entry flow, one middle block: it holds all of Xception41/65's block kinds
    # (stride-2 entry blocks) plus the stride-1 ones.
    "xception": (32, {"middle_blocks": 1, "entry_widths": (128, 256, 256, 728, 728),
                      "entry_strides": (2, 1, 2, 1, 2)}),
    "mobilenet_v1": (64, {"scale": 0.25}),  # MobileNetV1_x0_25
    "mobilenet_v2": (64, {}),
    "shufflenet_v2": (64, {}),  # the swish variants differ in the activation only
    "mobilenet_v3": (64, {}),
    "pp_lcnet": (64, {}),
}
# Further structural kinds within a family, each once: (model, input size, overrides).
# 72 px gives odd stage maps (18, 9, 5, 3) so the vd ceil-mode avg pool gets partial windows.
KINDS = {
    "bottleneck": ("ResNet50", 64, {}),
    "vd": ("ResNet50_vd", 72, {}),
    "tiny": ("ResNet_tiny", 32, {}),
    "resnext_vd": ("ResNeXt50_vd_64x4d", 72, _S1),
    "senet154_vd": ("SENet154_vd", 72, _S1),
    "squeezenet1_0": ("SqueezeNet1_0", 64, {}),
}


def _train_cases():
    for family, name in REPRESENTATIVES.items():
        size, overrides = SMALL.get(family, (flaxcls.get_model_cfg(name).input_size, {}))
        yield pytest.param(name, size, overrides, id=family)
    for kind, case in KINDS.items():
        yield pytest.param(*case, id=kind)


@pytest.mark.parametrize("name,size,overrides", list(_train_cases()))
@pytest.mark.heavy
def test_forward_backward(name, size, overrides):
    train_step_checks(flaxcls.create_model(name, num_classes=10, **overrides), size)


@pytest.mark.parametrize(
    "name,size,overrides",
    [
        pytest.param("ResNet_tiny", 32, {}, id="ResNet_tiny"),
        pytest.param("SqueezeNet1_1", 64, {}, id="SqueezeNet1_1"),
        pytest.param("DenseNet121", 32, {"block_sizes": (1, 1, 1, 1)}, id="DenseNet121"),
        pytest.param("Xception41", 32, {"middle_blocks": 1}, id="Xception41"),
        pytest.param("MobileNetV1_x0_25", 64, {}, id="MobileNetV1_x0_25"),
        pytest.param("SE_ResNeXt50_vd_32x4d", 32, _S1, id="SE_ResNeXt50_vd_32x4d"),
    ],
)
@pytest.mark.heavy
def test_bfloat16_compute_keeps_float32_params(name, size, overrides):
    model = flaxcls.create_model(name, num_classes=7, dtype="bfloat16", **overrides)
    assert model.dtype == jnp.bfloat16
    shapes = abstract_variables(model, size)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(shapes))
    variables = random_variables(model, size, random_bn=True)
    x = np.random.RandomState(2).standard_normal((2, size, size, 3)).astype(np.float32)

    @jax.jit
    def eval_and_train(variables, x):
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(0, impl="rbg")})
        return model.apply(variables, x, return_features=True), train_logits, updates

    (logits, feats), train_logits, updates = eval_and_train(variables, x)
    for out in (logits, train_logits):
        assert out.shape == (2, 7) and out.dtype == jnp.float32
        assert np.isfinite(np.asarray(out)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(updates))
    head = classifier_of(shapes["params"], name)
    assert head["kernel"].shape[-1] == 7
    if head["kernel"].ndim == 2:
        assert head["kernel"].shape == (feats["pooled"].shape[-1], 7)
