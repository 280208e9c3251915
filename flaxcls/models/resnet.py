"""The ResNet family of the 2019 PaddleCV zoo: ResNet, ResNet_vc, ResNet_vd (``resnet*.py``),
ResNeXt and ResNeXt_vd (``resnext*.py``), SE_ResNeXt, SE_ResNeXt_vd and SENet154_vd
(``se_resnext*.py``) and ResNeXt101_wsl (``resnext101_wsl.py``), plus a CPU-sized ResNet_tiny.
One generic ``ResNet`` module; each variant is one registered line at the bottom.

Structure follows Paddle exactly: stride on the 3x3 conv ("v1.5"), a 1x1 projection shortcut
whenever channels or stride change *and* on the network's very first block (so ResNet18/34 have
``res2a_branch1``; every other variant changes channels there anyway), the vd shortcut = 2x2/2
ceil-mode exclusive avg pool -> 1x1 conv -> BN. ResNeXt groups the 3x3 conv (``cardinality``) and
sets the block output width apart from the inner width (``out_widths``); SE variants scale the
last BN's output per channel before the residual add (``se_reduction``) and may drop out before
the head (``head_dropout``, Fluid's downgrade-in-infer: x(1 - rate) at inference).

Parameter names (used by ``flaxcls.convert``): ``stem_conv{i}``/``stem_bn{i}``,
``stage{s}_block{b}/{conv1,bn1,conv2,bn2[,conv3,bn3][,se/{squeeze,excite}]
[,shortcut_conv,shortcut_bn]}``, ``head``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from flaxcls.models.layers import (
    BNClassifier,
    DowngradeDropout,
    DropPath,
    ModuleDef,
    avg_pool,
    check_same_length,
    classifier_head,
    conv_bn,
    dense_kernel_init,
    drop_path_rates,
    global_avg_pool,
    max_pool,
    norm_act,
    symmetric_padding,
)
from flaxcls.registry import register_model

STEMS = ("plain", "deep", "small")


def _space_to_depth_geometry(size: int, kernel: int, pad_low: int, pad_high: int):
    """(output length, high-side padding) of one axis for the space-to-depth form of a stride-2
    conv: the padded axis must hold exactly ``2 * (out - 1) + kernel_even`` cells, where
    ``kernel_even`` is the kernel rounded up to even; a negative padding crops cells the plain
    conv never reads."""
    out = (size + pad_low + pad_high - kernel) // 2 + 1
    if out < 1:
        raise ValueError(f"stride-2 conv of kernel {kernel} is larger than the padded input")
    total = 2 * (out - 1) + kernel + kernel % 2
    return out, total - size - pad_low


def space_to_depth_conv(x: jax.Array, kernel: jax.Array, padding, precision=None) -> jax.Array:
    """A stride-2 convolution of NHWC ``x`` with HWIO ``kernel`` and explicit ``padding``
    ((low, high) per spatial axis), computed as a stride-1 convolution on the space-to-depth
    image: each 2x2 cell of the padded input becomes one position with 4x the channels, and
    the kernel, zero-padded to even size, is regrouped the same way (a 7x7x3 kernel becomes
    4x4x12). Same result as the plain conv, but the narrow-input stride-2 conv becomes a
    denser stride-1 one that suits matrix units better (the MLPerf TPU ResNet trick).
    """
    _, h, w, c = x.shape
    kh, kw, kc, features = kernel.shape
    if kc != c:
        raise ValueError(f"space_to_depth_conv: kernel has {kc} input channels, input has {c}")
    (ph_lo, ph_hi), (pw_lo, pw_hi) = padding
    _, extra_h = _space_to_depth_geometry(h, kh, ph_lo, ph_hi)
    _, extra_w = _space_to_depth_geometry(w, kw, pw_lo, pw_hi)
    # lax.pad takes negative padding as a crop.
    zero = jnp.zeros((), x.dtype)
    x = jax.lax.pad(x, zero, ((0, 0, 0), (ph_lo, extra_h, 0), (pw_lo, extra_w, 0), (0, 0, 0)))
    n, hp, wp, _ = x.shape
    x = x.reshape(n, hp // 2, 2, wp // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(n, hp // 2, wp // 2, 4 * c)
    kernel = jnp.pad(kernel, ((0, kh % 2), (0, kw % 2), (0, 0), (0, 0)))
    kh2, kw2 = kernel.shape[0] // 2, kernel.shape[1] // 2
    # Row 2a + dy of the kernel meets row dy of cell a; channels ordered (dy, dx, c) as in x.
    kernel = kernel.reshape(kh2, 2, kw2, 2, c, features).transpose(0, 2, 1, 3, 4, 5)
    kernel = kernel.reshape(kh2, kw2, 4 * c, features)
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


class SpaceToDepthConv(nn.Conv):
    """An ``nn.Conv`` (same fields, same ``kernel``/``bias`` parameters, so checkpoints,
    converters and BatchNorm folding see no difference) whose stride-2 convolution runs as
    ``space_to_depth_conv``. Supports NHWC input, strides 2, explicit padding, no dilation,
    no groups, no mask."""

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        dilations = (self.input_dilation, self.kernel_dilation)
        padding = self.padding
        explicit = not isinstance(padding, str) and all(
            not isinstance(p, int) and len(p) == 2 for p in padding
        )
        if (
            inputs.ndim != 4
            or len(self.kernel_size) != 2
            or strides != (2, 2)
            or not explicit
            or any(d not in (None, 1, (1, 1)) for d in dilations)
            or self.feature_group_count != 1
            or self.mask is not None
        ):
            raise ValueError(
                f"SpaceToDepthConv {self.name}: needs NHWC input, a 2-d kernel, strides 2, explicit "
                f"(low, high) padding, no dilation, groups or mask; got input {inputs.shape}, "
                f"kernel {self.kernel_size}, strides {self.strides}, padding {padding}"
            )
        kh, kw = self.kernel_size
        shape = (kh, kw, inputs.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        inputs, kernel, bias = promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = space_to_depth_conv(
            inputs, kernel, tuple(tuple(p) for p in padding), precision=self.precision
        )
        if bias is not None:
            y = y + bias
        return y


def _shortcut(x, features: int, strides: int, avg_down: bool, conv: ModuleDef, norm: ModuleDef):
    """Projection shortcut, created inside the calling block (names shortcut_conv/shortcut_bn)."""
    if avg_down and strides != 1:
        # vd: let the pool do the downsampling so the 1x1 conv sees every input cell.
        x = avg_pool(x, strides, strides, ceil_mode=True, exclusive=True)
        strides = 1
    x = conv(features, (1, 1), strides=strides, padding=((0, 0), (0, 0)), name="shortcut_conv")(x)
    return norm(name="shortcut_bn")(x)


class SqueezeExcite(nn.Module):
    """Paddle's ``squeeze_excitation``: global average -> fc (C // reduction, ReLU) -> fc (C,
    sigmoid) -> the input scaled per channel. Both fc layers biased, initialised as the head."""

    reduction: int = 16
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        dense = functools.partial(
            nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=dense_kernel_init
        )
        s = global_avg_pool(x).astype(self.dtype)
        s = nn.relu(dense(channels // self.reduction, name="squeeze")(s))
        s = nn.sigmoid(dense(channels, name="excite")(s))
        return x * s[:, None, None, :].astype(x.dtype)


def _merge(block: nn.Module, y: jax.Array, x: jax.Array, out_features: int, bn_name: str) -> jax.Array:
    """A block's end: ``act(shortcut + drop_path([SE](BN(y))))``, the shortcut being ``x`` or
    its projection; stochastic depth only while training with a rate."""
    shortcut = x
    if block.projection:
        shortcut = _shortcut(x, out_features, block.strides, block.avg_down, block.conv, block.norm)
    dropping = block.drop_path > 0 and block.train
    if block.se is None and not dropping:
        return norm_act(block.norm(name=bn_name), y, block.act, residual=shortcut)
    y = block.norm(name=bn_name)(y)
    if block.se is not None:
        y = block.se(name="se")(y)
    y = DropPath(block.drop_path, name="drop_path")(y, train=block.train)
    return block.act(shortcut + y)


class ResNetBlock(nn.Module):
    """What both blocks take: ``features`` (inner width), the conv and norm partials, where the
    stride sits, the shortcut kind (projection, vd avg-down) and the optional SE unit; both end
    in ``_merge``."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    projection: bool = False
    avg_down: bool = False
    act: Callable = nn.relu
    out_features: int | None = None  # None: features * expansion
    se: ModuleDef | None = None  # a SqueezeExcite partial, applied to the last BN's output
    drop_path: float = 0.0  # stochastic depth rate of this block's branch
    train: bool = False  # drop_path is active only while training


