"""Saved-residual bytes of one train-mode forward/backward, Flax BatchNorm vs the fused one.

    python benchmarks/analysis/bn_residuals.py --model ResNet50 --batch 256 --dtype bfloat16

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
import sys
import time
from typing import Any

# This folder (hlo), the benchmarks' (_common); _common adds the repository's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common
import hlo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    _common.add_model_lists(p, model="ResNet50")
    p.add_argument("--bn-impl", default="flax,fused", help="comma list: flax,fused")
    p.add_argument("--no-hlo", action="store_true", help="skip lowering (no reduce count)")
    p.add_argument("--csv", default="", help="also append results to this CSV ('' = don't)")
    args = p.parse_args(argv)
    args.models = _common.split_list(args.model)
    args.batches = _common.split_list(args.batch, int)
    args.dtypes = _common.split_list(args.dtype)
    args.bn_impls = _common.split_list(args.bn_impl)
    _common.check_choices(p, "--dtype", args.dtypes, _common.DTYPES)
    _common.check_choices(p, "--bn-impl", args.bn_impls, _common.BN_IMPLS)
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


def measure(model_name: str, batch: int, dtype: str, bn_impl: str, image_size: int = 0,
            num_classes: int = 1000, reduces: bool = True) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from flaxcls.specs import ModelSpec

    c = _common.bench_config(model_name, image_size=image_size, num_classes=num_classes,
                             dtype=dtype, batch_size=batch)
    size, model = c.crop_size, ModelSpec.from_config(c).build()
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
        "model": c.model,
        "batch": batch,
        "dtype": dtype,
        "image_size": size,
        "bn_impl": bn_impl,
        "residuals": len(residuals),
        "residual_bytes": sum(by_dtype.values()),
        "residual_mib": round(sum(by_dtype.values()) / 2**20, 2),
        "residual_bytes_by_dtype": dict(sorted(by_dtype.items())),
    }
    if reduces:
        grad = jax.jit(jax.grad(loss, has_aux=True))
        text = grad.lower(params, stats, images, labels).as_text()
        result["stablehlo_reduce_ops"] = hlo.count_stablehlo_reduces(text)
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
                    reduces=not args.no_hlo)
        _common.emit(r, args.csv or None)
        results.append(r)
    return results


if __name__ == "__main__":
    # Nothing runs on a device: the CPU backend lowers it unless JAX_PLATFORMS says otherwise.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    _common.prepare_environment()
    main()
