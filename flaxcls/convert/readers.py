"""Readers of Paddle weight files -> ``{name: numpy array}``, without Paddle.

Forms: one LoDTensor file per variable (the file name is the variable name) in a folder or in
a ``.tar``/``.tar.gz``/``.zip`` as downloaded (read in memory); a combined file (the same
records back to back, in sorted-name order, no names inside); ``.pdparams`` pickles, loaded
by an unpickler that can only rebuild numpy arrays and plain containers.

A ``.pdparams`` written by ``paddle.save(layer.state_dict())`` is keyed by structured state-dict
keys (``stem.0.conv.weight``) and carries ``StructuredToParameterName@@``, each key's parameter
name. Tensors are returned by parameter name, as the 2019 names and PaddleClas's ``ParamAttr``
names are; ``load_paddle_weights`` also returns each renamed tensor's state-dict key, for the
models (PaddleClas's ``legendary_models``) whose parameter names are automatic
(``conv2d_0.w_0``, in layer-creation order) and only the keys can be trusted.

Record layout (little-endian): uint32 version 0 | uint64 LoD levels, each a uint64 byte size
and that many bytes of uint64 offsets | uint32 tensor version 0 | int32 desc size | the
``VarType.TensorDesc`` protobuf (field 1 dtype enum, field 2 dims) | C-order data.
Every error names the file (and the archive member or record).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import ml_dtypes
import numpy as np

log = logging.getLogger("flaxcls")

# Paddle VarType.Type -> numpy dtype (little-endian on disk).
DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.bool_),
    1: np.dtype("<i2"),
    2: np.dtype("<i4"),
    3: np.dtype("<i8"),
    4: np.dtype("<f2"),
    5: np.dtype("<f4"),
    6: np.dtype("<f8"),
    19: np.dtype("<u8"),  # SIZE_T
    20: np.dtype(np.uint8),
    21: np.dtype(np.int8),
    22: np.dtype(ml_dtypes.bfloat16),
    23: np.dtype("<c8"),
    24: np.dtype("<c16"),
}
DTYPE_CODES: dict[np.dtype, int] = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}

# Members of an inference-model folder that are programs, not tensors.
PROGRAM_FILES = ("__model__", "model")
PROGRAM_SUFFIXES = (".pdmodel", ".json", ".pdopt", ".pdiparams.info", ".md", ".txt")
# Members that hold every parameter in one combined record stream.
COMBINED_FILES = ("__params__", "params")
COMBINED_SUFFIXES = (".pdiparams",)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


class WeightFileError(ValueError):
    """A weight file that can't be read: truncated, unknown dtype, wrong size, unsafe pickle."""


@dataclasses.dataclass(frozen=True)
class PaddleWeights:
    """A weight file's tensors by parameter name, and the state-dict key of each tensor that a
    ``.pdparams`` renamed through its ``StructuredToParameterName@@`` entry (none otherwise)."""

    arrays: dict[str, np.ndarray]
    state_dict_keys: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> key


@dataclasses.dataclass(frozen=True)
class Record:
    """One serialised LoDTensor: its data and LoD (offset lists, usually empty)."""

    array: np.ndarray
    lod: tuple[tuple[int, ...], ...] = ()


# ----------------------------------------------------------------------------- records