class BasicBlock(ResNetBlock):
    """3x3 (stride here) -> BN -> ReLU -> 3x3 -> BN [-> SE], + shortcut, ReLU (ResNet18/34)."""

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x):
        out_features = self.out_features or self.features * self.expansion
        y = conv_bn(x, self.conv, self.norm, self.features, 3, strides=self.strides,
                    act=self.act, names=("conv1", "bn1"))
        y = self.conv(out_features, (3, 3), padding=symmetric_padding(3), name="conv2")(y)
        return _merge(self, y, x, out_features, "bn2")


class BottleneckBlock(ResNetBlock):
    """1x1 -> 3x3 (stride here; ``groups`` for ResNeXt) -> 1x1 (``out_features``, default 4x
    width), BN after each [-> SE], + shortcut, ReLU (ResNet50+, ResNeXt, SE_ResNeXt)."""

    groups: int = 1

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x):
        out_features = self.out_features or self.features * self.expansion
        y = conv_bn(x, self.conv, self.norm, self.features, 1, act=self.act, names=("conv1", "bn1"))
        y = conv_bn(y, self.conv, self.norm, self.features, 3, strides=self.strides,
                    groups=self.groups, act=self.act, names=("conv2", "bn2"))
        y = self.conv(out_features, (1, 1), padding=symmetric_padding(1), name="conv3")(y)
        return _merge(self, y, x, out_features, "bn3")


