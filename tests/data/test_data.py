"""Input pipeline: sources and their validation, train/eval streams, sharding, resume, TFDS, digits.

Everything runs on small real files written to tmp dirs; the CIFAR-10 test uses the shared data
folder (<repo>/../shared/data, $FLAXCLS_SHARED_DATA or $FLAXCLS_SHARED/data) and skips when it
is absent.
"""

from __future__ import annotations

import collections
import io
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from flaxcls.config import default_config
from flaxcls.data import DataError, DatasetInfo, Source, dataset_info, open_source
from flaxcls.preprocessing import resolve_preprocessing
from flaxcls.specs import DataSpec, InputSpec

pipeline = pytest.importorskip("flaxcls.data.pipeline")  # needs tensorflow
from flaxcls.data import eval_iterator, keys, train_iterator, write_digits_dataset

REPO_ROOT = REPO
SHARED_DATA = Path(os.environ.get("FLAXCLS_SHARED_DATA")
                   or Path(os.environ.get("FLAXCLS_SHARED", REPO_ROOT.parent / "shared")) / "data")
CLASSES = ("cat", "dog", "fox")
TRAIN_PER_CLASS, VAL_PER_CLASS = (8, 8, 8), (4, 4, 3)  # 24 train, 11 eval


def _cfg(data_dir, **overrides):
    c = default_config()
    c.data_dir = str(data_dir)
    c.num_classes = 3
    c.crop_size = 16
    c.resize_short_size = 20
    c.reader_thread = 2
    c.update(overrides)
    resolve_preprocessing(c)
    return c


def _data(data_dir, **overrides) -> DataSpec:
    return DataSpec.from_config(_cfg(data_dir, **overrides))


def _info(data_dir, **overrides) -> DatasetInfo:
    return dataset_info(_data(data_dir, **overrides))


def _opened(data_dir, **overrides) -> tuple[Source, InputSpec]:
    """The source and the input spec of a config, as a run makes them."""
    c = _cfg(data_dir, **overrides)
    return open_source(DataSpec.from_config(c)), InputSpec.from_config(c)


def _image(rng: np.random.Generator, kind: str) -> tuple[Image.Image, str, str]:
    """A distinct small image (smooth, so JPEG keeps it distinct) and its suffix and format."""
    h, w = rng.integers(18, 40, size=2)
    base = rng.integers(0, 256, (3, 4, 3)).astype(np.uint8)
    image = Image.fromarray(base).resize((int(w), int(h)), Image.Resampling.BICUBIC)
    if kind == "grey":
        return image.convert("L"), ".jpg", "JPEG"
    if kind == "cmyk":
        return image.convert("CMYK"), ".jpeg", "JPEG"
    if kind == "rgba":
        return image.convert("RGBA"), ".png", "PNG"
    return image, ".JPEG" if kind == "upper" else ".jpg", "JPEG"


