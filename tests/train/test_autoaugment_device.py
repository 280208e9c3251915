"""On-device RandAugment / AutoAugment / TrivialAugment (flaxcls.train.autoaugment_device): each
batched op against the tf.data op of flaxcls.data.autoaugment with per-example arguments, the
magnitude mappings, the per-example select of a layer, apply_batch (jit, keys, per-example
draws) and the draws' distributions.

The ops run on a synthetic smooth image with noise and, when the shared ImageNet sample
(<repo>/../shared/data/imagenet-sample-1000.tar, or $FLAXCLS_SHARED_DATA) is there, on photos.
Images are 40x56: not square, so a swapped height and width shows.
"""

from __future__ import annotations

import functools
import io
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, SHARED, subprocess_env

from flaxcls.data import augment_space
from flaxcls.data.augment_policy import parse
from flaxcls.train import autoaugment_device as ad

aa = pytest.importorskip("flaxcls.data.autoaugment")  # the reference: needs tensorflow
tf = aa.tf

SHARED_DATA = Path(os.environ.get("FLAXCLS_SHARED_DATA") or SHARED / "data")
FILL = (124, 116, 104)
H, W = 40, 56


def _synthetic(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """Smooth colour structure plus noise: every op has something to change."""
    y, x = np.mgrid[0:h, 0:w]
    shift = 7 * seed
    smooth = np.stack([(x + shift) % w * 200 // w + 20, y * 180 // h + 30,
                       (x + y + shift) * 150 // (w + h) % 160 + 60], -1)
    noise = np.random.default_rng(seed).integers(-20, 21, (h, w, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    archive = SHARED_DATA / "imagenet-sample-1000.tar"
    if not archive.is_file():
        pytest.skip(f"{archive} not found (set FLAXCLS_SHARED_DATA)")
    from PIL import Image

    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())[::125][:8]
        return np.stack([np.asarray(Image.open(io.BytesIO(tar.extractfile(n).read()))
                                    .convert("RGB").resize((W, H), Image.BILINEAR))
                         for n in names])


@pytest.fixture(scope="module", params=["synthetic", "photos"])
def batch(request) -> np.ndarray:
    """8 images, one per per-example argument below."""
    if request.param == "photos":
        return request.getfixturevalue("photos")
    return np.stack([_synthetic(seed) for seed in range(8)])


# ----------------------------------------------------------------------------- ops vs tf.data

# name -> 8 per-example arguments (None: the op takes none); values cover both ends and the
# neutral one.
COLOUR_OPS = {
    "invert": None, "auto_contrast": None, "equalize": None,
    "posterize": [0, 1, 2, 3, 4, 5, 6, 8],
    "solarize": [0, 1, 26, 113.3, 128, 230, 255, 256],
    "solarize_add": [0, 5, 30, 64, 77, 99, 110, 128],
    **{name: (0.0, 0.1, 0.19, 0.55, 1.0, 1.3, 1.72, 1.9)
       for name in ("color", "contrast", "brightness", "sharpness")},
}
WARP_OPS = {
    "rotate": [-135, -30, -7.5, 0.0, 13.3, 27, 90, 135],
    "shear_x": [-0.99, -0.3, -0.11, 0.0, 0.033, 0.17, 0.3, 0.99],
    "shear_y": [-0.99, -0.3, -0.11, 0.0, 0.033, 0.17, 0.3, 0.99],
    "translate_x": [-72, -13.75, -0.25, 0, 1.5, 5, 20, 31.9],
    "translate_y": [-72, -13.75, -0.25, 0, 1.5, 5, 20, 31.9],
}


def _tf_per_example(name: str, images: np.ndarray, arguments: list | None) -> np.ndarray:
    """The tf.data op, one example at a time, on the float32 value our op receives."""
    op = getattr(aa, name)
    out = []
    for i, image in enumerate(images):
        args = () if arguments is None else (float(np.float32(arguments[i])),)
        args += (FILL,) if name in WARP_OPS else ()
        out.append(op(tf.constant(image), *args).numpy())
    return np.stack(out)


@functools.cache
def _jitted(name: str):
    fn = getattr(ad, name)
    return jax.jit(lambda x, *args: fn(x, *args, FILL) if name in WARP_OPS else fn(x, *args))


def _ours(name: str, images: np.ndarray, arguments: list | None,
          jit: bool = False) -> np.ndarray:
    """Our batched op, eagerly or jitted (where XLA may fuse what eager ops keep apart)."""
    args = () if arguments is None else (jnp.asarray(arguments, jnp.float32),)
    if jit:
        out = np.asarray(_jitted(name)(jnp.asarray(images), *args))
    else:
        args += (FILL,) if name in WARP_OPS else ()
        out = np.asarray(getattr(ad, name)(jnp.asarray(images), *args))
    assert out.dtype == np.uint8 and out.shape == images.shape
    return out


@pytest.mark.parametrize("name", sorted(COLOUR_OPS))
def test_colour_op_equals_tf_data_op(name, batch):
    """Same integer / float32 arithmetic as the tf.data op (which equals Pillow): bit-exact,
    eagerly and jitted."""
    arguments = COLOUR_OPS[name]
    theirs = _tf_per_example(name, batch, arguments)
    np.testing.assert_array_equal(_ours(name, batch, arguments), theirs)
    np.testing.assert_array_equal(_ours(name, batch, arguments, jit=True), theirs)


def _pillow_matrix(name: str, value: float, h: int, w: int) -> tuple[float, ...]:
    """The op's output -> source matrix in float64, as the tf.data op (and Pillow) builds it."""
    if name == "rotate":
        angle = math.radians(value)
        cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
        cx, cy = w / 2, h / 2
        return (cos, -sin, cos * -cx + -sin * -cy + cx, sin, cos, sin * -cx + cos * -cy + cy)
    return {"shear_x": (1, value, 0, 0, 1, 0), "shear_y": (1, 0, 0, value, 1, 0),
            "translate_x": (1, 0, -value, 0, 1, 0), "translate_y": (1, 0, 0, 0, 1, -value)}[name]


def _near_border(matrix: tuple[float, ...], h: int, w: int, margin: float = 1e-3) -> np.ndarray:
    """[h, w]: pixels whose source point lies within `margin` of the image's border, where
    float32 coordinates may put it on the other side of Pillow's inside test."""
    a, b, c, d, e, f = matrix
    y, x = np.mgrid[0:h, 0:w] + 0.5
    sx, sy = a * x + b * y + c, d * x + e * y + f
    return ((np.abs(sx) < margin) | (np.abs(sx - w) < margin) | (np.abs(sy) < margin)
            | (np.abs(sy - h) < margin))


# Mean |ours - tf.data| per value, per example, and the largest difference. The warp computes
# its source coordinates and bilinear weights in float32 (the tf.data op: float64 coordinates,
# float32 weights), so a value that the interpolation puts on or within ~1e-4 of a whole number
# can truncate one level apart. Measured worst on these 16 images (8 photos, 8 synthetic):
# shear -0.3 0.0098 (0.3 (y + 0.5) often hits halves), translation 31.9 px 0.0098 (the weight
# 0.1 is off by 4e-7, and the differences of neighbours that are multiples of 10 land on whole
# numbers), rotations 0.0001; every difference exactly 1, none at pixels near the border; jit
# and eager equal. At 224 px on photos: the same (0.0089 at 31.9 px, 0.0044 at shear -0.3).
# Bound: 0.02 per example and 1 level, except at pixels whose source point is within 1e-3 px
# of the border (where float32 may decide inside / outside differently).
WARP_MEAN_BOUND = 0.02


@pytest.mark.parametrize("name", sorted(WARP_OPS))
def test_warp_op_is_within_a_level_of_tf_data_op(name, batch):
    """Eagerly and jitted: the two are equal (no product left for XLA to fuse differently)."""
    arguments = WARP_OPS[name]
    ours = _ours(name, batch, arguments).astype(int)
    np.testing.assert_array_equal(_ours(name, batch, arguments, jit=True), ours)
    theirs = _tf_per_example(name, batch, arguments).astype(int)
    for i, value in enumerate(arguments):
        diff = np.abs(ours[i] - theirs[i])
        border = _near_border(_pillow_matrix(name, float(np.float32(value)), H, W), H, W)
        assert border.mean() < 0.05, (name, value)  # a column or row at most
        assert diff[~border].max() <= 1 and diff.mean() <= WARP_MEAN_BOUND, (
            name, value, diff.max(), diff.mean())


def test_auto_contrast_table_is_pillows_float64_for_every_range():
    """int(i * scale + offset) in float64 falls one short of the whole number for 12,094 of the
    8.4M (lo, hi, i): the integer formula plus the table of those must give Pillow's lut."""
    lo, hi = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    ours = np.asarray(jax.jit(ad._auto_contrast_lut)(jnp.asarray(lo.reshape(-1, 1)),
                                                     jnp.asarray(hi.reshape(-1, 1))))[:, 0]
    levels = np.arange(256.0)
    for low in range(256):
        high = np.arange(256.0)[:, None]
        scale = 255.0 / np.where(high > low, high - low, 1.0)
        pillow = np.clip(np.floor(levels * scale + -low * scale), 0, 255)
        pillow = np.where(high > low, pillow, levels)
        np.testing.assert_array_equal(ours[low * 256:(low + 1) * 256], pillow, err_msg=f"{low}")
    assert len(ad._auto_contrast_short_keys()) == 12094


NEUTRAL = {  # op -> its argument that changes nothing
    "color": 1.0, "contrast": 1.0, "brightness": 1.0, "sharpness": 1.0, "rotate": 0.0,
    "shear_x": 0.0, "shear_y": 0.0, "translate_x": 0.0, "translate_y": 0.0, "posterize": 8,
    "solarize": 256, "solarize_add": 0,
}


@pytest.mark.parametrize("name", sorted(NEUTRAL))
def test_neutral_argument_is_identity(name):
    images = np.stack([_synthetic(seed) for seed in range(8)])
    np.testing.assert_array_equal(_ours(name, images, [NEUTRAL[name]] * 8), images)


def test_warps_fill_what_they_uncover_and_turn_counter_clockwise():
    images = np.stack([_synthetic(seed) for seed in range(8)])
    moved = _ours("translate_x", images, [10, -3, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(moved[0, :, :10], np.broadcast_to(FILL, (H, 10, 3)))
    np.testing.assert_array_equal(moved[0, :, 10:], images[0, :, :-10])
    np.testing.assert_array_equal(moved[1, :, :-3], images[1, :, 3:])
    # A quarter turn about the centre maps the middle H x H square onto itself, pixel for pixel.
    quarter = _ours("rotate", images, [90.0, -90.0, 180.0, 0, 0, 0, 0, 0])
    middle = slice((W - H) // 2, (W + H) // 2)
    np.testing.assert_array_equal(quarter[0, :, middle], np.rot90(images[0, :, middle]))
    np.testing.assert_array_equal(quarter[1, :, middle], np.rot90(images[1, :, middle], -1))
    np.testing.assert_array_equal(quarter[2], images[2, ::-1, ::-1])


# ----------------------------------------------------------------------------- magnitudes


def _arguments(spec: str, magnitude: list[float], negate: list[bool]) -> dict[str, np.ndarray]:
    policy = parse(spec)
    pairs = ad._arguments(policy, jnp.asarray(magnitude, jnp.float32), jnp.asarray(negate),
                          H, W)
    return {name: (image_op, None if arg is None else np.asarray(arg))
            for name, (image_op, arg) in zip(augment_space.op_names(policy), pairs, strict=True)}


TIMM_EXPECTED = [  # (op, m, negate, image op, argument): timm/data/auto_augment.py's level fns
    ("Rotate", 9, False, "rotate", 27.0), ("Rotate", 9, True, "rotate", -27.0),
    ("Posterize", 9, False, "posterize", 3), ("Posterize", 2, False, "posterize", 0),
    ("Solarize", 9, False, "solarize", 230), ("Solarize", 10, False, "solarize", 256),
    ("SolarizeAdd", 7, False, "solarize_add", 77), ("SolarizeAdd", 10, False, "solarize_add", 110),
    ("Color", 9, False, "color", 1.72), ("Sharpness", 5, True, "sharpness", 1.0),
    ("ShearX", 9, False, "shear_x", 0.27), ("ShearY", 9, True, "shear_y", -0.27),
    ("TranslateXRel", 9, False, "translate_x", 0.405 * W),
    ("TranslateYRel", 10, True, "translate_y", -0.45 * H),
]
TIMM_INCREASING_EXPECTED = [
    ("PosterizeIncreasing", 9, False, "posterize", 1),
    ("SolarizeIncreasing", 9, False, "solarize", 26),
    ("ContrastIncreasing", 9, True, "contrast", 0.19),
    ("BrightnessIncreasing", 9, False, "brightness", 1.81),
]


@pytest.mark.parametrize("spec,cases", [("rand-m9", TIMM_EXPECTED),
                                        ("rand-m9-inc1", TIMM_INCREASING_EXPECTED)])
def test_rand_arguments_are_timms(spec, cases):
    for name, m, negate, image_op, want in cases:
        got_op, got = _arguments(spec, [m], [negate])[name]
        assert got_op == image_op
        np.testing.assert_allclose(got, [want], rtol=1e-6, err_msg=name)


def test_torchvision_arguments_are_the_bins():
    trivial = _arguments("trivial", [30, 30, 20, 1], [False, True, True, False])
    np.testing.assert_allclose(trivial["Rotate"][1], [135, -135, -90, 4.5], rtol=1e-6)
    np.testing.assert_allclose(trivial["TranslateX"][1], [32, -32, -21, 1])  # int(linspace)
    np.testing.assert_allclose(trivial["Color"][1], [1.99, 0.01, 1 - 0.66, 1.033], rtol=1e-6)
    np.testing.assert_array_equal(trivial["Posterize"][1], [2, 2, 4, 8])
    autoaug = _arguments("autoaug", [9, 5, 0, 9], [False, True, False, True])
    np.testing.assert_allclose(autoaug["ShearX"][1], [0.3, -1 / 6, 0, -0.3], rtol=1e-6)
    np.testing.assert_array_equal(autoaug["Solarize"][1], [0, 114, 255, 0])
    np.testing.assert_array_equal(autoaug["Posterize"][1], [4, 6, 8, 4])
    assert autoaug["Equalize"] == ("equalize", None)


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5", "rand-m5-inc1", "autoaug", "trivial"])
def test_layer_gives_each_example_its_own_op(spec):
    """Batches of 8 where example k gets op first + k (past the last: none) with its own
    magnitude and sign equal, example by example, the batched op on the argument the mapping
    gives. (8, as the op tests: the eager runs share their compiled primitives.)"""
    policy = parse(spec)
    names = augment_space.op_names(policy)
    images = np.stack([_synthetic(seed) for seed in range(8)])
    rng = np.random.default_rng(0)
    for first in range(0, len(names) + 1, 8):
        op = np.arange(first, first + 8)
        op = np.where(op < len(names), op, -1).astype(np.int32)
        if policy.kind == "rand":
            magnitude = rng.uniform(0, 10, 8)
        else:
            magnitude = rng.integers(0, augment_space.policy_bins(policy)[0], 8)
        magnitude, negate = jnp.asarray(magnitude, jnp.float32), jnp.asarray(rng.random(8) < 0.5)
        out = np.asarray(ad._layer(jnp.asarray(images), jnp.asarray(op), magnitude, negate,
                                   policy, FILL))
        arguments = ad._arguments(policy, magnitude, negate, H, W)
        for k, j in enumerate(op):
            if j < 0:
                np.testing.assert_array_equal(out[k], images[k])
                continue
            image_op, argument = arguments[j]
            if image_op == "identity":
                want = images
            else:
                args = () if argument is None else (argument,)
                args += (FILL,) if image_op in WARP_OPS else ()
                want = np.asarray(getattr(ad, image_op)(jnp.asarray(images), *args))
            np.testing.assert_array_equal(out[k], want[k], err_msg=names[j])


NEUTRAL_MAGNITUDE = {  # policy -> its ops whose magnitude 0 (level or bin) changes nothing
    "rand-m5-inc1": ("Rotate", "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing",
                     "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
                     "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"),
    "autoaug": ("Color", "Contrast", "Posterize", "Rotate", "Sharpness", "ShearX"),
    "trivial": ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                "Brightness", "Color", "Contrast", "Sharpness", "Posterize"),
}


@pytest.mark.parametrize("spec", sorted(NEUTRAL_MAGNITUDE))
def test_neutral_magnitude_of_a_policy_is_identity(spec):
    policy = parse(spec)
    names = augment_space.op_names(policy)
    images = np.stack([_synthetic(seed) for seed in range(8)])
    neutral = [names.index(name) for name in NEUTRAL_MAGNITUDE[spec]]
    for first in range(0, len(neutral), 8):
        op = np.array((neutral[first:first + 8] + [-1] * 8)[:8], np.int32)
        out = ad._layer(jnp.asarray(images), jnp.asarray(op), jnp.zeros(8, jnp.float32),
                        jnp.asarray(np.arange(8) % 2 == 1), policy, FILL)
        np.testing.assert_array_equal(np.asarray(out), images)


SPECS = {"rand-m9-n2-mstd0.5": 5, "autoaug": 4, "trivial": 6}  # -> distinct examples of 8


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_apply_batch_jit_equals_eager_and_draws_per_key_and_example(spec):
    """8 copies of one image (the op tests' shape: eager runs share their compiled primitives)
    come out as different images; the same key gives the same batch, jitted or eagerly."""
    policy = parse(spec)
    images = jnp.broadcast_to(jnp.asarray(_synthetic(3)), (8, H, W, 3))
    jitted = jax.jit(ad.apply_batch, static_argnums=(2, 3))
    outs = [np.asarray(jitted(images, jax.random.key(k), policy, FILL)) for k in range(4)]
    assert outs[0].dtype == np.uint8 and outs[0].shape == images.shape
    np.testing.assert_array_equal(outs[0], np.asarray(jitted(images, jax.random.key(0),
                                                             policy, FILL)))
    assert len({o.tobytes() for o in outs}) == 4  # different keys, different batches
    # rand: both layers skip a quarter of the examples; autoaug: a third apply neither slot
    assert all(len({x.tobytes() for x in o}) >= SPECS[spec] for o in outs)
    eager = ad.apply_batch(images, jax.random.key(1), policy, FILL)  # op by op
    np.testing.assert_array_equal(np.asarray(eager), outs[1])


def test_apply_batch_refuses_what_it_cannot_augment():
    policy = parse("trivial")
    with pytest.raises(ValueError, match=r"images: expected uint8 \[batch, height, width, 3\]"):
        ad.apply_batch(jnp.zeros((2, 8, 8, 3), jnp.float32), jax.random.key(0), policy, FILL)
    with pytest.raises(ValueError, match="fill=.*three values"):
        ad.apply_batch(jnp.zeros((2, 8, 8, 3), jnp.uint8), jax.random.key(0), policy, (1, 2))
    with pytest.raises(ValueError, match="at least 3x3 pixels, got 2x8"):
        ad.apply_batch(jnp.zeros((2, 2, 8, 3), jnp.uint8), jax.random.key(0), policy, FILL)


# ----------------------------------------------------------------------------- draws

N = 4000


def _draws(spec: str) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in ad.draws(jax.random.key(11), parse(spec), N).items()}


def test_rand_op_choice_is_uniform_and_p_is_the_chance_to_apply():
    op = np.asarray(ad.op_choices(jax.random.key(11), parse("rand-m9-n2-mstd0.5"), N))
    assert op.shape == (N, 2)
    # timm's default p = 0.5: 8000 layers, share's sd 0.0056
    assert 0.47 < (op >= 0).mean() < 0.53
    counts = np.bincount(op[op >= 0], minlength=15)
    # ~4000 applied over 15 ops: 267 each, binomial sd 16; 5 sd either side
    assert len(counts) == 15 and counts.min() > 267 - 80 and counts.max() < 267 + 80, counts
    always = np.asarray(ad.op_choices(jax.random.key(2), parse("rand-m9-n2-p1"), N))
    assert always.min() >= 0 and always.max() == 14
    assert (np.asarray(ad.op_choices(jax.random.key(2), parse("rand-m9-p0"), N)) == -1).all()


@pytest.mark.parametrize("spec,mean,std,top", [
    ("rand-m9", 9.0, 0.0, 9.0),
    ("rand-m9-mstd0.5", 8.99, 0.48, 10.0),  # N(9, 0.5) clipped at 10: mean 8.996, sd 0.485
    ("rand-m9-mstd101", 4.5, 2.6, 9.0),  # timm: uniform in [0, 9]
    ("rand-m15-mmax20-mstd4", 14.8, 3.7, 20.0),  # N(15, 4) clipped at 20: 14.80, sd 3.7
])
def test_rand_magnitude_noise_and_sign(spec, mean, std, top):
    drawn = _draws(spec)
    m = drawn["magnitude"].ravel()
    assert m.min() >= 0.0 and m.max() <= top
    assert abs(m.mean() - mean) < 0.15 and abs(m.std() - std) < 0.15, (m.mean(), m.std())
    assert 0.47 < drawn["negate"].mean() < 0.53


def test_trivial_draws_one_op_and_one_bin_uniformly():
    drawn = _draws("trivial")
    assert drawn["op"].shape == (N, 1) and drawn["op"].min() >= 0
    op_counts = np.bincount(drawn["op"].ravel(), minlength=14)
    assert len(op_counts) == 14 and op_counts.min() > 286 - 85 and op_counts.max() < 286 + 85
    bin_counts = np.bincount(drawn["magnitude"].astype(int).ravel(), minlength=31)
    assert len(bin_counts) == 31 and bin_counts.min() > 129 - 57 and bin_counts.max() < 129 + 57
    assert 0.47 < drawn["negate"].mean() < 0.53


def test_autoaug_draws_a_sub_policy_and_applies_each_slot_with_its_probability():
    drawn = _draws("autoaug")
    ops, probs, bins = augment_space.autoaugment_table()
    sub = drawn["sub_policy"]
    counts = np.bincount(sub, minlength=25)
    assert len(counts) == 25 and counts.min() > 160 - 63 and counts.max() < 160 + 63
    applied = drawn["op"] >= 0
    assert ((drawn["op"] == ops[sub]) | ~applied).all()
    np.testing.assert_array_equal(drawn["magnitude"], bins[sub])
    # Each slot's applied share against its probability, over the table's 50 slots (about 160
    # draws each: sd at most 0.04).
    for s in range(25):
        share = applied[sub == s].mean(axis=0)
        assert (np.abs(share - probs[s]) < 0.16).all(), (s, share, probs[s])
    assert abs(applied.mean() - probs.mean()) < 0.02


@pytest.mark.subprocess
def test_imports_and_traces_without_tensorflow(tmp_path):
    """The train step imports this on GPU machines without tensorflow."""
    blocker = tmp_path / "no_tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('tensorflow is not installed here')\n")
    env = subprocess_env(1)
    env["PYTHONPATH"] = f"{blocker.parent}:{env['PYTHONPATH']}"
    code = ("import jax, jax.numpy as jnp\n"
            "from flaxcls.data.augment_policy import parse\n"
            "from flaxcls.train import autoaugment_device as ad\n"
            "for spec in ('rand-m9-n2-mstd0.5', 'autoaug', 'trivial'):\n"
            "    out = jax.eval_shape(lambda x, k: ad.apply_batch(x, k, parse(spec), (0, 0, 0)),\n"
            "                         jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.uint8),\n"
            "                         jax.random.key(0))\n"
            "    assert out.shape == (2, 16, 16, 3) and out.dtype == jnp.uint8\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