class ResNet(BNClassifier, kw_only=True):
    """Generic ResNet on NHWC input.

    stem: 'plain' = 7x7/2 conv (stem_width) + 3x3/2 max pool; 'deep' (vc/vd) = three 3x3 convs
    (stem_width/2, stem_width/2, stem_width; the first stride 2) + max pool; 'small' = one 3x3/1
    conv, no pool (32x32 inputs). ``avg_down`` selects the vd shortcut for strided blocks.

    ResNeXt and SE options: ``widths`` are the blocks' inner widths and ``out_widths`` their
    output widths (None: ``widths`` x the block's expansion); ``cardinality`` groups the 3x3 conv
    of a bottleneck; ``se_reduction`` > 0 adds a squeeze-excitation unit to every block;
    ``head_dropout`` drops the pooled features before the head (Fluid's downgrade-in-infer).

    ``stem_space_to_depth`` computes the stem's stride-2 conv on 3 channels ('plain': the 7x7/2
    conv; 'deep': the first 3x3/2 conv) as a stride-1 conv on the space-to-depth image
    (``SpaceToDepthConv``): same parameters and, up to float rounding, same outputs; any input
    size. A throughput option for tensor cores; the 'small' stem has no stride-2 conv.

    Returns float32 logits ``[N, num_classes]``; with ``return_features=True`` also a dict:
    ``stem`` (the input of stage 1, i.e. after the max pool), ``stage1``..``stage4`` (each stage's
    output) and ``pooled`` (``[N, C]`` global average, float32).

    Init as Paddle: conv kernels He-normal with fan_in (std sqrt(2 / (kh*kw*cin))), head
    Uniform(+-1/sqrt(fan_in)) with zero bias, BN scale 1 / bias 0 everywhere (no zero-init of
    the last BN of a block: the original doesn't do it).
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BottleneckBlock
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "plain"
    stem_width: int = 64
    avg_down: bool = False
    out_widths: Sequence[int] | None = None
    cardinality: int = 1
    se_reduction: int = 0
    head_dropout: float = 0.0
    stem_space_to_depth: bool = False
    drop_path_rate: float = 0.0  # stochastic depth of the last block; linear in depth from 0
    classifier_dropout: float = 0.0  # config.dropout_rate: before the fc, in training
    # Paddle projects the very first block's shortcut even where shapes agree; the CIFAR
    # ResNets (and torchvision's) keep it the identity there.
    first_block_projection: bool = True

    def block_out_widths(self) -> tuple[int, ...]:
        """Output channels of each stage's blocks."""
        if self.out_widths is not None:
            return tuple(self.out_widths)
        return tuple(w * self.block_cls.expansion for w in self.widths)

    def _block_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.cardinality != 1:
            if "groups" not in getattr(self.block_cls, "__dataclass_fields__", {}):
                raise ValueError(
                    f"ResNet cardinality={self.cardinality} needs a block with a grouped conv "
                    f"(BottleneckBlock), not {self.block_cls.__name__}"
                )
            options["groups"] = self.cardinality
        if self.se_reduction:
            options["se"] = functools.partial(
                SqueezeExcite, reduction=self.se_reduction, dtype=self.dtype
            )
        return options

    def _stem(self, x, conv, norm):
        first_conv = conv
        if self.stem_space_to_depth:
            if self.stem not in ("plain", "deep"):
                raise ValueError(
                    f"ResNet stem_space_to_depth=True needs a stem with a stride-2 conv ('plain' "
                    f"or 'deep'), not stem={self.stem!r}"
                )
            first_conv = functools.partial(SpaceToDepthConv, *conv.args, **conv.keywords)
        if self.stem == "plain":
            x = conv_bn(x, first_conv, norm, self.stem_width, 7, strides=2, act=self.act,
                        names=("stem_conv1", "stem_bn1"))
            return max_pool(x, 3, 2, padding=1)
        if self.stem == "deep":
            half = self.stem_width // 2
            for i, (features, strides) in enumerate(((half, 2), (half, 1), (self.stem_width, 1))):
                x = conv_bn(x, first_conv if i == 0 else conv, norm, features, 3, strides=strides,
                            act=self.act, names=(f"stem_conv{i + 1}", f"stem_bn{i + 1}"))
            return max_pool(x, 3, 2, padding=1)
        if self.stem == "small":
            return conv_bn(x, conv, norm, self.stem_width, 3, act=self.act,
                           names=("stem_conv1", "stem_bn1"))
        raise ValueError(f"ResNet stem={self.stem!r} is not one of {STEMS}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        check_same_length("ResNet", widths=self.widths, stage_sizes=self.stage_sizes)
        out_widths = self.block_out_widths()
        check_same_length("ResNet", out_widths=out_widths, stage_sizes=self.stage_sizes)
        block_options = self._block_options()
        conv, norm = self.conv_and_norm(train)
        features = {}
        x = self._stem(x, conv, norm)
        features["stem"] = x
        rates = iter(drop_path_rates(self.drop_path_rate, sum(self.stage_sizes)))
        for s, (depth, width, out_features) in enumerate(
            zip(self.stage_sizes, self.widths, out_widths)
        ):
            for b in range(depth):
                strides = 2 if b == 0 and s > 0 else 1
                # Paddle's resnet.py also projects on the network's first block, even when shapes
                # agree; in every other variant the channels change there anyway.
                projection = (x.shape[-1] != out_features or strides != 1
                              or (s == b == 0 and self.first_block_projection))
                x = self.block_cls(
                    width,
                    conv=conv,
                    norm=norm,
                    strides=strides,
                    projection=projection,
                    avg_down=self.avg_down,
                    act=self.act,
                    out_features=out_features,
                    drop_path=next(rates),
                    train=train,
                    name=f"stage{s + 1}_block{b}",
                    **block_options,
                )(x)
            features[f"stage{s + 1}"] = x
        pooled = global_avg_pool(x)
        features["pooled"] = pooled
        if self.head_dropout:
            pooled = DowngradeDropout(self.head_dropout, name="head_dropout")(pooled, train=train)
        logits = classifier_head(pooled, self.num_classes, self.dtype,
                                 dropout=self.classifier_dropout, train=train)
        return (logits, features) if return_features else logits


def _register(
    name: str, stage_sizes, block_cls, top=(None, None), cfg=None, family="resnet", **arch
):
    arch_fn = functools.partial(ResNet, stage_sizes=tuple(stage_sizes), block_cls=block_cls, **arch)
    register_model(
        name,
        arch_fn,
        family=family,
        first_conv="stem_conv1",
        classifier="head",
        top1=top[0],
        top5=top[1],
        **(cfg or {}),
    )


_B, _BN = BasicBlock, BottleneckBlock
_DEEP = {"stem": "deep"}
_VD = {"stem": "deep", "avg_down": True}

# Accuracies: the ImageNet top-1/top-5 of the PaddleCV README table (2019-12-30).
_register("ResNet18", (2, 2, 2, 2), _B, top=(0.7098, 0.8992))
_register("ResNet34", (3, 4, 6, 3), _B, top=(0.7457, 0.9214))
_register("ResNet50", (3, 4, 6, 3), _BN, top=(0.7650, 0.9300))
_register("ResNet101", (3, 4, 23, 3), _BN, top=(0.7756, 0.9364))
_register("ResNet152", (3, 8, 36, 3), _BN, top=(0.7826, 0.9396))
_register("ResNet50_vc", (3, 4, 6, 3), _BN, top=(0.7835, 0.9403), **_DEEP)
_register("ResNet101_vc", (3, 4, 23, 3), _BN, **_DEEP)  # defined in resnet_vc.py, never released
_register("ResNet152_vc", (3, 8, 36, 3), _BN, **_DEEP)  # defined in resnet_vc.py, never released
_register("ResNet18_vd", (2, 2, 2, 2), _B, top=(0.7226, 0.9080), **_VD)
_register("ResNet34_vd", (3, 4, 6, 3), _B, top=(0.7598, 0.9298), **_VD)
_register("ResNet50_vd", (3, 4, 6, 3), _BN, top=(0.7912, 0.9444), **_VD)
_register("ResNet50_vd_v2", (3, 4, 6, 3), _BN, top=(0.7984, 0.9493), **_VD)  # distilled weights
_register("ResNet101_vd", (3, 4, 23, 3), _BN, top=(0.8017, 0.9497), **_VD)
_register("ResNet152_vd", (3, 8, 36, 3), _BN, top=(0.8059, 0.9530), **_VD)
_register("ResNet200_vd", (3, 12, 48, 3), _BN, top=(0.8093, 0.9533), **_VD)
# CPU-sized demo model for 32x32 inputs (not in the Paddle zoo): one 3x3/1 stem conv, no max pool.
_TINY = {"widths": (16, 32, 64, 128), "stem": "small", "stem_width": 16}
_TINY_CFG = {"input_size": 32, "crop_size": 32, "resize_short_size": 32}
_register("ResNet_tiny", (1, 1, 1, 1), _B, cfg=_TINY_CFG, **_TINY)
# CIFAR-10's ResNet-18 (not in the Paddle zoo): ResNet18's blocks and widths on a stem of one
# 3x3/1 conv without max pool, identity shortcut on the first block (He et al. 2016's
# ImageNet blocks as the common CIFAR baseline uses them: 11,173,962 parameters for 10 classes).
# Mean/std: per-channel statistics of the CIFAR-10 training images on the 0-1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_CIFAR_CFG = {"input_size": 32, "crop_size": 32, "resize_short_size": 32,
              "mean": CIFAR10_MEAN, "std": CIFAR10_STD, "num_classes": 10}
