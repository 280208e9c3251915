"""What each `config.auto_augment` policy draws from and what its magnitudes mean: the op lists,
the AutoAugment ImageNet table, timm's level -> argument functions and torchvision's magnitude
bins, in plain Python / numpy (no tensorflow, no jax).

One home for these facts: the tf.data ops (`flaxcls.data.autoaugment`, whose docstring gives
each reference) and the on-device ones (`flaxcls.train.autoaugment_device`) both read them.
An op's argument goes to the image op of the same name in either backend: `rotate` (degrees,
counter-clockwise), `shear_x` / `shear_y` (amount), `translate_x` / `translate_y` (pixels,
positive moves the content right / down), `translate_x_rel` / `translate_y_rel` (a fraction
of the width / height), `posterize` (bits), `solarize` (threshold), `solarize_add`
(addition below 128), `color` / `contrast` / `brightness` / `sharpness` (factor), and the
argument-free `identity`, `invert`, `auto_contrast`, `equalize`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from flaxcls.data.augment_policy import _LEVEL_DENOM, Policy

# ----------------------------------------------------------------------------- op lists

RAND_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
            "SolarizeAdd", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
            "TranslateXRel", "TranslateYRel")
RAND_INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                       "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                       "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                       "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")

# The AutoAugment ImageNet policy (Cubuk et al. 2019) as torchvision lists it:
# (op, probability, magnitude bin or None) twice per sub-policy.
AUTOAUGMENT_IMAGENET: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
AUTOAUGMENT_BINS = 10

TRIVIAL_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
               "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
               "AutoContrast", "Equalize")
TRIVIAL_BINS = 31


def autoaugment_names() -> tuple[str, ...]:
    return tuple(sorted({op for sub in AUTOAUGMENT_IMAGENET for op, _, _ in sub}))


def op_names(policy: Policy) -> tuple[str, ...]:
    """The ops a policy chooses among; an op index of either backend indexes this tuple."""
    if policy.kind == "rand":
        return RAND_INCREASING_OPS if policy.increasing else RAND_OPS
    if policy.kind == "trivial":
        return TRIVIAL_OPS
    return autoaugment_names()


def autoaugment_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ImageNet policy as arrays [25, 2]: op indices into autoaugment_names(), the
    probabilities and the bins (0 for ops without a magnitude)."""
    names = autoaugment_names()
    table = AUTOAUGMENT_IMAGENET
    return (np.array([[names.index(o) for o, _, _ in s] for s in table], np.int32),
            np.array([[p for _, p, _ in s] for s in table], np.float64),
            np.array([[b or 0 for _, _, b in s] for s in table], np.float64))


# ----------------------------------------------------------------------------- timm (rand-...)

# An argument function maps (magnitude m, negate, xp) to the image op's argument; xp is the
# array namespace of the backend (numpy, tensorflow or jax.numpy: floor, minimum, maximum,
# where, multiply), so each backend computes the same expression in its own arithmetic. A
# product that feeds a sum goes through xp.multiply: the JAX backend's keeps it out of a fused
# multiply-add, so that jit and eager agree.
LevelFn = Callable[[Any, Any, Any], Any]


def _level(m: Any) -> Any:
    return m / _LEVEL_DENOM


def _signed(xp: Any, value: Any, negate: Any) -> Any:
    return xp.where(negate, -value, value)


def _enhance(m: Any, negate: Any, xp: Any) -> Any:
    return xp.multiply(_level(m), 1.8) + 0.1


def _enhance_increasing(m: Any, negate: Any, xp: Any) -> Any:
    return xp.maximum(1.0 + _signed(xp, xp.multiply(_level(m), 0.9), negate), 0.1)


def _posterize_bits(m: Any, negate: Any, xp: Any) -> Any:
    return xp.floor(_level(m) * 4.0)


def _solarize_threshold(m: Any, negate: Any, xp: Any) -> Any:
    return xp.minimum(xp.floor(_level(m) * 256.0), 256.0)


# timm/data/auto_augment.py's level functions: op -> (image op, argument function or None).
TIMM_OPS: dict[str, tuple[str, LevelFn | None]] = {
    "AutoContrast": ("auto_contrast", None),
    "Equalize": ("equalize", None),
    "Invert": ("invert", None),
    "Rotate": ("rotate", lambda m, neg, xp: _signed(xp, _level(m) * 30.0, neg)),
    "Posterize": ("posterize", _posterize_bits),
    "PosterizeIncreasing": ("posterize", lambda m, neg, xp: 4.0 - _posterize_bits(m, neg, xp)),
    "Solarize": ("solarize", _solarize_threshold),
    "SolarizeIncreasing": ("solarize",
                           lambda m, neg, xp: 256.0 - _solarize_threshold(m, neg, xp)),
    "SolarizeAdd": ("solarize_add",
                    lambda m, neg, xp: xp.minimum(xp.floor(_level(m) * 110.0), 128.0)),
    "Color": ("color", _enhance),
    "ColorIncreasing": ("color", _enhance_increasing),
    "Contrast": ("contrast", _enhance),
    "ContrastIncreasing": ("contrast", _enhance_increasing),
    "Brightness": ("brightness", _enhance),
    "BrightnessIncreasing": ("brightness", _enhance_increasing),
    "Sharpness": ("sharpness", _enhance),
    "SharpnessIncreasing": ("sharpness", _enhance_increasing),
    "ShearX": ("shear_x", lambda m, neg, xp: _signed(xp, _level(m) * 0.3, neg)),
    "ShearY": ("shear_y", lambda m, neg, xp: _signed(xp, _level(m) * 0.3, neg)),
    "TranslateXRel": ("translate_x_rel", lambda m, neg, xp: _signed(xp, _level(m) * 0.45, neg)),
    "TranslateYRel": ("translate_y_rel", lambda m, neg, xp: _signed(xp, _level(m) * 0.45, neg)),
}


