"""BatchNorm folded into the convolution before it, for inference: same logits, fewer ops.

At inference a BatchNorm is the per-channel affine ``y = x * a + b`` with
``a = scale / sqrt(var + eps)`` and ``b = bias - mean * a``. When ``x`` is a convolution's
output, ``a`` scales the kernel's output channels and ``b`` becomes the convolution's bias,
so the BatchNorm disappears. Works for any model built from ``flax.linen`` ``Conv`` and
``BatchNorm`` modules (every BN family here uses ``layers.conv_and_norm``) without changing
the model code: the pairs are found by tracing the model once, and the folded forward skips
the paired BatchNorms through a method interceptor. A BatchNorm whose input is not a
convolution's output (DenseNet's pre-activation BN-ReLU-conv) is kept as it is.

    folded = fold_batchnorm(model, variables, input_shape=(1, 224, 224, 3))
    logits = folded.apply(folded.variables, images)     # jit-able, train=False
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax.core import unfreeze

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ConvBNPair:
    """A convolution whose only use is the BatchNorm after it (module paths inside ``params``)."""

    conv: Path
    norm: Path
    epsilon: float
    conv_has_bias: bool


def find_conv_bn_pairs(
    model: nn.Module, variables: dict[str, Any], input_shape: tuple[int, ...]
) -> list[ConvBNPair]:
    """Traces ``model.apply(variables, zeros(input_shape), train=False)`` abstractly (no compute)
    and returns every BatchNorm applied directly to a ``nn.Conv`` output, with its epsilon.

    A pair is folded only when the BatchNorm normalises the last (channel) axis, the conv
    output goes to nothing but that BatchNorm, and each module is called once.
    """
    conv_of_output: dict[int, Path] = {}
    calls: dict[Path, int] = {}
    uses: dict[Path, int] = {}  # conv path -> number of modules that took its output
    found: list[ConvBNPair] = []
    conv_bias: dict[Path, bool] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.BatchNorm) and context.method_name != "__call__":
            # BatchNorm.norm_act: its own __call__ (recorded below) takes the input.
            return next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not isinstance(module, (nn.Conv, nn.BatchNorm)):
            # Outputs passed through any other module count as a use of the conv output.
            for a in args:
                if id(a) in conv_of_output:
                    uses[conv_of_output[id(a)]] += 1
            return next_fun(*args, **kwargs)
        path = tuple(module.path)
        calls[path] = calls.get(path, 0) + 1
        x = args[0] if args else kwargs.get("inputs", kwargs.get("x"))
        if id(x) in conv_of_output:
            uses[conv_of_output[id(x)]] += 1
        out = next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv):
            conv_of_output[id(out)] = path
            uses.setdefault(path, 0)
            conv_bias[path] = bool(module.use_bias)
        elif id(x) in conv_of_output and module.axis in (-1, len(jnp.shape(x)) - 1):
            found.append(ConvBNPair(conv_of_output[id(x)], path, float(module.epsilon),
                                    conv_bias[conv_of_output[id(x)]]))
        return out

    def trace(v):
        x = jnp.zeros(input_shape, jnp.float32)
        with nn.intercept_methods(record):
            return model.apply(v, x, train=False)

    jax.eval_shape(trace, variables)
    # Operations outside modules (e.g. jnp ops on the conv output) are invisible to the
    # interceptor; the parity test of each family guards that case.
    return [p for p in found if uses.get(p.conv) == 1 and calls[p.conv] == 1 and calls[p.norm] == 1]


def _get(tree: dict[str, Any], path: Path) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _pop(tree: dict[str, Any], path: Path) -> None:
    """Deletes the leaf dict at ``path`` and any parent dict it leaves empty."""
    parents = [tree]
    for name in path[:-1]:
        if name not in parents[-1]:
            return
        parents.append(parents[-1][name])
    parents[-1].pop(path[-1], None)
    for parent, name in zip(reversed(parents[:-1]), reversed(path[:-1])):
        if parent[name]:
            break
        parent.pop(name)


def fold_variables(variables: dict[str, Any], pairs: list[ConvBNPair]) -> dict[str, Any]:
    """Variables with each paired BatchNorm folded into its conv (float64 arithmetic on host).

    The conv gets ``kernel * a`` (per output channel) and ``bias = (conv_bias - mean) * a + b``;
    the BatchNorm's params and batch_stats are removed. Other variables are copied unchanged.
    """
    out = unfreeze(jax.tree.map(np.asarray, dict(variables)))
    params, stats = out["params"], out.get("batch_stats", {})
    for p in pairs:
        conv, bn = _get(params, p.conv), _get(params, p.norm) if _has(params, p.norm) else {}
        st = _get(stats, p.norm)
        kernel = np.asarray(conv["kernel"], np.float64)
        channels = kernel.shape[-1]
        gamma = np.asarray(bn.get("scale", np.ones(channels)), np.float64)
        beta = np.asarray(bn.get("bias", np.zeros(channels)), np.float64)
        mean, var = np.asarray(st["mean"], np.float64), np.asarray(st["var"], np.float64)
        a = gamma / np.sqrt(var + p.epsilon)
        bias = np.asarray(conv.get("bias", np.zeros(channels)), np.float64)
        dtype = conv["kernel"].dtype
        conv["kernel"] = (kernel * a).astype(dtype)
        conv["bias"] = ((bias - mean) * a + beta).astype(dtype)
        _pop(params, p.norm)
        _pop(stats, p.norm)
    if "batch_stats" in out and not out["batch_stats"]:
        out.pop("batch_stats")
    return out


def _has(tree: dict[str, Any], path: Path) -> bool:
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return False
        tree = tree[name]
    return True


@dataclasses.dataclass(frozen=True)
class FoldedModel:
    """``apply(variables, x, **kw)`` runs ``model`` in inference mode with the paired
    BatchNorms skipped and the folded bias added after their convolutions."""

    model: nn.Module
    pairs: tuple[ConvBNPair, ...]
    variables: Any = None

    def apply(self, variables: dict[str, Any], x: jax.Array, **kwargs: Any) -> Any:
        if kwargs.pop("train", False):
            raise ValueError("a BatchNorm-folded model runs in inference mode only (train=False)")
        norms = {p.norm for p in self.pairs}
        biased = {p.conv for p in self.pairs if not p.conv_has_bias}

        def skip_folded(next_fun, args, kwargs_, context):
            module = context.module
            if context.method_name == "__call__":
                path = tuple(module.path)
                if isinstance(module, nn.BatchNorm) and path in norms:
                    return args[0]
                if isinstance(module, nn.Conv) and path in biased:
                    y = next_fun(*args, **kwargs_)
                    return y + module.get_variable("params", "bias").astype(y.dtype)
            return next_fun(*args, **kwargs_)

        with nn.intercept_methods(skip_folded):
            return self.model.apply(variables, x, train=False, **kwargs)


def fold_batchnorm(
    model: nn.Module, variables: dict[str, Any], input_shape: tuple[int, ...] | None = None
) -> FoldedModel:
    """Finds the conv-BatchNorm pairs of ``model`` and folds them; the result holds the folded
    variables (``.variables``, host numpy arrays: the caller places them) and applies them
    (``.apply``). ``input_shape`` defaults to a 1x224x224x3 image (any size the model accepts
    gives the same pairs)."""
    shape = tuple(input_shape or (1, 224, 224, 3))
    pairs = tuple(find_conv_bn_pairs(model, variables, shape))
    return FoldedModel(model, pairs, fold_variables(variables, list(pairs)))
