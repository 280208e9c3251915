"""The model registry: name -> Flax module constructor + ModelCfg, the one source of model facts.

Every model is registered under its original Paddle name (``ResNet50_vd``) and a snake_case alias
(``resnet50_vd``); PaddleClas 2.x's names for registered models (``ShuffleNetV2_x1_0``, the SSLD
releases ``ResNet50_vd_ssld``, ...) resolve too (``PADDLECLAS_ALIASES``). Look-ups ignore case and
treat ``-`` like ``_``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import linen as nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ModelCfg:
    """What the rest of the system needs to know about a model, apart from its weights.

    ``first_conv`` and ``classifier`` are Flax module paths ('/'-separated) inside ``params``:
    the stem convolution (for changing input channels) and the head Dense (for changing classes).
    ``top1``/``top5`` are the accuracies of the original release table (fractions), or None.
    """

    name: str
    family: str = ""
    input_size: int = 224
    resize_short_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    num_classes: int = 1000
    first_conv: str = ""
    classifier: str = ""
    top1: float | None = None
    top5: float | None = None
    snake_name: str = ""

    def __post_init__(self):
        if not self.snake_name:
            object.__setattr__(self, "snake_name", self.name.lower())
        for field in ("top1", "top5"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{self.name}: {field}={value} must be a fraction in [0, 1]")


@dataclasses.dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    cfg: ModelCfg


_ENTRIES: dict[str, _Entry] = {}  # original name -> entry
_ALIASES: dict[str, str] = {}  # normalised original or snake name -> original name

# PaddleClas 2.x names of registered models: its spelling of one of ours, or weights it released
# for the same architecture (SSLD: knowledge-distilled), with their published ImageNet top-1 and
# top-5 (None: the model's own release). Source: PaddlePaddle/PaddleClas @ d178931fc,
# docs/zh_CN/models/ImageNet1k/model_list.md (the table with the download links); the earlier
# ResNet50_vd_ssld_v2 (SSLD + AutoAugment) from docs/en/models/ResNet_and_vd_en.md.
PADDLECLAS_ALIASES: dict[str, tuple[str, float | None, float | None]] = {
    "ShuffleNetV2_x1_0": ("ShuffleNetV2", None, None),
    "ResNet34_vd_ssld": ("ResNet34_vd", 0.7972, 0.9490),
    "ResNet50_vd_ssld": ("ResNet50_vd", 0.8300, 0.9640),
    "ResNet50_vd_ssld_v2": ("ResNet50_vd", 0.830, 0.964),
    "ResNet101_vd_ssld": ("ResNet101_vd", 0.8373, 0.9669),
    "MobileNetV1_ssld": ("MobileNetV1", 0.7789, 0.9394),
    "MobileNetV2_ssld": ("MobileNetV2", 0.7674, 0.9339),
    "MobileNetV3_large_x1_0_ssld": ("MobileNetV3_large_x1_0", 0.7896, 0.9448),
    "MobileNetV3_small_x1_0_ssld": ("MobileNetV3_small_x1_0", 0.7129, 0.9010),
    "MobileNetV3_small_x0_35_ssld": ("MobileNetV3_small_x0_35", 0.5555, 0.7771),
    # PP-LCNet's SSLD top-5 is only in docs/zh_CN/models/ImageNet1k/PP-LCNet.md (table 1.3.1).
    "PPLCNet_x0_5_ssld": ("PPLCNet_x0_5", 0.6610, 0.8646),
    "PPLCNet_x1_0_ssld": ("PPLCNet_x1_0", 0.7439, 0.9209),
    "PPLCNet_x2_5_ssld": ("PPLCNet_x2_5", 0.8082, 0.9533),
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


_OTHER_NAMES = {_key(alias): model for alias, (model, _, _) in PADDLECLAS_ALIASES.items()}


def register_model(name: str, builder: Callable[..., nn.Module] | None = None, **cfg_kwargs: Any):
    """Register ``builder`` (a Module class or a ``functools.partial`` of one) under ``name``.

    The builder must accept ``num_classes`` and ``dtype`` keyword arguments. ``cfg_kwargs`` are
    ModelCfg fields. Usable as a call (``register_model("X", partial(Net, ...), family=...)``)
    or, without ``builder``, as a decorator. Returns the builder.
    """

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        cfg = ModelCfg(name=name, **cfg_kwargs)
        for alias in {_key(name), _key(cfg.snake_name)}:
            if alias in _ALIASES:
                raise ValueError(f"model name {alias!r} is already registered by {_ALIASES[alias]}")
            if alias in _OTHER_NAMES:
                raise ValueError(f"model name {alias!r} is already an alias of "
                                 f"{_OTHER_NAMES[alias]} (registry.PADDLECLAS_ALIASES)")
        _ENTRIES[name] = _Entry(fn, cfg)
        _ALIASES[_key(name)] = name
        _ALIASES[_key(cfg.snake_name)] = name
        return fn

    return add if builder is None else add(builder)


class UnknownModelError(ValueError):
    """A model name that is not in the zoo; the message suggests close names."""


def _resolve(name: str) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    names = {**_OTHER_NAMES, **_ALIASES}
    original = names.get(_key(name))
    if original not in _ENTRIES:
        close = difflib.get_close_matches(_key(name), list(names), n=5, cutoff=0.6)
        suggestions = list(dict.fromkeys(names[c] for c in close if names[c] in _ENTRIES))
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        raise UnknownModelError(
            f"Unknown model {name!r}.{hint} flaxcls.list_models() lists all {len(_ENTRIES)} models."
        )
    return _ENTRIES[original]


def list_models() -> list[str]:
    """Original names of all registered models, sorted."""
    return sorted(_ENTRIES)


def get_model_cfg(name: str) -> ModelCfg:
    """The ModelCfg of a model, by original name, snake_case name or any case of either."""
    return _resolve(name).cfg


def _module_fields(builder: Callable[..., nn.Module]) -> set[str] | None:
    target = builder.func if isinstance(builder, functools.partial) else builder
    if inspect.isclass(target) and dataclasses.is_dataclass(target):
        return {f.name for f in dataclasses.fields(target) if f.init}
    return None  # a plain function: let it check its own arguments


def create_model(
    name: str, num_classes: int | None = None, dtype: Any = jnp.float32, **overrides: Any
) -> nn.Module:
    """Build a registered model (unbound Flax module).

    ``num_classes`` defaults to the ModelCfg's; ``dtype`` is the compute dtype (a dtype or its
    name, e.g. "bfloat16"; parameters stay float32); ``overrides`` replace constructor fields
    (e.g. ``stage_sizes=(1, 1, 1, 1)``).
    """
    entry = _resolve(name)
    fields = _module_fields(entry.builder)
    if fields is not None:
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(
                f"{entry.cfg.name} has no field(s) {', '.join(unknown)}; "
                f"valid overrides: {', '.join(sorted(fields - {'parent', 'name'}))}"
            )
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype {dtype!r} is not a dtype (try 'float32' or 'bfloat16')") from e
    classes = entry.cfg.num_classes if num_classes is None else int(num_classes)
    if classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return entry.builder(num_classes=classes, dtype=dtype, **overrides)
