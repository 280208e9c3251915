"""python -m flaxcls.data.preview: a grid of augmented training images."""

from __future__ import annotations

import numpy as np
from conftest import REPO
from PIL import Image

from flaxcls.data import preview


def test_preview_writes_a_grid_of_the_expected_size(digits_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = [f"--config={REPO / 'configs' / 'digits.py'}", f"--workdir={tmp_path / 'w'}",
            f"--config.data_dir={digits_dir}", "--config.builtin_dataset=",
            "--config.cutmix_alpha=1.0", "--config.random_erasing=1.0",
            "--config.random_erasing_mode=const", "--config.auto_augment=rand-m9-n2-mstd0.5",
            "--count=10", "--cols=4", f"--out={out}"]
    assert preview.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    image = np.asarray(Image.open(out))
    size, gap = 32, preview.GAP
    assert image.shape == (3 * (size + gap) - gap, 4 * (size + gap) - gap, 3)
    assert image.dtype == np.uint8 and image.std() > 10  # real pictures, not a blank


def test_preview_errors_are_one_line(tmp_path, capsys):
    assert preview.main([f"--workdir={tmp_path}", "--config.random_erasing=2"]) == 2
    assert "config.random_erasing=2" in capsys.readouterr().err
    assert preview.main(["--count=3"]) == 2
    assert "--workdir is required" in capsys.readouterr().err


def test_grid_layout():
    images = np.zeros((5, 2, 3, 3), np.uint8)
    g = preview.grid(images, cols=2)
    assert g.shape == (3 * 4 - 2, 2 * 5 - 2, 3)
    assert (g[2:4] == 255).all()  # the gap between rows