def _make_tree(root: Path, seed: int = 0) -> Path:
    """root/{train,val}/<class>/* images of mixed formats plus matching list files."""
    rng = np.random.default_rng(seed)
    kinds = ["rgb", "rgb", "grey", "rgb", "rgba", "cmyk", "upper", "rgb"]
    lines = {"train": [], "val": []}
    for split, counts in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for label, (name, count) in enumerate(zip(CLASSES, counts)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image, suffix, fmt = _image(rng, kinds[i % len(kinds)])
                rel = f"{split}/{name}/{i:03d}{suffix}"
                image.save(root / rel, fmt)
                lines[split].append(f"{rel} {label}\n")
    (root / "train_list.txt").write_text("".join(lines["train"]))
    (root / "val_list.txt").write_text("".join(lines["val"]))
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _make_tree(tmp_path_factory.mktemp("tree"))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ----------------------------------------------------------------------------- sources


def test_list_and_folder_sources_agree(tree):
    by_list = _info(tree, data_source="list")
    by_folder = _info(tree, data_source="folder")
    assert by_list == DatasetInfo(24, 11, 3, None)
    assert by_folder == DatasetInfo(24, 11, 3, list(CLASSES))
    assert _info(tree) == by_list  # auto prefers list files
    src_l = open_source(_data(tree, data_source="list"))
    src_f = open_source(_data(tree, data_source="folder"))
    assert (src_l.kind, src_f.kind, open_source(_data(tree)).kind) == ("list", "folder", "list")
    assert src_l.keys_are_paths and src_f.keys_are_paths
    assert (src_f.num_train, src_f.num_eval, src_f.num_classes) == (24, 11, 3)
    for a, b in ((src_l.train, src_f.train), (src_l.eval, src_f.eval)):
        pairs_a = sorted(zip(map(os.path.normpath, a.paths), a.labels.tolist()))
        pairs_b = sorted(zip(map(os.path.normpath, b.paths), b.labels.tolist()))
        assert pairs_a == pairs_b


def test_auto_errors_name_data_dir(tmp_path):
    with pytest.raises(DataError, match="train_list.txt") as e:
        open_source(_data(tmp_path))
    assert str(tmp_path) in str(e.value) and "train" + os.sep in str(e.value)
    with pytest.raises(DataError, match="data_dir is empty"):
        open_source(_data(""))
    with pytest.raises(DataError, match="data_source='nope': must be auto, list, folder"):
        open_source(_data(tmp_path, data_source="nope"))


def test_total_images_overrides_num_train(tree):
    assert _info(tree, total_images=40).num_train == 40
    source = open_source(_data(tree, total_images=40))
    assert (source.num_train, source.train_size) == (40, 24)


def test_list_file_format_is_tolerant(tree, tmp_path):
    (tmp_path / "a b").mkdir()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(tmp_path / "a b" / "x y.jpg")
    Image.new("RGB", (20, 20), (9, 8, 7)).save(tmp_path / "z.jpg")
    (tmp_path / "train_list.txt").write_bytes(
        b"\n  a b/x y.jpg \t 2  \r\n\n\tz.jpg\t0\r\n   \nz.jpg    1")  # no final newline
    src, spec = _opened(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in src.train.paths] == [
        os.path.join("a b", "x y.jpg"), "z.jpg", "z.jpg"]
    assert src.train.labels.tolist() == [2, 0, 1]
    assert src.eval is None and src.num_eval == 0
    with pytest.raises(DataError, match="no eval data: looked for list file .*val_list.txt"):
        eval_iterator(src, spec, global_batch_size=2)


def test_list_file_problems_name_file_line_and_text(tree, tmp_path):
    lines = [
        "train/cat/000.jpg 0",  # 1 fine
        "train/cat/001.jpg",  # 2 no label
        "",  # 3 blank
        "train/cat/002.jpg one",  # 4 label not an int
        "train/cat/missing.jpg 1",  # 5 no such image
        "train/dog/000.jpg 3",  # 6 label == num_classes
        "train/dog/001.jpg -1",  # 7 negative label
    ]
    (tmp_path / "train_list.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "val_list.txt").write_text("val/cat/000.jpg 7\n")
    for sub in ("train", "val"):
        os.symlink(tree / sub, tmp_path / sub)
    with pytest.raises(DataError) as e:
        _info(tmp_path)
    msg = str(e.value)
    train_list, val_list = tmp_path / "train_list.txt", tmp_path / "val_list.txt"
    assert msg.startswith("6 problem(s)")
    for lineno, text in [(2, "train/cat/001.jpg"), (4, "train/cat/002.jpg one"),
                         (5, "missing.jpg"), (6, "train/dog/000.jpg 3"),
                         (7, "train/dog/001.jpg -1")]:
        line = next(ln for ln in msg.splitlines() if f"{train_list}:{lineno}:" in ln)
        assert text in line
    assert f"{train_list}:1:" not in msg and f"{train_list}:3:" not in msg
    assert f"{val_list}:1:" in msg and "outside [0, 3)" in msg
    assert "not found" in msg


def test_many_problems_are_capped(tmp_path):
    (tmp_path / "train_list.txt").write_text("".join(f"img{i}.jpg {i}\n" for i in range(30)))
    with pytest.raises(DataError) as e:
        _info(tmp_path, num_classes=100)
    assert str(e.value).startswith("30 problem(s)") and "... and 10 more" in str(e.value)
    assert ":20:" in str(e.value) and ":21:" not in str(e.value)


def test_folder_problems(tree, tmp_path):
    with pytest.raises(DataError, match=r"3 class folders but config.num_classes=2"):
        _info(tree, data_source="folder", num_classes=2)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "val" / "emu").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "train" / "cat" / "a.jpg")
    with pytest.raises(DataError, match=r"emu: class folder not in"):
        _info(tmp_path)


