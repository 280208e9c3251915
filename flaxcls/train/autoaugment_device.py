"""RandAugment, AutoAugment and TrivialAugment-Wide on a uint8 batch inside the jitted step.

Owns `apply_batch` (a `config.auto_augment` `Policy` on [B, H, W, 3] uint8, every example with
its own draws from one PRNG key), the batched ops it is built from (per-example arguments) and
the draws (`draws`, `op_choices`). It mirrors `flaxcls.data.autoaugment` op for op: Pillow's
arithmetic, the same op lists and distributions, and the magnitude -> argument mappings of
`flaxcls.data.augment_space`, which both modules read.

Where it differs: the draws come from jax.random (same distributions, other numbers), and the
magnitudes, arguments and the warp's coordinates and weights are float32 (Pillow and the tf.data
op: float64), so up to about 1 warped value in 100 is one level apart (shears, fractional
translations; rotations 1 in 5,000), and a pixel whose source point lies within ~1e-5 px of
the border could flip between edge and fill. The colour ops are bit-exact, auto_contrast's
float64 rounding included (a table of where it falls short of the whole number). Products
that feed sums are built so that XLA's fused multiply-adds cannot change them: jit == eager.

Design, for a GPU (no per-example branch, no vmapped switch): each layer (n for RandAugment,
2 for AutoAugment, 1 for TrivialAugment) computes at most three batched results from its input
and jnp.where picks one per example by its op: ONE bilinear affine warp with a per-example 2x3
matrix (rotate, shears, translations; identity elsewhere), ONE per-example, per-channel
256-entry lookup table applied with one gather (invert, posterize, solarize, solarize_add,
auto_contrast, equalize; histograms by a batched scatter-add) and ONE blend with a per-example
degenerate image and factor (color, contrast, brightness, sharpness). A family, statistic or
degenerate that the policy cannot choose is not computed.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from flaxcls.data import augment_space
from flaxcls.data.augment_policy import Policy

_NONE, _LUT, _BLEND, _WARP = 0, 1, 2, 3
_FAMILY = {
    "identity": _NONE,
    **dict.fromkeys(("invert", "posterize", "solarize", "solarize_add", "auto_contrast",
                     "equalize"), _LUT),
    **dict.fromkeys(("color", "contrast", "brightness", "sharpness"), _BLEND),
    **dict.fromkeys(("rotate", "shear_x", "shear_y", "translate_x", "translate_y"), _WARP),
}


def _check(images: jax.Array, fill: tuple[int, int, int] | None = None) -> None:
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
        raise ValueError(f"images: expected uint8 [batch, height, width, 3], got "
                         f"{images.dtype} {list(images.shape)}")
    if fill is not None and (len(fill) != 3 or not all(0 <= int(v) <= 255 for v in fill)):
        raise ValueError(f"fill={fill!r}: must be three values in [0, 255]")


def _per_example(values: jax.Array, ndim: int) -> jax.Array:
    """[B] -> [B, 1, ...] with `ndim` dimensions in all."""
    return jnp.reshape(values, values.shape + (1,) * (ndim - values.ndim))


# ----------------------------------------------------------------------------- products
# Under jit, XLA fuses a multiply that feeds an add into one FMA (CPU and GPU); run eagerly, or
# in Pillow and TF, the product is rounded first. Products that feed sums are therefore built
# from partial products that are exact in float32, which any fusion rounds the same way: jit
# equals eager, and the blends equal Pillow's float32 arithmetic bit for bit under jit too.


def _split(x: jax.Array, keep: int) -> tuple[jax.Array, jax.Array]:
    """float32 x = hi + lo exactly, hi keeping the top `keep` of the 24 significant bits."""
    bits = lax.bitcast_convert_type(x, jnp.int32) & jnp.int32(-(1 << (24 - keep)))
    hi = lax.bitcast_convert_type(bits, jnp.float32)
    return hi, x - hi


def _times_whole(whole: jax.Array, x: jax.Array) -> jax.Array:
    """whole * x rounded once (float32's product) for whole numbers |whole| < 512."""
    hi, lo = _split(jnp.asarray(x, jnp.float32), 15)
    return whole * hi + whole * lo


def _times(a: jax.Array | float, b: jax.Array | float) -> jax.Array:
    """a * b in float32 from four exact partial products: within an ulp of the product, and
    the same whether or not XLA fuses it into the sum it feeds."""
    a_hi, a_lo = _split(jnp.asarray(a, jnp.float32), 12)
    b_hi, b_lo = _split(jnp.asarray(b, jnp.float32), 12)
    return ((a_hi * b_hi + a_hi * b_lo) + a_lo * b_hi) + a_lo * b_lo


# augment_space's argument functions in this arithmetic
_XP = types.SimpleNamespace(floor=jnp.floor, minimum=jnp.minimum, maximum=jnp.maximum,
                            where=jnp.where, multiply=_times)


# ----------------------------------------------------------------------------- lookup tables
# A table is int32 [B, 3 or 1, 256]: output value per example, channel and input value.


def _levels() -> jax.Array:
    return jnp.arange(256, dtype=jnp.int32)[None, None, :]


def apply_lut(images: jax.Array, lut: jax.Array) -> jax.Array:
    """images[b, y, x, c] -> lut[b, c, images[b, y, x, c]] with one gather."""
    b = images.shape[0]
    lut = jnp.broadcast_to(lut, (b, 3, 256)).astype(jnp.uint8).reshape(b, 768)
    index = images.astype(jnp.int32) + jnp.array([0, 256, 512], jnp.int32)
    return jnp.take_along_axis(lut, index.reshape(b, -1), axis=1).reshape(images.shape)


def _invert_lut() -> jax.Array:
    return 255 - _levels()


def _posterize_lut(bits: jax.Array) -> jax.Array:
    drop = 8 - jnp.clip(bits.astype(jnp.int32), 0, 8)
    return _levels() & _per_example(256 - jnp.left_shift(1, drop), 3)


def _solarize_lut(threshold: jax.Array) -> jax.Array:
    whole = _per_example(jnp.ceil(threshold).astype(jnp.int32), 3)
    return jnp.where(_levels() >= whole, 255 - _levels(), _levels())


def _solarize_add_lut(addition: jax.Array, threshold: jax.Array | int = 128) -> jax.Array:
    added = jnp.clip(_levels() + _per_example(addition.astype(jnp.int32), 3), 0, 255)
    below = _levels() < _per_example(jnp.asarray(threshold, jnp.int32), 3)
    return jnp.where(below, added, _levels())


@functools.cache
def _auto_contrast_short_keys() -> np.ndarray:
    """Sorted keys lo * 65536 + hi * 256 + i of the lut entries where Pillow's float64
    int(i * scale + offset) (scale = 255 / (hi - lo), offset = -lo * scale) comes out one
    below the whole number (i - lo) * 255 / (hi - lo) (e.g. lo 0, hi 25: 25 -> 254). Elsewhere
    the whole-number floor is what float64 gives: a value that is not whole is at least
    1/255 from one, far beyond float64's error."""
    keys = []
    for d in range(1, 256):
        scale = 255.0 / d
        lo = np.arange(256 - d, dtype=np.float64)  # hi = lo + d <= 255
        for j in range(1, d + 1):
            if (j * 255) % d:
                continue
            value = (lo + j) * scale + (-lo * scale)  # Pillow's order of operations
            short = lo[np.floor(value) < j * 255 // d].astype(np.int64)
            keys.append(short * 65536 + (short + d) * 256 + short + j)
    return np.sort(np.concatenate(keys)).astype(np.int32)


def _auto_contrast_lut(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """ImageOps.autocontrast's table from each channel's lowest and highest value [B, 3]."""
    lo, hi = lo.astype(jnp.int32)[..., None], hi.astype(jnp.int32)[..., None]
    span = hi - lo
    whole = jnp.floor_divide((_levels() - lo) * 255, jnp.maximum(span, 1))
    keys = jnp.asarray(_auto_contrast_short_keys())
    query = lo * 65536 + hi * 256 + _levels()
    found = keys[jnp.minimum(jnp.searchsorted(keys, query), keys.shape[0] - 1)] == query
    stretched = jnp.clip(whole - found.astype(jnp.int32), 0, 255)
    return jnp.where(span > 0, stretched, _levels())


def _histogram(images: jax.Array) -> jax.Array:
    """Per-example, per-channel counts int32 [B, 3, 256]: one scatter-add, batched over the
    examples (so that a batch sharded over devices stays sharded)."""
    b = images.shape[0]
    index = (images.astype(jnp.int32) + jnp.array([0, 256, 512], jnp.int32)).reshape(b, -1)
    counts = jax.vmap(lambda i: jnp.zeros(768, jnp.int32).at[i].add(1))(index)
    return counts.reshape(b, 3, 256)


def _equalize_lut(hist: jax.Array) -> jax.Array:
    """ImageOps.equalize's table from the histogram [B, 3, 256]."""
    used = hist > 0
    last = 255 - jnp.argmax(used[..., ::-1], axis=-1)
    total = jnp.sum(hist, axis=-1)
    step = (total - jnp.take_along_axis(hist, last[..., None], axis=-1)[..., 0]) // 255
    below = jnp.cumsum(hist, axis=-1) - hist
    lut = jnp.minimum((step[..., None] // 2 + below) // jnp.maximum(step, 1)[..., None], 255)
    keep = (jnp.sum(used, axis=-1) <= 1) | (step == 0)
    return jnp.where(keep[..., None], _levels(), lut)


def _channel_range(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.min(images, axis=(1, 2)), jnp.max(images, axis=(1, 2))


def invert(images: jax.Array) -> jax.Array:
    return apply_lut(images, _invert_lut())


def posterize(images: jax.Array, bits: jax.Array) -> jax.Array:
    """Keeps the top bits[b] bits (clipped to [0, 8]) of example b's values."""
    return apply_lut(images, _posterize_lut(jnp.asarray(bits)))


def solarize(images: jax.Array, threshold: jax.Array) -> jax.Array:
    """Inverts example b's values >= threshold[b] (256 or more: no change)."""
    return apply_lut(images, _solarize_lut(jnp.asarray(threshold, jnp.float32)))


def solarize_add(images: jax.Array, addition: jax.Array,
                 threshold: jax.Array | int = 128) -> jax.Array:
    """Adds addition[b] to example b's values < threshold, clipping at 255."""
    return apply_lut(images, _solarize_add_lut(jnp.asarray(addition), threshold))


def auto_contrast(images: jax.Array) -> jax.Array:
    return apply_lut(images, _auto_contrast_lut(*_channel_range(images)))


def equalize(images: jax.Array) -> jax.Array:
    return apply_lut(images, _equalize_lut(_histogram(images)))


# ----------------------------------------------------------------------------- blends


def _blend(degenerate: jax.Array, images: jax.Array, factor: jax.Array) -> jax.Array:
    """Image.blend(degenerate, image, factor[b]) in float32, clipped and truncated (Pillow)."""
    x = images.astype(jnp.float32)
    mixed = degenerate + _times_whole(x - degenerate, _per_example(factor, 4))
    return jnp.clip(mixed, 0.0, 255.0).astype(jnp.uint8)  # the conversion truncates


def _grey(images: jax.Array) -> jax.Array:
    """Pillow's L conversion, int32 [B, H, W, 1]: (19595 R + 38470 G + 7471 B + 2^15) >> 16."""
    x = images.astype(jnp.int32)
    weighted = 19595 * x[..., 0] + 38470 * x[..., 1] + 7471 * x[..., 2]
    return jnp.right_shift(weighted + 32768, 16)[..., None]


def _mean_grey(grey: jax.Array) -> jax.Array:
    """int(mean + 0.5) of each example's grey [B, 1, 1, 1], in exact integers (int32: images
    up to 2048 x 2048)."""
    count = grey.shape[1] * grey.shape[2]
    total = jnp.sum(grey, axis=(1, 2, 3), keepdims=True)
    return (2 * total + count) // (2 * count)


def _smooth(images: jax.Array) -> jax.Array:
    """The 3x3 SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1, over 13, rounded), border kept: int32."""
    x = images.astype(jnp.int32)
    h, w = x.shape[1], x.shape[2]
    sums = 4 * x[:, 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            sums = sums + x[:, dy:h - 2 + dy, dx:w - 2 + dx]
    return x.at[:, 1:-1, 1:-1].set((2 * sums + 13) // 26)


def _check_sharpness(images: jax.Array) -> None:
    if images.shape[1] < 3 or images.shape[2] < 3:
        raise ValueError(f"sharpness needs images of at least 3x3 pixels, got "
                         f"{images.shape[1]}x{images.shape[2]}")


def color(images: jax.Array, factor: jax.Array) -> jax.Array:
    """ImageEnhance.Color per example: 0 grey, 1 unchanged, above 1 more saturated."""
    return _blend(_grey(images).astype(jnp.float32), images, jnp.asarray(factor))


def contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
    """ImageEnhance.Contrast per example: blends with the rounded mean grey level."""
    return _blend(_mean_grey(_grey(images)).astype(jnp.float32), images, jnp.asarray(factor))


def brightness(images: jax.Array, factor: jax.Array) -> jax.Array:
    """ImageEnhance.Brightness per example: blends with black."""
    return _blend(jnp.zeros((), jnp.float32), images, jnp.asarray(factor))


def sharpness(images: jax.Array, factor: jax.Array) -> jax.Array:
    """ImageEnhance.Sharpness per example: blends with the smoothed image."""
    _check_sharpness(images)
    return _blend(_smooth(images).astype(jnp.float32), images, jnp.asarray(factor))


# ----------------------------------------------------------------------------- the warp
# A matrix is float32 [B, 6], (a, b, c, d, e, f): output pixel centre (x, y) samples the source
# point (a x + b y + c, d x + e y + f), Pillow's Image.transform(AFFINE) convention.


def affine(images: jax.Array, matrix: jax.Array, fill: tuple[int, int, int]) -> jax.Array:
    """Image.transform(size, AFFINE, matrix[b], BILINEAR, fillcolor=fill) for every example.

    Source points outside [0, w) x [0, h) take `fill`; the others interpolate between the four
    nearest pixels (edge pixels repeated), x first, and truncate, as Pillow's Geometry.c.
    """
    b, h, w, _ = images.shape
    xs = jnp.arange(w, dtype=jnp.float32)[None, None, :] + 0.5
    ys = jnp.arange(h, dtype=jnp.float32)[None, :, None] + 0.5
    m = [_per_example(matrix[:, i], 3) for i in range(6)]
    source_x = (_times(m[0], xs) + _times(m[1], ys)) + m[2]
    source_y = (_times(m[3], xs) + _times(m[4], ys)) + m[5]
    inside = (source_x >= 0) & (source_x < w) & (source_y >= 0) & (source_y < h)
    x0, y0 = jnp.floor(source_x - 0.5), jnp.floor(source_y - 0.5)
    dx, dy = (source_x - 0.5) - x0, (source_y - 0.5) - y0
    flat = images.reshape(b, h * w, 3)

    def pixel(row: jax.Array, col: jax.Array) -> jax.Array:
        row = jnp.clip(row, 0, h - 1).astype(jnp.int32)
        col = jnp.clip(col, 0, w - 1).astype(jnp.int32)
        index = (row * w + col).reshape(b, h * w, 1)
        return jnp.take_along_axis(flat, index, axis=1).reshape(b, h, w, 3).astype(jnp.float32)

    dx, dy = dx[..., None], dy[..., None]
    top = pixel(y0, x0) + _times_whole(pixel(y0, x0 + 1) - pixel(y0, x0), dx)
    bottom = pixel(y0 + 1, x0) + _times_whole(pixel(y0 + 1, x0 + 1) - pixel(y0 + 1, x0), dx)
    value = jnp.clip(top + _times(bottom - top, dy), 0.0, 255.0).astype(jnp.uint8)
    return jnp.where(inside[..., None], value, jnp.array(fill, jnp.uint8))


def _stack(*columns: jax.Array | float) -> jax.Array:
    b = next(c.shape[0] for c in columns if isinstance(c, jax.Array))
    return jnp.stack([jnp.broadcast_to(jnp.asarray(c, jnp.float32), (b,)) for c in columns], 1)


def _snap(value: jax.Array) -> jax.Array:
    # Image.rotate rounds cos and sin to 15 decimals so that right angles map pixels exactly;
    # float32 needs a wider snap (cos(90 degrees) is -4e-8 in float32).
    return jnp.where(jnp.abs(value) < 1e-6, 0.0, value)


def rotation_matrix(degrees: jax.Array, height: int, width: int) -> jax.Array:
    """Image.rotate's matrix: counter-clockwise about (w/2, h/2) for positive degrees."""
    angle = jnp.asarray(degrees, jnp.float32) * (math.pi / 180.0)
    cos, sin = _snap(jnp.cos(angle)), _snap(jnp.sin(angle))
    cx, cy = width / 2.0, height / 2.0
    return _stack(cos, -sin, _times(cos, -cx) + _times(-sin, -cy) + cx,
                  sin, cos, _times(sin, -cx) + _times(cos, -cy) + cy)


def _matrices(height: int, width: int) -> dict[str, Callable[[jax.Array], jax.Array]]:
    return {
        "rotate": lambda v: rotation_matrix(v, height, width),
        "shear_x": lambda v: _stack(1.0, v, 0.0, 0.0, 1.0, 0.0),
        "shear_y": lambda v: _stack(1.0, 0.0, 0.0, v, 1.0, 0.0),
        "translate_x": lambda v: _stack(1.0, 0.0, -v, 0.0, 1.0, 0.0),
        "translate_y": lambda v: _stack(1.0, 0.0, 0.0, 0.0, 1.0, -v),
    }


def rotate(images: jax.Array, degrees: jax.Array, fill: tuple[int, int, int]) -> jax.Array:
    """Image.rotate(degrees[b], BILINEAR, fillcolor=fill) per example."""
    return affine(images, rotation_matrix(degrees, *images.shape[1:3]), fill)


def shear_x(images: jax.Array, amount: jax.Array, fill: tuple[int, int, int]) -> jax.Array:
    """Pillow affine (1, amount[b], 0, 0, 1, 0): row y samples from x + amount * y."""
    return affine(images, _matrices(*images.shape[1:3])["shear_x"](jnp.asarray(amount)), fill)


def shear_y(images: jax.Array, amount: jax.Array, fill: tuple[int, int, int]) -> jax.Array:
    """Pillow affine (1, 0, 0, amount[b], 1, 0): column x samples from y + amount * x."""
    return affine(images, _matrices(*images.shape[1:3])["shear_y"](jnp.asarray(amount)), fill)


def translate_x(images: jax.Array, pixels: jax.Array, fill: tuple[int, int, int]) -> jax.Array:
    """Moves example b's content right by pixels[b] (left when negative; may be fractional)."""
    return affine(images, _matrices(*images.shape[1:3])["translate_x"](jnp.asarray(pixels)),
                  fill)


def translate_y(images: jax.Array, pixels: jax.Array, fill: tuple[int, int, int]) -> jax.Array:
    """Moves example b's content down by pixels[b] (up when negative; may be fractional)."""
    return affine(images, _matrices(*images.shape[1:3])["translate_y"](jnp.asarray(pixels)),
                  fill)


# ----------------------------------------------------------------------------- draws


def draws(key: jax.Array, policy: Policy, batch: int) -> dict[str, jax.Array]:
    """Every random choice of a batch, per example and layer, [batch, k] (k = n, 2 or 1).

    "op" int32 indices into augment_space.op_names(policy) (-1: not applied), "magnitude"
    float32 (rand: the level; autoaug / trivial: the bin), "negate" bool; autoaug adds
    "sub_policy" [batch]. Distributions as `flaxcls.data.autoaugment._draws`.
    """
    op_key, apply_key, sign_key, magnitude_key = jax.random.split(key, 4)
    names = augment_space.op_names(policy)
    if policy.kind == "rand":
        shape = (batch, policy.num_ops)
        op = jax.random.randint(op_key, shape, 0, len(names), jnp.int32)
        magnitude = jnp.full(shape, policy.magnitude, jnp.float32)
        if policy.magnitude_std == math.inf:
            magnitude = jax.random.uniform(magnitude_key, shape) * policy.magnitude
        elif policy.magnitude_std > 0:
            noise = jax.random.normal(magnitude_key, shape)
            magnitude = magnitude + _times(policy.magnitude_std, noise)
        magnitude = jnp.clip(magnitude, 0.0, policy.magnitude_max)
        applied = jax.random.uniform(apply_key, shape) < policy.prob  # timm: skip if u > p
        return {"op": jnp.where(applied, op, -1), "magnitude": magnitude,
                "negate": jax.random.bernoulli(sign_key, 0.5, shape)}
    if policy.kind == "trivial":
        shape = (batch, 1)
        bins = jax.random.randint(magnitude_key, shape, 0, augment_space.TRIVIAL_BINS)
        return {"op": jax.random.randint(op_key, shape, 0, len(names), jnp.int32),
                "magnitude": bins.astype(jnp.float32),
                "negate": jax.random.bernoulli(sign_key, 0.5, shape)}
    ops, probs, bins = augment_space.autoaugment_table()
    sub = jax.random.randint(op_key, (batch,), 0, len(ops), jnp.int32)
    # torchvision applies a slot when u <= its probability
    applied = jax.random.uniform(apply_key, (batch, 2)) <= jnp.asarray(probs, jnp.float32)[sub]
    return {"op": jnp.where(applied, jnp.asarray(ops)[sub], -1),
            "magnitude": jnp.asarray(bins, jnp.float32)[sub],
            "negate": jax.random.bernoulli(sign_key, 0.5, (batch, 2)), "sub_policy": sub}


def op_choices(key: jax.Array, policy: Policy, batch: int) -> jax.Array:
    """The op indices (into augment_space.op_names(policy)) `apply_batch` uses for this key,
    int32 [batch, k]; -1: skipped. rand: one per layer; autoaug: the chosen sub-policy's two
    slots; trivial: one."""
    return draws(key, policy, batch)["op"]


# ----------------------------------------------------------------------------- apply


def _arguments(policy: Policy, magnitude: jax.Array, negate: jax.Array, height: int,
               width: int) -> list[tuple[str, jax.Array | None]]:
    """(image op, per-example float32 argument or None) for each of op_names(policy)."""
    names = augment_space.op_names(policy)
    out: list[tuple[str, jax.Array | None]] = []
    if policy.kind == "rand":
        for name in names:
            image_op, level_fn = augment_space.TIMM_OPS[name]
            argument = None if level_fn is None else level_fn(magnitude, negate, _XP)
            if image_op == "translate_x_rel":
                image_op, argument = "translate_x", _times(argument, width)
            elif image_op == "translate_y_rel":
                image_op, argument = "translate_y", _times(argument, height)
            out.append((image_op, argument))
        return out
    table = augment_space.torchvision_arguments(*augment_space.policy_bins(policy))
    index = magnitude.astype(jnp.int32)
    for name in names:
        image_op, positive, negative = table[name]
        argument = None
        if positive is not None:
            argument = jnp.where(negate, jnp.asarray(negative, jnp.float32)[index],
                                 jnp.asarray(positive, jnp.float32)[index])
        out.append((image_op, argument))
    return out


def _lut_of(image_op: str, argument: jax.Array | None, images: jax.Array) -> jax.Array:
    if image_op == "invert":
        return _invert_lut()
    if image_op == "posterize":
        return _posterize_lut(argument)
    if image_op == "solarize":
        return _solarize_lut(argument)
    if image_op == "solarize_add":
        return _solarize_add_lut(argument)
    if image_op == "auto_contrast":
        return _auto_contrast_lut(*_channel_range(images))
    return _equalize_lut(_histogram(images))


def _layer_lut(images: jax.Array, op: jax.Array,
               arguments: list[tuple[str, jax.Array | None]]) -> jax.Array:
    lut = _levels()
    for j, (image_op, argument) in enumerate(arguments):
        if _FAMILY[image_op] == _LUT:
            lut = jnp.where(_per_example(op == j, 3), _lut_of(image_op, argument, images), lut)
    return lut


def _layer_blend(images: jax.Array, op: jax.Array,
                 arguments: list[tuple[str, jax.Array | None]]) -> jax.Array:
    factor = jnp.ones(op.shape, jnp.float32)
    kind = {}  # image op -> [B] bool: example b blends with this op's degenerate
    for j, (image_op, argument) in enumerate(arguments):
        if _FAMILY[image_op] == _BLEND:
            factor = jnp.where(op == j, argument, factor)
            kind[image_op] = (op == j) | kind.get(image_op, False)
    degenerate = jnp.zeros((), jnp.float32)  # brightness: black
    if "color" in kind or "contrast" in kind:
        grey = _grey(images)
        if "color" in kind:
            degenerate = jnp.where(_per_example(kind["color"], 4), grey.astype(jnp.float32),
                                   degenerate)
        if "contrast" in kind:
            degenerate = jnp.where(_per_example(kind["contrast"], 4),
                                   _mean_grey(grey).astype(jnp.float32), degenerate)
    if "sharpness" in kind:
        _check_sharpness(images)
        degenerate = jnp.where(_per_example(kind["sharpness"], 4),
                               _smooth(images).astype(jnp.float32), degenerate)
    return _blend(degenerate, images, factor)


def _layer_matrix(op: jax.Array, arguments: list[tuple[str, jax.Array | None]], height: int,
                  width: int) -> jax.Array:
    matrices = _matrices(height, width)
    matrix = jnp.array([[1.0, 0.0, 0.0, 0.0, 1.0, 0.0]], jnp.float32)
    for j, (image_op, argument) in enumerate(arguments):
        if _FAMILY[image_op] == _WARP:
            matrix = jnp.where((op == j)[:, None], matrices[image_op](argument), matrix)
    return jnp.broadcast_to(matrix, (op.shape[0], 6))


def _layer(images: jax.Array, op: jax.Array, magnitude: jax.Array, negate: jax.Array,
           policy: Policy, fill: tuple[int, int, int]) -> jax.Array:
    """One layer: example b gets op_names(policy)[op[b]] (op[b] < 0: unchanged)."""
    height, width = images.shape[1:3]
    arguments = _arguments(policy, magnitude, negate, height, width)
    families = np.array([_FAMILY[image_op] for image_op, _ in arguments], np.int32)
    family = jnp.where(op >= 0, jnp.asarray(families)[jnp.maximum(op, 0)], _NONE)
    out = images
    if _LUT in families:
        lut_out = apply_lut(images, _layer_lut(images, op, arguments))
        out = jnp.where(_per_example(family == _LUT, 4), lut_out, out)
    if _BLEND in families:
        blend_out = _layer_blend(images, op, arguments)
        out = jnp.where(_per_example(family == _BLEND, 4), blend_out, out)
    if _WARP in families:
        warp_out = affine(images, _layer_matrix(op, arguments, height, width), fill)
        out = jnp.where(_per_example(family == _WARP, 4), warp_out, out)
    return out


def apply_batch(images: jax.Array, key: jax.Array, policy: Policy,
                fill: tuple[int, int, int]) -> jax.Array:
    """Augments a uint8 [B, H, W, 3] batch with `policy`, every example with its own draws.

    `key` fixes the output (the same key, the same batch); `fill` is the RGB colour of the
    pixels that rotations, shears and translations uncover. Jittable with `policy` and `fill`
    static (both hashable).
    """
    images = jnp.asarray(images)
    _check(images, fill)
    if any(op.startswith("Sharpness") for op in augment_space.op_names(policy)):
        _check_sharpness(images)
    fill = tuple(int(v) for v in fill)
    chosen = draws(key, policy, images.shape[0])
    out = images
    for i in range(chosen["op"].shape[1]):
        out = _layer(out, chosen["op"][:, i], chosen["magnitude"][:, i],
                     chosen["negate"][:, i], policy, fill)
    return out
