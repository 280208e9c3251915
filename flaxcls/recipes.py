"""The training recipes of the 2019 PaddleCV release: every released model's hyper-parameters.

Source: the original ``scripts/train/<Model>.sh`` of PaddlePaddle/models
(PaddleCV/image_classification) as they stood at the end of 2019, with that ``train.py``'s
defaults for every flag a script does not pass; those defaults are ``default_config()``'s
(lr 0.1, piecewise decay x0.1 at epochs 30/60/90, 120 epochs, L2 1e-4, momentum 0.9, no mixup
or label smoothing, random-resized crop scale 0.08-1 and aspect 3/4-4/3). This table is the
one home of these numbers: ``configs/paddle2019.py:<Model>`` and the curated files in configs/
name a recipe and add only what they change. ``cosine_decay_warmup`` hard-coded a 5-epoch linear
warm-up. The 2019 code never scaled the learning rate with the batch: each lr here is for the
recipe's global batch, which becomes ``lr_base_batch_size`` so that another ``batch_size``
scales it linearly.

Known gaps, kept as the scripts say:

- The scripts date from September 2019, after most weights were released; the older
  ``run.sh`` differs for VGG19 (90 epochs, L2 3e-4), AlexNet (decay at epochs 40/70/100),
  Xception41 (224 px) and ShuffleNetV2 (``lower_scale`` 0.2 in one version).
- ResNeXt50_vd_32x4d and ResNeXt50_64x4d never had a script; theirs come from commented-out
  lines of the old ``run.sh`` (the same values as ResNeXt50_vd_64x4d and ResNeXt50_32x4d).
- The ResNeXt101_*_wsl models were converted from weakly supervised weights trained
  elsewhere; there is no recipe to train them.
- SE_ResNeXt101_32x4d's script comment says 120 epochs; its command passes 200 (used here).
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from flaxcls.config import default_config
from flaxcls.registry import get_model_cfg

# The flags a 2019 script could pass. Those it leaves out take train.py's defaults, which are
# default_config()'s (tests/train/test_recipes.py checks them against the 2019 train.py).
RECIPE_FIELDS = ("batch_size", "lr", "lr_strategy", "num_epochs", "l2_decay", "step_epochs",
                 "decay_rate", "warm_up_epochs", "momentum_rate", "use_mixup", "mixup_alpha",
                 "use_label_smoothing", "label_smoothing_epsilon", "lower_scale", "lower_ratio",
                 "upper_ratio")
# What an ImageNet run of ours adds to every recipe (not a training choice of the script).
RUN_FIELDS = {"num_classes": 1000, "test_batch_size": 256, "checkpoint_every_steps": 2000}


def _cosine(epochs: int, **kw: Any) -> dict[str, Any]:
    return {"lr_strategy": "cosine_decay", "num_epochs": epochs, **kw}


def _cosine_warmup(**kw: Any) -> dict[str, Any]:
    return {"lr_strategy": "cosine_decay_warmup", "warm_up_epochs": 5.0, "num_epochs": 240, **kw}


_VD = {"use_mixup": True, "use_label_smoothing": True}  # the 200-epoch vd-style recipes
_SQUARE = {"lower_ratio": 1.0, "upper_ratio": 1.0}
# ShuffleNetV2 x0.25, x0.33 and x0.5
_SHUFFLE_SMALL = _cosine_warmup(batch_size=1024, lr=0.5, l2_decay=3e-5, lower_scale=0.64,
                                lower_ratio=0.8, upper_ratio=1.2)

# What each script passes beyond train.py's defaults.
PADDLE2019: dict[str, dict[str, Any]] = {
    "AlexNet": {"lr": 0.01},
    "SqueezeNet1_0": _cosine(120, lr=0.02),
    "SqueezeNet1_1": _cosine(120, lr=0.02),
    "VGG11": _cosine(90, batch_size=512, l2_decay=2e-4),
    "VGG13": _cosine(90, lr=0.01, l2_decay=3e-4),
    "VGG16": _cosine(90, lr=0.01, l2_decay=3e-4),
    "VGG19": _cosine(150, lr=0.01, l2_decay=4e-4),
    "MobileNetV1": {"l2_decay": 3e-5},
    "MobileNetV2_x0_25": _cosine(240, l2_decay=3e-5, **_SQUARE),
    "MobileNetV2_x0_5": _cosine(240, l2_decay=3e-5, **_SQUARE),
    "MobileNetV2": _cosine(240, batch_size=500, l2_decay=4e-5),
    "MobileNetV2_x1_5": _cosine(240, l2_decay=4e-5),
    "MobileNetV2_x2_0": _cosine(240, l2_decay=4e-5),
    "ShuffleNetV2_x0_25": _SHUFFLE_SMALL,
    "ShuffleNetV2_x0_33": _SHUFFLE_SMALL,
    "ShuffleNetV2_x0_5": _SHUFFLE_SMALL,
    "ShuffleNetV2": _cosine_warmup(batch_size=1024, lr=0.5, l2_decay=4e-5),
    "ShuffleNetV2_x1_5": _cosine_warmup(batch_size=512, lr=0.25, l2_decay=4e-5, **_SQUARE),
    "ShuffleNetV2_x2_0": _cosine_warmup(batch_size=512, lr=0.25, l2_decay=4e-5),
    "ShuffleNetV2_swish": _cosine_warmup(batch_size=1024, lr=0.5, l2_decay=4e-5),
    "ResNet18": _cosine(120),
    "ResNet34": _cosine(120),
    "ResNet50": {},
    "ResNet101": {},
    "ResNet152": {},
    "ResNet50_vc": _cosine(200),
    "ResNet50_vd": _cosine(200, l2_decay=7e-5, **_VD),
    "ResNet101_vd": _cosine(200, **_VD),
    "ResNet152_vd": _cosine(200, **_VD),
    "ResNet200_vd": _cosine(200, **_VD),
    "ResNeXt50_32x4d": {},
    "ResNeXt50_vd_32x4d": _cosine(200, **_VD),  # old run.sh, commented out
    "ResNeXt50_64x4d": {},  # old run.sh, commented out
    "ResNeXt50_vd_64x4d": _cosine(200, **_VD),
    "ResNeXt101_32x4d": {},
    "ResNeXt101_64x4d": {"l2_decay": 15e-5},
    "ResNeXt101_vd_64x4d": _cosine(200, **_VD),
    "ResNeXt152_32x4d": {},
    "ResNeXt152_64x4d": {"l2_decay": 18e-5},
    "DenseNet121": {},
    "DenseNet161": {},
    "DenseNet169": {},
    "DenseNet201": {},
    "DenseNet264": {},
    "SE_ResNeXt50_32x4d": _cosine(200, batch_size=400, l2_decay=1.2e-4),
    "SE_ResNeXt101_32x4d": _cosine(200, batch_size=400, l2_decay=1.5e-5),
    "SENet154_vd": _cosine(200, **_VD),
    "GoogLeNet": _cosine(200, lr=0.01),
    # 299 px (eval: short side 320) and DarkNet53's 256 px come with the model's ModelCfg.
    "Xception41": _cosine(120, lr=0.045),
    "InceptionV4": _cosine(200, lr=0.045, **_VD),
    "DarkNet53": _cosine(200, **_VD),
}

NO_RECIPE = {
    name: "its weights were converted from weakly supervised (Instagram) pre-training done "
          "elsewhere; there is no ImageNet recipe to train it from scratch (fine-tune it from "
          "converted weights with config.pretrained_model instead)"
    for name in ("ResNeXt101_32x8d_wsl", "ResNeXt101_32x16d_wsl", "ResNeXt101_32x32d_wsl",
                 "ResNeXt101_32x48d_wsl", "Fix_ResNeXt101_32x48d_wsl")
}


# Recipes published after 2019, each from its source, as whole configs: the 2019 defaults
# plus these fields. ``modern_config(name)`` builds one; configs/<model>_modern.py names it.
#
# torchvision2021/ResNet50: the "new recipe" of torchvision's classification references
# (pytorch/vision references/classification/README.md, "ResNet"; the blog post "How to
# Train State-Of-The-Art Models Using TorchVision's Latest Primitives", 2021), published
# top-1 80.858 / top-5 95.434 for ResNet50_Weights.IMAGENET1K_V2 (torchvision/models/
# resnet.py). 8 GPUs x 128 images, lr 0.5, 600 epochs of cosine after 5 linear warm-up
# epochs, weight decay 2e-5 and none on norm layers, label smoothing 0.1, mixup 0.2 and
# CutMix 1.0 (one of the two per batch), TrivialAugment wide, random erasing 0.1, repeated
# augmentation x4, train crop 176, eval resize 232 and crop 224, EMA of the weights.
# EMA: their --model-ema-decay 0.99998 every --model-ema-steps 32, which their train.py turns
# into a decay per update of 1 - min(1, (1 - 0.99998) * world_size * batch_size * 32 / epochs)
# = 1 - 2e-5 * 1024 * 32 / 600 = 0.998908 at 8 x 128 images and 600 epochs: that value, every
# 32 steps. Where ours differs: our warm-up ramps from 0 (theirs from lr x 0.01); our decay
# exclusion also spares the fc bias (theirs spares norm layers only); their EMA restarts from
# the weights at every update during the warm-up epochs, ours averages from the start.
MODERN: dict[str, dict[str, Any]] = {
    "torchvision2021/ResNet50": {
        "model": "ResNet50", "batch_size": 1024, "lr": 0.5, "lr_base_batch_size": 1024,
        "lr_strategy": "cosine_decay", "warm_up_epochs": 5.0, "num_epochs": 600,
        "l2_decay": 2e-5, "l2_decay_exclude_bn_bias": True, "momentum_rate": 0.9,
        "use_label_smoothing": True, "label_smoothing_epsilon": 0.1,
        "use_mixup": True, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mixup_prob": 1.0,
        "mixup_cutmix_switch_prob": 0.5, "auto_augment": "trivial",
        "random_erasing": 0.1, "random_erasing_mode": "const",
        "repeated_augmentation": 4, "crop_size": 176, "eval_crop_size": 224,
        "eval_resize_short_size": 232, "ema_decay": 0.998908, "ema_every_steps": 32,
    },
}


def modern_config(name: str) -> ml_collections.ConfigDict:
    """The full config of a recipe of ``MODERN`` (``"<source>/<Model>"``)."""
    if name not in MODERN:
        raise NoRecipeError(f"no recipe {name!r}; known: {', '.join(sorted(MODERN))}")
    c = default_config()
    c.update({**RUN_FIELDS, **MODERN[name]})
    return c


class NoRecipeError(ValueError):
    """A model without a 2019 training recipe; the message says why and what to use."""


def paddle2019_recipe(model: str) -> dict[str, Any]:
    """Every recipe field of ``model``'s 2019 recipe (any spelling the registry accepts), plus
    ``lr_base_batch_size`` (the recipe's batch)."""
    name = get_model_cfg(model).name  # UnknownModelError, with close names, for a typo
    if name in NO_RECIPE:
        raise NoRecipeError(f"{name} has no 2019 training recipe: {NO_RECIPE[name]}")
    if name not in PADDLE2019:
        raise NoRecipeError(
            f"{name} was not in the 2019 release, so it has no 2019 recipe; start from the "
            f"recipe of a released model of its family, e.g. --config=configs/paddle2019.py:"
            f"{_closest_released(name)} --config.model={name}")
    defaults = default_config()
    recipe = {field: defaults[field] for field in RECIPE_FIELDS}
    recipe.update(PADDLE2019[name])
    recipe["lr_base_batch_size"] = recipe["batch_size"]
    return recipe


def paddle2019_config(model: str) -> ml_collections.ConfigDict:
    """The full config of an ImageNet run of ``model`` with its 2019 recipe: what
    ``configs/paddle2019.py:<Model>`` and the curated files in configs/ return."""
    c = default_config()
    c.model = get_model_cfg(model).name
    c.update({**RUN_FIELDS, **paddle2019_recipe(model)})
    return c


def _closest_released(name: str) -> str:
    """A released model whose name shares the longest prefix with ``name``."""
    return max(PADDLE2019, key=lambda other: len(os.path.commonprefix([name, other])))