def test_data_dir_missing_or_without_a_known_layout(tmp_path):
    with pytest.raises(DataError, match=r"data_dir='.*nope' does not exist"):
        _info(tmp_path / "nope")
    with pytest.raises(DataError, match=r"found neither a list file .* nor a class-folder tree"):
        _info(tmp_path)


def test_folder_hints_for_a_test_split_and_unused_classes(tmp_path, caplog):
    """CIFAR-style train/ + test/: the warning that evaluation is off names the test folder and
    the override that uses it; more classes configured than folders found is named too."""
    import logging

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(tmp_path / split / "cat" / "a.jpg")
    caplog.set_level(logging.WARNING)
    assert _info(tmp_path, data_source="folder", num_classes=3).num_eval == 0
    assert "--config.eval_split=test evaluates on it" in caplog.text
    assert "1 class folders but config.num_classes=3" in caplog.text
    caplog.clear()
    assert _info(tmp_path, data_source="folder", num_classes=1, eval_split="test").num_eval == 1
    assert not caplog.text


# ----------------------------------------------------------------------------- train stream


def test_train_batches_shape_dtype_and_epoch_coverage(tree):
    it = train_iterator(*_opened(tree, data_source="folder"), global_batch_size=8)
    batches = _take(it, 3)  # one epoch: 24 // 8 steps
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == (8, 16, 16, 3) and b["image"].dtype == np.uint8
        assert b["label"].shape == (8,) and b["label"].dtype == np.int32
    labels = np.concatenate([b["label"] for b in batches])
    assert np.bincount(labels, minlength=3).tolist() == list(TRAIN_PER_CLASS)
    assert it.num_skipped == 0


def test_epoch_order_is_a_seeded_permutation():
    a = keys.epoch_order(10, 10, 0, 0).numpy()
    assert sorted(a.tolist()) == list(range(10))
    np.testing.assert_array_equal(a, keys.epoch_order(10, 10, 0, 0).numpy())
    assert not np.array_equal(a, keys.epoch_order(10, 10, 0, 1).numpy())
    assert not np.array_equal(a, keys.epoch_order(10, 10, 1, 0).numpy())
    longer = keys.epoch_order(10, 25, 0, 0).numpy()  # total_images > examples
    assert len(longer) == 25 and np.bincount(longer).min() >= 2


def test_train_stream_is_deterministic_and_epochs_differ(tree):
    source, spec = _opened(tree, rotate=True, color_jitter=True, hue=0.1)
    a = _take(train_iterator(source, spec, global_batch_size=8), 6)
    b = _take(train_iterator(source, spec, global_batch_size=8), 6)
    _assert_batches_equal(a, b)
    # A source opened again (another run) gives the same stream: it is a function of the data.
    again = open_source(_data(tree, rotate=True, color_jitter=True, hue=0.1))
    _assert_batches_equal(_take(train_iterator(again, spec, global_batch_size=8), 6), a)
    for i in range(3):  # the same step of the next epoch: another order, other augmentations
        assert not np.array_equal(a[i]["image"], a[i + 3]["image"])
    other = _take(train_iterator(*_opened(tree, random_seed=1), global_batch_size=8), 1)
    assert not np.array_equal(a[0]["image"], other[0]["image"])


