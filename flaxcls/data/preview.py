r"""A grid of augmented training images, to check an augmentation by looking at it.

    python -m flaxcls.data.preview --config=configs/digits.py --workdir=runs/digits \
        --config.cutmix_alpha=1.0 --config.random_erasing=0.5 --out grid.png

Takes the same config file and ``--config.<field>=<value>`` overrides as training and writes
the first ``--count`` images of the training stream (step ``--step``), as the train step sees
them: the input pipeline's crop, flip and colour ops, then the on-device ones (random erasing,
mixup, CutMix) drawn with the step's own functions, shown back in pixels. The workdir is only
where a built-in data set is written; nothing else is.
"""

from __future__ import annotations

import os
import sys

import numpy as np

GAP = 2  # pixels between images


def grid(images: np.ndarray, cols: int) -> np.ndarray:
    """uint8 [n, h, w, 3] -> one uint8 image of ``cols`` columns, ``GAP`` white pixels apart."""
    n, h, w, _ = images.shape
    rows = -(-n // cols)
    out = np.full((rows * (h + GAP) - GAP, cols * (w + GAP) - GAP, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + GAP):r * (h + GAP) + h, c * (w + GAP):c * (w + GAP) + w] = image
    return out


def device_augmented(images: np.ndarray, labels: np.ndarray, step_spec, seed: int) -> np.ndarray:
    """The on-device augmentation of the train step (random erasing, mixup, CutMix) applied to
    a uint8 batch, back in uint8 pixels."""
    import jax
    import jax.numpy as jnp

    from flaxcls.train import augment, losses

    mean = jnp.asarray(step_spec.mean, jnp.float32) * 255.0
    std = jnp.asarray(step_spec.std, jnp.float32) * 255.0
    x = (jnp.asarray(images, jnp.float32) - mean) / std
    targets = losses.onehot(jnp.asarray(labels), step_spec.num_classes, 0.0)
    key = jax.random.key(seed)
    if step_spec.erasing > 0:
        x = augment.random_erasing(
            jax.random.fold_in(key, 1), x, prob=step_spec.erasing, mode=step_spec.erasing_mode,
            max_count=step_spec.erasing_count, area=step_spec.erasing_area,
            aspect=step_spec.erasing_aspect)
    if step_spec.mixup_alpha > 0 or step_spec.cutmix_alpha > 0:
        x, _ = augment.mix_batch(
            key, x, targets, mixup_alpha=step_spec.mixup_alpha,
            cutmix_alpha=step_spec.cutmix_alpha, prob=step_spec.mixup_prob,
            switch_prob=step_spec.mixup_cutmix_switch_prob)
    return np.asarray(jnp.clip(jnp.round(x * std + mean), 0, 255).astype(jnp.uint8))


def main(argv: list[str] | None = None) -> int:
    from absl import flags
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else ["preview", *argv])
    fv = flags.FlagValues()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    config_flags.DEFINE_config_file("config", os.path.join(repo, "configs", "digits.py"),
                                    "Config file, as for launch.py.", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "Where a built-in data set is written.", flag_values=fv)
    flags.DEFINE_string("out", "augmented.png", "The PNG to write.", flag_values=fv)
    flags.DEFINE_integer("count", 32, "How many images.", flag_values=fv)
    flags.DEFINE_integer("cols", 8, "Images per row.", flag_values=fv)
    flags.DEFINE_integer("step", 0, "Which train step's batch to show.", flag_values=fv)
    try:
        fv(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not fv.workdir:
        print("error: --workdir is required (a built-in data set is written there)",
              file=sys.stderr)
        return 2
    if fv.count < 1 or fv.cols < 1 or fv.step < 0:
        print("error: --count and --cols must be >= 1, --step >= 0", file=sys.stderr)
        return 2
    from PIL import Image

    from flaxcls import data, job
    from flaxcls.config import ConfigError

    config = fv.config
    config.batch_size = fv.count  # one batch of the images to show; every process alone
    try:
        run = job.start(config, os.path.abspath(fv.workdir))
    except (ConfigError, data.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    it = data.train_iterator(run.source, run.specs.input, global_batch_size=fv.count,
                             start_step=fv.step)
    batch = next(it)
    images = device_augmented(batch["image"], batch["label"], run.specs.step,
                              seed=run.specs.input.seed + fv.step)
    Image.fromarray(grid(images, fv.cols)).save(fv.out)
    print(f"wrote {fv.out}: {len(images)} training images of step {fv.step}, "
          f"{images.shape[1]}x{images.shape[2]} each")
    return 0


if __name__ == "__main__":
    sys.exit(main())
