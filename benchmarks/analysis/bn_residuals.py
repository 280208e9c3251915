"""Saved-residual bytes of one train-mode forward/backward, Flax BatchNorm vs the fused one.

    python benchmarks/bn_residuals.py --model ResNet50 --batch 256 --dtype bfloat16

What the backward pass must keep from the forward is a property of the traced program, not of
the device, so this runs on any CPU in seconds: shapes only (``jax.eval_shape``), nothing is
allocated or compiled. Per (model, batch, dtype, bn_impl) one JSON line: the residuals' count
and bytes (total and per dtype), and the reduce ops of the lowered StableHLO of the
forward/backward (each call of a shared function counted), a rough proxy for the reduction
kernels a GPU runs. ``bn_impl`` is ``flax`` (``nn.BatchNorm`` under autodiff) or ``fused``
(``flaxcls.models.batchnorm``).

The residuals are read from the function ``jax.vjp`` returns: it is a pytree whose leaves
are exactly the values its backward pass keeps (arguments it reuses and intermediates), so
no private JAX helper is needed.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

BN_IMPLS = ("flax", "fused")
DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="ResNet50", help="comma list of registered models")
    p.add_argument("--batch", default="256", help="comma list of global batch sizes")
    p.add_argument("--dtype", default="bfloat16", help="comma list: float32,bfloat16,float16")
    p.add_argument("--bn-impl", default="flax,fused", help="comma list: flax,fused")
    p.add_argument("--image-size", type=int, default=0, help="0: the model's native size")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--no-hlo", action="store_true", help="skip lowering (no reduce count)")
    p.add_argument("--csv", default="", help="also append results to this CSV ('' = don't)")
    args = p.parse_args(argv)
    args.models = _common.split_list(args.model)
    args.batches = _common.split_list(args.batch, int)
    args.dtypes = _common.split_list(args.dtype)
    args.bn_impls = _common.split_list(args.bn_impl)
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"--dtype {d!r}: must be one of {', '.join(DTYPES)}")
    for impl in args.bn_impls:
        if impl not in BN_IMPLS:
            p.error(f"--bn-impl {impl!r}: must be one of {', '.join(BN_IMPLS)}")
    for b in args.batches:
        if b < 1:
            p.error(f"--batch {b}: must be >= 1")
    return args


def _loss_fn(model, bn_impl: str):
    """``loss(params, batch_stats, images, labels) -> (loss, new batch_stats)`` in train mode."""
    import jax.numpy as jnp
    import optax

    from flaxcls.models.batchnorm import batchnorm_impl

    def loss(params, batch_stats, images, labels):
        with batchnorm_impl(bn_impl):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, train=True,
                mutable=["batch_stats"],
            )
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        return ce.mean(), updates.get("batch_stats", {})

    return loss


def saved_residuals(loss, params, batch_stats, images, labels) -> list[Any]:
    """Shapes and dtypes of what the backward of ``loss`` w.r.t. ``params`` keeps (abstract)."""
    import jax

    def vjp_fun(params, batch_stats, images, labels):
        _, backward, _ = jax.vjp(lambda p: loss(p, batch_stats, images, labels), params,
                                 has_aux=True)
        return backward

    return jax.tree.leaves(jax.eval_shape(vjp_fun, params, batch_stats, images, labels))


_FUNC = re.compile(r"func\.func\s+(?:public\s+|private\s+)?@([\w.$-]+)")
_CALL = re.compile(r"call @([\w.$-]+)")
_REDUCE = re.compile(r"stablehlo\.reduce(?![\w])")


def count_reduces(stablehlo: str) -> int:
    """stablehlo.reduce ops reachable from @main, a function called n times counted n times."""
    bodies: dict[str, str] = {}
    starts = [(m.start(), m.group(1)) for m in _FUNC.finditer(stablehlo)]
    for (start, name), (end, _) in zip(starts, starts[1:] + [(len(stablehlo), "")]):
        bodies[name] = stablehlo[start:end]
    memo: dict[str, int] = {}

    def total(name: str) -> int:
        if name not in memo:
            body = bodies.get(name, "")
            memo[name] = len(_REDUCE.findall(body)) + sum(total(c) for c in _CALL.findall(body))
        return memo[name]

    return total("main")


def measure(model_name: str, batch: int, dtype: str, bn_impl: str, image_size: int = 0,
            num_classes: int = 1000, hlo: bool = True) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    import flaxcls

    cfg = flaxcls.get_model_cfg(model_name)
    size = image_size or cfg.input_size
    model = flaxcls.create_model(cfg.name, num_classes=num_classes, dtype=dtype)
    t0 = time.perf_counter()
    variables = jax.eval_shape(model.init, jax.random.key(0),
                               jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    params, stats = variables["params"], variables.get("batch_stats", {})
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.dtype(dtype))
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    loss = _loss_fn(model, bn_impl)
    residuals = saved_residuals(loss, params, stats, images, labels)
    by_dtype: dict[str, int] = collections.Counter()
    for r in residuals:
        by_dtype[jnp.dtype(r.dtype).name] += int(r.size) * jnp.dtype(r.dtype).itemsize
    result: dict[str, Any] = {
        "benchmark": "bn_residuals",
        "model": cfg.name,
        "batch": batch,
        "dtype": dtype,
        "image_size": size,
        "bn_impl": bn_impl,
        "residuals": len(residuals),
        "residual_bytes": sum(by_dtype.values()),
        "residual_mib": round(sum(by_dtype.values()) / 2**20, 2),
        "residual_bytes_by_dtype": dict(sorted(by_dtype.items())),
    }
    if hlo:
        grad = jax.jit(jax.grad(loss, has_aux=True))
        text = grad.lower(params, stats, images, labels).as_text()
        result["stablehlo_reduce_ops"] = count_reduces(text)
    result["analysis_s"] = round(time.perf_counter() - t0, 2)
    result["jax"] = jax.__version__
    return result


def main(argv=None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    results = []
    for model, batch, dtype, impl in itertools.product(
        args.models, args.batches, args.dtypes, args.bn_impls
    ):
        r = measure(model, batch, dtype, impl, args.image_size, args.num_classes,
                    hlo=not args.no_hlo)
        _common.emit(r, args.csv or None)
        results.append(r)
    return results


if __name__ == "__main__":
    # Nothing runs on a device: the CPU backend lowers it unless JAX_PLATFORMS says otherwise.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _common.prepare_environment()
    main()