def test_repeated_augmentation_repeats_each_image_with_its_own_augmentation(tree):
    """repeated_augmentation=4: an epoch of 24 positions holds 6 images, each 4 times in a row,
    every copy augmented apart; the order is seeded, and a resumed stream is the same."""
    order = keys.epoch_order(24, 24, 0, 0, repeats=4).numpy()
    assert len(order) == 24 and len(set(order)) == 6
    np.testing.assert_array_equal(order.reshape(6, 4), np.repeat(order[::4], 4).reshape(6, 4))
    np.testing.assert_array_equal(order[::4], keys.epoch_order(24, 6, 0, 0).numpy())
    source, spec = _opened(tree, repeated_augmentation=4, random_flip=False, lower_scale=0.3)
    batches = _take(train_iterator(source, spec, global_batch_size=8), 5)
    for b in batches[:3]:  # epoch 0
        labels = b["label"].reshape(2, 4)
        assert (labels == labels[:, :1]).all()  # copies of one image share its label
        images = b["image"].reshape(2, 4, *b["image"].shape[1:])
        for group in images:
            assert len({img.tobytes() for img in group}) == 4  # four different crops
    resumed = _take(train_iterator(source, spec, global_batch_size=8, start_step=2), 3)
    _assert_batches_equal(resumed, batches[2:])


@pytest.mark.parametrize("policy", ["rand-m9-n2-mstd0.5", "autoaug", "trivial"])
def test_auto_augment_in_the_stream_is_seeded_resumable_and_changes_only_its_own_draw(tree,
                                                                                       policy):
    """config.auto_augment runs per image in the train stream: the same batches for the same
    seed and after a resume; with it off, the crops and flips are the ones it starts from."""
    source, spec = _opened(tree, auto_augment=policy, random_flip=True, lower_scale=0.3)
    assert spec.fill == (124, 116, 104)  # the ImageNet mean, as timm fills
    a = _take(train_iterator(source, spec, global_batch_size=8), 3)
    _assert_batches_equal(_take(train_iterator(source, spec, global_batch_size=8), 3), a)
    _assert_batches_equal(
        _take(train_iterator(source, spec, global_batch_size=8, start_step=1), 2), a[1:])
    plain = _take(train_iterator(*_opened(tree, random_flip=True, lower_scale=0.3),
                                 global_batch_size=8), 3)
    changed = [not np.array_equal(x, y) for p, b in zip(plain, a)
               for x, y in zip(p["image"], b["image"])]
    assert 0 < sum(changed) < len(changed) or policy != "rand-m9-n2-mstd0.5"
    assert any(changed)
    for p, b in zip(plain, a):
        np.testing.assert_array_equal(p["label"], b["label"])


def test_repeated_augmentation_needs_random_access(tree):
    source, spec = _opened(tree, repeated_augmentation=3)
    source.repeats_examples = False  # as a record or TFDS source
    with pytest.raises(DataError, match=r"config.repeated_augmentation=3: needs list files"):
        train_iterator(source, spec, global_batch_size=8)


@pytest.mark.parametrize("start_step", [1, 3, 5])
def test_resume_yields_the_same_batches(tree, start_step):
    source, spec = _opened(tree)
    fresh = _take(train_iterator(source, spec, global_batch_size=8), 7)
    resumed = _take(train_iterator(source, spec, global_batch_size=8, start_step=start_step),
                    7 - start_step)
    _assert_batches_equal(resumed, fresh[start_step:])


