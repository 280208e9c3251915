"""Writers of Paddle's per-variable and combined LoDTensor files, byte for byte as Paddle does:
the tests' way to make released-weight files (``flaxcls.convert.readers`` only reads them).

``tensor_record`` is one per-variable file; a combined file is the records of the variables in
sorted-name order; ``pdparams_bytes`` is what ``paddle.save(layer.state_dict())`` writes.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from flaxcls.convert.readers import DTYPE_CODES


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 -> two's complement, 10 bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tensor_desc(dtype: np.dtype, dims: Sequence[int]) -> bytes:
    """``VarType.TensorDesc``: dtype enum, then each dim unpacked (proto2), as Paddle writes it."""
    code = DTYPE_CODES.get(np.dtype(dtype).newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {np.dtype(dtype)} has no Paddle type code")
    return b"\x08" + _varint(code) + b"".join(b"\x10" + _varint(int(d)) for d in dims)


def _header(array: np.ndarray, lod: Sequence[Sequence[int]]) -> bytes:
    desc = tensor_desc(array.dtype, array.shape)
    parts = [struct.pack("<IQ", 0, len(lod))]
    for level in lod:
        offsets = np.asarray(level, "<u8").tobytes()
        parts += [struct.pack("<Q", len(offsets)), offsets]
    parts += [struct.pack("<Ii", 0, len(desc)), desc]
    return b"".join(parts)


def _data(array: np.ndarray) -> np.ndarray:
    """The C-order little-endian bytes, as a flat uint8 view (no copy when already so)."""
    return np.ascontiguousarray(array, array.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)


def tensor_record(array: np.ndarray, lod: Sequence[Sequence[int]] = ()) -> bytes:
    """One LoDTensor record (a per-variable file's bytes)."""
    array = np.asarray(array)
    return _header(array, lod) + _data(array).tobytes()


def combined_bytes(arrays: Mapping[str, np.ndarray],
                   lods: Mapping[str, Sequence[Sequence[int]]] | None = None) -> bytes:
    """A combined params file: the records in sorted-name order, nothing else."""
    lods = lods or {}
    return b"".join(tensor_record(arrays[n], lods.get(n, ())) for n in sorted(arrays))


def write_per_variable(directory: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                       lods: Mapping[str, Sequence[Sequence[int]]] | None = None) -> Path:
    """One file per variable, named by the variable, in ``directory`` (created)."""
    lods = lods or {}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"variable name {name!r} cannot be a file name")
        array = np.asarray(array)
        with (out / name).open("wb") as f:  # header, then the data without another copy
            f.write(_header(array, lods.get(name, ())))
            f.write(_data(array))
    return out


def write_combined(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                   lods: Mapping[str, Sequence[Sequence[int]]] | None = None) -> Path:
    out = Path(path)
    out.write_bytes(combined_bytes(arrays, lods))
    return out


def write_pdparams(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                   param_names: Mapping[str, str] | None = None) -> Path:
    """A ``.pdparams`` as ``paddle.save(layer.state_dict(), path)`` writes it: pickle protocol 4
    of ``{state-dict key: numpy array, ...}`` in state-dict order, then, where given, the
    ``"StructuredToParameterName@@"`` entry (key -> the tensor's parameter name)."""
    obj: dict = {key: np.asarray(value) for key, value in state_dict.items()}
    if param_names is not None:
        obj["StructuredToParameterName@@"] = dict(param_names)
    out = Path(path)
    with out.open("wb") as f:  # pickle.dump streams big arrays; dumps would copy them all
        pickle.dump(obj, f, protocol=4)
    return out