class _Cursor:
    def __init__(self, data: bytes, where: str, pos: int = 0):
        self.data, self.where, self.pos = memoryview(data), where, pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise WeightFileError(
                f"{self.where}: truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> int:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]


def _varint(buf: memoryview, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise WeightFileError(f"{where}: tensor description ends inside a varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
        if shift > 63:
            raise WeightFileError(f"{where}: tensor description has an over-long varint")


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_tensor_desc(desc: bytes | memoryview, where: str) -> tuple[int, tuple[int, ...]]:
    """``VarType.TensorDesc`` bytes -> (dtype code, dims). Accepts packed and unpacked dims."""
    buf, pos = memoryview(desc), 0
    code, dims = None, []
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            code, pos = _varint(buf, pos, where)
        elif field == 2 and wire == 0:
            dim, pos = _varint(buf, pos, where)
            dims.append(_signed64(dim))
        elif field == 2 and wire == 2:
            size, pos = _varint(buf, pos, where)
            end = pos + size
            if end > len(buf):
                raise WeightFileError(f"{where}: tensor description: packed dims run past its end")
            while pos < end:
                dim, pos = _varint(buf, pos, where)
                dims.append(_signed64(dim))
        else:
            raise WeightFileError(f"{where}: tensor description has unknown field {field} "
                                  f"(wire type {wire})")
    if code is None:
        raise WeightFileError(f"{where}: tensor description has no data type")
    return code, tuple(dims)


def read_record(cursor: _Cursor) -> Record:
    """Parses the record at ``cursor.pos`` and moves past it."""
    where = cursor.where
    version = cursor.unpack("<I", "the LoDTensor version")
    if version != 0:
        raise WeightFileError(f"{where}: LoDTensor version {version}, only 0 exists "
                              "(not a Paddle tensor file?)")
    levels = cursor.unpack("<Q", "the LoD level count")
    if levels > 16:
        raise WeightFileError(f"{where}: {levels} LoD levels (not a Paddle tensor file?)")
    lod = []
    for level in range(levels):
        size = cursor.unpack("<Q", f"LoD level {level}'s size")
        if size % 8:
            raise WeightFileError(f"{where}: LoD level {level} has {size} bytes, "
                                  "not a multiple of 8")
        lod.append(tuple(np.frombuffer(cursor.take(size, f"LoD level {level}"), "<u8").tolist()))
    tensor_version = cursor.unpack("<I", "the tensor version")
    if tensor_version != 0:
        raise WeightFileError(f"{where}: tensor version {tensor_version}, only 0 exists")
    desc_size = cursor.unpack("<i", "the tensor description size")
    if desc_size < 0:
        raise WeightFileError(f"{where}: negative tensor description size {desc_size}")
    code, dims = parse_tensor_desc(cursor.take(desc_size, "the tensor description"), where)
    dtype = DTYPES.get(code)
    if dtype is None:
        raise WeightFileError(f"{where}: unknown data type code {code} "
                              f"(known: {sorted(DTYPES)})")
    if any(d < 0 for d in dims):
        raise WeightFileError(f"{where}: shape {list(dims)} has an unknown (negative) dimension")
    nbytes = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    left = len(cursor.data) - cursor.pos
    if nbytes > left:
        raise WeightFileError(
            f"{where}: shape {list(dims)} of {dtype.name} needs {nbytes} data bytes, the file "
            f"has {left} left (truncated, or the shape disagrees with the data)")
    data = cursor.take(nbytes, "the tensor data")
    array = np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="), copy=True)
    return Record(array, tuple(lod))


def read_tensor_bytes(data: bytes, where: str) -> Record:
    """One per-variable file's bytes -> its Record; extra bytes after it are an error."""
    cursor = _Cursor(data, where)
    record = read_record(cursor)
    if cursor.pos != len(data):
        raise WeightFileError(
            f"{where}: {len(data) - cursor.pos} bytes after the tensor (the shape "
            f"{list(record.array.shape)} disagrees with the data size, or this is a combined file)")
    return record


def read_combined_bytes(data: bytes, names: Sequence[str], where: str) -> dict[str, np.ndarray]:
    """A combined file's bytes -> arrays named by ``sorted(names)`` (Paddle's record order)."""
    names = sorted(names)
    cursor, out = _Cursor(data, where), {}
    for i, name in enumerate(names):
        if cursor.pos == len(data):
            raise WeightFileError(f"{where}: {i} records, but {len(names)} variable names are "
                                  f"expected (first missing: {name})")
        cursor.where = f"{where} (record {i}, {name})"
        out[name] = read_record(cursor).array
    if cursor.pos != len(data):
        raise WeightFileError(f"{where}: {len(data) - cursor.pos} bytes after the "
                              f"{len(names)} expected records (more variables than expected, "
                              "or not this model's combined file)")
    return out


# ----------------------------------------------------------------------------- pickles


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
}
STRUCTURED_NAMES = "StructuredToParameterName@@"
BIG_PARAM_INFO = "UnpackBigParamInfor@@"


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, where: str):
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise WeightFileError(
                f"{self.where}: refusing to load {module}.{name}: a weight pickle may only "
                "hold numpy arrays and plain containers")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise WeightFileError(f"{self.where}: refusing a persistent id in a weight pickle")


def read_pdparams_bytes(data: bytes, where: str) -> dict[str, np.ndarray]:
    """A ``.pdparams`` pickle -> arrays keyed by parameter name (structured keys renamed)."""
    return read_pdparams_weights(data, where).arrays


def read_pdparams_weights(data: bytes, where: str) -> PaddleWeights:
    """A ``.pdparams`` pickle -> arrays keyed by parameter name, and the state-dict key of every
    tensor renamed through ``StructuredToParameterName@@``."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), where).load()
    except WeightFileError:
        raise
    except Exception as e:
        raise WeightFileError(f"{where}: not a readable .pdparams pickle ({e})") from e
    if not isinstance(obj, dict):
        raise WeightFileError(f"{where}: holds a {type(obj).__name__}, not a dict of arrays")
    obj = dict(obj)
    renames = obj.pop(STRUCTURED_NAMES, None) or {}
    big = obj.pop(BIG_PARAM_INFO, None) or {}
    for name, info in big.items():
        parts = [obj.pop(s) for s in info["slices"]]
        obj[name] = np.concatenate([np.ravel(p) for p in parts]).reshape(info["OriginShape"])
    out, keys = {}, {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise WeightFileError(f"{where}: key {key!r} is not a string")
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
            kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise WeightFileError(f"{where}: entry {key!r} is a {kind}, not a numeric array")
        name = str(renames.get(key, key))
        out[name] = value
        if name != key:
            keys[name] = key
    return PaddleWeights(out, keys)


# ----------------------------------------------------------------------------- files


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _role(name: str) -> str:
    """'program', 'combined', 'pickle', 'skip' or 'tensor' for a folder/archive member."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith(".") or name.startswith("__MACOSX/"):
        return "skip"
    if base in PROGRAM_FILES or base.endswith(PROGRAM_SUFFIXES):
        return "program"
    if base in COMBINED_FILES or base.endswith(COMBINED_SUFFIXES):
        return "combined"
    if base.endswith(".pdparams"):
        return "pickle"
    return "tensor"


def _members_to_weights(members: Iterable[tuple[str, bytes]], where: str,
                        names: Sequence[str] | None) -> PaddleWeights:
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    keys: dict[str, str] = {}
    skipped = []

    def add(name: str, array: np.ndarray, member: str) -> None:
        if name in out:
            raise WeightFileError(f"{where}: variable {name!r} appears twice "
                                  f"({origin[name]} and {member})")
        out[name], origin[name] = array, member

    from flaxcls.progress import TaskProgress

    with TaskProgress(f"reading {where}", total=len(names) if names else None,
                      unit="tensors", logger=log) as progress:
        for member, data in members:
            _add_member(member, data, where, names, add, keys, skipped)
            progress.done = len(out)
            progress.update(0)
    if skipped:
        log.info("%s: skipped %d non-tensor files: %s", where, len(skipped), ", ".join(skipped))
    if not out:
        raise WeightFileError(f"{where}: no Paddle tensors found")
    return PaddleWeights(out, keys)


def _add_member(member: str, data: bytes, where: str, names: Sequence[str] | None,
                add: Callable[[str, np.ndarray, str], None], keys: dict[str, str],
                skipped: list[str]) -> None:
    """The tensors of one file of a weight folder or archive, through ``add``."""
    role = _role(member)
    label = f"{where}: {member}" if member else where
    if role in ("skip", "program"):
        skipped.append(member)
    elif role == "pickle":
        weights = read_pdparams_weights(data, label)
        for name, array in weights.arrays.items():
            add(name, array, member)
        keys.update(weights.state_dict_keys)
    elif role == "combined":
        if names is None:
            raise WeightFileError(f"{label}: a combined file needs the list of variable "
                                  "names (give the model name)")
        for name, array in read_combined_bytes(data, names, label).items():
            add(name, array, member)
    else:
        add(member.rsplit("/", 1)[-1], read_tensor_bytes(data, label).array, member)


def _folder_members(path: Path) -> Iterable[tuple[str, bytes]]:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            yield p.relative_to(path).as_posix(), p.read_bytes()


def _tar_members(path: Path) -> Iterable[tuple[str, bytes]]:
    try:
        with tarfile.open(path, "r:*") as tar:
            for info in tar:
                if info.isfile():
                    f = tar.extractfile(info)
                    yield info.name, f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError) as e:
        raise WeightFileError(f"{path}: not a readable tar archive ({e})") from e