def test_resume_skips_without_decoding(tree):
    # 100,000 steps per epoch; decoding the 99,999 skipped steps would take many minutes.
    source, spec = _opened(tree, total_images=800_000)
    start = time.monotonic()
    it = train_iterator(source, spec, global_batch_size=8, start_step=99_999)
    assert next(it)["image"].shape == (8, 16, 16, 3)
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_shards_form_the_global_batches(tree, process_count):
    source, spec = _opened(tree)
    glob = _take(train_iterator(source, spec, global_batch_size=8), 4)
    for p in range(process_count):
        local = _take(train_iterator(source, spec, global_batch_size=8, process_index=p,
                                     process_count=process_count), 4)
        for g, mine in zip(glob, local):
            assert mine["image"].shape[0] == 8 // process_count
            np.testing.assert_array_equal(mine["image"], g["image"][p::process_count])
            np.testing.assert_array_equal(mine["label"], g["label"][p::process_count])


def test_total_images_longer_than_the_data(tree):
    source, spec = _opened(tree, total_images=40)  # 5 steps of 8 per epoch, from 24 files
    fresh = _take(train_iterator(source, spec, global_batch_size=8), 7)
    resumed = _take(train_iterator(source, spec, global_batch_size=8, start_step=4), 3)
    _assert_batches_equal(resumed, fresh[4:])


def test_bad_batch_arguments(tree):
    source, spec = _opened(tree)
    with pytest.raises(DataError, match="no full batch"):
        train_iterator(source, spec, global_batch_size=25)
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        train_iterator(source, spec, global_batch_size=8, process_count=3)
    with pytest.raises(ValueError, match="process_index"):
        eval_iterator(source, spec, global_batch_size=8, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="start_step"):
        train_iterator(source, spec, global_batch_size=8, start_step=-1)


# ----------------------------------------------------------------------------- eval stream


