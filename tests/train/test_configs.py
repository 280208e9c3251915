"""Every recipe in configs/: loads, validates, documents its command, and fits its model.

Fast on purpose: configs are loaded as files (as launch.py does) and checked against the
registry's ModelCfg; no model is built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from conftest import REPO
from ml_collections import config_flags

import flaxcls
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.preprocessing import resolve_preprocessing

CONFIG_DIR = REPO / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if p.name != "__init__.py")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_flaxcls_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=CONFIG_FILES, ids=[p.stem for p in CONFIG_FILES])
def config_file(request) -> Path:
    return request.param


def test_configs_found():
    names = {p.stem for p in CONFIG_FILES}
    assert {"digits", "resnet50"} <= names, names


def test_validates(config_file):
    c = _load(config_file).get_config()
    assert isinstance(c, ml_collections.ConfigDict)
    # A misspelt field would be added silently and then ignored.
    unknown = sorted(set(c.keys()) - set(default_config().keys()))
    assert not unknown, f"{config_file.name} sets fields default_config lacks: {unknown}"
    if not (c.builtin_dataset or c.tfds_name):
        c.data_dir = "/data/ILSVRC2012"
    validate(c)


def test_docstring_opens_with_command(config_file):
    doc = _load(config_file).__doc__
    assert doc, f"{config_file.name} has no module docstring"
    # A one-line title, then the command block.
    paragraphs = doc.strip().split("\n\n")
    assert len(paragraphs) >= 2, f"{config_file.name}: docstring needs a title and a command"
    command = paragraphs[1].strip()
    expected = f"python launch.py --config=configs/{config_file.name}"
    assert command.startswith(expected), (
        f"{config_file.name}: docstring's command should start with {expected!r}, "
        f"got {command.splitlines()[0]!r}"
    )


def test_model_resolves_and_input_size(config_file):
    c = _load(config_file).get_config()
    try:
        cfg = flaxcls.get_model_cfg(c.model)
    except ValueError:
        pytest.skip(f"model {c.model!r} ({config_file.name}) is not registered yet")
    assert cfg.name == c.model, f"use the original name {cfg.name!r}, not {c.model!r}"
    crop = resolve_preprocessing(c).crop_size  # a recipe may leave it to the model
    assert crop == cfg.input_size, (
        f"{config_file.name}: crop_size={crop} but {cfg.name} takes {cfg.input_size}"
    )


def _parse_like_launch(recipe: str, *overrides: str) -> ml_collections.ConfigDict:
    """configs/<recipe>.py (``name:arg`` passes ``arg`` to get_config) with --config.<field>=...
    overrides, parsed as launch.py parses them."""
    name, sep, arg = recipe.partition(":")
    argv = ["launch.py", f"--config={CONFIG_DIR / name}.py{sep}{arg}", *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def test_preprocessing_fields_start_unset_and_parse_from_the_command_line():
    c = _parse_like_launch("resnet50_vd")
    assert [c[k] for k in ("crop_size", "resize_short_size", "interpolation", "image_mean",
                           "image_std")] == [None] * 5
    c = _parse_like_launch("resnet50_vd", "--config.crop_size=224", "--config.resize_short_size=256",
                           "--config.interpolation=bicubic", "--config.image_mean=(0.5,0.5,0.5)",
                           "--config.image_std=(0.25, 0.25, 0.25)")
    assert (c.crop_size, c.resize_short_size, c.interpolation) == (224, 256, "bicubic")
    assert (c.image_mean, c.image_std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    validate(c, need_data=False)


def test_a_value_set_on_the_command_line_is_used_even_when_it_was_the_old_default():
    """The old trap: 224 and bilinear were the defaults, so setting them was ignored."""
    c = _parse_like_launch("inception_v4", "--config.crop_size=224")  # the recipe has 299
    prep = resolve_preprocessing(c)
    assert (prep.crop_size, prep.resize_short_size) == (224, 320)
    # fields nobody set follow the model, whatever the recipe's starting point was
    for recipe in ("resnet50_vd", "resnet50", "xception41"):  # no recipe pins its model's crop
        c = _parse_like_launch(recipe, "--config.model=InceptionV4")
        prep = resolve_preprocessing(c)
        assert (prep.crop_size, prep.resize_short_size) == (299, 320), recipe
    c = _parse_like_launch("darknet53", "--config.model=InceptionV4")
    prep = resolve_preprocessing(c)
    assert (prep.crop_size, prep.resize_short_size) == (299, 320)
    assert (c.crop_size, c.resize_short_size) == (299, 320)  # filled in place for train and eval
    c = _parse_like_launch("resnet50_vd", "--config.model=InceptionV4",
                           "--config.resize_short_size=256")
    assert resolve_preprocessing(c).resize_short_size == 256
    with pytest.raises(ConfigError, match=r"config.resize_short_size=256: must be >= crop_size=299"):
        validate(c, need_data=False)


@pytest.mark.parametrize("override, field", [
    ("--config.crop_size=0", "crop_size"),
    ("--config.interpolation=cubic", "interpolation"),
    ("--config.image_mean=(0.5,0.5)", "image_mean"),
    ("--config.image_std=(0.2,0.2,0)", "image_std"),
    ("--config.image_std=(a,b,c)", "image_std"),
    ("--config.image_shape=(3,224,200)", "image_shape"),
])
def test_a_bad_preprocessing_value_names_its_field(override, field):
    c = _parse_like_launch("resnet50_vd", override)
    with pytest.raises(ConfigError, match=rf"^config\.{field}="):
        validate(c, need_data=False)
    with pytest.raises(ConfigError, match=rf"^config\.{field}="):
        resolve_preprocessing(c)  # checks what is set before filling anything

@pytest.mark.parametrize("override, field", [
    ("--config.cutmix_alpha=-1", "cutmix_alpha"),
    ("--config.mixup_prob=1.5", "mixup_prob"),
    ("--config.mixup_cutmix_switch_prob=-0.1", "mixup_cutmix_switch_prob"),
])
def test_a_bad_mixing_value_names_its_field(override, field):
    c = _parse_like_launch("resnet50_vd", override)
    with pytest.raises(ConfigError, match=rf"^config\.{field}=.*must be"):
        validate(c, need_data=False)



def test_none_on_the_command_line_unsets_a_preprocessing_field():
    """--config.crop_size=None (as launch.py takes it out of argv before flag parsing) gives the
    field back to the model; fields that cannot be None are refused by name."""
    from flaxcls.config import apply_none_overrides, split_none_overrides

    argv, fields = split_none_overrides(["launch.py", "--config.crop_size=None",
                                         "--config.model=ResNet50", "--config.image_mean=none"])
    assert argv == ["launch.py", "--config.model=ResNet50"]
    assert fields == ["crop_size", "image_mean"]
    c = _parse_like_launch("digits", *argv[1:])
    assert c.crop_size == 32  # the recipe's, kept although the model changed
    apply_none_overrides(c, fields)
    assert c.crop_size is None and c.image_mean is None
    assert resolve_preprocessing(c).crop_size == 224  # ResNet50's own
    with pytest.raises(ConfigError, match=r"config.batch_size=None: this field is of type int"):
        apply_none_overrides(c, ["batch_size"])
    with pytest.raises(ConfigError, match=r"config.crop_sise=None: no such field"):
        apply_none_overrides(c, ["crop_sise"])


def test_every_field_is_in_the_readme_table():
    """The README's Configuration section names every field default_config() declares."""
    import re

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Configuration"):text.index("## Python API")]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    missing = [k for k in default_config() if k not in named]
    assert not missing, f"README's Configuration section does not name: {missing}"


