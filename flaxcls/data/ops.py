"""Image ops of the input pipeline: decode, crop, resize, flip, rotate, colour jitter.

Each op is a small function of tensors, equally usable eagerly or inside tf.data; random ops take
a stateless seed (int32/int64 [2]) so a stream is reproducible from its seeds alone.
Importing this module imports tensorflow and hides every GPU from it.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable

from flaxcls.config import INTERPOLATIONS, interpolation_name

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # keep TF's C++ info chatter out of logs

# What TensorFlow's C++ side prints to stderr while it is imported, whatever the log level:
# notices, not problems. Any other line it prints then is passed on.
_IMPORT_NOTICES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cuDNN factory", "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory", "TF-TRT Warning: Could not find TensorRT",
    "computation placer already registered",
)


def _import_tensorflow():
    """``import tensorflow`` with its start-up notices (above) held back from stderr."""
    if "tensorflow" in sys.modules:
        import tensorflow

        return tensorflow
    try:
        stderr_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured, say)
        import tensorflow

        return tensorflow
    sys.stderr.flush()
    saved = os.dup(stderr_fd)
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), stderr_fd)
        try:
            import tensorflow
        finally:  # also when the import fails: what it printed may say why
            os.dup2(saved, stderr_fd)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            passed = [line for line in lines if not any(n in line for n in _IMPORT_NOTICES)]
            if passed:
                sys.stderr.write("".join(passed))
                sys.stderr.flush()
    return tensorflow


tf = _import_tensorflow()


def _hide_gpus() -> None:
    # TF must never allocate accelerator memory: JAX owns the devices.
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF already initialised its devices; nothing left to change
        pass


_hide_gpus()

# config interpolation names -> tf.image.resize methods (cv2 codes resolve through the config).
_RESIZE_METHODS = {name: name for name in INTERPOLATIONS}
_WHOLE_IMAGE = ((0.0, 0.0, 1.0, 1.0),)


def resize_method(interpolation: str | int) -> str:
    name = interpolation_name(interpolation)
    if name not in _RESIZE_METHODS:
        raise ValueError(f"config.interpolation={interpolation!r}: must be one of "
                         f"{INTERPOLATIONS} or a cv2 code")
    return _RESIZE_METHODS[name]


def decode_rgb(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP -> uint8 [h, w, 3]; grey, CMYK, alpha all become RGB."""
    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def sample_crop_window(image_shape: tf.Tensor, seed: tf.Tensor,
                       area_range: tuple[float, float],
                       aspect_ratio_range: tuple[float, float],
                       max_attempts: int = 10) -> tf.Tensor:
    """A random crop [y, x, h, w] with area fraction and aspect ratio (w/h) in the ranges.

    After `max_attempts` failed samples the window is the whole image.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape, tf.constant([_WHOLE_IMAGE], tf.float32), seed=seed,
        min_object_covered=0.0, aspect_ratio_range=aspect_ratio_range, area_range=area_range,
        max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_random_crop(data: tf.Tensor, seed: tf.Tensor, area_range: tuple[float, float],
                       aspect_ratio_range: tuple[float, float]) -> tf.Tensor:
    """Decodes a random crop window (uint8 [h, w, 3]).

    A JPEG decodes only the window's blocks; other formats decode whole, then crop.
    """

    def jpeg() -> tf.Tensor:
        window = sample_crop_window(tf.image.extract_jpeg_shape(data), seed, area_range,
                                    aspect_ratio_range)
        return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other() -> tf.Tensor:
        image = decode_rgb(data)
        y, x, h, w = tf.unstack(sample_crop_window(tf.shape(image), seed, area_range,
                                                   aspect_ratio_range))
        return image[y:y + h, x:x + w]

    return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def resize(image: tf.Tensor, size: tuple[int, int] | tf.Tensor, method: str) -> tf.Tensor:
    """Resize to [h, w] -> float32. No antialiasing, like cv2.resize in the original reader.

    The input is cast to float32 first: the same result bit for bit, but TF's resize kernels
    read float input about 1.3x faster than uint8.
    """
    return tf.image.resize(tf.cast(image, tf.float32), size, method=method, antialias=False)


def resize_short(image: tf.Tensor, short_size: int, method: str) -> tf.Tensor:
    """Scales so the short side is `short_size`; each side becomes round(side * scale)."""
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    scale = short_size / tf.reduce_min(hw)
    return resize(image, tf.cast(tf.round(hw * scale), tf.int32), method)


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The central size x size window; offsets (side - size) // 2 like the original."""
    shape = tf.shape(image)
    y, x = (shape[0] - size) // 2, (shape[1] - size) // 2
    return image[y:y + size, x:x + size]


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def random_rotate(image: tf.Tensor, seed: tf.Tensor, max_degrees: float) -> tf.Tensor:
    """Rotates about the centre by a uniform angle in [-max_degrees, max_degrees]; black corners.

    Float in, float out (bilinear), same size, like cv2.warpAffine in the original.
    """
    angle = tf.random.stateless_uniform([], seed, -max_degrees, max_degrees) * (math.pi / 180.0)
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Maps each output pixel back to its input location (the inverse rotation).
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None], transforms=transform[None],
        output_shape=shape[:2], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    return rotated[0]


