"""SpeedNet: a small, wide-late, residual-free network for fast CIFAR-10 training (not in the
2019 zoo; family "cifar").

What makes a CIFAR-10 net train to 94% in seconds (the lessons of the public speed runs, above
all Keller Jordan's airbench README and code, which we read and then wrote our own):

- few layers, each doing a lot: a stem and three groups of two 3x3 convs; no residuals, so the
  whole network is a handful of large, well-shaped convolutions;
- width where the maps are small: (64, 256, 256) at 32, 16 and 8 px, so most of the
  arithmetic is in dense, efficient convolutions and little in memory traffic;
- down-sample by max-pooling right after a group's first conv (conv -> pool -> BN -> act), which
  does the first conv at full resolution and everything after it at a quarter of the cost;
- BatchNorm with a fast-moving running average (this net trains for a few hundred steps, so
  the running statistics must follow the weights closely: ``bn_momentum`` 0.6 here against
  0.9 in the zoo), GELU activations;
- a global max pool and a bias-free linear classifier whose logits are scaled down
  (``logit_scale``): the network's features are large, and smaller logits keep the early
  steps' softmax soft, so a high learning rate does not saturate it.

Geometry at 32 px: stem 3x3 conv (32 px) -> group 1 (32 -> 16) -> group 2 (16 -> 8) ->
group 3 (8 -> 4) -> global max pool -> linear. Parameter names: ``stem_conv``/``stem_bn``,
``group{1,2,3}_conv{1,2}``/``_bn{1,2}``, ``head``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import BNClassifier, max_pool, norm_act
from flaxcls.models.resnet import CIFAR10_MEAN, CIFAR10_STD
from flaxcls.registry import register_model


class SpeedNet(BNClassifier):
    """SpeedNet on NHWC input; float32 logits ``[N, num_classes]``. With
    ``return_features=True`` also ``{"stem", "group1", "group2", "group3", "pooled"}``."""

    stem_width: int = 32
    widths: Sequence[int] = (64, 256, 256)
    logit_scale: float = 1 / 9
    bn_momentum: float = 0.6
    act: object = nn.gelu
    classifier_dropout: float = 0.0  # before the classifier (config.dropout_rate)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv, norm = self.conv_and_norm(train)
        features = {}
        x = conv(self.stem_width, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv")(x)
        x = norm_act(norm(name="stem_bn"), x, self.act)
        features["stem"] = x
        for g, width in enumerate(self.widths, start=1):
            x = conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"group{g}_conv1")(x)
            x = max_pool(x, 2, 2)
            x = norm_act(norm(name=f"group{g}_bn1"), x, self.act)
            x = conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"group{g}_conv2")(x)
            x = norm_act(norm(name=f"group{g}_bn2"), x, self.act)
            features[f"group{g}"] = x
        x = jnp.max(x, axis=(1, 2))
        features["pooled"] = x
        if self.classifier_dropout:
            x = nn.Dropout(self.classifier_dropout, deterministic=not train,
                           name="classifier_dropout")(x)
        logits = nn.Dense(self.num_classes, use_bias=False, dtype=self.dtype,
                          param_dtype=jnp.float32, name="head")(x)
        logits = logits.astype(jnp.float32) * self.logit_scale
        return (logits, features) if return_features else logits


_CIFAR_CFG = {"family": "cifar", "input_size": 32, "crop_size": 32, "resize_short_size": 32,
              "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "num_classes": 10,
              "first_conv": "stem_conv", "classifier": "head"}
register_model("SpeedNet_cifar", SpeedNet, **_CIFAR_CFG)
# Half the widths: a quarter of the arithmetic, for CPUs and quick checks.
register_model("SpeedNet_cifar_x0_5",
               functools.partial(SpeedNet, stem_width=16, widths=(32, 128, 128)), **_CIFAR_CFG)
