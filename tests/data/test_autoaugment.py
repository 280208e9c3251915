"""RandAugment / AutoAugment / TrivialAugment: each op eagerly == inside tf.data, the ops against
Pillow on real photos, timm's and torchvision's magnitude mappings, the spec grammar, seeds.

The Pillow comparison reads a few JPEGs of the shared ImageNet sample
(<repo>/../shared/data/imagenet-sample-1000.tar, or $FLAXCLS_SHARED_DATA) and skips without it.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from PIL import Image, ImageEnhance, ImageOps

aa = pytest.importorskip("flaxcls.data.autoaugment")  # needs tensorflow
tf = aa.tf

SHARED_DATA = Path(os.environ.get("FLAXCLS_SHARED_DATA") or SHARED / "data")
FILL = (124, 116, 104)  # ImageNet mean * 255, what the pipeline passes


def _photo(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth colour structure plus noise: every op has something to change."""
    y, x = np.mgrid[0:h, 0:w]
    smooth = np.stack([x * 200 // w + 20, y * 180 // h + 30, (x + y) * 150 // (w + h) + 60], -1)
    noise = np.random.default_rng(seed).integers(-20, 21, (h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def _in_tf_data(fn, image: np.ndarray) -> np.ndarray:
    ds = tf.data.Dataset.from_tensors(image).map(fn)
    return next(iter(ds)).numpy()


OPS = {  # name -> (ours on a uint8 tensor, the same op with Pillow)
    "auto_contrast": (aa.auto_contrast, ImageOps.autocontrast),
    "equalize": (aa.equalize, ImageOps.equalize),
    "invert": (aa.invert, ImageOps.invert),
    **{f"posterize_{b}": (lambda x, b=b: aa.posterize(x, b),
                          lambda im, b=b: ImageOps.posterize(im, b)) for b in (1, 3, 4, 6)},
    **{f"solarize_{t}": (lambda x, t=t: aa.solarize(x, t),
                         lambda im, t=t: ImageOps.solarize(im, t)) for t in (0, 26, 113.3, 230)},
    **{f"{name}_{f}": (lambda x, op=op, f=f: op(x, f),
                       lambda im, pil=pil, f=f: pil(im).enhance(f))
       for name, op, pil in (("color", aa.color, ImageEnhance.Color),
                             ("contrast", aa.contrast, ImageEnhance.Contrast),
                             ("brightness", aa.brightness, ImageEnhance.Brightness),
                             ("sharpness", aa.sharpness, ImageEnhance.Sharpness))
       for f in (0.1, 0.55, 1.3, 1.9)},
    **{f"rotate_{d}": (lambda x, d=d: aa.rotate(x, d, FILL),
                       lambda im, d=d: im.rotate(d, resample=Image.BILINEAR, fillcolor=FILL))
       for d in (-30, -7.5, 13.3, 27, 90, 135)},
    **{f"shear_x_{a}": (lambda x, a=a: aa.shear_x(x, a, FILL),
                        lambda im, a=a: _pil_affine(im, (1, a, 0, 0, 1, 0)))
       for a in (-0.3, -0.11, 0.17, 0.99)},
    **{f"shear_y_{a}": (lambda x, a=a: aa.shear_y(x, a, FILL),
                        lambda im, a=a: _pil_affine(im, (1, 0, 0, a, 1, 0)))
       for a in (-0.3, -0.11, 0.17, 0.99)},
    # Our positive translation moves the content right / down: Pillow's matrix takes -pixels.
    **{f"translate_x_{p}": (lambda x, p=p: aa.translate_x(x, p, FILL),
                            lambda im, p=p: _pil_affine(im, (1, 0, -p, 0, 1, 0)))
       for p in (-72, -13.7, 5, 31.9)},
    **{f"translate_y_{p}": (lambda x, p=p: aa.translate_y(x, p, FILL),
                            lambda im, p=p: _pil_affine(im, (1, 0, 0, 0, 1, -p)))
       for p in (-72, -13.7, 5, 31.9)},
}


def _pil_affine(im: Image.Image, matrix: tuple) -> Image.Image:
    return im.transform(im.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=FILL)


def _family(name: str) -> str:
    return name.rstrip("0123456789.-").rstrip("_")


# Mean |ours - Pillow| per value, worst photo, on 8 ImageNet photos at 160x160 (measured with
# Pillow 13.0 / TF 2.21). The colour ops and translations compute what Pillow computes, in the
# same integer / float32 (Blend.c) / float64 (Geometry.c) arithmetic: measured 0 everywhere, so
# the bound is 0. Rotations and shears go through TF's warp kernel, whose source coordinates and
# bilinear weights are float32 where Pillow's are float64: a value that Pillow's interpolation
# lands on a whole number can come out 1e-6 below it and truncate one level lower. Measured
# worst: rotate 0.0002, shear 0.0121 (+-0.3, where 0.3 (y + 0.5) often hits halves), each
# difference exactly 1; bound 0.05 and at most 1 level anywhere.
PIL_BOUNDS = {"rotate": 0.05, "shear_x": 0.05, "shear_y": 0.05}


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    archive = SHARED_DATA / "imagenet-sample-1000.tar"
    if not archive.is_file():
        pytest.skip(f"{archive} not found (set FLAXCLS_SHARED_DATA)")
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())[::125][:8]
        return [Image.open(io.BytesIO(tar.extractfile(n).read())).convert("RGB")
                .resize((160, 160), Image.BILINEAR) for n in names]


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_eager_equals_tf_data(name):
    ours, _ = OPS[name]
    image = _photo()
    eager = ours(tf.constant(image)).numpy()
    assert eager.dtype == np.uint8 and eager.shape == image.shape
    np.testing.assert_array_equal(eager, _in_tf_data(ours, image))


def test_solarize_add_eager_equals_tf_data():
    def op(x):
        return aa.solarize_add(x, 77, 150)

    np.testing.assert_array_equal(op(tf.constant(_photo())).numpy(), _in_tf_data(op, _photo()))


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_pillow(name, photos):
    ours, pil = OPS[name]
    bound = PIL_BOUNDS.get(_family(name), 0.0)
    for im in photos:
        diff = np.abs(ours(tf.constant(np.asarray(im))).numpy().astype(int)
                      - np.asarray(pil(im)).astype(int))
        assert diff.mean() <= bound and diff.max() <= (1 if bound else 0), (name, diff.mean())


def _solarize_add_reference(x: np.ndarray, addition: int, threshold: int) -> np.ndarray:
    """timm's SolarizeAdd: a lut adding `addition` below `threshold`, capped at 255."""
    lut = np.array([min(255, i + addition) if i < threshold else i for i in range(256)])
    return lut[x].astype(np.uint8)


@pytest.mark.parametrize("addition,threshold", [(0, 128), (30, 128), (110, 128), (99, 200)])
def test_solarize_add_matches_its_definition(addition, threshold, photos):
    for im in photos:
        x = np.asarray(im)
        np.testing.assert_array_equal(aa.solarize_add(tf.constant(x), addition, threshold).numpy(),
                                      _solarize_add_reference(x, addition, threshold))


NEUTRAL = {
    "color": lambda x: aa.color(x, 1.0), "contrast": lambda x: aa.contrast(x, 1.0),
    "brightness": lambda x: aa.brightness(x, 1.0), "sharpness": lambda x: aa.sharpness(x, 1.0),
    "rotate": lambda x: aa.rotate(x, 0.0, FILL), "shear_x": lambda x: aa.shear_x(x, 0.0, FILL),
    "shear_y": lambda x: aa.shear_y(x, 0.0, FILL),
    "translate_x": lambda x: aa.translate_x(x, 0.0, FILL),
    "translate_y": lambda x: aa.translate_y(x, 0.0, FILL),
    "posterize": lambda x: aa.posterize(x, 8), "solarize": lambda x: aa.solarize(x, 256),
    "solarize_add": lambda x: aa.solarize_add(x, 0),
}


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_magnitude_is_identity(name):
    image = _photo(seed=3)
    np.testing.assert_array_equal(NEUTRAL[name](tf.constant(image)).numpy(), image)


def test_geometric_ops_fill_what_they_uncover():
    image = _photo()
    moved = aa.translate_x(tf.constant(image), 10, FILL).numpy()
    np.testing.assert_array_equal(moved[:, :10], np.broadcast_to(FILL, (40, 10, 3)))
    np.testing.assert_array_equal(moved[:, 10:], image[:, :-10])
    turned = aa.rotate(tf.constant(image), 45.0, FILL).numpy()
    assert (turned[0, 0] == FILL).all() and (turned[20, 24] != FILL).any()
    # Counter-clockwise: the top-right corner region comes to the top-left.
    quarter = aa.rotate(tf.constant(np.ascontiguousarray(image[:, :40])), 90.0, FILL).numpy()
    np.testing.assert_array_equal(quarter, np.rot90(image[:, :40]))


# ----------------------------------------------------------------------------- magnitude maps


def _timm_case(name: str, m: float, negate: bool) -> np.ndarray:
    image = tf.constant(_photo(seed=5))
    fill = tf.constant(FILL, tf.uint8)
    return aa._timm_ops()[name](image, tf.constant(m, tf.float64), tf.constant(negate),
                                fill).numpy()


TIMM_EXPECTED = [  # (op, m, negate, the op it must equal): timm/data/auto_augment.py's level fns
    ("Rotate", 9, False, lambda x: aa.rotate(x, 27.0, FILL)),
    ("Rotate", 9, True, lambda x: aa.rotate(x, -27.0, FILL)),
    ("Posterize", 9, False, lambda x: aa.posterize(x, 3)),
    ("Posterize", 2, False, lambda x: aa.posterize(x, 0)),
    ("PosterizeIncreasing", 9, False, lambda x: aa.posterize(x, 1)),
    ("Solarize", 9, False, lambda x: aa.solarize(x, 230)),
    ("Solarize", 10, False, lambda x: aa.solarize(x, 256)),
    ("SolarizeIncreasing", 9, False, lambda x: aa.solarize(x, 26)),
    ("SolarizeAdd", 7, False, lambda x: aa.solarize_add(x, 77, 128)),
    ("SolarizeAdd", 10, False, lambda x: aa.solarize_add(x, 110, 128)),
    ("Color", 9, False, lambda x: aa.color(x, 1.72)),
    ("ContrastIncreasing", 9, True, lambda x: aa.contrast(x, 0.19)),
    ("BrightnessIncreasing", 9, False, lambda x: aa.brightness(x, 1.81)),
    ("Sharpness", 5, False, lambda x: aa.sharpness(x, 1.0)),
    ("ShearX", 9, False, lambda x: aa.shear_x(x, 9 / 10 * 0.3, FILL)),
    ("ShearY", 9, True, lambda x: aa.shear_y(x, -(9 / 10 * 0.3), FILL)),
    ("TranslateXRel", 9, False, lambda x: aa.translate_x(x, 9 / 10 * 0.45 * 48, FILL)),
    ("TranslateYRel", 10, True, lambda x: aa.translate_y(x, -(10 / 10 * 0.45) * 40, FILL)),
]


@pytest.mark.parametrize("name,m,negate,expected", TIMM_EXPECTED,
                         ids=[f"{c[0]}-m{c[1]}{'-neg' if c[2] else ''}" for c in TIMM_EXPECTED])
def test_timm_level_mappings(name, m, negate, expected):
    want = expected(tf.constant(_photo(seed=5))).numpy()
    np.testing.assert_array_equal(_timm_case(name, m, negate), want)


def test_rand_op_sets_are_timms():
    assert aa.op_names(aa.parse("rand-m9")) == (
        "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
        "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
        "TranslateYRel")
    increasing = aa.op_names(aa.parse("rand-m9-inc1"))
    assert len(increasing) == 15 and {"PosterizeIncreasing", "SolarizeIncreasing",
                                      "ColorIncreasing", "SharpnessIncreasing"} <= set(increasing)


def test_torchvision_magnitude_tables():
    standard, wide = aa._torchvision_space(10, wide=False), aa._torchvision_space(31, wide=True)
    assert standard["Posterize"][0].tolist() == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
    assert standard["Solarize"][0][[0, 5, 9]].tolist() == [255, 114, 0]  # ceil(255 * (1 - 5/9))
    np.testing.assert_allclose(standard["Rotate"][0][[0, 9]], [0, 30])
    np.testing.assert_allclose(standard["Color"][0][[1, 9]], [0.1, 0.9], rtol=1e-6)
    np.testing.assert_allclose(standard["ShearX"][0][9], 0.3, rtol=1e-6)
    assert wide["Posterize"][0][[0, 2, 3, 30]].tolist() == [8, 8, 7, 2]
    np.testing.assert_allclose(wide["Rotate"][0][[20, 30]], [90, 135])
    np.testing.assert_allclose(wide["TranslateX"][0][30], 32)
    np.testing.assert_allclose(wide["Sharpness"][0][30], 0.99, rtol=1e-6)
    trivial = set(aa.op_names(aa.parse("trivial")))
    assert trivial <= set(wide) and len(trivial) == 14 and "Invert" not in trivial


def test_autoaugment_imagenet_table():
    table = aa.AUTOAUGMENT_IMAGENET
    known = aa._torchvision_space(10, wide=False)
    assert len(table) == 25 and all(len(sub) == 2 for sub in table)
    for sub in table:
        for name, prob, magnitude_bin in sub:
            assert name in known and 0.0 <= prob <= 1.0
            # Ops without a magnitude table take no bin; the others a bin of the 10.
            assert (magnitude_bin is None) == (known[name][0] is None)
            assert magnitude_bin is None or 0 <= magnitude_bin < 10
    assert table[0] == (("Posterize", 0.4, 8), ("Rotate", 0.6, 9))
    assert table[17] == (("Sharpness", 0.4, 7), ("Invert", 0.6, None))


# ----------------------------------------------------------------------------- apply


@pytest.mark.parametrize("spec", ["rand-m9-n2-mstd0.5-p1", "autoaug", "trivial"])
def test_apply_is_a_function_of_the_seed(spec):
    policy, image = aa.parse(spec), tf.constant(_photo())
    outs = [aa.apply(image, tf.constant([s, 9]), policy, FILL).numpy() for s in range(6)]
    again = aa.apply(image, tf.constant([0, 9]), policy, FILL).numpy()
    np.testing.assert_array_equal(outs[0], again)
    assert len({o.tobytes() for o in outs}) >= 3  # different seeds, different images


@pytest.mark.parametrize("spec", ["rand-m9-n2-mstd0.5", "rand-m7-mstd0.5-inc1", "autoaug",
                                  "trivial"])
def test_apply_eager_equals_tf_data(spec):
    policy, image = aa.parse(spec), _photo()
    seeds = np.array([[s, 1] for s in range(4)], np.int64)
    ds = tf.data.Dataset.from_tensor_slices(seeds).map(lambda k: aa.apply(image, k, policy, FILL))
    for seed, in_data in zip(seeds, ds):
        eager = aa.apply(tf.constant(image), tf.constant(seed), policy, FILL).numpy()
        np.testing.assert_array_equal(eager, in_data.numpy())


@pytest.mark.parametrize("spec", ["rand-m9-n2-mstd0.5", "rand-m15-mmax20-mstd101-inc1",
                                  "autoaug", "trivial"])
def test_apply_in_tf_data_on_a_batch_of_any_size(spec):
    policy = aa.parse(spec)
    images = [_photo(36, 44, seed=i) for i in range(3)] + [_photo(30, 30, seed=9)]

    def gen():
        yield from images

    ds = (tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec([None, None, 3],
                                                                             tf.uint8))
          .enumerate()
          .map(lambda i, x: aa.apply(x, tf.stack([i, tf.constant(3, tf.int64)]), policy, FILL))
          .map(lambda x: tf.image.resize_with_crop_or_pad(x, 30, 30))
          .batch(4))
    batch = next(iter(ds)).numpy()
    assert batch.shape == (4, 30, 30, 3) and batch.dtype == np.uint8


def _choices(spec: str, count: int = 2000) -> np.ndarray:
    policy = aa.parse(spec)
    ds = tf.data.Dataset.range(count).map(
        lambda i: aa.op_choices(tf.stack([i, tf.constant(11, tf.int64)]), policy)).batch(count)
    return next(iter(ds)).numpy()


def test_rand_op_choice_is_uniform_and_p_is_the_chance_to_apply():
    always = _choices("rand-m9-n2-p1")  # [2000, 2]: every op applied
    counts = np.bincount(always.ravel(), minlength=15)
    assert always.min() >= 0 and len(counts) == 15
    # 4000 draws over 15 ops: 267 each, binomial sd 16; 5 sd either side.
    assert counts.min() > 267 - 80 and counts.max() < 267 + 80, counts
    half = _choices("rand-m9-n2")  # timm's default p = 0.5
    assert 0.45 < (half < 0).mean() < 0.55


@pytest.mark.parametrize("spec,mean,std,top", [
    ("rand-m9", 9.0, 0.0, 9.0),
    ("rand-m9-mstd0.5", 8.99, 0.48, 10.0),  # N(9, 0.5) clipped at 10: mean 8.996, sd 0.485
    ("rand-m9-mstd101", 4.5, 2.6, 9.0),  # timm: uniform in [0, 9]
    ("rand-m15-mmax20-mstd4", 14.8, 3.7, 20.0),  # N(15, 4) clipped at 20: 14.80, sd 3.7
])
def test_rand_magnitude_noise(spec, mean, std, top):
    policy = aa.parse(spec)
    ds = tf.data.Dataset.range(2000).map(
        lambda i: aa._draws(tf.stack([i, tf.constant(5, tf.int64)]), policy)["magnitude"])
    m = next(iter(ds.batch(2000))).numpy().ravel()
    assert m.min() >= 0.0 and m.max() <= top
    assert abs(m.mean() - mean) < 0.15 and abs(m.std() - std) < 0.15, (m.mean(), m.std())


def test_trivial_and_autoaug_choices_cover_their_ops():
    trivial = _choices("trivial", 1000).ravel()
    assert set(trivial) == set(range(14))
    autoaug = _choices("autoaug", 1000)
    assert set(autoaug.ravel()) - {-1} == set(range(len(aa.op_names(aa.parse("autoaug")))))


# ----------------------------------------------------------------------------- parse

GOOD = {
    "rand-m9-n2-mstd0.5": aa.Policy("rand", magnitude=9.0, num_ops=2, magnitude_std=0.5),
    "rand-m7-mstd0.5-inc1": aa.Policy("rand", magnitude=7.0, magnitude_std=0.5, increasing=True),
    "rand-m9-n3-p0.8": aa.Policy("rand", magnitude=9.0, num_ops=3, prob=0.8),
    "rand-m15-mmax20": aa.Policy("rand", magnitude=15.0, magnitude_max=20.0),
    "rand-m9-mstd101": aa.Policy("rand", magnitude=9.0, magnitude_std=float("inf")),
    "rand-inc0": aa.Policy("rand"),
    "rand": aa.Policy("rand"),
    "autoaug": aa.Policy("autoaug"),
    "trivial": aa.Policy("trivial"),
}


@pytest.mark.parametrize("spec", sorted(GOOD))
def test_parse_good_specs(spec):
    assert aa.parse(spec) == GOOD[spec]


BAD = {
    "rand-m99": "magnitude 99 is outside [0, 10]",
    "rand-n0": "n 0 is below 1",
    "rand-q3": "unknown setting 'q3'",
    "rand-x3": "unknown setting 'x3'",
    "autoaugment": "unknown policy 'autoaugment'",
    "foo": "unknown policy 'foo'",
    "rand-m9-p2": "p 2 is outside [0, 1]",
    "rand-mstd-1": "setting 'mstd' has no value",
    "rand-m9-m8": "setting 'm' is given twice",
    "rand-m9-mmax5": "magnitude 9 is outside [0, 5]",
    "rand-n2.5": "n value '2.5' is not a whole number",
    "rand-inc2": "inc value '2' is not 0 or 1",
    "trivial-m9": "trivial takes no settings",
    "": "empty policy",
}


@pytest.mark.parametrize("spec", sorted(BAD))
def test_parse_bad_specs_say_what_and_how(spec):
    with pytest.raises(ValueError) as info:
        aa.parse(spec)
    message = str(info.value)
    assert message.startswith(f"config.auto_augment={spec!r}: ") and "\n" not in message
    assert BAD[spec] in message and '"rand-m<0..10>' in message and '"trivial"' in message
