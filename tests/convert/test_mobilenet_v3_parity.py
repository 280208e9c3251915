"""MobileNetV3 logits parity with PaddleClas 2.x (``legendary_models/mobilenet_v3.py`` @
d178931fc on paddlepaddle 3.3.1): the fixtures' weights regenerated from their numpy recipe,
keyed by PaddleClas's state-dict keys, converted and run in float32 at the highest matmul
precision; the same weights as a ``.pdparams`` (automatic parameter names, as ``paddle.save``
writes them) and under the SSLD names; another variant's weights refused."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from paddle_writers import write_pdparams
from reference import PADDLECLAS_FIXTURES, load_manifest, regenerate

import flaxcls
from flaxcls.convert import from_paddle, paddle_to_flax

MODELS = ["MobileNetV3_large_x1_0", "MobileNetV3_small_x1_0"]


@functools.cache
def _reference(name: str) -> tuple[dict, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    manifest = load_manifest(name, PADDLECLAS_FIXTURES)
    arrays, x_nchw, logits = regenerate(manifest)
    return manifest, arrays, x_nchw, logits


@pytest.mark.parametrize("name", MODELS)
def test_logits_match_paddleclas(name):
    manifest, arrays, x_nchw, want = _reference(name)
    variables = paddle_to_flax(arrays, name)  # keyed by state-dict key, as the fixture lists
    model = flaxcls.create_model(name)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    got = np.asarray(got)[0]
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, f"{name}: max|ours - paddleclas| / max|paddleclas| = {rel:.3g}"
    assert got.argmax() == want.argmax() == manifest["logits_stats"]["argmax"]


@pytest.mark.parametrize("name", MODELS)
def test_pdparams_convert_by_state_dict_key(name, tmp_path):
    """A ``.pdparams`` renames its tensors to automatic parameter names (``conv2d_0.w_0``) that
    match nothing; the keys it also carries do. Also under the SSLD name."""
    manifest, arrays, _, _ = _reference(name)
    path = write_pdparams(tmp_path / f"{name}_ssld_pretrained.pdparams", arrays,
                          manifest["param_names"])
    want = paddle_to_flax(arrays, name)
    for model_name in (name, f"{name}_ssld"):
        got = from_paddle(path, model_name)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)


def test_another_variant_is_refused():
    _, arrays, _, _ = _reference("MobileNetV3_small_x1_0")
    with pytest.raises(ValueError) as err:
        paddle_to_flax(arrays, "MobileNetV3_large_x1_0")
    lines = str(err.value).split("\n")
    assert lines[0] == ("cannot convert Paddle weights to MobileNetV3_large_x1_0: 248 tensor(s) "
                        "differ:")
    # small's unit 0 is large's plus SE; unit 1 expands 16 -> 72 where large's does 16 -> 64.
    assert lines[1] == ("  blocks.1.expand_conv.conv.weight: Paddle weights (72, 16, 1, 1) vs "
                        "model's name map (64, 16, 1, 1)")
    assert lines[-1] == "  ... and 228 more"
    with pytest.raises(ValueError, match="MobileNetV3_small_x0_75"):
        paddle_to_flax(arrays, "MobileNetV3_small_x0_75")
