"""RandAugment, AutoAugment and TrivialAugment-Wide on uint8 images, inside tf.data or eagerly.

Owns the image ops these policies draw from and the per-image application (`apply`) of a
`Policy` (`config.auto_augment`, parsed by the tensorflow-free `augment_policy.parse`, which
this module re-exports). Importing this module imports tensorflow (through `ops`).

Every op reproduces Pillow, which is what timm and torchvision run on PIL images
(python-pillow/Pillow: src/PIL/ImageOps.py, src/PIL/ImageEnhance.py, src/libImaging/Blend.c,
Filter.c, Geometry.c):

- `auto_contrast`: per channel, lut(i) = int(i * 255 / (hi - lo) - lo * 255 / (hi - lo)),
  clipped; identity when hi <= lo (ImageOps.autocontrast, cutoff 0). Exact.
- `equalize`: per channel, PIL's lut (step = (n - count of the last used level) // 255,
  lut(i) = (step // 2 + count below i) // step; identity when step is 0 or one level is
  used). Exact.
- `invert`, `posterize` (keep the top `bits` bits), `solarize` (invert pixels >= threshold),
  `solarize_add` (add to pixels < threshold, clip): exact. `posterize` with 0 bits gives black,
  as Pillow did before it refused bits < 1 (timm asks for 0 bits at low `Posterize` magnitudes
  and at magnitude 10 of `PosterizeIncreasing`).
- `color`, `contrast`, `brightness`, `sharpness`: ImageEnhance, i.e. Image.blend of a
  degenerate image and the image, `deg + factor * (image - deg)` in float32, clipped and
  truncated (Pillow truncates, it does not round). Degenerates: the image's L conversion
  ((19595 R + 38470 G + 7471 B + 2^15) >> 16) for Color, that grey's rounded mean for Contrast,
  black for Brightness, the 3x3 SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1, over 13, rounded) with
  the one-pixel border kept for Sharpness. Exact; `sharpness` needs at least 3x3 pixels.
- `rotate`, `shear_x`, `shear_y`, `translate_x`, `translate_y`: Pillow's affine transform
  (Image.rotate / Image.transform(AFFINE)) with BILINEAR resampling: each output pixel centre
  (x + 0.5, y + 0.5) maps to a source point; points outside [0, w) x [0, h) take `fill`, the
  others interpolate with edge pixels repeated and truncate. Interpolation is fixed to bilinear:
  timm picks bilinear or bicubic at random per op, torchvision defaults to nearest.
  Translations are computed in float64 like Pillow (exact); rotations and shears run TF's
  ImageProjectiveTransformV3, whose coordinates and weights are float32, so about 1 value in
  100 (shear 0.3) to 1 in 10,000 (rotations) is one level lower than Pillow's.
  Rotation is counter-clockwise for positive degrees about the centre (w/2, h/2); shears are
  about the top-left corner, Pillow matrix (1, amount, 0, 0, 1, 0) for x; positive translation
  moves the content right / down (torchvision's sign; timm's is the opposite, and both draw the
  sign at random).

Magnitude -> argument mappings (their code and tables live in the backend-free
`augment_space`, shared with the on-device `flaxcls.train.autoaugment_device`):

- RandAugment (`rand-...`) follows timm (huggingface/pytorch-image-models,
  timm/data/auto_augment.py): level m in [0, 10] (or [0, mmax]), noise N(m, mstd) per
  application clipped to [0, mmax or 10] (mstd > 100: uniform in [0, m]); each of n ops drawn
  uniformly with replacement from the 15 of `_RAND_TRANSFORMS` (`_RAND_INCREASING_TRANSFORMS`
  with inc1), each applied with probability p. Rotate +-30 m/10 degrees; Posterize
  int(4 m/10) bits (increasing: 4 - that); Solarize threshold min(256, int(256 m/10))
  (increasing: 256 - that); SolarizeAdd min(128, int(110 m/10)) below 128; Color, Contrast,
  Brightness, Sharpness factor 1.8 m/10 + 0.1 (increasing: max(0.1, 1 +- 0.9 m/10)); ShearX/Y
  +-0.3 m/10; TranslateX/YRel +-0.45 m/10 of the width / height, in (fractional) pixels.
  Differences: `inc` takes 0 or 1 (timm reads any value, even "inc0", as on); m may be
  fractional (timm: int) and above 10 only with mmax, and mstd > 100 means uniform as in timm.
- AutoAugment (`autoaug`) follows torchvision (pytorch/vision,
  torchvision/transforms/autoaugment.py and transforms/v2/_auto_augment.py): the 25 ImageNet
  sub-policies, one chosen uniformly, each op applied when u <= its probability, 10 magnitude
  bins: ShearX +-linspace(0, 0.3), Rotate +-linspace(0, 30) degrees, Color / Contrast /
  Sharpness factor 1 +- linspace(0, 0.9), Posterize 8 - round(bin / 2.25) bits, Solarize
  threshold 255 * linspace(1, 0) (older torchvision: linspace(256, 0)); signs drawn at random.
- TrivialAugment Wide (`trivial`) follows torchvision's TrivialAugmentWide: one of 14 ops
  (Identity included) and one of 31 bins uniformly, ShearX/Y +-linspace(0, 0.99), TranslateX/Y
  +-int(linspace(0, 32)) pixels, Rotate +-linspace(0, 135), the four enhance factors
  1 +- linspace(0, 0.99), Posterize 8 - round(bin / 5) bits, Solarize 255 * linspace(1, 0).
  torch's float32 linspace is reproduced with its two-sided formula; a Solarize threshold
  that lands on a whole number could differ by one level if torch's vectorised path rounds
  differently (not checked against torch).

All random draws come from the stateless seed, so (image, seed) fixes the output, eagerly and
inside tf.data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from flaxcls.data import augment_space
from flaxcls.data.augment_policy import Policy, parse  # noqa: F401 (re-export)
from flaxcls.data.augment_space import AUTOAUGMENT_IMAGENET, op_names
from flaxcls.data.augment_space import torchvision_space as _torchvision_space  # noqa: F401
from flaxcls.data.ops import tf

# ----------------------------------------------------------------------------- colour ops
# Speed notes (one CPU thread, 224 px): TF's kernels are slow on broadcasts over the channel
# axis, on uint8 selects and on gathers, so per-channel values are applied as [1, 3w] rows of
# the [h, 3w] view of the image, and selects become arithmetic where they can.


def _rows(image: tf.Tensor) -> tf.Tensor:
    """[h, w, 3] -> [h, 3w], the layout where per-channel rows broadcast cheaply."""
    shape = tf.shape(image)
    return tf.reshape(image, [shape[0], shape[1] * 3])


def _channel_row(values: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """Per-channel values [3] as a [1, 3w] row matching _rows(image)."""
    return tf.tile(values, [tf.shape(image)[1]])[None, :]


def _f64(value: tf.Tensor | float) -> tf.Tensor:
    """float64 without a float32 detour (tf.cast of a Python float goes through float32)."""
    if isinstance(value, tf.Tensor | tf.Variable):
        return tf.cast(value, tf.float64)
    return tf.constant(value, tf.float64)


def identity(image: tf.Tensor) -> tf.Tensor:
    return image


def invert(image: tf.Tensor) -> tf.Tensor:
    return 255 - image


def posterize(image: tf.Tensor, bits: tf.Tensor | int) -> tf.Tensor:
    """Keeps the top `bits` bits (clipped to [0, 8]) of every value."""
    drop = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = 256 - tf.bitwise.left_shift(1, drop)
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def solarize(image: tf.Tensor, threshold: tf.Tensor | float) -> tf.Tensor:
    """Inverts the values >= threshold (256 or more: no change)."""
    whole = tf.cast(tf.math.ceil(_f64(threshold)), tf.int32)
    flip = tf.cast(tf.cast(image, tf.int32) >= whole, tf.uint8) * 255
    return tf.bitwise.bitwise_xor(image, flip)  # x ^ 255 == 255 - x


def solarize_add(image: tf.Tensor, addition: tf.Tensor | int,
                 threshold: tf.Tensor | int = 128) -> tf.Tensor:
    """Adds `addition` to the values < threshold, clipping at 255 (timm's SolarizeAdd)."""
    values = tf.cast(image, tf.int32)
    added = tf.clip_by_value(values + tf.cast(addition, tf.int32), 0, 255)
    below = tf.cast(values < tf.cast(threshold, tf.int32), tf.int32)
    return tf.cast(values + below * (added - values), tf.uint8)


def _histogram(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-channel counts [3, 256] and the [h, 3w] bin index (value + 256 * channel)."""
    index = tf.cast(_rows(image), tf.int32) + _channel_row(tf.constant([0, 256, 512]), image)
    counts = tf.math.bincount(tf.reshape(index, [-1]), minlength=768, maxlength=768)
    return tf.reshape(counts, [3, 256]), index


def auto_contrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel's [min, max] to [0, 255] (ImageOps.autocontrast, cutoff 0)."""
    used, _ = _histogram(image)
    used = tf.cast(used > 0, tf.int32)
    lo = tf.cast(tf.argmax(used, axis=1), tf.float64)
    hi = tf.cast(255 - tf.argmax(tf.reverse(used, axis=[1]), axis=1), tf.float64)
    # Pillow's lut: int(i * scale + offset) in float64; a flat channel keeps its values.
    scale = tf.where(hi > lo, 255.0 / tf.where(hi > lo, hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    stretched = (tf.cast(_rows(image), tf.float64) * _channel_row(scale, image)
                 + _channel_row(offset, image))
    out = tf.cast(tf.clip_by_value(tf.floor(stretched), 0.0, 255.0), tf.uint8)
    return tf.reshape(out, tf.shape(image))


def equalize(image: tf.Tensor) -> tf.Tensor:
    """Flattens each channel's histogram with Pillow's lut rule (ImageOps.equalize)."""
    hist, index = _histogram(image)
    used = tf.cast(hist > 0, tf.int32)
    last = 255 - tf.argmax(tf.reverse(used, axis=[1]), axis=1, output_type=tf.int32)
    step = (tf.reduce_sum(hist, axis=1) - tf.gather(hist, last, batch_dims=1)) // 255
    below = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.minimum((step[:, None] // 2 + below) // tf.maximum(step, 1)[:, None], 255)
    keep = (tf.reduce_sum(used, axis=1) <= 1) | (step == 0)
    lut = tf.where(keep[:, None], tf.range(256)[None, :], lut)
    out = tf.gather(tf.reshape(tf.cast(lut, tf.uint8), [-1]), index)
    return tf.reshape(out, tf.shape(image))


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
    """Image.blend(degenerate, image, factor): float32, clipped, truncated like Pillow.

    `degenerate` is float32 of the image's shape, or a scalar.
    """
    x = tf.cast(image, tf.float32)
    mixed = degenerate + tf.cast(factor, tf.float32) * (x - degenerate)
    return tf.cast(tf.clip_by_value(mixed, 0.0, 255.0), tf.uint8)  # the cast truncates


# Pillow's RGB -> L is (19595 R + 38470 G + 7471 B + 2^15) >> 16. As a float32 matmul the sums
# stay whole numbers below 2^24, so they are exact.
_GREY_WEIGHTS = np.array([[19595.0], [38470.0], [7471.0]], np.float32)


def _grey(image: tf.Tensor, channels: int = 1) -> tf.Tensor:
    """Pillow's L conversion, float32 [h * w, channels] (the grey repeated per column)."""
    pixels = tf.reshape(tf.cast(image, tf.float32), [-1, 3])
    weighted = tf.matmul(pixels, tf.constant(np.tile(_GREY_WEIGHTS, (1, channels))))
    return tf.floor((weighted + 32768.0) / 65536.0)


def color(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
    """ImageEnhance.Color: 0 grey, 1 unchanged, above 1 more saturated."""
    return _blend(tf.reshape(_grey(image, 3), tf.shape(image)), image, factor)


def contrast(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
    """ImageEnhance.Contrast: blends with the rounded mean grey level."""
    mean = tf.reduce_mean(tf.cast(_grey(image), tf.float64))
    return _blend(tf.cast(tf.floor(mean + 0.5), tf.float32), image, factor)


def brightness(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
    """ImageEnhance.Brightness: blends with black."""
    return _blend(tf.constant(0.0), image, factor)


_SMOOTH = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32)


def sharpness(image: tf.Tensor, factor: tf.Tensor | float) -> tf.Tensor:
    """ImageEnhance.Sharpness: blends with the SMOOTH-filtered image (border pixels kept)."""
    x = tf.cast(image, tf.float32)
    kernel = tf.constant(np.tile(_SMOOTH[:, :, None, None], (1, 1, 3, 1)))
    sums = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.floor((sums + 6.5) / 13.0)  # exact: sums are whole numbers below 2^24
    inner = tf.concat([x[1:-1, :1], smooth, x[1:-1, -1:]], axis=1)
    return _blend(tf.concat([x[:1], inner, x[-1:]], axis=0), image, factor)


# ----------------------------------------------------------------------------- geometric ops


def _fill_row(fill: tuple[int, int, int] | tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    return _channel_row(tf.cast(tf.reshape(fill, [3]), tf.uint8), image)


def _fill_outside(warped: tf.Tensor, inside: tf.Tensor, image: tf.Tensor,
                  fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """warped where `inside` ([h, 3w], [1, 3w] or [h, 1]), else the fill colour."""
    out = tf.where(inside, _rows(warped), _fill_row(fill, image))
    return tf.reshape(out, tf.shape(image))


def _affine(image: tf.Tensor, matrix: list[tf.Tensor],
            fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Image.transform(size, AFFINE, matrix, BILINEAR, fillcolor=fill) in Pillow's convention.

    `matrix` (a, b, c, d, e, f) maps an output point (x, y) to the source point
    (a x + b y + c, d x + e y + f), with pixel centres at half-integers.
    """
    a, b, c, d, e, f = (_f64(v) for v in matrix)
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    # The kernel samples at pixel indices (centre at 0), Pillow at pixel centres (0.5).
    transform = tf.cast(tf.stack([a, b, c + 0.5 * (a + b - 1.0), d, e, f + 0.5 * (d + e - 1.0),
                                  0.0, 0.0]), tf.float32)
    # Pillow repeats the edge pixels inside the half-pixel border (fill_mode NEAREST) and
    # truncates (the uint8 cast). float32 in and out is faster than uint8 here.
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None],
        output_shape=shape[:2], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="NEAREST")[0]
    # Pillow's inside test, in its float64 arithmetic, on the [h, 3w] grid of _rows.
    xs = tf.cast(tf.range(3 * shape[1]) // 3, tf.float64)[None, :] + 0.5
    ys = tf.range(height, dtype=tf.float64)[:, None] + 0.5
    source_x = a * xs + b * ys + c
    source_y = d * xs + e * ys + f
    inside = (source_x >= 0.0) & (source_x < width) & (source_y >= 0.0) & (source_y < height)
    return _fill_outside(tf.cast(warped, tf.uint8), inside, image, fill)


def _round15(value: tf.Tensor) -> tf.Tensor:
    # Image.rotate rounds cos and sin to 15 decimals: right angles map pixels exactly.
    return tf.round(value * 1e15) / 1e15


def rotate(image: tf.Tensor, degrees: tf.Tensor | float,
           fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Image.rotate(degrees, BILINEAR, fillcolor=fill): counter-clockwise about (w/2, h/2)."""
    angle = _f64(degrees) * (math.pi / 180.0)
    cos, sin = _round15(tf.cos(angle)), _round15(tf.sin(angle))
    shape = tf.cast(tf.shape(image), tf.float64)
    cx, cy = shape[1] / 2.0, shape[0] / 2.0
    return _affine(image, [cos, -sin, cos * -cx + -sin * -cy + cx,
                           sin, cos, sin * -cx + cos * -cy + cy], fill)


def shear_x(image: tf.Tensor, amount: tf.Tensor | float,
            fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Pillow affine (1, amount, 0, 0, 1, 0): row y samples from x + amount * y."""
    return _affine(image, [1.0, amount, 0.0, 0.0, 1.0, 0.0], fill)


def shear_y(image: tf.Tensor, amount: tf.Tensor | float,
            fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Pillow affine (1, 0, 0, amount, 1, 0): column x samples from y + amount * x."""
    return _affine(image, [1.0, 0.0, 0.0, amount, 1.0, 0.0], fill)


def _translate(image: tf.Tensor, pixels: tf.Tensor | float, axis: int,
               fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Pillow's bilinear affine for a pure translation, from two rolled copies (no warp kernel).

    Output index i samples source coordinate (i + 0.5) + s - 0.5 (s = -pixels) between its
    floor and floor + 1, edge pixels repeated, in float64 like Pillow; it is inside when
    0 <= (i + 0.5) + s < size. Values rolled in from the other side land only outside.
    """
    size = tf.shape(image)[axis]
    shift = -_f64(pixels)
    n = tf.cast(tf.floor(shift), tf.int32)
    low = tf.cast(tf.roll(image, -n, axis=axis), tf.float64)
    high = tf.cast(tf.roll(image, -n - 1, axis=axis), tf.float64)
    index = tf.range(size)
    source = tf.cast(index, tf.float64) + 0.5 + shift
    inside = (source >= 0.0) & (source < tf.cast(size, tf.float64))
    # Weight of `high`: the fraction, but 1 where i + n == -1 and 0 where i + n == size - 1,
    # which is where Pillow repeats the edge pixel.
    fraction = (source - 0.5) - tf.cast(index + n, tf.float64)
    weight = tf.where(index + n == -1, tf.ones_like(fraction),
                      tf.where(index + n == size - 1, tf.zeros_like(fraction), fraction))
    if axis == 1:
        weight = tf.reshape(tf.repeat(weight, 3), [1, -1, 3])
        inside = tf.repeat(inside, 3)[None, :]
    else:
        weight, inside = weight[:, None, None], inside[:, None]
    moved = tf.cast(low + (high - low) * weight, tf.uint8)  # truncates, as Pillow
    return _fill_outside(moved, inside, image, fill)


def translate_x(image: tf.Tensor, pixels: tf.Tensor | float,
                fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Moves the content right by `pixels` (left when negative; may be fractional)."""
    return _translate(image, pixels, 1, fill)


def translate_y(image: tf.Tensor, pixels: tf.Tensor | float,
                fill: tuple[int, int, int] | tf.Tensor) -> tf.Tensor:
    """Moves the content down by `pixels` (up when negative; may be fractional)."""
    return _translate(image, pixels, 0, fill)


# ----------------------------------------------------------------------------- op tables

# A branch is (image, magnitude, negate, fill) -> image. For RandAugment the magnitude is timm's
# level m (float64); for AutoAugment and TrivialAugment it is a bin index into the op's table.
# What the magnitudes mean lives in augment_space, shared with the on-device ops.
_Branch = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
_GEOMETRIC = {"rotate": rotate, "shear_x": shear_x, "shear_y": shear_y,
              "translate_x": translate_x, "translate_y": translate_y}
_COLOUR = {"posterize": posterize, "solarize": solarize, "solarize_add": solarize_add,
           "color": color, "contrast": contrast, "brightness": brightness,
           "sharpness": sharpness}
_PLAIN = {"identity": identity, "invert": invert, "auto_contrast": auto_contrast,
          "equalize": equalize}


def _size(image: tf.Tensor, axis: int) -> tf.Tensor:
    return tf.cast(tf.shape(image)[axis], tf.float64)


def _run(image_op: str, image: tf.Tensor, argument: tf.Tensor | None,
         fill: tf.Tensor) -> tf.Tensor:
    """The image op of augment_space's name on `argument` (None: an argument-free op)."""
    if image_op in _PLAIN:
        return _PLAIN[image_op](image)
    if image_op == "translate_x_rel":
        return translate_x(image, argument * _size(image, 1), fill)
    if image_op == "translate_y_rel":
        return translate_y(image, argument * _size(image, 0), fill)
    if image_op in _GEOMETRIC:
        return _GEOMETRIC[image_op](image, argument, fill)
    return _COLOUR[image_op](image, argument)


def _timm_ops() -> dict[str, _Branch]:
    def branch(image_op: str, argument: augment_space.LevelFn | None) -> _Branch:
        def run(x: tf.Tensor, m: tf.Tensor, neg: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
            return _run(image_op, x, None if argument is None else argument(m, neg, tf), fill)
        return run

    return {name: branch(*spec) for name, spec in augment_space.TIMM_OPS.items()}


def _torchvision_ops(num_bins: int, wide: bool) -> dict[str, _Branch]:
    def branch(image_op: str, positive: np.ndarray | None,
               negative: np.ndarray | None) -> _Branch:
        def run(x: tf.Tensor, bin_: tf.Tensor, neg: tf.Tensor, fill: tf.Tensor) -> tf.Tensor:
            argument = None
            if positive is not None:
                index = tf.cast(bin_, tf.int32)
                argument = tf.where(neg, tf.gather(tf.constant(negative), index),
                                    tf.gather(tf.constant(positive), index))
            return _run(image_op, x, argument, fill)
        return run

    return {name: branch(*spec)
            for name, spec in augment_space.torchvision_arguments(num_bins, wide).items()}


# ----------------------------------------------------------------------------- random draws


def _draws(seed: tf.Tensor, policy: Policy) -> dict[str, tf.Tensor]:
    """Every random choice of one image, from its seed alone.

    "op" [k] int32 indices into op_names(policy) (-1: not applied), "magnitude" [k] float64
    (rand: the level; autoaug / trivial: the bin), "negate" [k] bool; k is n, 2 or 1.
    """
    seeds = tf.random.experimental.stateless_split(seed, 2)
    if policy.kind == "rand":
        n, names = policy.num_ops, op_names(policy)
        u = tf.random.stateless_uniform([n, 4], seeds[0], dtype=tf.float64)
        op = tf.cast(tf.floor(u[:, 0] * len(names)), tf.int32)
        magnitude = tf.fill([n], tf.constant(policy.magnitude, tf.float64))
        if policy.magnitude_std == math.inf:
            magnitude = u[:, 3] * policy.magnitude
        elif policy.magnitude_std > 0:
            noise = tf.random.stateless_normal([n], seeds[1], dtype=tf.float64)
            magnitude = magnitude + policy.magnitude_std * noise
        magnitude = tf.clip_by_value(magnitude, 0.0, policy.magnitude_max)
        applied = u[:, 1] < policy.prob  # timm skips an op when random() > p
        return {"op": tf.where(applied, op, -1), "magnitude": magnitude,
                "negate": u[:, 2] > 0.5}
    if policy.kind == "trivial":
        u = tf.random.stateless_uniform([3], seeds[0], dtype=tf.float64)
        return {"op": tf.cast(tf.floor(u[:1] * len(augment_space.TRIVIAL_OPS)), tf.int32),
                "magnitude": tf.floor(u[1:2] * float(augment_space.TRIVIAL_BINS)),
                "negate": u[2:] <= 0.5}
    u = tf.random.stateless_uniform([5], seeds[0], dtype=tf.float64)
    sub = tf.cast(tf.floor(u[0] * len(AUTOAUGMENT_IMAGENET)), tf.int32)
    ops, probs, bins = (tf.constant(t) for t in augment_space.autoaugment_table())
    op, prob, bins = tf.gather(ops, sub), tf.gather(probs, sub), tf.gather(bins, sub)
    return {"op": tf.where(u[1:3] <= prob, op, -1), "magnitude": bins,
            "negate": u[3:5] <= 0.5, "sub_policy": sub}


def op_choices(seed: tf.Tensor, policy: Policy) -> tf.Tensor:
    """The op indices (into op_names(policy)) `apply` uses for this seed; -1: skipped.

    rand: [n], one per layer; autoaug: [2], the chosen sub-policy's two slots; trivial: [1].
    """
    return _draws(seed, policy)["op"]


# ----------------------------------------------------------------------------- apply


@tf.autograph.experimental.do_not_convert  # plain Python control flow: nothing to convert
def apply(image: tf.Tensor, seed: tf.Tensor, policy: Policy,
          fill: tuple[int, int, int]) -> tf.Tensor:
    """Augments a uint8 [h, w, 3] image with `policy`; the same (image, seed), the same output.

    `fill` is the RGB colour of the pixels that rotations, shears and translations uncover.
    """
    if len(fill) != 3 or not all(0 <= int(v) <= 255 for v in fill):
        raise ValueError(f"fill={fill!r}: must be three values in [0, 255]")
    image = tf.convert_to_tensor(image, tf.uint8)
    fill_color = tf.constant([int(v) for v in fill], tf.uint8)
    table = (_timm_ops() if policy.kind == "rand"
             else _torchvision_ops(*augment_space.policy_bins(policy)))
    branches = [table[name] for name in op_names(policy)]
    draws = _draws(seed, policy)
    out = image
    for i in range(draws["op"].shape[0]):
        magnitude, negate = draws["magnitude"][i], draws["negate"][i]
        # The last branch leaves the image unchanged: an op skipped by its probability.
        index = tf.where(draws["op"][i] < 0, len(branches), draws["op"][i])
        out = tf.switch_case(index, [
            *(lambda fn=fn, x=out, m=magnitude, neg=negate: fn(x, m, neg, fill_color)
              for fn in branches),
            lambda x=out: x])
    return tf.ensure_shape(out, image.shape)
