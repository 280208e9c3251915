"""GoogLeNet (Inception v1) as in the 2019 PaddleCV zoo (``googlenet.py``). Unusual on purpose:
no BN, no conv bias, and every conv is **linear**; the only ReLUs are one after each inception
module's concat and the one in each auxiliary head's fc.

* Stem: conv1 7x7/2 pad 3 (64) -> max pool 3/2 (no padding, **floor**: 112 -> 55) -> conv2_1x1
  (64) -> conv2_3x3 pad 1 (192) -> max pool 3/2 (-> 27). Convs pad (k - 1) // 2.
* Inception: concat[1x1, 3x3_reduce -> 3x3, 5x5_reduce -> 5x5, max pool 3/1 pad 1 -> 3x3_proj
  (a 1x1 conv, despite the name)] -> ReLU. 3a, 3b, pool (-> 13), 4a-4e, pool (-> 6), 5a, 5b.
* Main head: avg pool 7/7 on the 6x6 map (Paddle sizes pools by C integer division, so a window
  larger than the map still gives one output: the mean of the valid cells), dropout 0.4 (x0.6 at
  inference), ``out`` fc. Paddle ends it in softmax; **we return the pre-softmax logits** (the
  losses apply softmax), i.e. Paddle's ``out.tmp_1``.
* Auxiliary heads on ince4a (``aux1``) and ince4d (``aux2``): avg pool 5/3 (13 -> 3), conv_o
  1x1 (128, linear), fc_o (1024, ReLU; Paddle flattens C,H,W: the converter reorders),
  dropout 0.7 (x0.3), ``out1``/``out2`` fc. They are parameters (the released weights hold them)
  and are built at init; ``__call__`` only runs them with ``return_features=True``, which adds
  their pre-softmax logits as ``features["aux1"]``/``features["aux2"]``. Paddle trained with
  ``CE(main) + 0.3 * CE(aux1) + 0.3 * CE(aux2)`` (``AUX_LOSS_WEIGHTS``)::

      (logits, feats), _ = model.apply(v, x, train=True, return_features=True,
                                       mutable=["batch_stats"], rngs={"dropout": key})
      loss = ce(logits) + sum(w * ce(feats[k]) for k, w in AUX_LOSS_WEIGHTS.items())

Init as the original: the convs of ``conv_layer`` and the fc layers Uniform(+-sqrt(3 / n)) with
n = k*k*cin for convs, 1024 for out/out1/out2 and 2048 (sic, the fan-in is 1152) for fc_o1/fc_o2;
the 3x3_proj convs Fluid's default MSRA normal; biases zero.

Parameter names (used by ``flaxcls.convert``): ``conv1``, ``conv2_1x1``, ``conv2_3x3``,
``ince{3a..5b}/{1x1,3x3_reduce,3x3,5x5_reduce,5x5,3x3_proj}``, ``out``, and per aux head i = 1, 2:
``conv_o{i}``, ``fc_o{i}``, ``out{i}``.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from flaxcls.models.alexnet import uniform_init
from flaxcls.models.layers import Classifier, DowngradeDropout, conv_kernel_init, max_pool
from flaxcls.registry import register_model

# Inception modules: name -> (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj).
INCEPTIONS = {
    "ince3a": (64, 96, 128, 16, 32, 32),
    "ince3b": (128, 128, 192, 32, 96, 64),
    "ince4a": (192, 96, 208, 16, 48, 64),
    "ince4b": (160, 112, 224, 24, 64, 64),
    "ince4c": (128, 128, 256, 24, 64, 64),
    "ince4d": (112, 144, 288, 32, 64, 64),
    "ince4e": (256, 160, 320, 32, 128, 128),
    "ince5a": (256, 160, 320, 32, 128, 128),
    "ince5b": (384, 192, 384, 48, 128, 128),
}
_POOL_AFTER = ("ince3b", "ince4e")
# The auxiliary heads: name -> the inception module they read. Loss weights of googlenet's train.py.
AUX_HEADS = {"aux1": "ince4a", "aux2": "ince4d"}
AUX_LOSS_WEIGHTS = {"aux1": 0.3, "aux2": 0.3}
AUX_POOL = (5, 3)  # window, stride of the aux heads' average pool
AUX_WIDTH = 128  # channels of their 1x1 conv (conv_o1/conv_o2), flattened into fc_o1/fc_o2


def _xavier(n: float) -> Any:
    """googlenet.py's ``xavier``: Uniform(+-sqrt(3 / n))."""
    return uniform_init(float(np.sqrt(3.0 / n)))


def paddle_pool_size(size: int, window: int, stride: int) -> int:
    """Output length of an unpadded floor-mode Paddle pool: ``(size - window) / stride + 1`` with
    C's truncating division (a window up to ``stride - 1`` cells too large still gives one)."""
    out = int((size - window) / stride) + 1  # int() truncates toward zero, like C
    if out < 1:
        raise ValueError(f"a {window}/{stride} pool does not fit a {size}-wide map")
    return out


