"""The 2019 recipes: one for every released model that had one, equal to the curated recipe
files in configs/, loadable as configs/paddle2019.py:<Model> the way launch.py loads it."""

from __future__ import annotations

import pytest
from conftest import REPO
from reference import RELEASED
from test_configs import CONFIG_FILES, _load, _parse_like_launch

import flaxcls
from flaxcls.config import default_config, validate
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.recipes import (
    NO_RECIPE,
    PADDLE2019,
    RECIPE_FIELDS,
    NoRecipeError,
    paddle2019_config,
    paddle2019_recipe,
)
from flaxcls.registry import UnknownModelError

# The recipes of our own (not a 2019 release's): the digits job, the CIFAR-10 runs, the modern
# ones; every other file in configs/ is a 2019 recipe as the table has it.
OWN_RECIPES = ("paddle2019", "digits", "cifar10", "cifar10_resnet18")
CURATED = [p for p in CONFIG_FILES
           if p.stem not in OWN_RECIPES and not p.stem.endswith("_modern")]


def test_every_released_model_has_a_recipe_or_a_reason():
    assert set(PADDLE2019) | set(NO_RECIPE) == set(RELEASED)
    assert not set(PADDLE2019) & set(NO_RECIPE)
    assert len(PADDLE2019) == 51
    for name in PADDLE2019:
        assert flaxcls.get_model_cfg(name).name == name


@pytest.mark.parametrize("name", sorted(PADDLE2019))
def test_recipe_loads_validates_and_fits_the_model(name):
    c = _parse_like_launch(f"paddle2019:{name}")
    assert c.model == name
    c.data_dir = "/data/ILSVRC2012"
    validate(c)
    assert c.lr_base_batch_size == c.batch_size  # the 2019 lr was for the recipe's batch
    assert resolve_preprocessing(c).crop_size == flaxcls.get_model_cfg(name).input_size


# The flags of the 2019 PaddleCV train.py (PaddlePaddle/models, 4ffcb3b1) and their defaults,
# which a script that does not pass a flag trains with.
TRAIN_PY_DEFAULTS = {
    "batch_size": 256, "lr": 0.1, "lr_strategy": "piecewise_decay", "num_epochs": 120,
    "l2_decay": 1e-4, "step_epochs": (30, 60, 90), "decay_rate": 0.1, "warm_up_epochs": 0.0,
    "momentum_rate": 0.9, "use_mixup": False, "mixup_alpha": 0.2, "use_label_smoothing": False,
    "label_smoothing_epsilon": 0.1, "lower_scale": 0.08, "lower_ratio": 3.0 / 4.0,
    "upper_ratio": 4.0 / 3.0,
}


def test_default_config_is_the_2019_train_py_defaults():
    """The table lists what each script passes; the rest comes from default_config()."""
    assert set(RECIPE_FIELDS) == set(TRAIN_PY_DEFAULTS)
    c = default_config()
    assert {k: c[k] for k in RECIPE_FIELDS} == TRAIN_PY_DEFAULTS
    assert paddle2019_recipe("ResNet50") == {**TRAIN_PY_DEFAULTS, "lr_base_batch_size": 256}


@pytest.mark.parametrize("path", CURATED, ids=[p.stem for p in CURATED])
def test_curated_recipe_files_say_what_the_table_says(path):
    """A curated file names its model's recipe and changes nothing of it."""
    c = _load(path).get_config()
    recipe = paddle2019_config(c.model)
    differ = {k: (c[k], recipe[k]) for k in c if c[k] != recipe[k]}
    assert not differ, f"{path.name} (file, table): {differ}"
    assert {k: c[k] for k in RECIPE_FIELDS} == {
        k: v for k, v in paddle2019_recipe(c.model).items() if k in RECIPE_FIELDS}


def test_known_values_from_the_scripts():
    r = paddle2019_recipe("shufflenetv2_x0_25")  # snake_case resolves too
    assert (r["batch_size"], r["lr"], r["lr_strategy"], r["warm_up_epochs"]) == (
        1024, 0.5, "cosine_decay_warmup", 5.0)
    assert (r["lower_scale"], r["lower_ratio"], r["upper_ratio"]) == (0.64, 0.8, 1.2)
    r = paddle2019_recipe("ResNeXt152_64x4d")
    assert (r["l2_decay"], r["lr_strategy"], r["step_epochs"]) == (18e-5, "piecewise_decay",
                                                                   (30, 60, 90))
    r = paddle2019_recipe("InceptionV4")
    assert (r["lr"], r["num_epochs"], r["use_mixup"], r["use_label_smoothing"]) == (
        0.045, 200, True, True)


def test_models_without_a_recipe_say_why_and_what_instead():
    with pytest.raises(NoRecipeError, match="ResNeXt101_32x48d_wsl has no 2019 training recipe"
                       ".*pretrained_model"):
        paddle2019_recipe("ResNeXt101_32x48d_wsl")
    with pytest.raises(NoRecipeError, match=r"ResNet18_vd was not in the 2019 release.*"
                       r"configs/paddle2019.py:ResNet18 --config.model=ResNet18_vd"):
        paddle2019_recipe("ResNet18_vd")
    with pytest.raises(UnknownModelError, match="ResNet50"):
        paddle2019_recipe("ResNet5O")


def test_the_modern_resnet50_recipe_is_torchvisions_and_validates():
    """configs/resnet50_modern.py: torchvision's 2021 ResNet50 recipe, loaded as launch.py
    loads it; it validates (every field it sets exists) and trains at 176, tests at 224/232."""
    from flaxcls.recipes import MODERN, modern_config
    from flaxcls.specs import resolve

    c = _load(REPO / "configs" / "resnet50_modern.py").get_config()
    assert c.to_dict() == modern_config("torchvision2021/ResNet50").to_dict()
    defaults = default_config()
    assert set(MODERN["torchvision2021/ResNet50"]) <= set(defaults)  # no field made up
    specs = resolve(c, need_data=False)
    assert (specs.input.crop_size, specs.preprocessing.crop_size,
            specs.preprocessing.resize_short_size) == (176, 224, 232)
    assert (specs.optim.lr, specs.optim.lr_base_batch_size, specs.optim.num_epochs) == (
        0.5, 1024, 600)
    assert (specs.step.mixup_alpha, specs.step.cutmix_alpha, specs.step.label_smoothing,
            specs.step.erasing) == (0.2, 1.0, 0.1, 0.1)
    assert (specs.input.auto_augment, specs.input.repeated_augmentation) == ("trivial", 4)
    # torchvision's EMA decay 0.99998 every 32 steps, adjusted by its train.py for 8 x 128
    # images and 600 epochs
    assert specs.step.ema_every_steps == 32
    assert specs.step.ema_decay == pytest.approx(1 - 2e-5 * 8 * 128 * 32 / 600, abs=1e-6)
    with pytest.raises(NoRecipeError, match="no recipe 'timm/ResNet50'"):
        modern_config("timm/ResNet50")