def _eval_examples(opened, gb, p, pc):
    batches = list(eval_iterator(*opened, global_batch_size=gb, process_index=p,
                                 process_count=pc))
    for b in batches:
        assert b["image"].shape == (gb // pc, 16, 16, 3) and b["image"].dtype == np.uint8
        assert b["label"].dtype == np.int32 and b["mask"].dtype == np.bool_
        assert not b["image"][~b["mask"]].any()  # padding is blank
    seen = [(int(lab), img.tobytes()) for b in batches
            for lab, img, m in zip(b["label"], b["image"], b["mask"]) if m]
    return len(batches), seen


@pytest.mark.parametrize("source", ["list", "folder"])
def test_eval_counts_every_example_once(tree, source):
    opened = _opened(tree, data_source=source)
    gb = 6  # 11 examples: 2 batches, the last one 5 short
    n, reference = _eval_examples(opened, gb, 0, 1)
    assert n == math.ceil(11 / gb) and len(reference) == 11
    assert len({img for _, img in reference}) == 11  # 11 distinct images
    assert collections.Counter(lab for lab, _ in reference) == {0: 4, 1: 4, 2: 3}
    for pc in (2, 3):
        seen = []
        for p in range(pc):
            n_p, part = _eval_examples(opened, gb, p, pc)
            assert n_p == n  # same number of batches on every process
            seen += part
        assert sorted(seen) == sorted(reference)


def test_eval_cache_replays(tree):
    source, spec = _opened(tree, cache_eval=True)
    first = list(eval_iterator(source, spec, global_batch_size=4))
    assert len(source.eval_cache) == 1  # the pass is kept on the source it was read from
    second = list(eval_iterator(source, spec, global_batch_size=4))
    _assert_batches_equal(first, second)
    assert len(first) == 3
    assert all(a["image"] is b["image"] for a, b in zip(first, second))  # replayed, not redone
    other = open_source(_data(tree, cache_eval=True))
    assert not other.eval_cache  # no cache shared between sources (nor kept by the module)
    _assert_batches_equal(list(eval_iterator(other, spec, global_batch_size=4)), first)


# ----------------------------------------------------------------------------- a new kind of source


class MemorySource(Source):
    """A kind of data set the package does not know, in one class: encoded images in memory.
    The pipeline takes it as it is (random-access keys reuse `flaxcls.data.keys`' orders)."""

    kind = "memory"

    def __init__(self, train: list[tuple[bytes, int]], evals: list[tuple[bytes, int]]):
        super().__init__(train_size=len(train), num_eval=len(evals), num_classes=len(CLASSES),
                         class_names=list(CLASSES))
        self.images = {split: np.array([data for data, _ in examples], dtype=object)
                       for split, examples in (("train", train), ("eval", evals))}
        self.labels = {split: np.array([label for _, label in examples], np.int32)
                       for split, examples in (("train", train), ("eval", evals))}

    def train_keys(self, spec, shard, *, steps_per_epoch, start_epoch, skip):
        yield keys.indexed_train_batches(
            self.images["train"], self.labels["train"], shard, steps_per_epoch=steps_per_epoch,
            start_epoch=start_epoch, skip=skip, seed=spec.seed)

    def eval_keys(self, spec, shard):
        return keys.indexed_eval_batches(self.images["eval"], self.labels["eval"], shard)

    def describe(self, split, index):
        return f"memory[{split}] #{index}"


def _jpeg(rng: np.random.Generator) -> bytes:
    image, _, _ = _image(rng, "rgb")
    buf = io.BytesIO()
    image.save(buf, "JPEG")
    return buf.getvalue()


def test_a_new_source_kind_is_one_class():
    rng = np.random.default_rng(3)
    train = [(_jpeg(rng), i % 3) for i in range(12)]
    evals = [(_jpeg(rng), i % 3) for i in range(5)] + [(b"not an image", 2)]
    source, spec = MemorySource(train, evals), InputSpec.from_config(_cfg(""))
    assert (source.num_train, source.num_eval, source.num_classes) == (12, 6, 3)

    fresh = _take(train_iterator(source, spec, global_batch_size=4), 5)  # 3 steps per epoch
    assert fresh[0]["image"].shape == (4, 16, 16, 3) and fresh[0]["image"].dtype == np.uint8
    assert np.bincount(np.concatenate([b["label"] for b in fresh[:3]])).tolist() == [4, 4, 4]
    resumed = _take(train_iterator(source, spec, global_batch_size=4, start_step=2), 3)
    _assert_batches_equal(resumed, fresh[2:])
    for p in range(2):
        local = _take(train_iterator(source, spec, global_batch_size=4, process_index=p,
                                     process_count=2), 5)
        for g, mine in zip(fresh, local):
            np.testing.assert_array_equal(mine["image"], g["image"][p::2])

    it = eval_iterator(source, spec, global_batch_size=4)
    batches = list(it)
    assert len(batches) == 2 and [int(b["mask"].sum()) for b in batches] == [4, 1]
    assert it.num_skipped == 1 and it.skipped == ["memory[eval] #5"]
    transform = pipeline.eval_transform_fn(spec)
    images = [img for b in batches for img, m in zip(b["image"], b["mask"]) if m]
    for (data, _), image in zip(evals, images):  # in order, through the one eval transform
        np.testing.assert_array_equal(image, transform(pipeline.tf.constant(data), None).numpy())


# ----------------------------------------------------------------------------- unreadable images


def test_corrupt_images_are_skipped_and_counted(tree, tmp_path):
    root = _make_tree(tmp_path / "d", seed=1)
    good = (root / "train" / "cat" / "000.jpg").read_bytes()
    (root / "train" / "cat" / "bad_garbage.jpg").write_bytes(b"this is not an image" * 10)
    (root / "train" / "dog" / "bad_truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "val" / "fox" / "bad_empty.png").write_bytes(b"")
    source, spec = _opened(root, data_source="folder")
    assert source.num_train == 26 and source.num_eval == 12  # existence only is checked up front
    it = train_iterator(source, spec, global_batch_size=13)
    for b in _take(it, 2):  # one epoch sees all 26 files
        assert b["image"].shape == (13, 16, 16, 3) and b["label"].shape == (13,)
    assert it.num_skipped == 2
    assert sorted(os.path.basename(p) for p in it.skipped) == ["bad_garbage.jpg",
                                                               "bad_truncated.jpg"]
    ev = eval_iterator(source, spec, global_batch_size=5)
    masks = [b["mask"] for b in ev]
    assert len(masks) == 3 and sum(m.sum() for m in masks) == 11 and ev.num_skipped == 1
    assert [os.path.basename(p) for p in ev.skipped] == ["bad_empty.png"]


def test_all_unreadable_raises_instead_of_spinning(tmp_path, caplog):
    (tmp_path / "train" / "a").mkdir(parents=True)
    for i in range(4):
        (tmp_path / "train" / "a" / f"{i}.jpg").write_bytes(b"garbage")
    it = train_iterator(*_opened(tmp_path), global_batch_size=2)
    with pytest.raises(DataError, match="no readable image"):
        next(it)
    assert it.num_skipped == 2 * pipeline.MAX_EMPTY_BATCHES
    assert "InvalidArgumentError" in caplog.text  # the decoder's reason is logged


@pytest.mark.subprocess
def test_importing_the_package_and_reading_lists_needs_no_tensorflow(tree):
    code = ("import sys; from flaxcls.config import default_config; import flaxcls.data as d; "
            "from flaxcls.specs import DataSpec; "
            f"c = default_config(); c.data_dir = {str(tree)!r}; c.num_classes = 3; "
            "s = d.open_source(DataSpec.from_config(c)); print(s.num_train, s.num_eval); "
            "c.data_source = 'folder'; print(d.dataset_info(DataSpec.from_config(c)).num_train); "
            "assert 'tensorflow' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["24", "11", "24"]


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class FlaxclsTinyTest(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(CLASSES))}),
                supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, 20),
                    "validation": self._generate_examples(1, 7)}

        def _generate_examples(self, seed, n):
            rng = np.random.default_rng(seed)
            for i in range(n):
                image, _, _ = _image(rng, "rgb")
                yield i, {"image": np.asarray(image), "label": i % 3}

    data_dir = tmp_path_factory.mktemp("tfds")
    FlaxclsTinyTest(data_dir=str(data_dir)).download_and_prepare()
    return data_dir


