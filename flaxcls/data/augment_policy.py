"""`config.auto_augment`'s grammar: a spec string -> `Policy`, or one line naming what is
wrong. No tensorflow here, so the config is checked where the rest of it is (the policy runs
in `flaxcls.data.autoaugment`, which documents each op and its reference)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

_ACCEPTED = ('accepted: "" (off), '
             '"rand-m<0..10>[-n<ops>][-mstd<std>][-mmax<max>][-inc<0|1>][-p<prob>]", '
             '"autoaug", "trivial"')
_LEVEL_DENOM = 10.0  # timm: magnitude m means level m / 10
_UNIFORM_MSTD = 100.0  # timm: an mstd above this samples the magnitude uniformly in [0, m]


@dataclasses.dataclass(frozen=True)
class Policy:
    """A parsed `config.auto_augment`; the rand-only fields keep their defaults otherwise."""

    kind: str  # "rand", "autoaug" or "trivial"
    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    magnitude_max: float = 10.0
    increasing: bool = False
    prob: float = 0.5


# ----------------------------------------------------------------------------- the spec grammar


def _refuse(spec: str, problem: str) -> ValueError:
    return ValueError(f"config.auto_augment={spec!r}: {problem}; {_ACCEPTED}")


def _number(spec: str, key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _refuse(spec, f"{key} value {text!r} is not a number") from None
    if math.isnan(value):
        raise _refuse(spec, f"{key} value {text!r} is not a number")
    return value


def parse(spec: str) -> Policy:
    """`rand-m9-n2-mstd0.5`, `autoaug` or `trivial` -> Policy; ValueError (one line) otherwise."""
    if spec in ("autoaug", "trivial"):
        return Policy(kind=spec)
    head, _, rest = spec.partition("-")
    if head in ("autoaug", "trivial"):
        raise _refuse(spec, f"{head} takes no settings (got {rest!r})")
    if head != "rand":
        name = "empty policy" if not spec else f"unknown policy {head!r}"
        raise _refuse(spec, name)
    settings: dict[str, str] = {}
    for part in rest.split("-") if rest else []:
        match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(.*)", part)
        if not match:
            raise _refuse(spec, f"unknown setting {part!r} (settings: m, n, mstd, mmax, inc, p)")
        key, text = match.groups()
        if not text:
            raise _refuse(spec, f"setting {key!r} has no value")
        if key in settings:
            raise _refuse(spec, f"setting {key!r} is given twice")
        settings[key] = text

    fields: dict[str, Any] = {}
    upper = _LEVEL_DENOM
    if "mmax" in settings:
        upper = _number(spec, "mmax", settings["mmax"])
        if not 0 < upper < math.inf:
            raise _refuse(spec, f"mmax {upper:g} must be positive and finite")
        fields["magnitude_max"] = upper
    if "m" in settings:
        magnitude = _number(spec, "m", settings["m"])
        if not 0 <= magnitude <= upper:
            raise _refuse(spec, f"magnitude {magnitude:g} is outside [0, {upper:g}]"
                          + ("" if "mmax" in settings else " (mmax raises the limit)"))
        fields["magnitude"] = magnitude
    elif upper < _LEVEL_DENOM:
        raise _refuse(spec, f"the default magnitude 10 is above mmax {upper:g}")
    if "n" in settings:
        if not settings["n"].isdigit():
            raise _refuse(spec, f"n value {settings['n']!r} is not a whole number")
        if int(settings["n"]) < 1:
            raise _refuse(spec, f"n {settings['n']} is below 1 (ops per image)")
        fields["num_ops"] = int(settings["n"])
    if "mstd" in settings:
        std = _number(spec, "mstd", settings["mstd"])
        if std < 0:
            raise _refuse(spec, f"mstd {std:g} is negative")
        fields["magnitude_std"] = math.inf if std > _UNIFORM_MSTD else std
    if "inc" in settings:
        if settings["inc"] not in ("0", "1"):
            raise _refuse(spec, f"inc value {settings['inc']!r} is not 0 or 1")
        fields["increasing"] = settings["inc"] == "1"
    if "p" in settings:
        prob = _number(spec, "p", settings["p"])
        if not 0 <= prob <= 1:
            raise _refuse(spec, f"p {prob:g} is outside [0, 1]")
        fields["prob"] = prob
    return Policy(kind="rand", **fields)
