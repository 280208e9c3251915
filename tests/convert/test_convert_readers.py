"""Paddle weight readers and writer: Paddle's own bytes, every container form, every error path.

The files in tests/fixtures/paddle_bytes/ were written by paddlepaddle 3.3.1 (CPU, legacy static
mode) with ``paddle.static.save_vars`` (per-variable files, and ``filename="combined_params"``
for the combined file) and ``paddle.save(layer.state_dict())`` (``linear.pdparams``); the script
that made them is tests/fixtures/paddle_bytes/make_paddle_bytes.py (needs Paddle; not run here).
``PADDLE_VALUES`` are the values that script saved (paddle_values.py beside it).
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from fixtures.paddle_bytes import paddle_values
from paddle_writers import combined_bytes, tensor_desc, tensor_record, write_per_variable
from reference import PADDLE_BYTES

from flaxcls.convert.readers import (
    WeightFileError,
    load_paddle_arrays,
    parse_tensor_desc,
    read_tensor_bytes,
    read_tensor_file,
)

PADDLE_VALUES, PADDLE_LOD = paddle_values.VALUES, paddle_values.LOD


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


# ----------------------------------------------------------------------------- Paddle's bytes


def test_reads_paddle_per_variable_files():
    folder = PADDLE_BYTES / "per_variable"
    _assert_same(load_paddle_arrays(folder), PADDLE_VALUES)
    record = read_tensor_file(folder / "step_counter")
    assert record.lod == ((0, 1, 2),)
    assert read_tensor_file(folder / "conv1_weights").lod == ()


def test_reads_paddle_combined_file():
    got = load_paddle_arrays(PADDLE_BYTES / "combined_params", names=list(PADDLE_VALUES))
    _assert_same(got, PADDLE_VALUES)


def test_reads_paddle_pdparams_with_parameter_names():
    got = load_paddle_arrays(PADDLE_BYTES / "linear.pdparams")
    w = np.array([[1, 2], [3, 4], [5, 6]], np.float32) / 8
    _assert_same(got, {"fc_0.w_0": w, "fc_0.b_0": np.array([-1, 1], np.float32)})


def test_writer_reproduces_paddle_bytes():
    for name, value in PADDLE_VALUES.items():
        want = (PADDLE_BYTES / "per_variable" / name).read_bytes()
        assert tensor_record(value, PADDLE_LOD.get(name, ())) == want, name
    want = (PADDLE_BYTES / "combined_params").read_bytes()
    assert combined_bytes(PADDLE_VALUES, PADDLE_LOD) == want


# ----------------------------------------------------------------------------- formats


def test_round_trip_of_every_dtype_and_odd_shapes(tmp_path):
    rng = np.random.RandomState(0)
    arrays = {
        "bf16": rng.standard_normal((3, 2)).astype(ml_dtypes.bfloat16),
        "big_dims": np.zeros((300, 2, 1), np.float32),  # 2-byte varint dims
        "bool": np.array([True, False]),
        "c64": np.array([1 + 2j], np.complex64),
        "i16": np.array([-3], np.int16),
        "i8": np.array([-3, 4], np.int8),
        "scalar": np.array(2.5, np.float32),  # 0-d: no dims in the desc
        "empty": np.zeros((0, 4), np.float32),
    }
    write_per_variable(tmp_path / "w", arrays)
    _assert_same(load_paddle_arrays(tmp_path / "w"), arrays)
    combined = tmp_path / "all_params"
    combined.write_bytes(combined_bytes(arrays))
    _assert_same(load_paddle_arrays(combined, names=list(arrays)), arrays)


def test_desc_accepts_packed_dims_and_negative_dims():
    assert tensor_desc(np.float32, [64, 3, 7, 7]) == bytes.fromhex("0805104010031007 1007")
    assert parse_tensor_desc(bytes.fromhex("0805 1204 40030707"), "x") == (5, (64, 3, 7, 7))
    assert parse_tensor_desc(tensor_desc(np.float32, [-1, 3]), "x") == (5, (-1, 3))
    assert len(tensor_desc(np.float32, [-1])) == 2 + 1 + 10


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_archives_with_a_top_folder_and_program_files(tmp_path):
    members = {f"ResNet_x_pretrained/{n}": tensor_record(a) for n, a in PADDLE_VALUES.items()}
    members["ResNet_x_pretrained/__model__"] = b"not a tensor"
    for path in (tmp_path / "w.tar", tmp_path / "w.tgz", tmp_path / "w.tar.gz"):
        _assert_same(load_paddle_arrays(_tar(path, members)), PADDLE_VALUES)
    with zipfile.ZipFile(tmp_path / "w.zip", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("__MACOSX/ResNet_x_pretrained/._conv1_weights", b"junk")
    _assert_same(load_paddle_arrays(tmp_path / "w.zip"), PADDLE_VALUES)
    # An inference-model archive: program plus one combined params file.
    inference = {"m/__model__": b"program", "m/__params__": combined_bytes(PADDLE_VALUES)}
    got = load_paddle_arrays(_tar(tmp_path / "inf.tar", inference), names=list(PADDLE_VALUES))
    _assert_same(got, PADDLE_VALUES)


# ----------------------------------------------------------------------------- errors


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_truncated_file_is_named(tmp_path):
    good = tensor_record(np.ones((4, 4), np.float32))
    for cut in (3, 15, 22, len(good) - 1):
        path = _file(tmp_path, "conv9_weights", good[:cut])
        with pytest.raises(WeightFileError, match=r"conv9_weights.*(truncated|needs)"):
            read_tensor_file(path)


def test_unknown_dtype_code_is_named(tmp_path):
    data = bytearray(tensor_record(np.ones(3, np.float32)))
    assert data[20:22] == b"\x08\x05"  # the desc follows the 20-byte header
    data[21] = 9  # 9 is a container kind (LOD_TENSOR_ARRAY...), never a tensor's dtype
    with pytest.raises(WeightFileError, match=r"bn_scale.*unknown data type code 9"):
        read_tensor_file(_file(tmp_path, "bn_scale", bytes(data)))


def test_shape_that_disagrees_with_byte_count_is_named(tmp_path):
    good = tensor_record(np.ones((2, 3), np.float32))
    # Data for 6 floats but a desc that says 2x2: 8 bytes remain after the tensor.
    wrong = good[:16] + struct.pack("<i", 6) + tensor_desc(np.float32, [2, 2]) + good[26:]
    with pytest.raises(WeightFileError, match=r"fc_w.*8 bytes after the tensor.*\[2, 2\]"):
        read_tensor_file(_file(tmp_path, "fc_w", wrong))
    # A desc that says 4x4: more data than the file has.
    short = good[:16] + struct.pack("<i", 6) + tensor_desc(np.float32, [4, 4]) + good[26:]
    with pytest.raises(WeightFileError, match=r"fc_w2.*\[4, 4\].*needs 64 data bytes.*24 left"):
        read_tensor_file(_file(tmp_path, "fc_w2", short))


def test_trailing_bytes_and_bad_versions_are_named(tmp_path):
    good = tensor_record(np.ones(2, np.float32))
    with pytest.raises(WeightFileError, match=r"w_a.*4 bytes after the tensor"):
        read_tensor_file(_file(tmp_path, "w_a", good + b"\0\0\0\0"))
    with pytest.raises(WeightFileError, match=r"w_b.*LoDTensor version 7"):
        read_tensor_file(_file(tmp_path, "w_b", struct.pack("<I", 7) + good[4:]))
    with pytest.raises(WeightFileError, match=r"w_c.*tensor version 1"):
        read_tensor_file(_file(tmp_path, "w_c", good[:12] + struct.pack("<I", 1) + good[16:]))


def test_errors_inside_archives_and_combined_files_name_the_member(tmp_path):
    good = tensor_record(np.ones(2, np.float32))
    tar = _tar(tmp_path / "r.tar", {"r/ok_w": good, "r/bad_w": good[:-2]})
    with pytest.raises(WeightFileError, match=r"r\.tar: r/bad_w: .*truncated"):
        load_paddle_arrays(tar)
    dup = _tar(tmp_path / "d.tar", {"a/w": good, "b/w": good})
    with pytest.raises(WeightFileError, match=r"d\.tar: variable 'w' appears twice"):
        load_paddle_arrays(dup)
    combined = _file(tmp_path, "__params__", good + good[:-1])
    with pytest.raises(WeightFileError, match=r"__params__ \(record 1, y\).*truncated"):
        load_paddle_arrays(combined, names=["y", "x"])
    with pytest.raises(WeightFileError, match=r"__params__: 2 records, but 3 variable names"):
        load_paddle_arrays(_file(tmp_path, "__params__", good * 2), names=["x", "y", "z"])
    with pytest.raises(WeightFileError, match=r"__params__: \d+ bytes after the 1 expected"):
        load_paddle_arrays(combined, names=["x"])
    with pytest.raises(WeightFileError, match=r"needs the list of variable names"):
        load_paddle_arrays(combined)
    with pytest.raises(WeightFileError, match=r"broken\.tar: not a readable tar"):
        load_paddle_arrays(_file(tmp_path, "broken.tar", b"\1" * 700))
    with pytest.raises(WeightFileError, match=r"empty_dir: no Paddle tensors"):
        (tmp_path / "empty_dir").mkdir()
        load_paddle_arrays(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="nowhere.tar"):
        load_paddle_arrays(tmp_path / "nowhere.tar")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pdparams_cannot_run_code(tmp_path):
    marker = tmp_path / "pickle_ran_code"
    evil = {"fc_0.w_0": np.ones(2, np.float32), "x": _RunsCode(marker)}
    path = _file(tmp_path, "evil.pdparams", pickle.dumps(evil, protocol=4))
    with pytest.raises(WeightFileError, match=r"evil\.pdparams: refusing to load (posix|os)\.mkdir"):
        load_paddle_arrays(path)
    assert not marker.exists()
    for value, what in ((np.array([object()], dtype=object), "object"),
                        (np.array([{"a": 1}], dtype=object), "object"),
                        ("text", "str")):
        path = _file(tmp_path, "odd.pdparams", pickle.dumps({"w": value}, protocol=4))
        with pytest.raises(WeightFileError,
                           match=rf"odd\.pdparams: (refusing to load|entry 'w' is a {what})"):
            load_paddle_arrays(path)
    with pytest.raises(WeightFileError, match=r"list\.pdparams: holds a list"):
        load_paddle_arrays(_file(tmp_path, "list.pdparams", pickle.dumps([1], protocol=2)))
    with pytest.raises(WeightFileError, match=r"cut\.pdparams: not a readable"):
        data = pickle.dumps({"w": np.ones(3)}, protocol=4)
        load_paddle_arrays(_file(tmp_path, "cut.pdparams", data[: len(data) // 2]))


def test_pdparams_big_param_slices_are_joined(tmp_path):
    full = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = {"w@@.0": full.ravel()[:5], "w@@.1": full.ravel()[5:], "b": np.ones(2, np.float32),
           "UnpackBigParamInfor@@": {"w": {"OriginShape": [3, 4], "slices": ["w@@.0", "w@@.1"]}}}
    got = load_paddle_arrays(_file(tmp_path, "big.pdparams", pickle.dumps(obj, protocol=2)))
    _assert_same(got, {"w": full, "b": np.ones(2, np.float32)})


def test_single_per_variable_file_reads_with_its_record():
    record = read_tensor_bytes(tensor_record(np.ones(3, np.float16), [[0, 3]]), "x")
    assert record.lod == ((0, 3),) and record.array.dtype == np.float16


def test_pdparams_written_by_numpy_1_load(tmp_path):
    """2019-2023 files name numpy.core.multiarray (numpy 1.x); numpy 2 writes numpy._core."""
    data = pickle.dumps({"w": np.arange(3, dtype=np.float32)}, protocol=2)
    assert b"numpy._core.multiarray" in data
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    got = load_paddle_arrays(_file(tmp_path, "old.pdparams", old))
    _assert_same(got, {"w": np.arange(3, dtype=np.float32)})