def _grey(image: tf.Tensor) -> tf.Tensor:
    return tf.image.rgb_to_grayscale(image)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue (torchvision ColorJitter factors).

    Float [0, 255] in and out. Brightness, contrast and saturation multiply by a factor in
    [1 - a, 1 + a]; hue shifts by a fraction of the colour wheel in [-hue, hue]. An amount of 0
    skips that adjustment.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4)
    x = tf.cast(image, tf.float32) / 255.0

    def factor(i: int, amount: float) -> tf.Tensor:
        return tf.random.stateless_uniform([], seeds[i], max(0.0, 1.0 - amount), 1.0 + amount)

    if brightness:
        x = tf.clip_by_value(x * factor(0, brightness), 0.0, 1.0)
    if contrast:
        mean = tf.reduce_mean(_grey(x))
        x = tf.clip_by_value(mean + (x - mean) * factor(1, contrast), 0.0, 1.0)
    if saturation:
        grey = _grey(x)
        x = tf.clip_by_value(grey + (x - grey) * factor(2, saturation), 0.0, 1.0)
    if hue:
        delta = tf.random.stateless_uniform([], seeds[3], -hue, hue)
        x = tf.clip_by_value(tf.image.adjust_hue(x, delta), 0.0, 1.0)
    return x * 255.0


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Float [0, 255] -> uint8, rounding and clipping."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


# ----------------------------------------------------------------------------- whole transforms


def train_transform(data: tf.Tensor, seed: tf.Tensor, *, crop_size: int,
                    area_range: tuple[float, float], aspect_ratio_range: tuple[float, float],
                    method: str, flip: bool, rotate_degrees: float = 0.0,
                    jitter: tuple[float, float, float, float] | None = None,
                    policy: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
                    ) -> tf.Tensor:
    """Encoded image -> uint8 [crop, crop, 3]: random-resized crop, flip, rotation, jitter,
    then ``policy(uint8 image, seed)`` (``config.auto_augment``), as timm orders them.

    Rotation and jitter run on the crop_size image (cheap), after the crop. Without rotation
    the flip moves after the uint8 conversion (it commutes with it and with the jitter; a
    quarter of the bytes to move). The policy's seed is a fifth split of ``seed`` (the
    first four are the same with or without it), so switching it on leaves every other op's
    draw as it was.
    """
    seeds = tf.random.experimental.stateless_split(seed, 4 if policy is None else 5)
    image = decode_random_crop(data, seeds[0], area_range, aspect_ratio_range)
    image = resize(image, (crop_size, crop_size), method)
    if flip and rotate_degrees:
        image = random_flip(image, seeds[1])
    if rotate_degrees:
        image = random_rotate(image, seeds[2], rotate_degrees)
    if jitter is not None and any(jitter):
        image = color_jitter(image, seeds[3], *jitter)
    image = to_uint8(image)
    if flip and not rotate_degrees:
        image = random_flip(image, seeds[1])
    if policy is not None:
        image = policy(image, seeds[4])
    return tf.ensure_shape(image, (crop_size, crop_size, 3))


def eval_transform(data: tf.Tensor, *, crop_size: int, resize_short_size: int,
                   method: str) -> tf.Tensor:
    """Encoded image -> uint8 [crop, crop, 3]: resize the short side, then centre crop."""
    image = resize_short(decode_rgb(data), resize_short_size, method)
    return tf.ensure_shape(to_uint8(center_crop(image, crop_size)), (crop_size, crop_size, 3))