# ----------------------------------------------------------------------------- torchvision bins


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32 (its CPU formula: from the start below halfway, else the end)."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float32((end32 - start32) / np.float32(steps - 1))
    out = [start32 + step * np.float32(i) if i < steps // 2
           else end32 - step * np.float32(steps - i - 1) for i in range(steps)]
    return np.array(out, np.float32)


def torchvision_space(num_bins: int, wide: bool) -> dict[str, tuple[np.ndarray | None, bool]]:
    """op -> (magnitude per bin as float64, signed), as torchvision's _augmentation_space.

    Translate of the standard (AutoAugment) space scales with the image width; the ImageNet
    policy uses no Translate, so only the wide space has it.
    """
    enhance = torch_linspace(0.0, 0.99 if wide else 0.9, num_bins)
    bits = np.round(np.float32(8) - np.arange(num_bins, dtype=np.float32)
                    / np.float32((num_bins - 1) / (6 if wide else 4)))
    # Pillow solarizes i >= 255.0 * float(mag): the whole-number threshold is the ceiling.
    thresholds = np.ceil(255.0 * torch_linspace(1.0, 0.0, num_bins).astype(np.float64))
    space: dict[str, tuple[np.ndarray | None, bool]] = {
        "Identity": (None, False), "AutoContrast": (None, False), "Equalize": (None, False),
        "Invert": (None, False),
        "ShearX": (torch_linspace(0.0, 0.99 if wide else 0.3, num_bins), True),
        "ShearY": (torch_linspace(0.0, 0.99 if wide else 0.3, num_bins), True),
        "Rotate": (torch_linspace(0.0, 135.0 if wide else 30.0, num_bins), True),
        "Brightness": (enhance, True), "Color": (enhance, True), "Contrast": (enhance, True),
        "Sharpness": (enhance, True), "Posterize": (bits, False), "Solarize": (thresholds, False),
    }
    if wide:
        space["TranslateX"] = (torch_linspace(0.0, 32.0, num_bins), True)
        space["TranslateY"] = (torch_linspace(0.0, 32.0, num_bins), True)
    return {k: (None if v is None else v.astype(np.float64), s) for k, (v, s) in space.items()}


_TORCHVISION_IMAGE_OPS = {
    "Identity": "identity", "AutoContrast": "auto_contrast", "Equalize": "equalize",
    "Invert": "invert", "ShearX": "shear_x", "ShearY": "shear_y", "TranslateX": "translate_x",
    "TranslateY": "translate_y", "Rotate": "rotate", "Brightness": "brightness",
    "Color": "color", "Contrast": "contrast", "Sharpness": "sharpness",
    "Posterize": "posterize", "Solarize": "solarize",
}
_ENHANCE = ("Brightness", "Color", "Contrast", "Sharpness")


def torchvision_arguments(
    num_bins: int, wide: bool,
) -> dict[str, tuple[str, np.ndarray | None, np.ndarray | None]]:
    """op -> (image op, argument per bin when not negated, when negated), float64 [num_bins].

    What torchvision's _apply_op passes: the enhance factors are 1 + the signed magnitude,
    translations int(magnitude) (whole pixels, truncated towards zero), the others the
    (signed) magnitude itself. None for the ops without a magnitude.
    """
    out: dict[str, tuple[str, np.ndarray | None, np.ndarray | None]] = {}
    for name, (table, signed) in torchvision_space(num_bins, wide).items():
        if table is None:
            out[name] = (_TORCHVISION_IMAGE_OPS[name], None, None)
            continue
        negative = -table if signed else table
        if name in _ENHANCE:
            table, negative = 1.0 + table, 1.0 + negative
        elif name in ("TranslateX", "TranslateY"):
            table, negative = np.trunc(table), np.trunc(negative)
        out[name] = (_TORCHVISION_IMAGE_OPS[name], table, negative)
    return out


def policy_bins(policy: Policy) -> tuple[int, bool]:
    """(number of magnitude bins, wide space) of autoaug / trivial."""
    return (TRIVIAL_BINS, True) if policy.kind == "trivial" else (AUTOAUGMENT_BINS, False)
