"""Record shards: the rewrite command, the records source, and training/eval streams read from it."""

from __future__ import annotations

import collections
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flaxcls.config import ConfigError, default_config, validate
from flaxcls.data import DataError, Shard, dataset_info, open_source
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import DataSpec, InputSpec

pipeline = pytest.importorskip("flaxcls.data.pipeline")  # needs tensorflow
from flaxcls.data import eval_iterator, rewrite, train_iterator

tf = pipeline.tf
CLASSES = ("ant", "bee", "cow")
MAX_SIDE = 40
# (height, width, format) of the train images of every class; two fit under MAX_SIDE.
SHAPES = [(60, 90, "JPEG"), (30, 36, "JPEG"), (80, 50, "PNG"), (24, 40, "JPEG"),
          (100, 70, "JPEG"), (44, 30, "L")]
VAL_SHAPES = [(50, 60, "JPEG"), (20, 30, "JPEG")]
EVAL_SIDE = 25  # the eval split bounds the shorter side


def _save(path: Path, h: int, w: int, kind: str, rng: np.random.Generator) -> None:
    base = rng.integers(0, 256, (3, 3, 3)).astype(np.uint8)
    image = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    if kind == "L":
        image.convert("L").save(path, "JPEG", quality=95)
    else:
        image.save(path, kind, **({"quality": 95} if kind == "JPEG" else {}))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """src/{train,val}/<class>/NN.(jpg|png): 18 train and 6 val images of mixed sizes."""
    root = tmp_path_factory.mktemp("src")
    rng = np.random.default_rng(0)
    for split, shapes in (("train", SHAPES), ("val", VAL_SHAPES)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i, (h, w, kind) in enumerate(shapes):
                _save(root / split / name / f"{i:02d}.{'png' if kind == 'PNG' else 'jpg'}",
                      h, w, kind, rng)
    return root


@pytest.fixture(scope="module")
def records(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rec") / "records"
    assert rewrite.main(["--src", str(src), "--out", str(out), "--max-side", str(MAX_SIDE),
                         "--quality", "90", "--shards", "4", "--workers", "2",
                         "--eval-max-side", str(EVAL_SIDE)]) == 0
    return out


def _read(path: Path) -> list[dict]:
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64),
            "index": tf.io.FixedLenFeature([], tf.int64)}
    return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, spec).items()}
            for r in tf.data.TFRecordDataset(str(path))]


def _cfg(data_dir, **overrides):
    c = default_config()
    c.update({"data_dir": str(data_dir), "data_source": "records", "num_classes": 3,
              "crop_size": 16, "resize_short_size": 20, "reader_thread": 2,
              "reader_buf_size": 16})
    c.update(overrides)
    resolve_preprocessing(c)
    return c


def _data(data_dir, **overrides) -> DataSpec:
    return DataSpec.from_config(_cfg(data_dir, **overrides))


def _opened(data_dir, **overrides):
    """The source and the input spec of a config, as a run makes them."""
    c = _cfg(data_dir, **overrides)
    return open_source(DataSpec.from_config(c)), InputSpec.from_config(c)


def test_rewrite_bounds_the_longer_side_and_keeps_labels(src, records):
    index = json.loads((records / "records.json").read_text())
    assert index["classes"] == list(CLASSES) and index["num_classes"] == 3
    assert index["settings"]["max_side"] == MAX_SIDE and index["settings"]["quality"] == 90
    train, val = index["splits"]["train"], index["splits"]["val"]
    assert train["count"] == 18 and val["count"] == 6
    assert train["class_counts"] == [6, 6, 6] and val["class_counts"] == [2, 2, 2]
    assert [len(s["shards"]) for s in (train, val)] == [4, 4]
    big = sum(max(h, w) > MAX_SIDE for h, w, _ in SHAPES)
    assert train["resized"] == 3 * big and not train["skipped"]
    originals = {p.read_bytes() for p in (src / "train").rglob("*.jpg")}
    examples = [ex for s in train["shards"] for ex in _read(records / s["file"])]
    assert [ex["index"] for ex in examples] == list(range(18))  # shards hold consecutive runs
    assert sorted(collections.Counter(int(ex["label"]) for ex in examples).values()) == [6] * 3
    kept = 0
    for ex in examples:
        assert tf.io.is_jpeg(ex["image"]).numpy()  # the PNG is re-encoded too
        h, w, _ = tf.image.extract_jpeg_shape(ex["image"]).numpy()
        assert max(h, w) <= MAX_SIDE
        kept += ex["image"] in originals  # fitting JPEGs are stored byte for byte
    assert kept == 3 * sum(max(h, w) <= MAX_SIDE and k != "PNG" for h, w, k in SHAPES)
    val_sides = sorted(tuple(tf.image.extract_jpeg_shape(ex["image"]).numpy()[:2])
                       for s in val["shards"] for ex in _read(records / s["file"]))
    assert val_sides == [(20, 30)] * 3 + [(25, 30)] * 3  # 50x60 -> shorter side 25
    # The train split is shuffled before sharding: the first shard is not one class.
    first = _read(records / train["shards"][0]["file"])
    assert len({int(ex["label"]) for ex in first}) > 1


