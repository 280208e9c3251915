"""CompiledForward: weights placed once in the layouts the compiled program takes.

On the CPU, XLA keeps the default layouts, so the GPU case (convolution kernels wanted as
OHWI) is reproduced by pinning the kernels' layout to what XLA:GPU picks
(major-to-minor (3, 0, 1, 2): O, H, W, I) in place of ``Layout.AUTO``."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.experimental.layout import Format, Layout
from model_checks import random_variables

import flaxcls
from flaxcls import layouts
from flaxcls.layouts import CompiledForward
from flaxcls.models.fold import fold_batchnorm


@pytest.fixture(scope="module")
def folded_tiny():
    model = flaxcls.create_model("ResNet_tiny", num_classes=10, dtype="float32")
    variables = random_variables(model, 32, random_bn=True)  # non-trivial statistics
    folded = fold_batchnorm(model, variables, (1, 32, 32, 3))
    images = np.random.RandomState(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    return folded, folded.variables, images


def test_same_outputs_as_jit_for_each_input_shape(folded_tiny):
    folded, host_vars, images = folded_tiny
    forward = CompiledForward(folded.apply, host_vars)
    want = jax.jit(folded.apply)(host_vars, images)
    np.testing.assert_array_equal(np.asarray(forward(images)), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(forward(images[:1])),
                                  np.asarray(jax.jit(folded.apply)(host_vars, images[:1])))
    assert len(forward._compiled) == 2  # one executable per input shape
    forward(images)
    assert len(forward._compiled) == 2
    # Only the placed copy of the weights is kept.
    assert all(isinstance(a, jax.Array) for a in jax.tree.leaves(forward._source))


def test_default_layout_path_is_the_plain_jit_program(folded_tiny):
    folded, host_vars, images = folded_tiny
    plain = CompiledForward(folded.apply, host_vars, auto_layout=False)
    np.testing.assert_array_equal(np.asarray(plain(images)),
                                  np.asarray(jax.jit(folded.apply)(host_vars, images)))
    assert plain.kernel_layouts() == {}


def test_kernels_placed_in_the_layout_the_program_takes(folded_tiny, monkeypatch):
    """With the kernels' layout fixed to XLA:GPU's OHWI choice, the weights are placed in it
    (once), the program runs with them, and the outputs do not change."""
    folded, host_vars, images = folded_tiny
    ohwi = Layout((3, 0, 1, 2))

    def gpu_like(tree, sharding):
        return jax.tree.map(
            lambda a: Format(ohwi if np.ndim(a) == 4 else Layout.AUTO, sharding), tree)

    monkeypatch.setattr(layouts, "_auto_formats", gpu_like)
    forward = CompiledForward(folded.apply, host_vars)
    out = forward(images)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jax.jit(folded.apply)(host_vars, images)),
                               rtol=1e-5, atol=1e-5)
    kernels = forward.kernel_layouts()
    n_convs = sum(1 for a in jax.tree.leaves(host_vars) if np.ndim(a) == 4)
    assert len(kernels) == n_convs > 0
    assert set(kernels.values()) == {str((3, 0, 1, 2))}
    for a in jax.tree.leaves(forward._source):
        if a.ndim == 4:
            assert a.format.layout.major_to_minor == (3, 0, 1, 2)
    placed = forward._placed
    forward(images[:2])  # another shape, same layouts: nothing is placed again
    assert forward._placed is placed


def test_falls_back_to_default_layouts_when_the_backend_cannot_choose(folded_tiny, monkeypatch):
    folded, host_vars, images = folded_tiny

    def refuse(tree, sharding):
        raise NotImplementedError("no layout choice here")

    monkeypatch.setattr(layouts, "_auto_formats", refuse)
    forward = CompiledForward(folded.apply, host_vars)
    np.testing.assert_array_equal(np.asarray(forward(images)),
                                  np.asarray(jax.jit(folded.apply)(host_vars, images)))
    assert forward.auto_layout is False


def test_falls_back_when_the_weights_cannot_be_placed(folded_tiny, monkeypatch):
    folded, host_vars, images = folded_tiny
    forward = CompiledForward(folded.apply, host_vars)
    real_put = jax.device_put
    calls = []

    def put_once_refused(x, device=None, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("layout not supported by this runtime")
        return real_put(x, device, **kw)

    monkeypatch.setattr(jax, "device_put", put_once_refused)
    np.testing.assert_array_equal(np.asarray(forward(images)),
                                  np.asarray(jax.jit(folded.apply)(host_vars, images)))
    assert forward.auto_layout is False and len(calls) == 2
