"""PP-LCNet logits parity with PaddleClas 2.x (``legendary_models/pp_lcnet.py`` @ d178931fc on
paddlepaddle 3.3.1): the fixture's weights regenerated from its numpy recipe, written as
``paddle.save`` writes a state dict (automatic parameter names, converted by state-dict key),
converted and run in float32 at the highest matmul precision; the same file under the SSLD name;
another width's weights refused."""

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

NAME = "PPLCNet_x1_0"


@functools.cache
def _reference() -> tuple[dict, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    manifest = load_manifest(NAME, PADDLECLAS_FIXTURES)
    arrays, x_nchw, logits = regenerate(manifest)
    return manifest, arrays, x_nchw, logits


def test_logits_match_paddleclas(tmp_path):
    manifest, arrays, x_nchw, want = _reference()
    path = write_pdparams(tmp_path / f"{NAME}_pretrained.pdparams", arrays,
                          manifest["param_names"])
    variables = from_paddle(path, NAME)
    model = flaxcls.create_model(NAME)
    with jax.default_matmul_precision("highest"):
        got = jax.jit(model.apply)(variables, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)))
    got = np.asarray(got)[0]
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, f"{NAME}: max|ours - paddleclas| / max|paddleclas| = {rel:.3g}"
    assert got.argmax() == want.argmax() == manifest["logits_stats"]["argmax"]


def test_pdparams_convert_by_state_dict_key_under_the_ssld_name(tmp_path):
    """The file's automatic parameter names (``conv2d_0.w_0``) match nothing; the keys it also
    carries do, for the model and its SSLD release alike."""
    manifest, arrays, _, _ = _reference()
    path = write_pdparams(tmp_path / f"{NAME}_ssld_pretrained.pdparams", arrays,
                          manifest["param_names"])
    want = paddle_to_flax(arrays, NAME)  # keyed by state-dict key, as the fixture lists
    got = from_paddle(path, f"{NAME}_ssld")
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got["params"]["stage5_block1"]["se"]["expand"]["bias"],
                                  arrays["blocks6.1.se.conv2.bias"])


def _x0_5_state_dict(manifest: dict) -> dict[str, np.ndarray]:
    """PPLCNet_x0_5's state dict (zeros), from x1_0's: every width of 16 to 512 (the stem,
    blocks and SE squeezes) halves; the stem's 3 input channels, kernels, the head conv's 1280
    and the 1000 classes stay."""
    return {key: np.zeros([d // 2 if 16 <= d <= 512 else d for d in shape], np.float32)
            for key, shape, _ in manifest["params"]}


def test_another_width_is_refused(tmp_path):
    manifest, _, _, _ = _reference()
    path = write_pdparams(tmp_path / "PPLCNet_x0_5_pretrained.pdparams",
                          _x0_5_state_dict(manifest), manifest["param_names"])
    assert from_paddle(path, "PPLCNet_x0_5")["params"]["head_conv"]["kernel"].shape == \
        (1, 1, 256, 1280)  # the file is x0_5's
    with pytest.raises(ValueError) as err:
        from_paddle(path, NAME)
    lines = str(err.value).split("\n")
    # Every tensor but the fc's (1280 -> 1000 at every width).
    assert lines[0] == (f"cannot convert Paddle weights to {NAME} (PaddleClas state-dict keys): "
                        "144 tensor(s) differ:")
    assert lines[1] == ("  conv1.conv.weight: Paddle weights (8, 3, 3, 3) vs model's name map "
                        "(16, 3, 3, 3)")
    assert lines[-1] == "  ... and 124 more"
