"""VGG11/13/16/19 as in the late-2019 PaddleCV zoo (``vgg.py``): five blocks of 3x3 pad-1 convs
(64, 128, 256, 512, 512 channels) with ReLU and **no bias** (the Aug-2019 "fix vgg bias bug"
commit set ``bias_attr=False``; the released weights hold no conv offsets), each block closed by a
2x2/2 max pool; then fc6 (4096, ReLU), dropout, fc7 (4096, ReLU), dropout, fc8. No BN.

Dropout is Fluid's downgrade-in-infer (x0.5 at inference), after the ReLUs of fc6 and fc7.
Paddle flattens the 512 x 7 x 7 block-5 map in C,H,W order; we flatten NHWC, and the converter
reorders fc6's rows (``flatten_chw``).

Init as the original: convs Fluid's default MSRA normal (std sqrt(2 / fan_in)), fc layers Fluid's
default Xavier uniform (limit sqrt(6 / (fan_in + fan_out))), fc biases zero.

Parameter names (used by ``flaxcls.convert``): ``conv{b}_{i}`` (block b = 1..5, conv i = 1..),
``fc6``, ``fc7``, ``fc8``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    Classifier,
    DowngradeDropout,
    check_same_length,
    conv_kernel_init,
    max_pool,
)
from flaxcls.registry import register_model


class VGG(Classifier, kw_only=True):
    """VGG on NHWC input; float32 logits ``[N, num_classes]``.

    ``stage_sizes`` is the number of convs per block. With ``return_features=True`` also a dict:
    ``block1``..``block5`` (each block's output, after its pool), ``fc6`` (after ReLU) and
    ``pooled`` (fc7 after ReLU: the ``[N, 4096]`` vector fc8 sees, before its dropout).
    """

    stage_sizes: Sequence[int]
    widths: Sequence[int] = (64, 128, 256, 512, 512)
    fc_width: int = 4096
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        check_same_length("VGG", stage_sizes=self.stage_sizes, widths=self.widths)
        conv = functools.partial(
            nn.Conv,
            kernel_size=(3, 3),
            padding=((1, 1), (1, 1)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_kernel_init,
        )
        features = {}
        for b, (depth, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
            for i in range(1, depth + 1):
                x = nn.relu(conv(width, name=f"conv{b}_{i}")(x))
            x = max_pool(x, 2, 2)
            features[f"block{b}"] = x
        x = x.reshape(x.shape[0], -1)  # H, W, C order; the converter reorders Paddle's C, H, W

        dense = functools.partial(
            nn.Dense,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.xavier_uniform(),
        )
        x = nn.relu(dense(self.fc_width, name="fc6")(x))
        features["fc6"] = x
        x = DowngradeDropout(self.dropout_rate, name="drop6")(x, train=train)
        x = nn.relu(dense(self.fc_width, name="fc7")(x))
        features["pooled"] = x
        x = DowngradeDropout(self.dropout_rate, name="drop7")(x, train=train)
        logits = dense(self.num_classes, name="fc8")(x).astype(jnp.float32)
        return (logits, features) if return_features else logits


def _register(name: str, stage_sizes: Sequence[int], top: tuple[float, float]) -> None:
    register_model(
        name,
        functools.partial(VGG, stage_sizes=tuple(stage_sizes)),
        family="vgg",
        first_conv="conv1_1",
        classifier="fc8",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
_register("VGG11", (1, 1, 2, 2, 2), (0.6928, 0.8909))
_register("VGG13", (2, 2, 2, 2, 2), (0.7002, 0.8942))
_register("VGG16", (2, 2, 3, 3, 3), (0.7200, 0.9069))
_register("VGG19", (2, 2, 4, 4, 4), (0.7256, 0.9093))
