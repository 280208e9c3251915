"""The README's model table is the registry's, not a hand-written copy."""

from reference import README, RELEASED

import flaxcls
from flaxcls import zoo


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




def test_every_released_model_is_registered():
    assert len(RELEASED) == 56
    missing = sorted(set(RELEASED) - set(flaxcls.list_models()))
    assert not missing, f"not registered: {missing}"
    for name in RELEASED:
        assert flaxcls.get_model_cfg(name.lower()).name == name
