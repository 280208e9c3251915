"""Inference with the weights held on device in the layouts the compiler wants.

A jitted forward that takes its weights as arguments receives them in the default row-major
layout: convolution kernels as HWIO. XLA:GPU runs NHWC convolutions in cuDNN with the kernel
as OHWI, so it compiles one transpose kernel per convolution into the program, and every
call re-lays-out every weight (ResNet50, batch 1, bf16 on an H100 target: 53 transposes of
111 kernels, 94 MB of the call's 210 MB). The weights do not change between calls, so
``CompiledForward`` lets the compiler choose the weights' layouts (``Layout.AUTO``), puts the
weights on device in those layouts once, and then calls the compiled program with them: the
transposes are gone (58 kernels for the same forward). On backends whose preferred layout is
the default one (the CPU) nothing changes.

    forward = CompiledForward(apply, variables)     # apply(variables, x) -> outputs
    probs = forward(images)                         # compiled per input shape and dtype
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import Sharding, SingleDeviceSharding

log = logging.getLogger("flaxcls")


def _auto_formats(tree: Any, sharding: Sharding) -> Any:
    from jax.experimental.layout import Format, Layout

    return jax.tree.map(lambda _: Format(Layout.AUTO, sharding), tree)


def _abstract(tree: Any, sharding: Sharding) -> Any:
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


class CompiledForward:
    """``apply(variables, x)`` compiled for each input shape and dtype it meets, with
    ``variables`` kept on device in the layouts that compilation chose for them.

    ``variables`` may be host (numpy) or device arrays; they are placed once, on
    ``weights_sharding`` (default: the first device), and placed again only if a later input
    shape makes the compiler choose other layouts; only the placed copy is kept. ``x`` is placed with
    ``input_sharding`` (default: the weights'). ``auto_layout=False`` compiles with the default
    layouts (the plain ``jax.jit`` behaviour), for comparison. A backend that cannot choose
    parameter layouts falls back to the default ones, with a log line.
    """

    def __init__(self, apply: Callable[[Any, jax.Array], Any], variables: Any, *,
                 weights_sharding: Sharding | None = None,
                 input_sharding: Sharding | None = None, auto_layout: bool = True):
        self._apply = apply
        self._source = variables
        self._wsharding = weights_sharding or SingleDeviceSharding(jax.devices()[0])
        self._xsharding = input_sharding or self._wsharding
        self.auto_layout = bool(auto_layout)
        self._abstract_vars = _abstract(variables, self._wsharding)
        self._compiled: dict[tuple, Any] = {}
        self._placed: Any = None
        self._placed_formats: Any = None
        self._lock = threading.Lock()

    def compiled(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """The compiled program for inputs of this shape and dtype (compiled on first use)."""
        key = (tuple(shape), jax.numpy.dtype(dtype).name)
        with self._lock:
            if key not in self._compiled:
                self._compiled[key] = self._compile(key)
            return self._compiled[key]

    def _compile(self, key: tuple) -> Any:
        x = jax.ShapeDtypeStruct(key[0], key[1], sharding=self._xsharding)
        if self.auto_layout:
            try:
                jitted = jax.jit(self._apply, in_shardings=(
                    _auto_formats(self._source, self._wsharding), self._xsharding))
                return jitted.lower(self._abstract_vars, x).compile()
            except Exception as e:  # noqa: BLE001 - a backend without layout choice
                log.info("CompiledForward: the compiler could not choose the weights' layouts "
                         "(%s: %s); using the default layouts", type(e).__name__, str(e)[:200])
                self.auto_layout = False
        jitted = jax.jit(self._apply, in_shardings=(self._wsharding, self._xsharding))
        return jitted.lower(self._abstract_vars, x).compile()

    def weights_for(self, compiled: Any) -> Any:
        """The variables on device in the layouts ``compiled`` takes (placed on first need)."""
        formats = compiled.input_formats[0][0]
        with self._lock:
            if self._placed is None or formats != self._placed_formats:
                self._placed = jax.device_put(self._source, formats)
                self._placed_formats = formats
                # Only the placed copy is kept (a later re-placement starts from it), so the
                # weights are held once, not twice.
                self._source = self._placed
            return self._placed

    def __call__(self, x: Any) -> Any:
        compiled = self.compiled(x.shape, x.dtype)
        try:
            weights = self.weights_for(compiled)
        except Exception as e:  # a runtime that cannot place these layouts
            if not self.auto_layout:
                raise
            log.info("CompiledForward: the weights could not be placed in the compiler's "
                     "layouts (%s: %s); using the default layouts", type(e).__name__, str(e)[:200])
            with self._lock:
                self.auto_layout = False
                self._compiled.clear()
            compiled = self.compiled(x.shape, x.dtype)
            weights = self.weights_for(compiled)
        return compiled(weights, x)

    def kernel_layouts(self) -> dict[str, str]:
        """Path -> major-to-minor order of every placed 4-D weight whose layout is not the
        default one (empty before the first call, and on backends that keep the default)."""
        if self._placed_formats is None:
            return {}
        out = {}
        flat, _ = jax.tree_util.tree_flatten_with_path(self._placed_formats)
        for path, fmt in flat:
            order = tuple(getattr(fmt.layout, "major_to_minor", ()) or ())
            if len(order) == 4 and order != (0, 1, 2, 3):
                out[jax.tree_util.keystr(path)] = str(order)
        return out
