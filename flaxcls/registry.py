"""The model registry: name -> Flax module constructor + ModelCfg, the one source of model facts.

Every model is registered under its original Paddle name (``ResNet50_vd``) and a snake_case alias
(``resnet50_vd``); look-ups ignore case and treat ``-`` like ``_``.
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


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


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
    original = _ALIASES.get(_key(name))
    if original is None:
        close = difflib.get_close_matches(_key(name), list(_ALIASES), n=5, cutoff=0.6)
        suggestions = list(dict.fromkeys(_ALIASES[c] for c in close))
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