def test_shorter_side_mode_and_flat_tar_source(tmp_path):
    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for name, (h, w) in {"n02_bee.JPEG": (60, 90), "n01_ant.JPEG": (30, 20),
                         "n01_ant2.JPEG": (90, 30)}.items():
        _save(flat / name, h, w, "JPEG", rng)
    with tarfile.open(tmp_path / "flat.tar", "w") as tar:
        tar.add(flat, arcname="sample")
    out = tmp_path / "out"
    assert rewrite.main(["--src", str(tmp_path / "flat.tar"), "--out", str(out), "--max-side",
                         "24", "--side", "shorter", "--shards", "2"]) == 0
    index = json.loads((out / "records.json").read_text())
    assert index["classes"] == ["n01", "n02"] and index["splits"]["train"]["class_counts"] == [2, 1]
    sides = sorted(tuple(tf.image.extract_jpeg_shape(ex["image"]).numpy()[:2])
                   for s in index["splits"]["train"]["shards"] for ex in _read(out / s["file"]))
    assert sides == [(24, 36), (30, 20), (72, 24)]  # shorter side <= 24; (30, 20) already fits


def test_class_folders_keep_a_test_split(tmp_path):
    """CIFAR-style train/ + test/ folders: both splits are rewritten, under their own names."""
    rng = np.random.default_rng(2)
    for split, n in (("train", 3), ("test", 2)):
        for c in ("ant", "bee"):
            (tmp_path / "src" / split / c).mkdir(parents=True)
            for i in range(n):
                _save(tmp_path / "src" / split / c / f"{i}.jpg", 20, 30, "JPEG", rng)
    out = tmp_path / "out"
    assert rewrite.main(["--src", str(tmp_path / "src"), "--out", str(out), "--shards", "1"]) == 0
    index = json.loads((out / "records.json").read_text())
    assert sorted(index["splits"]) == ["test", "train"]
    assert index["splits"]["test"]["class_counts"] == [2, 2]


