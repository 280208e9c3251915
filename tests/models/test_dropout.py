"""Classifier dropout (``dropout_rate``): added before the fc of the heads that had none in
2019, random in training, the identity at eval; refused for heads with their own dropout."""

from __future__ import annotations

import pytest
from model_checks import check_random_in_training_only

import flaxcls
from flaxcls.config import ConfigError, default_config, validate
from flaxcls.specs import ModelSpec

# Families whose released head already drops its pooled features (Fluid's downgrade-in-infer).
OWN_HEAD_DROPOUT = {"alexnet", "vgg", "googlenet", "inception_v4", "squeezenet", "mobilenet_v3",
                    "pp_lcnet"}
OWN_HEAD_DROPOUT_MODELS = {"SE_ResNeXt50_32x4d", "SE_ResNeXt101_32x4d", "SE_ResNeXt152_32x4d",
                           "SENet154_vd"}


def _config(model: str, rate: float):
    c = default_config()
    c.model, c.dropout_rate = model, rate
    return c


@pytest.mark.parametrize("name", flaxcls.list_models())
def test_every_head_without_dropout_takes_a_rate_and_others_refuse(name):
    """Through the config, as ``--config.dropout_rate=0.2`` on the command line."""
    family = flaxcls.get_model_cfg(name).family
    if family in OWN_HEAD_DROPOUT or name in OWN_HEAD_DROPOUT_MODELS:
        with pytest.raises(ConfigError, match=r"^config\.dropout_rate=0.2: .*has its own dropout"):
            validate(_config(name, 0.2), need_data=False)
    else:
        validate(_config(name, 0.2), need_data=False)
        model = ModelSpec.from_config(_config(name, 0.2)).build()
        assert model.classifier_dropout == 0.2


def test_a_rate_outside_0_1_names_the_field():
    with pytest.raises(ConfigError, match=r"^config\.dropout_rate=1.0: must be in \[0, 1\)"):
        validate(_config("ResNet50", 1.0), need_data=False)


@pytest.mark.parametrize("name, overrides", [
    pytest.param("ResNet_tiny", {}, id="ResNet_tiny"),
    pytest.param("MobileNetV1_x0_25", {}, id="MobileNetV1", marks=pytest.mark.heavy),
    pytest.param("ShuffleNetV2_x0_25", {}, id="ShuffleNetV2", marks=pytest.mark.heavy),
])
def test_dropout_is_the_identity_at_eval_and_random_in_training(name, overrides):
    check_random_in_training_only(
        flaxcls.create_model(name, num_classes=10, **overrides),
        flaxcls.create_model(name, num_classes=10, classifier_dropout=0.5, **overrides))