_register("ResNet18_cifar", (2, 2, 2, 2), _B, cfg=_CIFAR_CFG, family="cifar", stem="small",
          stem_width=64, first_block_projection=False)

# ResNeXt (resnext.py, resnext_vd.py; family "resnext"). 32x4d: inner width 128..1024 in 32 groups
# of 4, output 2x inner; 64x4d: inner width 256..2048 in 64 groups of 4, output = inner. Either
# way the stages put out 256, 512, 1024, 2048 channels.
_OUT = (256, 512, 1024, 2048)
_X32 = {"widths": (128, 256, 512, 1024), "cardinality": 32, "out_widths": _OUT}
_X64 = {"widths": (256, 512, 1024, 2048), "cardinality": 64, "out_widths": _OUT}
_L50, _L101, _L152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)


def _resnext(name, stage_sizes, top=(None, None), **arch):
    _register(name, stage_sizes, _BN, top=top, family="resnext", **arch)


_resnext("ResNeXt50_32x4d", _L50, top=(0.7775, 0.9382), **_X32)
_resnext("ResNeXt50_vd_32x4d", _L50, top=(0.7956, 0.9462), **_X32, **_VD)
_resnext("ResNeXt50_64x4d", _L50, top=(0.7843, 0.9413), **_X64)
_resnext("ResNeXt50_vd_64x4d", _L50, top=(0.8012, 0.9486), **_X64, **_VD)
_resnext("ResNeXt101_32x4d", _L101, top=(0.7865, 0.9419), **_X32)
_resnext("ResNeXt101_vd_32x4d", _L101, top=(0.8033, 0.9512), **_X32, **_VD)
_resnext("ResNeXt101_64x4d", _L101, top=(0.7835, 0.9452), **_X64)
_resnext("ResNeXt101_vd_64x4d", _L101, top=(0.8078, 0.9520), **_X64, **_VD)
_resnext("ResNeXt152_32x4d", _L152, top=(0.7898, 0.9433), **_X32)
_resnext("ResNeXt152_vd_32x4d", _L152, top=(0.8072, 0.9520), **_X32, **_VD)
_resnext("ResNeXt152_64x4d", _L152, top=(0.7951, 0.9471), **_X64)
_resnext("ResNeXt152_vd_64x4d", _L152, top=(0.8108, 0.9534), **_X64, **_VD)

