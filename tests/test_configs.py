"""Every recipe in configs/: loads, validates, documents its command, and fits its model.

Fast on purpose: configs are loaded as files (as launch.py does) and checked against the
registry's ModelCfg; no model is built.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections
import pytest

import flaxcls
from flaxcls.config import default_config, validate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
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
    assert c.crop_size == cfg.input_size, (
        f"{config_file.name}: crop_size={c.crop_size} but {cfg.name} takes {cfg.input_size}"
    )
