"""The README's model table is the registry's, not a hand-written copy."""

from pathlib import Path

import flaxcls
from flaxcls import zoo

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_lists_the_registry_in_order():
    """Header and order here; each row's content is checked by test_models.py's
    test_param_counts_and_shapes[name], which has the model's shapes at hand."""
    lines = zoo.readme_table(README.read_text())
    assert tuple(lines[:2]) == zoo.TABLE_HEADER, "run: python -m flaxcls.zoo --write"
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert names == flaxcls.list_models(), "run: python -m flaxcls.zoo --write"


def test_readme_is_rendered_as_the_table_says(monkeypatch):
    """render_readme (what ``--write`` writes) puts header and rows between the markers and
    leaves the rest alone (rows stubbed here; their content is the test above's)."""
    monkeypatch.setattr(zoo, "markdown_row", lambda name: f"| {name} | row |")
    text = f"intro\n{zoo.START}\nstale\n{zoo.END}\noutro\n"
    out = zoo.render_readme(text)
    assert out.startswith(f"intro\n{zoo.START}\n") and out.endswith(f"\n{zoo.END}\noutro\n")
    lines = zoo.readme_table(out)
    assert tuple(lines[:2]) == zoo.TABLE_HEADER
    assert lines[2:] == [f"| {n} | row |" for n in flaxcls.list_models()]


def test_param_counts_of_a_known_model():
    assert zoo.param_counts("ResNet50") == (25_557_032, 53_120)


# The 56 released models of the 2019 table (ResNet50_vd_v2 shares ResNet50_vd's architecture).
RELEASED = ["AlexNet", "SqueezeNet1_0", "SqueezeNet1_1", "VGG11", "VGG13", "VGG16", "VGG19", "MobileNetV1", "MobileNetV2_x0_25", "MobileNetV2_x0_5", "MobileNetV2", "MobileNetV2_x1_5", "MobileNetV2_x2_0", "ShuffleNetV2_x0_25", "ShuffleNetV2_x0_33", "ShuffleNetV2_x0_5", "ShuffleNetV2", "ShuffleNetV2_x1_5", "ShuffleNetV2_x2_0", "ShuffleNetV2_swish", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152", "ResNet50_vc", "ResNet50_vd", "ResNet101_vd", "ResNet152_vd", "ResNet200_vd", "ResNeXt50_32x4d", "ResNeXt50_vd_32x4d", "ResNeXt50_64x4d", "ResNeXt50_vd_64x4d", "ResNeXt101_32x4d", "ResNeXt101_64x4d", "ResNeXt101_vd_64x4d", "ResNeXt152_32x4d", "ResNeXt152_64x4d", "DenseNet121", "DenseNet161", "DenseNet169", "DenseNet201", "DenseNet264", "SE_ResNeXt50_32x4d", "SE_ResNeXt101_32x4d", "SENet154_vd", "GoogLeNet", "Xception41", "InceptionV4", "DarkNet53", "ResNeXt101_32x8d_wsl", "ResNeXt101_32x16d_wsl", "ResNeXt101_32x32d_wsl", "ResNeXt101_32x48d_wsl", "Fix_ResNeXt101_32x48d_wsl"]


def test_every_released_model_is_registered():
    assert len(RELEASED) == 56
    missing = sorted(set(RELEASED) - set(flaxcls.list_models()))
    assert not missing, f"not registered: {missing}"
    for name in RELEASED:
        assert flaxcls.get_model_cfg(name.lower()).name == name