def test_rewrite_errors(tmp_path, src, records, capsys):
    assert rewrite.main(["--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err
    assert rewrite.main(["--src", str(src), "--out", str(records)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_records_train_stream(records):
    source, spec = _opened(records)
    info = dataset_info(_data(records))
    assert (info.num_train, info.num_eval, info.num_classes) == (18, 6, 3)
    assert info.class_names == list(CLASSES)
    assert (source.kind, source.keys_are_paths) == ("records", False)
    labels = {int(ex["index"]): int(ex["label"]) for f in sorted(records.glob("train-*"))
              for ex in _read(f)}
    it = train_iterator(source, spec, global_batch_size=6)
    batches = [next(it) for _ in range(6)]  # two epochs of 3 steps
    for b in batches:
        assert b["image"].shape == (6, 16, 16, 3) and b["image"].dtype == np.uint8
        assert b["label"].dtype == np.int32
    # Each epoch is every example once, with its own label (labels are bound to the index).
    for epoch in (batches[:3], batches[3:]):
        seen = collections.Counter(int(v) for b in epoch for v in b["label"])
        assert seen == collections.Counter(labels.values())
    assert not all(np.array_equal(a["label"], b["label"]) for a, b in zip(batches[:3], batches[3:]))
    # Deterministic, and a resumed stream continues exactly where the first one was.
    again = train_iterator(open_source(_data(records)), spec, global_batch_size=6, start_step=4)
    for want in batches[4:]:
        got = next(again)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    # auto finds the records when there are no list files or class folders.
    auto = open_source(_data(records, data_source="auto"))
    assert (auto.kind, auto.num_train) == ("records", 18)


def test_records_process_shards_and_eval(records):
    source, spec = _opened(records)
    index = json.loads((records / "records.json").read_text())
    counts = [s["count"] for s in index["splits"]["train"]["shards"]]
    starts = np.cumsum([0, *counts])
    own = set(range(starts[0], starts[1])) | set(range(starts[2], starts[3]))
    it = train_iterator(source, spec, global_batch_size=6, process_index=0, process_count=2)
    for _ in range(3):
        b = next(it)
        assert b["image"].shape == (3, 16, 16, 3)
    assert not it.num_skipped
    # Which records process 0 read: its shards are 0 and 2 (shard i -> process i % 2).
    batches = next(source.train_keys(spec, Shard(0, 2, 6), steps_per_epoch=3, start_epoch=0,
                                     skip=0))
    read = {int(i) for b in batches.take(6) for i in b["index"].numpy()}
    assert read <= own and read
    with pytest.raises(DataError, match="--shards >= 8"):  # when the stream is made
        train_iterator(source, spec, global_batch_size=8, process_index=5, process_count=8)
    seen = []
    for p in range(2):
        for b in eval_iterator(source, spec, global_batch_size=4, process_index=p,
                               process_count=2):
            seen.extend(b["label"][b["mask"]].tolist())
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]


def _copy(records: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in records.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_corrupt_shard_error_names_the_file(records, tmp_path):
    bad = _copy(records, tmp_path / "bad")
    shard = sorted(bad.glob("train-*"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8  # same size: only reading finds it
    shard.write_bytes(bytes(data))
    it = train_iterator(*_opened(bad), global_batch_size=6)
    with pytest.raises(DataError, match=f"{shard}: damaged record file"):
        for _ in range(12):
            next(it)
    # The eval stream names a damaged shard too.
    val = min(bad.glob("val-*"))
    data = bytearray(val.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = b"\xff" * 8
    val.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{val}: damaged record file"):
        list(eval_iterator(*_opened(bad), global_batch_size=2))


def test_missing_truncated_and_malformed(records, tmp_path):
    bad = _copy(records, tmp_path / "bad")
    shards = sorted(bad.glob("train-*"))
    shards[0].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:-5])
    with pytest.raises(DataError) as e:
        open_source(_data(bad))
    assert f"{shards[0]}: shard 0 of split 'train' is missing" in str(e.value)
    assert f"{shards[2]}: " in str(e.value) and "truncated" in str(e.value)
    (bad / "records.json").write_text('{"format": "flaxcls-records-v1", "splits": ')
    with pytest.raises(DataError, match="records.json: not a valid record index"):
        open_source(_data(bad))
    (bad / "records.json").unlink()
    with pytest.raises(DataError, match="records.json' not found"):
        open_source(_data(bad))
    with pytest.raises(DataError, match="3 classes but config.num_classes=2"):
        open_source(_data(records, num_classes=2))


def test_config_accepts_records():
    c = default_config()
    c.data_source, c.data_dir = "records", "somewhere"
    validate(c)
    c.data_dir, c.builtin_dataset = "", "digits"
    with pytest.raises(ConfigError, match="data_source"):
        validate(c)


def test_reencode_passes_small_jpegs_through():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(buf, "JPEG")
    data, resized = rewrite.reencode(buf.getvalue(), max_side=12, side="longer", quality=90)
    assert data == buf.getvalue() and not resized
    data, resized = rewrite.reencode(buf.getvalue(), max_side=6, side="longer", quality=90)
    assert resized and tuple(tf.image.extract_jpeg_shape(data).numpy()) == (5, 6, 3)


def test_model_sizes_the_bounds_and_small_records_are_warned_about(src, records, tmp_path, caplog):
    out = tmp_path / "inception"
    assert rewrite.main(["--src", str(src), "--out", str(out), "--model", "InceptionV4",
                         "--shards", "2", "--workers", "2"]) == 0
    settings = json.loads((out / "records.json").read_text())["settings"]
    assert (settings["max_side"], settings["eval_max_side"]) == (320, 320)
    assert rewrite.main(["--src", str(src), "--out", str(tmp_path / "x"), "--model", "NoSuch"]) == 2

    # The fixture's records bound train images at 40 px (longer) and eval at 25 px (shorter).
    source, spec = _opened(records)
    assert source.input_warnings(spec, "train") == source.input_warnings(spec, "eval") == []
    big = InputSpec.from_config(_cfg(records, crop_size=64, resize_short_size=72))
    with caplog.at_level("WARNING"):
        [train_msg] = source.warn(big, "train")
        [eval_msg] = source.warn(big, "eval")
    assert "longer side at most 40 px, below config.crop_size=64" in train_msg
    assert "--max-side 64" in train_msg
    assert "shorter side at most 25 px, below config.resize_short_size=72" in eval_msg
    assert "--eval-max-side 72" in eval_msg
    assert train_msg in caplog.text and eval_msg in caplog.text
    # Said once per source (not at every evaluation); the streams say it when they start.
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert source.warn(big, "eval") == [eval_msg]
        list(eval_iterator(source, big, global_batch_size=6))
    assert eval_msg not in caplog.text
    with caplog.at_level("WARNING"):
        list(eval_iterator(open_source(_data(records)), big, global_batch_size=6))
    assert eval_msg in caplog.text


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_interrupted_rewrite_resumes_to_the_same_bytes(src, records, tmp_path, monkeypatch):
    """A rewrite that died after two finished shards and in the middle of a third (its file
    still under the temporary name): the same command keeps the two, writes the rest, and the
    folder equals an uninterrupted rewrite's byte for byte."""
    args = ["--src", str(src), "--out", str(tmp_path / "out"), "--max-side", str(MAX_SIDE),
            "--quality", "90", "--shards", "4", "--workers", "2",
            "--eval-max-side", str(EVAL_SIDE)]
    real, calls = rewrite._write_shard, []

    def dies_on_the_third(tf, out_dir, file, *a, **kw):
        calls.append(file)
        if len(calls) == 3:
            Path(out_dir, file + ".tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt  # as good as a kill: nothing after this runs
        return real(tf, out_dir, file, *a, **kw)

    monkeypatch.setattr(rewrite, "_write_shard", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        rewrite.main(args)
    out = tmp_path / "out"
    assert not (out / "records.json").exists()
    assert (out / "train-00000-of-00004.tfrecord").exists()
    monkeypatch.setattr(rewrite, "_write_shard", real)
    written = []
    monkeypatch.setattr(rewrite, "_write_shard",
                        lambda tf, out_dir, file, *a, **kw: written.append(file)
                        or real(tf, out_dir, file, *a, **kw))
    assert rewrite.main(args) == 0
    assert "train-00000-of-00004.tfrecord" not in written  # kept, not rewritten
    assert "train-00002-of-00004.tfrecord" in written
    assert _files(out) == _files(records)


def test_interrupted_rewrite_with_other_arguments_is_refused(src, tmp_path, monkeypatch, capsys):
    args = ["--src", str(src), "--out", str(tmp_path / "out"), "--max-side", str(MAX_SIDE),
            "--shards", "4", "--workers", "1"]

    def dies(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(rewrite, "_write_shard", dies)
    with pytest.raises(KeyboardInterrupt):
        rewrite.main(args)
    monkeypatch.undo()
    assert rewrite.main([*args[:-4], "--shards", "8", "--quality", "80", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds an interrupted rewrite with other arguments" in err
    assert "settings.quality: was 90, now 80" in err and "settings.shards: was 4, now 8" in err


@pytest.mark.subprocess
@pytest.mark.slow  # about 2 minutes; the in-process resume test above is in the fast set
def test_rewrite_killed_at_random_moments_ends_with_the_same_records(digits_dir, tmp_path):
    """kill -9 at seeded random moments, re-run until it finishes: the records equal those of
    an uninterrupted rewrite byte for byte."""
    import subprocess
    import sys
    import time

    from conftest import REPO, subprocess_env

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "flaxcls.data.rewrite", "--src", str(digits_dir),
                "--out", str(out), "--shards", "12", "--workers", "1", "--max-side", "24"]

    t0 = time.monotonic()
    subprocess.run(command(tmp_path / "whole"), cwd=REPO, env=subprocess_env(1), check=True,
                   capture_output=True)
    span = time.monotonic() - t0
    rng = np.random.default_rng(3)
    out, kills = tmp_path / "killed", 0
    for _ in range(30):
        proc = subprocess.Popen(command(out), cwd=REPO, env=subprocess_env(1),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            _, err = proc.communicate(timeout=float(rng.uniform(0.3 * span, span)))
            assert proc.returncode == 0, err[-2000:]
            break
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            kills += 1
    assert kills >= 1
    assert _files(out) == _files(tmp_path / "whole")
