"""Which eval preprocessing a run uses: the config's value for each field that is set, the
model's ModelCfg value for each field left unset (None).

Train, eval, infer and export all call `resolve_preprocessing` before reading these fields;
eval, infer and export then go through the one eval transform (`flaxcls.data.ops.eval_transform`)
and the one normalisation (`flaxcls.train.step.normalize`). No tensorflow here: export needs
only these numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flaxcls.config import interpolation_name, validate_preprocessing
from flaxcls.registry import get_model_cfg

log = logging.getLogger("flaxcls")

# config field -> ModelCfg field
_FIELDS = {
    "crop_size": "crop_size",
    "resize_short_size": "resize_short_size",
    "interpolation": "interpolation",
    "image_mean": "mean",
    "image_std": "std",
}


@dataclasses.dataclass(frozen=True)
class EvalPreprocessing:
    """Decode -> resize the short side -> centre crop -> uint8 -> (x/255 - mean) / std.

    The eval sizes: ``config.eval_crop_size`` where set (its resize
    ``eval_resize_short_size``, or at the model's crop fraction), else the 2019 pair
    ``crop_size`` and ``resize_short_size``."""

    crop_size: int
    resize_short_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {"crop_size": self.crop_size, "resize_short_size": self.resize_short_size,
                "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std)}


def preprocessing_of(config) -> EvalPreprocessing:
    """The preprocessing `config` asks for, as `resolve_preprocessing` would fill it, without
    changing the config (for code that may get a config nobody resolved, like the step)."""
    return _resolve(config)[0]


def train_crop_of(config) -> int:
    """The train crop ``config`` asks for (its ``crop_size`` as `resolve_preprocessing` fills
    it): the input size the model is built and trained at."""
    return int(_resolve(config)[1]["crop_size"])


def resolve_preprocessing(config) -> EvalPreprocessing:
    """Fills config.crop_size, resize_short_size, interpolation, image_mean and image_std in place.

    A field left unset (None) takes the model's ModelCfg value; a field that is set (by the
    user or the recipe) is kept, whatever its value. `image_shape` (the original flag), when
    set, fixes crop_size. A resize_short_size left to the model but smaller than the crop (a
    larger crop was asked for) is raised to the crop. Set values are checked first
    (`validate_preprocessing`: ConfigError naming the field). Idempotent. Returns the values.
    """
    prep, values, sources = _resolve(config)
    for field, value in values.items():
        setattr(config, field, value)
    log.debug("preprocessing for %s: %s (from %s)", config.model, prep, sources)
    return prep


def _resolve(config) -> tuple[EvalPreprocessing, dict[str, Any], dict[str, str]]:
    validate_preprocessing(config)
    cfg = get_model_cfg(config.model)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field, model_field in _FIELDS.items():
        value = getattr(config, field, None)
        if value is None:
            value, sources[field] = getattr(cfg, model_field), "model"
        else:
            sources[field] = "config"
        values[field] = tuple(value) if isinstance(value, (tuple, list)) else value
    if len(getattr(config, "image_shape", None) or ()):
        values["crop_size"] = int(config.image_shape[1])
        sources["crop_size"] = "config.image_shape"
    if sources["resize_short_size"] == "model" and values["resize_short_size"] < values["crop_size"]:
        # a crop larger than the model's resize was asked for: resize to the crop
        # (a resize the user set smaller than the crop is left for validate() to name)
        values["resize_short_size"] = values["crop_size"]
    crop, short = int(values["crop_size"]), int(values["resize_short_size"])
    eval_crop = int(getattr(config, "eval_crop_size", 0) or 0) or crop
    eval_short = int(getattr(config, "eval_resize_short_size", 0) or 0)
    if not eval_short:
        # Without eval_crop_size: the 2019 pair. With it: the model's crop fraction (224 of
        # 256 for most), as timm keeps crop_pct when the test size changes.
        eval_short = short if not getattr(config, "eval_crop_size", 0) else round(
            eval_crop * cfg.resize_short_size / cfg.crop_size)
    prep = EvalPreprocessing(
        crop_size=eval_crop, resize_short_size=eval_short,
        interpolation=interpolation_name(values["interpolation"]),
        mean=tuple(float(v) for v in values["image_mean"]),
        std=tuple(float(v) for v in values["image_std"]))
    return prep, values, sources
