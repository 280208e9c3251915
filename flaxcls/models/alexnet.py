"""AlexNet as in the 2019 PaddleCV zoo (``alexnet.py``): torchvision's single-tower widths
(64, 192, 384, 256, 256), every conv biased and followed by ReLU, no LRN, no BN.

Geometry at 224: conv1 11x11/4 pad 2 -> 55, max pool 3/2 (floor, no padding) -> 27, conv2 5x5 pad 2,
pool -> 13, conv3-5 3x3 pad 1, pool -> 6, so fc6 sees 256 x 6 x 6 = 9216 values. Dropout (Fluid's
downgrade-in-infer: x0.5 at inference) sits on the flattened pool5 map before fc6 and on fc6's
output before fc7, none before fc8. Paddle flattens pool5 in C,H,W order; we flatten NHWC, and the
converter reorders fc6's rows (``flatten_chw``).

Init as the original: every weight and bias Uniform(+-1/sqrt(fan_in)) of its own layer.

Parameter names (used by ``flaxcls.convert``): ``conv1``..``conv5``, ``fc6``, ``fc7``, ``fc8``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import Classifier, DowngradeDropout, max_pool
from flaxcls.registry import register_model

# (name, features, kernel, stride, padding, max pool after)
_CONVS = (
    ("conv1", 64, 11, 4, 2, True),
    ("conv2", 192, 5, 1, 2, True),
    ("conv3", 384, 3, 1, 1, False),
    ("conv4", 256, 3, 1, 1, False),
    ("conv5", 256, 3, 1, 1, True),
)


def uniform_init(limit: float) -> Callable:
    """Uniform(-limit, limit), Fluid's ``Uniform(low, high)`` initialiser for a symmetric range."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def _fan_in_uniform(fan_in: int) -> dict[str, Callable]:
    limit = fan_in**-0.5
    return {"kernel_init": uniform_init(limit), "bias_init": uniform_init(limit)}


class AlexNet(Classifier):
    """AlexNet on NHWC input; float32 logits ``[N, num_classes]``.

    With ``return_features=True`` also a dict: ``pool5`` (the last conv map, after its pool),
    ``fc6`` (fc6 after ReLU) and ``pooled`` (fc7 after ReLU: the ``[N, 4096]`` vector fc8 sees,
    before its dropout).
    """

    fc_width: int = 4096
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        features = {}
        for name, width, k, stride, pad, pool in _CONVS:
            x = nn.Conv(
                width,
                (k, k),
                strides=stride,
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                name=name,
                **_fan_in_uniform(x.shape[-1] * k * k),
            )(x)
            x = nn.relu(x)
            if pool:
                x = max_pool(x, 3, 2)
        features["pool5"] = x
        x = x.reshape(x.shape[0], -1)  # H, W, C order; the converter reorders Paddle's C, H, W

        dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
        x = DowngradeDropout(self.dropout_rate, name="drop6")(x, train=train)
        x = nn.relu(dense(self.fc_width, name="fc6", **_fan_in_uniform(x.shape[-1]))(x))
        features["fc6"] = x
        x = DowngradeDropout(self.dropout_rate, name="drop7")(x, train=train)
        x = nn.relu(dense(self.fc_width, name="fc7", **_fan_in_uniform(x.shape[-1]))(x))
        features["pooled"] = x
        logits = dense(self.num_classes, name="fc8", **_fan_in_uniform(x.shape[-1]))(x)
        logits = logits.astype(jnp.float32)
        return (logits, features) if return_features else logits


# Accuracy: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
register_model(
    "AlexNet",
    AlexNet,
    family="alexnet",
    first_conv="conv1",
    classifier="fc8",
    top1=0.5672,
    top5=0.7917,
)
