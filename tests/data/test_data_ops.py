"""Image ops: each gives the same answer eagerly and inside tf.data, and does what it says."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

ops = pytest.importorskip("flaxcls.data.ops")
tf = ops.tf

SEED = (3, 7)
AREA, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _jpeg(array: np.ndarray, mode: str | None = None, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _photo(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth colour image (JPEG-friendly) with structure, so crops and flips are visible."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)


def _in_tf_data(fn, *args):
    ds = tf.data.Dataset.from_tensors(tuple(tf.constant(a) for a in args)).map(lambda *t: fn(*t))
    return next(iter(ds)).numpy()


def _seed():
    return np.array(SEED, np.int64)


def _trivial(image, seed):
    from flaxcls.data import autoaugment

    return autoaugment.apply(image, seed, autoaugment.parse("trivial"), (124, 116, 104))


CASES = {
    "decode_rgb": (ops.decode_rgb, lambda: (_jpeg(_photo()),)),
    "decode_random_crop_jpeg": (lambda d, s: ops.decode_random_crop(d, s, AREA, RATIO),
                                lambda: (_jpeg(_photo()), _seed())),
    "decode_random_crop_png": (lambda d, s: ops.decode_random_crop(d, s, AREA, RATIO),
                               lambda: (_jpeg(_photo(), fmt="PNG"), _seed())),
    "resize_bilinear": (lambda x: ops.resize(x, (20, 30), "bilinear"), lambda: (_photo(),)),
    "resize_bicubic": (lambda x: ops.resize(x, (20, 30), "bicubic"), lambda: (_photo(),)),
    "resize_short": (lambda x: ops.resize_short(x, 32, "bilinear"), lambda: (_photo(),)),
    "center_crop": (lambda x: ops.center_crop(x, 24), lambda: (_photo(),)),
    "random_flip": (ops.random_flip, lambda: (_photo(), _seed())),
    "random_rotate": (lambda x, s: ops.random_rotate(x, s, 10.0),
                      lambda: (_photo().astype(np.float32), _seed())),
    "color_jitter": (lambda x, s: ops.color_jitter(x, s, 0.4, 0.4, 0.4, 0.1),
                     lambda: (_photo().astype(np.float32), _seed())),
    "to_uint8": (ops.to_uint8, lambda: (np.array([-3.0, 0.4, 127.5, 254.6, 300.0], np.float32),)),
    "train_transform": (
        lambda d, s: ops.train_transform(d, s, crop_size=16, area_range=AREA,
                                         aspect_ratio_range=RATIO, method="bilinear", flip=True,
                                         rotate_degrees=10.0, jitter=(0.4, 0.4, 0.4, 0.1)),
        lambda: (_jpeg(_photo()), _seed())),
    "train_transform_policy": (
        lambda d, s: ops.train_transform(d, s, crop_size=16, area_range=AREA,
                                         aspect_ratio_range=RATIO, method="bilinear", flip=True,
                                         policy=_trivial),
        lambda: (_jpeg(_photo()), _seed())),
    "eval_transform": (
        lambda d: ops.eval_transform(d, crop_size=16, resize_short_size=20, method="bilinear"),
        lambda: (_jpeg(_photo()),)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_eager_equals_tf_data(name):
    fn, make_args = CASES[name]
    args = make_args()
    eager = fn(*(tf.constant(a) for a in args)).numpy()
    np.testing.assert_array_equal(eager, _in_tf_data(fn, *args))


def test_a_policy_runs_last_on_its_own_seed_leaving_the_other_draws_alone():
    """config.auto_augment gets a fifth split of the example's seed: the crop and flip it
    starts from are the ones the stream has without it, and its own draw depends on the seed."""
    data, seed = tf.constant(_jpeg(_photo(96, 128))), tf.constant(SEED, tf.int64)
    kw = {"crop_size": 32, "area_range": AREA, "aspect_ratio_range": RATIO,
          "method": "bilinear", "flip": True}
    seen = []
    plain = ops.train_transform(data, seed, **kw).numpy()
    passed = ops.train_transform(data, seed, policy=lambda im, s: seen.append(s) or im, **kw)
    np.testing.assert_array_equal(passed.numpy(), plain)
    assert not any(np.array_equal(seen[0].numpy(), s)
                   for s in tf.random.experimental.stateless_split(seed, 4).numpy())
    outs = {ops.train_transform(data, seed, policy=_trivial, **kw).numpy().tobytes()
            for _ in range(2)}
    assert len(outs) == 1


def test_to_uint8_rounds_and_clips():
    out = ops.to_uint8(tf.constant([-3.0, 0.4, 0.6, 254.6, 300.0])).numpy()
    np.testing.assert_array_equal(out, [0, 0, 1, 255, 255])


def test_crop_window_in_bounds_and_ranges():
    shape = tf.constant([300, 400, 3])
    areas, ratios = [], []
    for i in range(200):
        y, x, h, w = ops.sample_crop_window(shape, tf.constant([i, 1]), (0.25, 1.0),
                                            (0.5, 2.0)).numpy()
        assert 0 <= y and 0 <= x and y + h <= 300 and x + w <= 400 and h > 0 and w > 0
        areas.append(h * w / (300 * 400))
        ratios.append(w / h)
    assert min(areas) >= 0.24 and max(areas) <= 1.0
    assert min(ratios) >= 0.49 and max(ratios) <= 2.05
    assert np.std(areas) > 0.05  # really random


def test_random_crop_is_a_function_of_the_seed():
    data = tf.constant(_jpeg(_photo(96, 128)))
    a = ops.decode_random_crop(data, tf.constant([1, 2]), AREA, RATIO).numpy()
    b = ops.decode_random_crop(data, tf.constant([1, 2]), AREA, RATIO).numpy()
    c = ops.decode_random_crop(data, tf.constant([1, 3]), AREA, RATIO).numpy()
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_jpeg_crop_matches_full_decode_then_crop():
    data = tf.constant(_jpeg(_photo(96, 128)))
    seed = tf.constant([5, 5])
    y, x, h, w = ops.sample_crop_window(tf.constant([96, 128, 3]), seed, AREA, RATIO).numpy()
    crop = ops.decode_random_crop(data, seed, AREA, RATIO).numpy()
    full = ops.decode_rgb(data).numpy()[y:y + h, x:x + w]
    assert crop.shape == full.shape
    assert np.abs(crop.astype(int) - full.astype(int)).max() <= 2  # IDCT block-edge rounding


def test_resize_short_sizes_like_the_original():
    image = tf.zeros([375, 500, 3], tf.uint8)
    assert ops.resize_short(image, 256, "bilinear").shape == (256, 341, 3)  # round(341.33)
    image = tf.zeros([500, 333, 3], tf.uint8)
    assert ops.resize_short(image, 256, "bilinear").shape == (384, 256, 3)  # round(384.38)


def test_center_crop_offsets():
    image = tf.reshape(tf.range(7 * 9), [7, 9, 1])
    out = ops.center_crop(image, 4).numpy()[..., 0]
    np.testing.assert_array_equal(out, np.arange(63).reshape(7, 9)[1:5, 2:6])


def test_flip_mirrors_or_keeps():
    image = _photo()
    outs = [ops.random_flip(tf.constant(image), tf.constant([i, 0])).numpy() for i in range(20)]
    flipped = [np.array_equal(o, image[:, ::-1]) for o in outs]
    kept = [np.array_equal(o, image) for o in outs]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_rotate_zero_degrees_is_identity():
    image = _photo().astype(np.float32)
    same = ops.random_rotate(tf.constant(image), tf.constant([1, 1]), 0.0).numpy()
    np.testing.assert_allclose(same, image, atol=1e-3)
    turned = ops.random_rotate(tf.constant(image), tf.constant([1, 1]), 30.0).numpy()
    assert turned.shape == image.shape and not np.allclose(turned, image, atol=1.0)


def test_color_jitter_amounts_zero_is_identity():
    image = _photo().astype(np.float32)
    out = ops.color_jitter(tf.constant(image), tf.constant([0, 1])).numpy()
    np.testing.assert_allclose(out, image, atol=1e-3)
    out = ops.color_jitter(tf.constant(image), tf.constant([0, 1]), brightness=0.5).numpy()
    assert out.min() >= 0 and out.max() <= 255 and not np.allclose(out, image)


@pytest.mark.parametrize("kind", ["grey_jpeg", "cmyk_jpeg", "rgba_png", "grey_png", "gif", "bmp"])
def test_decode_gives_rgb(kind):
    colour = np.zeros((16, 16, 3), np.uint8) + np.array([200, 40, 90], np.uint8)
    grey = np.full((16, 16), 120, np.uint8)
    data = {
        "grey_jpeg": lambda: _jpeg(grey),
        "cmyk_jpeg": lambda: _jpeg(colour, "CMYK"),
        "rgba_png": lambda: _jpeg(np.dstack([colour, np.full((16, 16), 77, np.uint8)]),
                                  fmt="PNG"),
        "grey_png": lambda: _jpeg(grey, fmt="PNG"),
        "gif": lambda: _jpeg(colour, fmt="GIF"),
        "bmp": lambda: _jpeg(colour, fmt="BMP"),
    }[kind]()
    out = ops.decode_rgb(tf.constant(data)).numpy()
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    want = [120, 120, 120] if "grey" in kind else [200, 40, 90]
    assert np.abs(out[8, 8].astype(int) - want).max() <= 6
    crop = ops.decode_random_crop(tf.constant(data), tf.constant([0, 0]), AREA, RATIO).numpy()
    assert crop.shape[-1] == 3


def test_resize_method_accepts_names_and_cv2_codes():
    assert ops.resize_method("bilinear") == "bilinear"
    assert ops.resize_method(2) == "bicubic"
    assert ops.resize_method("1") == "bilinear"
    with pytest.raises(ValueError, match="interpolation"):
        ops.resize_method("sinc")