# SE_ResNeXt (se_resnext.py, se_resnext_vd.py; family "se_resnext"): ResNeXt blocks with a
# reduction-16 SE unit. The 152-layer builds (SE_ResNeXt152_32x4d, never released, and
# SENet154_vd) use 64 groups and a 64/64/128 three-conv stem; so do the vd 50/101. Dropout before
# the head: 0.5 in se_resnext.py, 0.2 in SENet154_vd, none in SE_ResNeXt50/101_vd.
_SE = {"se_reduction": 16}
_SE_STEM = {"stem": "deep", "stem_width": 128}


def _se_resnext(name, stage_sizes, top=(None, None), **arch):
    _register(name, stage_sizes, _BN, top=top, family="se_resnext", **_SE, **arch)


_se_resnext("SE_ResNeXt50_32x4d", _L50, top=(0.7844, 0.9396), head_dropout=0.5, **_X32)
_se_resnext("SE_ResNeXt101_32x4d", _L101, top=(0.7912, 0.9420), head_dropout=0.5, **_X32)
_X64_NARROW = {**_X32, "cardinality": 64}  # se_resnext.py's 152: 32x4d widths in 64 groups of 2
_se_resnext("SE_ResNeXt152_32x4d", _L152, head_dropout=0.5, **_X64_NARROW, **_SE_STEM)
_SE_VD = {**_SE_STEM, "avg_down": True}
_se_resnext("SE_ResNeXt50_vd_32x4d", _L50, top=(0.8024, 0.9489), **_X32, **_SE_VD)
_se_resnext("SE_ResNeXt101_vd_32x4d", _L101, **_X32, **_SE_VD)  # defined, not in the table
_se_resnext("SENet154_vd", _L152, top=(0.8140, 0.9548), head_dropout=0.2, **_X64, **_SE_VD)

# ResNeXt101_32x{8,16,32,48}d_wsl (resnext101_wsl.py; family "resnext_wsl"): torchvision's
# ResNeXt with d channels per group, converted from the PyTorch WSL release (PyTorch names).
_WSL_TOP = {8: (0.8255, 0.9674), 16: (0.8424, 0.9726), 32: (0.8497, 0.9759), 48: (0.8537, 0.9769)}


def _wsl(name, group_width, top, cfg=None):
    widths = tuple(32 * group_width * m for m in (1, 2, 4, 8))
    _register(
        name,
        _L101,
        _BN,
        top=top,
        cfg=cfg,
        family="resnext_wsl",
        widths=widths,
        cardinality=32,
        out_widths=_OUT,
    )


for _d, _top in _WSL_TOP.items():
    _wsl(f"ResNeXt101_32x{_d}d_wsl", _d, _top)
# The same network fine-tuned at 320 px (FixRes): evaluated with resize_short 320, crop 320.
_FIX_CFG = {"input_size": 320, "crop_size": 320, "resize_short_size": 320}
_wsl("Fix_ResNeXt101_32x48d_wsl", 48, (0.8626, 0.9797), cfg=_FIX_CFG)
