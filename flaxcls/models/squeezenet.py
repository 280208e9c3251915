"""SqueezeNet 1.0 and 1.1 as in the 2019 PaddleCV zoo (``squeezenet.py``). Every conv is biased
and followed by ReLU; no BN.

* 1.0: conv1 7x7/2 **pad 0** (96) -> pool -> fire2-4 -> pool -> fire5-8 -> pool -> fire9.
* 1.1: conv1 3x3/2 pad 1 (64) -> pool -> fire2-3 -> pool -> fire4-5 -> pool -> fire6-9.
* Every pool is a 3x3/2 max pool, no padding, **floor** mode (Fluid's default ``ceil_mode=False``;
  torchvision's SqueezeNet uses ceil mode, the Paddle one does not): at 224, 1.0 runs
  109 -> 54 -> 26 -> 12 and 1.1 runs 112 -> 55 -> 27 -> 13.
* Fire: squeeze 1x1 (s) -> ReLU -> concat[expand 1x1 (e) + ReLU, expand 3x3 pad 1 (e) + ReLU].
* Head: dropout (downgrade-in-infer, x0.5 at inference) -> conv10 1x1 (num_classes, biased)
  -> **ReLU** -> global average -> flatten. So the scores are >= 0, exactly as Paddle's.

Init as the original: convs Fluid's default MSRA normal (std sqrt(2 / fan_in)), biases zero.

Parameter names (used by ``flaxcls.convert``): ``conv1``,
``fire{n}/{squeeze1x1,expand1x1,expand3x3}``, ``conv10``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import linen as nn

from flaxcls.models.layers import (
    Classifier,
    DowngradeDropout,
    ModuleDef,
    conv_kernel_init,
    global_avg_pool,
    max_pool,
)
from flaxcls.registry import register_model

# Fire modules: (squeeze, expand) channels, fire2..fire9.
_FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
# version -> (conv1 features, kernel, padding, fire numbers each max pool comes before)
VERSIONS = {
    "1.0": (96, 7, 0, (2, 5, 9)),
    "1.1": (64, 3, 1, (2, 4, 6)),
}


class Fire(nn.Module):
    squeeze: int
    expand: int
    conv: ModuleDef

    @nn.compact
    def __call__(self, x):
        x = nn.relu(self.conv(self.squeeze, (1, 1), name="squeeze1x1")(x))
        e1 = nn.relu(self.conv(self.expand, (1, 1), name="expand1x1")(x))
        e3 = nn.relu(self.conv(self.expand, (3, 3), padding=((1, 1), (1, 1)), name="expand3x3")(x))
        return jnp.concatenate([e1, e3], axis=-1)  # Paddle's channel order: 1x1 first


class SqueezeNet(Classifier):
    """SqueezeNet on NHWC input; float32 non-negative scores ``[N, num_classes]``.

    With ``return_features=True`` also a dict: ``fire9`` (the map conv10 sees) and ``pooled``
    (its ``[N, 512]`` global average, float32; the head is a 1x1 conv on the map, not on this).
    """

    version: str = "1.0"
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        if self.version not in VERSIONS:
            raise ValueError(f"SqueezeNet version={self.version!r} is not one of {list(VERSIONS)}")
        stem_width, k, pad, pool_before = VERSIONS[self.version]
        conv = functools.partial(
            nn.Conv,
            padding=((0, 0), (0, 0)),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_kernel_init,
            bias_init=nn.initializers.zeros,
        )
        x = conv(stem_width, (k, k), strides=2, padding=((pad, pad), (pad, pad)), name="conv1")(x)
        x = nn.relu(x)
        for n, (squeeze, expand) in enumerate(_FIRES, start=2):
            if n in pool_before:
                x = max_pool(x, 3, 2)
            x = Fire(squeeze, expand, conv=conv, name=f"fire{n}")(x)
        features = {"fire9": x, "pooled": global_avg_pool(x)}
        x = DowngradeDropout(self.dropout_rate, name="drop9")(x, train=train)
        x = nn.relu(conv(self.num_classes, (1, 1), name="conv10")(x))
        logits = global_avg_pool(x)
        return (logits, features) if return_features else logits


def _register(name: str, version: str, top: tuple[float, float]) -> None:
    register_model(
        name,
        functools.partial(SqueezeNet, version=version),
        family="squeezenet",
        first_conv="conv1",
        classifier="conv10",
        top1=top[0],
        top5=top[1],
    )


# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
_register("SqueezeNet1_0", "1.0", (0.5960, 0.8166))
_register("SqueezeNet1_1", "1.1", (0.6008, 0.8185))
