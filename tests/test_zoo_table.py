"""The README's model table is the registry's, not a hand-written copy."""

from pathlib import Path

import flaxcls
from flaxcls import zoo

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_is_generated_from_the_registry():
    text = README.read_text()
    assert zoo.render_readme(text) == text, "run: python -m flaxcls.zoo --write"
    table = text.split(zoo.START)[1].split(zoo.END)[0]
    for name in flaxcls.list_models():
        assert f"| {name} |" in table


def test_param_counts_of_a_known_model():
    assert zoo.param_counts("ResNet50") == (25_557_032, 53_120)