def test_test_time_resolution_resolves_apart_from_the_train_crop():
    from flaxcls.specs import resolve

    def specs(model="ResNet50", **fields):
        c = default_config()
        c.model = model
        c.update(fields)
        return resolve(c, need_data=False)

    s = specs(crop_size=176, eval_crop_size=224, eval_resize_short_size=232)
    assert (s.input.crop_size, s.input.eval_crop_size, s.input.resize_short_size) == (176, 224, 232)
    assert (s.preprocessing.crop_size, s.preprocessing.resize_short_size) == (224, 232)
    s = specs(eval_crop_size=288)  # its resize at the model's crop fraction, 256/224
    assert (s.input.crop_size, s.preprocessing.crop_size) == (224, 288)
    assert s.preprocessing.resize_short_size == round(288 * 256 / 224)
    s = specs()  # unset: the 2019 pair
    assert (s.input.crop_size, s.input.eval_crop_size, s.input.resize_short_size) == (224, 224, 256)
    with pytest.raises(ConfigError, match=r"^config\.eval_resize_short_size=200: must be >= "
                                          r"eval_crop_size=224"):
        specs(eval_crop_size=224, eval_resize_short_size=200)
    with pytest.raises(ConfigError, match=r"^config\.eval_crop_size=-1: must be a whole number"):
        specs(eval_crop_size=-1)
    with pytest.raises(ConfigError, match=r"^config\.eval_crop_size=256: AlexNet's parameters "
                                          r"depend on the input size"):
        specs("AlexNet", eval_crop_size=256)


@pytest.mark.parametrize("spec, says", [
    ("rand-m99", "magnitude 99 is outside [0, 10]"),
    ("rand-m9-x3", "unknown setting 'x3'"),
    ("rand-m9-p2", "p 2 is outside [0, 1]"),
    ("autoaugment", "unknown policy 'autoaugment'"),
])
def test_a_bad_auto_augment_stops_with_one_line_naming_the_field_and_the_grammar(spec, says):
    c = default_config()
    c.auto_augment = spec
    with pytest.raises(ConfigError) as info:
        validate(c, need_data=False)
    msg = str(info.value)
    assert msg.startswith(f"config.auto_augment={spec!r}: ") and says in msg
    assert "\n" not in msg and '"rand-m<0..10>' in msg and '"trivial"' in msg
    for good in ("", "rand-m9-n2-mstd0.5", "rand-m7-mstd0.5-inc1", "autoaug", "trivial"):
        c.auto_augment = good
        validate(c, need_data=False)