def paddle_avg_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """Unpadded exclusive average pool sized as Paddle sizes it: ``(H - k) / s + 1`` with C's
    truncating division, so a window larger than the map (GoogLeNet's 7x7 on 6x6) still gives
    one cell, the mean of the valid values. NHWC."""
    counts, pads = [], []
    for size in x.shape[1:3]:
        out = paddle_pool_size(size, window, stride)
        starts = np.arange(out) * stride
        counts.append(np.minimum(starts + window, size) - starts)
        pads.append((0, max(0, (out - 1) * stride + window - size)))
    summed = jax.lax.reduce_window(
        x, 0.0, jax.lax.add, (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), *pads, (0, 0)),
    )
    return summed / jnp.asarray(np.outer(*counts)[None, :, :, None], dtype=x.dtype)


def conv_layer(features: int, k: int, cin: int, dtype: Any, **kw: Any) -> nn.Conv:
    """googlenet.py's ``conv_layer``: bias-less, linear, pad (k - 1) // 2, Uniform(+-sqrt(3 /
    (k*k*cin))) init. Call it inside a compact method: the conv belongs to that module."""
    p = (k - 1) // 2
    return nn.Conv(
        features, (k, k), padding=((p, p), (p, p)), use_bias=False, dtype=dtype,
        param_dtype=jnp.float32, kernel_init=_xavier(k * k * cin), **kw,
    )


class Inception(nn.Module):
    """Four linear branches, concatenated in Paddle's order, then one ReLU."""

    filters: tuple[int, int, int, int, int, int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        f1, f3r, f3, f5r, f5, fp = self.filters
        cin = x.shape[-1]
        conv = functools.partial(conv_layer, dtype=self.dtype)
        b1 = conv(f1, 1, cin, name="1x1")(x)
        b3 = conv(f3, 3, f3r, name="3x3")(conv(f3r, 1, cin, name="3x3_reduce")(x))
        b5 = conv(f5, 5, f5r, name="5x5")(conv(f5r, 1, cin, name="5x5_reduce")(x))
        # The pool projection is a plain fluid conv2d: Fluid's default (MSRA normal) init.
        bp = nn.Conv(
            fp, (1, 1), padding=((0, 0), (0, 0)), use_bias=False, dtype=self.dtype,
            param_dtype=jnp.float32, kernel_init=conv_kernel_init, name="3x3_proj",
        )(max_pool(x, 3, 1, padding=1))
        return nn.relu(jnp.concatenate([b1, b3, b5, bp], axis=-1))


class GoogLeNet(Classifier):
    """GoogLeNet on NHWC input; float32 pre-softmax logits ``[N, num_classes]`` of the main head.

    With ``return_features=True`` also a dict: each inception module's output (``ince3a`` ..
    ``ince5b``), ``pooled`` (the ``[N, 1024]`` vector the main head sees, before its dropout) and
    ``aux1``/``aux2``, the auxiliary heads' pre-softmax logits (float32), for a training loss.
    """

    dropout_rate: float = 0.4
    aux_dropout_rate: float = 0.7
    # Read by the train step: extra cross-entropy terms on these feature outputs.
    aux_loss_weights: ClassVar[dict[str, float]] = AUX_LOSS_WEIGHTS

    def _dense(self, features: int, n: float, name: str) -> nn.Dense:
        return nn.Dense(
            features, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_xavier(n),
            bias_init=nn.initializers.zeros, name=name,
        )

    def _aux_head(self, x: jax.Array, i: int, train: bool) -> jax.Array:
        x = paddle_avg_pool(x, *AUX_POOL)
        x = conv_layer(AUX_WIDTH, 1, x.shape[-1], self.dtype, name=f"conv_o{i}")(x)
        x = x.reshape(x.shape[0], -1)  # H, W, C order; the converter reorders Paddle's C, H, W
        x = nn.relu(self._dense(1024, 2048, f"fc_o{i}")(x))
        x = DowngradeDropout(self.aux_dropout_rate, name=f"drop_o{i}")(x, train=train)
        return self._dense(self.num_classes, 1024, f"out{i}")(x).astype(jnp.float32)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        conv = functools.partial(conv_layer, dtype=self.dtype)
        x = conv(64, 7, x.shape[-1], strides=2, name="conv1")(x)
        x = max_pool(x, 3, 2)
        x = conv(64, 1, x.shape[-1], name="conv2_1x1")(x)
        x = conv(192, 3, x.shape[-1], name="conv2_3x3")(x)
        x = max_pool(x, 3, 2)
        features = {}
        for name, filters in INCEPTIONS.items():
            x = Inception(filters, dtype=self.dtype, name=name)(x)
            features[name] = x
            if name in _POOL_AFTER:
                x = max_pool(x, 3, 2)

        x = paddle_avg_pool(x, 7, 7)
        x = x.reshape(x.shape[0], -1)
        features["pooled"] = x.astype(jnp.float32)
        x = DowngradeDropout(self.dropout_rate, name="drop")(x, train=train)
        logits = self._dense(self.num_classes, 1024, "out")(x).astype(jnp.float32)

        # Built at init so the parameters exist; run only when the caller asks for them.
        if return_features or self.is_initializing():
            for i, (head, source) in enumerate(AUX_HEADS.items(), start=1):
                features[head] = self._aux_head(features[source], i, train)
        return (logits, features) if return_features else logits


# Accuracy: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
register_model(
    "GoogLeNet",
    GoogLeNet,
    family="googlenet",
    first_conv="conv1",
    classifier="out",
    top1=0.7070,
    top5=0.8966,
)
