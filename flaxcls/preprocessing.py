"""Which eval preprocessing a run uses: the model's ModelCfg, unless the config overrides a field.

Eval, infer and export all call `resolve_preprocessing`, and all three then go through the one
eval transform (`flaxcls.data.ops.eval_transform`) and the one normalisation
(`flaxcls.train.step.normalize`). No tensorflow here: export needs only these numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flaxcls.config import default_config, interpolation_name
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
    """Decode -> resize the short side -> centre crop -> uint8 -> (x/255 - mean) / std."""

    crop_size: int
    resize_short_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {"crop_size": self.crop_size, "resize_short_size": self.resize_short_size,
                "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std)}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return [float(x) for x in a] == [float(x) for x in b]
    return a == b


def resolve_preprocessing(config) -> EvalPreprocessing:
    """Fills config.crop_size, resize_short_size, interpolation, image_mean and image_std in place.

    A field still at its `default_config()` value takes the model's ModelCfg value; a field the
    user (or the recipe) changed is kept. `image_shape` (the original flag), when set, fixes
    crop_size. Idempotent. Returns the values as an EvalPreprocessing.
    """
    cfg = get_model_cfg(config.model)
    defaults = default_config()
    sources = {}
    for field, model_field in _FIELDS.items():
        value = getattr(config, field)
        if _same(value, getattr(defaults, field)):
            model_value = getattr(cfg, model_field)
            setattr(config, field, tuple(model_value) if isinstance(model_value, tuple)
                    else model_value)
            sources[field] = "model"
        else:
            sources[field] = "config"
    if len(config.image_shape):
        config.crop_size = int(config.image_shape[1])
        sources["crop_size"] = "config.image_shape"
    if config.resize_short_size < config.crop_size and sources["resize_short_size"] == "model":
        # a crop larger than the model's resize was asked for: resize to the crop
        # (a resize the user set smaller than the crop is left for validate() to name)
        config.resize_short_size = config.crop_size
    prep = EvalPreprocessing(
        crop_size=int(config.crop_size), resize_short_size=int(config.resize_short_size),
        interpolation=interpolation_name(config.interpolation),
        mean=tuple(float(v) for v in config.image_mean),
        std=tuple(float(v) for v in config.image_std))
    log.debug("preprocessing for %s: %s (from %s)", cfg.name, prep, sources)
    return prep