@pytest.mark.heavy
def test_tfds_source(tfds_dir):
    source, spec = _opened(tfds_dir, data_source="tfds", tfds_name="flaxcls_tiny_test")
    # eval_split val -> validation
    assert _info(tfds_dir, data_source="tfds", tfds_name="flaxcls_tiny_test") == DatasetInfo(
        20, 7, 3, list(CLASSES))
    assert (source.kind, source.eval_split, source.keys_are_paths) == ("tfds", "validation",
                                                                       False)
    fresh = _take(train_iterator(source, spec, global_batch_size=4), 7)  # 5 steps per epoch
    assert fresh[0]["image"].shape == (4, 16, 16, 3) and fresh[0]["label"].dtype == np.int32
    _assert_batches_equal(_take(train_iterator(source, spec, global_batch_size=4), 7), fresh)
    _assert_batches_equal(
        _take(train_iterator(source, spec, global_batch_size=4, start_step=3), 4), fresh[3:])
    labels = np.concatenate([b["label"] for b in fresh[:5]])
    assert np.bincount(labels).tolist() == [7, 7, 6]  # one epoch: each example once
    p1 = _take(train_iterator(source, spec, global_batch_size=4, process_index=1,
                              process_count=2), 3)
    for g, mine in zip(fresh, p1):
        np.testing.assert_array_equal(mine["image"], g["image"][1::2])
    reference = None
    for pc in (1, 2):
        seen = []
        for p in range(pc):
            batches = list(eval_iterator(source, spec, global_batch_size=4, process_index=p,
                                         process_count=pc))
            assert len(batches) == 2
            seen += [img.tobytes() for b in batches for img, m in zip(b["image"], b["mask"]) if m]
        assert len(seen) == 7
        reference = reference or sorted(seen)
        assert sorted(seen) == reference