def _zip_members(path: Path) -> Iterable[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    yield info.filename, zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise WeightFileError(f"{path}: not a readable zip archive ({e})") from e


def load_paddle_arrays(path: str | os.PathLike, names: Sequence[str] | None = None
                       ) -> dict[str, np.ndarray]:
    """Every tensor in a Paddle weight folder, archive, combined file or ``.pdparams``.

    ``names``: the variable names a combined file holds (any order; records are in sorted
    order). Needed only for combined files; ``from_paddle`` passes the model's Paddle names.
    """
    return load_paddle_weights(path, names).arrays


def load_paddle_weights(path: str | os.PathLike, names: Sequence[str] | None = None
                        ) -> PaddleWeights:
    """``load_paddle_arrays``'s tensors, with the state-dict keys a ``.pdparams`` carried."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"Paddle weights {p} do not exist")
    if p.is_dir():
        return _members_to_weights(_folder_members(p), str(p), names)
    lower = p.name.lower()
    if lower.endswith(".zip"):
        return _members_to_weights(_zip_members(p), str(p), names)
    if _is_archive(p):
        return _members_to_weights(_tar_members(p), str(p), names)
    data = p.read_bytes()
    if lower.endswith(".pdparams") or data[:1] == b"\x80":
        return read_pdparams_weights(data, str(p))
    if names is None:
        raise WeightFileError(f"{p}: a single tensor file or combined file; a combined file "
                              "needs the list of variable names (give the model name)")
    return PaddleWeights(read_combined_bytes(data, names, str(p)))


def read_tensor_file(path: str | os.PathLike) -> Record:
    """One per-variable file (its name is the variable's name)."""
    p = Path(path)
    return read_tensor_bytes(p.read_bytes(), str(p))
