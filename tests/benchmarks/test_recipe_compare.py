"""benchmarks/recipe_compare.py: variants parse, and a tiny comparison runs end to end."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import recipe_compare


def test_variants_are_presets_plus_fields():
    assert recipe_compare.parse_variant("adamw")[1]["optimizer"] == "adamw"
    name, fields = recipe_compare.parse_variant("adamw:lr=0.01,ema_decay=0.9,optimizer=lion")
    assert name == "adamw" and fields["lr"] == 0.01 and fields["ema_decay"] == 0.9
    assert fields["optimizer"] == "lion"  # a field overrides the preset's
    assert recipe_compare.parse_variant("mine:lr=0.2") == ("mine", {"lr": 0.2})
    for bad in ("mine", "adamw:lr"):
        with pytest.raises(SystemExit):
            recipe_compare.parse_variant(bad)


@pytest.mark.heavy
@pytest.mark.slow  # two trainings through the loop
def test_a_comparison_with_ema_and_distillation_on_class_folders(tmp_path, digits_dir, capsys):
    data = tmp_path / "data"
    for split, listing in (("train", "train_list.txt"), ("test", "val_list.txt")):
        for line in (digits_dir / listing).read_text().split("\n"):
            if line:
                path, label = line.split()
                folder = data / split / f"c{label}"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / path.replace("/", "_")).symlink_to(digits_dir / path)
    recipe_compare.main(["--data-dir", str(data), "--epochs", "1", "--batch", "64",
                         "--student", "ResNet_tiny", "--variant", "momentum_ema",
                         "--variant", "distill", "--workdir", str(tmp_path / "runs"),
                         "--csv", str(tmp_path / "out.csv")])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["variant"] for r in rows] == ["momentum_ema", "distill"]
    ema, distill = rows
    assert ema["top1"] == ema["top1_ema"] and 0 < ema["top1_raw"] <= 1
    assert distill["top1_ema"] is None and "distill_teacher_weights" in distill["fields"]
    assert all(r["train_images_per_sec"] > 0 for r in rows)
    assert (tmp_path / "out.csv").read_text().count("\n") == 3