def test_tfds_errors(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="not prepared") as e:
        _info(tmp_path, data_source="tfds", tfds_name="mnist")
    assert "never downloads" in str(e.value)
    with pytest.raises(DataError, match="no such TFDS data set") as e:
        _info(tmp_path, data_source="tfds", tfds_name="no_such_set_xyz")
    assert len(str(e.value)) < 500  # not the list of every TFDS name
    with pytest.raises(DataError, match="tfds_name is empty"):
        _info(tmp_path, data_source="tfds")


# ----------------------------------------------------------------------------- digits, CIFAR-10


def test_digits_dataset(tmp_path):
    out = tmp_path / "digits"
    info = write_digits_dataset(out, image_size=16)
    assert info.num_train + info.num_eval == 1797 and info.num_eval == pytest.approx(360, abs=5)
    marker = out / "digits.json"
    stamp = marker.stat().st_mtime_ns
    assert write_digits_dataset(out, image_size=16) == info  # idempotent
    assert marker.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="written with"):
        write_digits_dataset(out, image_size=32)
    source, spec = _opened(out, num_classes=10, crop_size=16, resize_short_size=16)
    assert _info(out, num_classes=10) == info
    val_labels = source.eval.labels
    assert np.bincount(val_labels, minlength=10).min() >= 30  # stratified
    batch = next(train_iterator(source, spec, global_batch_size=32))
    image = batch["image"].astype(int)
    assert np.abs(image[..., 0] - image[..., 2]).max() <= 2  # grey JPEGs decode to R = G = B
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not an empty folder"):
        write_digits_dataset(tmp_path / "foreign")


def _extract_cifar(dest: Path, train_per_class: int, test_per_class: int) -> Path:
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found (set FLAXCLS_SHARED_DATA)")
    want = {"train": train_per_class, "test": test_per_class}
    taken = collections.Counter()
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4:
                continue
            _, split, cls, name = parts
            if taken[split, cls] >= want.get(split, 0):
                if len(taken) == 20 and all(taken[k] >= want[k[0]] for k in taken):
                    break
                continue
            target = dest / split / cls / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())
            taken[split, cls] += 1
    return dest


def test_cifar10_class_folders(tmp_path):
    root = _extract_cifar(tmp_path / "cifar10", 20, 5)
    source, spec = _opened(root, num_classes=10, crop_size=32, resize_short_size=32,
                           eval_split="test")
    assert source.num_train == 200 and source.num_eval == 50
    assert source.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                  "horse", "ship", "truck"]
    batch = next(train_iterator(source, spec, global_batch_size=50))
    assert batch["image"].shape == (50, 32, 32, 3) and batch["label"].max() <= 9
    total, labels = 0, []
    for b in eval_iterator(source, spec, global_batch_size=16, process_index=1, process_count=2):
        total += int(b["mask"].sum())
        labels += b["label"][b["mask"]].tolist()
    assert total == 25
    # Center crop of a 32x32 image at crop 32 is the decoded image itself.
    path = source.eval.paths[0]
    first = next(eval_iterator(source, spec, global_batch_size=1))["image"][0]
    decoded = np.asarray(Image.open(path).convert("RGB"))
    assert np.abs(first.astype(int) - decoded.astype(int)).mean() < 2.0


def test_pil_reference_image_roundtrip(tmp_path):
    """A solid colour survives the whole eval path (decode, resize short, centre crop)."""
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val" / "a").mkdir(parents=True)
    for split in ("train", "val"):
        Image.new("RGB", (50, 30), (200, 100, 50)).save(tmp_path / split / "a" / "x.png")
    # cv2 code for bicubic, as the original flag
    batch = next(eval_iterator(*_opened(tmp_path, interpolation="2"), global_batch_size=1))
    assert (batch["image"] == np.array([200, 100, 50], np.uint8)).all()
