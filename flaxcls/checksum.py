"""Checksums of saved arrays, so a checkpoint whose bytes changed on disk is refused.

Each array's checksum is a 32-bit position-weighted sum of its bit pattern:
``sum_i word_i * (i * 2654435761 + 1 | 1) mod 2**32`` over its elements as unsigned words. The
weights are odd, so any change confined to one element (one flipped bit, one rewritten byte)
changes the sum; changes to several elements cancel with a chance of about 2**-32. Integer
sums wrap and are exact in any order, so the device computation (one jitted program over the
whole state, sharded as the state is, before a save and after a restore: no extra copy to the
host) and the numpy one (for weights read onto the host) give the same value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxcls import mismatch

_MULT = 2654435761  # Knuth's multiplicative hash constant


class ChecksumMismatch(ValueError):
    """Arrays whose checksum differs from the one recorded when they were saved."""


def _words(x: Any, xp: Any) -> Any:
    """The array's bit pattern as a flat uint32 array (16- and 8-bit types widened)."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = xp.asarray(x)
    if x.dtype == xp.bool_:
        x = x.astype(xp.uint8)
    size = np.dtype(x.dtype).itemsize
    unsigned = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32, 8: xp.uint32}[size]
    if xp is np:
        words = x.reshape(-1).view(unsigned)
    else:
        words = jax.lax.bitcast_convert_type(x.reshape(-1), unsigned).reshape(-1)
    return words.astype(xp.uint32)


def _sum(x: Any, xp: Any) -> Any:
    words = _words(x, xp)
    index = xp.arange(words.shape[0], dtype=xp.uint32)
    weights = (index * xp.uint32(_MULT) + xp.uint32(1)) | xp.uint32(1)
    if xp is np:
        return np.uint32(int(np.sum(words * weights, dtype=np.uint64)) & 0xFFFFFFFF)
    return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _device_sums(leaves: list[Any]) -> list[jax.Array]:
    return [_sum(x, jnp) for x in leaves]


def checksums(tree: Any) -> dict[str, str]:
    """'/'-joined path -> checksum (8 hex digits) of every array leaf of ``tree``. jax arrays are
    summed on their devices in one jitted program; numpy arrays on the host."""
    named = {k: v for k, v in mismatch.flat(tree).items() if hasattr(v, "dtype")}
    on_device = [k for k, v in named.items() if isinstance(v, jax.Array)]
    out = {k: int(_sum(v, np)) for k, v in named.items() if not isinstance(v, jax.Array)}
    if on_device:
        sums = jax.device_get(_device_sums([named[k] for k in on_device]))
        out.update({k: int(s) for k, s in zip(on_device, sums)})
    return {k: f"{out[k]:08x}" for k in named}


def verify(tree: Any, recorded: Mapping[str, str], where: str) -> None:
    """Raises ChecksumMismatch naming the arrays of ``tree`` whose checksum differs from
    ``recorded`` (arrays that were not recorded are not checked)."""
    now = checksums(tree)
    bad = sorted(k for k, v in now.items() if k in recorded and recorded[k] != v)
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ChecksumMismatch(f"{where}: {len(bad)} array(s) differ from the checksums "
                               f"recorded when they were saved ({listed})")


def file_sha256(path: str | Path) -> str:
    """sha256 of a file; of a folder, of its files' relative names and bytes in sorted order."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
            h.update(bytes.fromhex(file_sha256(p)))
        return h.hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
