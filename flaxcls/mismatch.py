"""Two sets of named tensors compared by name and shape, and reported one way.

Checkpoint restore, pretrained loading, eval/infer/export weights and the Paddle converter all
ask the same question (do these weights fit this model?) and answer it with this report: one
line per tensor that differs, named by its '/'-joined path, capped at ``MAX_LISTED`` lines.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import jax

MAX_LISTED = 20


def flat(tree: Any) -> dict[str, Any]:
    """'/'-joined path -> leaf, for any pytree: nested dicts, a train state, Orbax's metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'/'-joined path -> shape, for every leaf that has one."""
    return {k: tuple(v.shape) for k, v in flat(tree).items() if hasattr(v, "shape")}


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """What differs between the tensors we have (a checkpoint, a weight file) and those we want
    (the model's)."""

    shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]  # (name, have, want)
    missing: tuple[str, ...]  # wanted, not there
    unexpected: tuple[str, ...]  # there, not wanted

    def __bool__(self) -> bool:
        return bool(self.shape or self.missing or self.unexpected)

    def __len__(self) -> int:
        return len(self.shape) + len(self.missing) + len(self.unexpected)

    def names(self) -> set[str]:
        return {n for n, _, _ in self.shape} | set(self.missing) | set(self.unexpected)

    def without(self, names: Iterable[str]) -> Mismatch:
        """The same report without ``names`` (say, a classifier head that may differ)."""
        drop = set(names)
        return Mismatch(tuple(s for s in self.shape if s[0] not in drop),
                        tuple(n for n in self.missing if n not in drop),
                        tuple(n for n in self.unexpected if n not in drop))

    def lines(self, have: str = "checkpoint", want: str = "model") -> list[str]:
        out = [f"{n}: {have} {a} vs {want} {b}" for n, a, b in self.shape]
        out += [f"{n}: missing from the {have}" for n in self.missing]
        out += [f"{n}: in the {have} but not in the {want}" for n in self.unexpected]
        return out

    def report(self, have: str = "checkpoint", want: str = "model",
               limit: int = MAX_LISTED) -> str:
        """The differing tensors, one indented line each, at most ``limit`` of them."""
        lines = self.lines(have, want)
        shown = "\n  ".join(lines[:limit])
        more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
        return f"\n  {shown}{more}"


def compare(have: Mapping[str, Any], want: Mapping[str, Any], *,
            partial: bool = False) -> Mismatch:
    """``have`` and ``want`` map names to shapes (or to anything with a shape). ``partial``:
    tensors of ``have`` that ``want`` does not name are fine."""
    have_s = {k: _shape(v) for k, v in have.items()}
    want_s = {k: _shape(v) for k, v in want.items()}
    shape = tuple((k, have_s[k], s) for k, s in want_s.items()
                  if k in have_s and have_s[k] is not None and have_s[k] != s)
    missing = tuple(k for k in want_s if k not in have_s)
    unexpected = () if partial else tuple(k for k in have_s if k not in want_s)
    return Mismatch(shape, missing, unexpected)


def _shape(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, tuple) and all(isinstance(d, int) for d in value):
        return value
    shape = getattr(value, "shape", None)
    return None if shape is None else tuple(shape)
