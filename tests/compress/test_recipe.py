import pytest

import nmq
from nmq.compress.methods import Method, get_method, method_names
from nmq.errors import PatternError, QuantError, RecipeError
from nmq.format.pattern import Pattern
from nmq.format.spec import QuantSpec


def test_a_recipe_holds_parsed_objects():
    r = nmq.Recipe(pattern="4:8", bits=8, group_size=64, symmetric=False, method="wanda+gptq")
    assert r.pattern == Pattern(4, 8)
    assert r.quant == QuantSpec(8, 64, False)
    assert isinstance(r.method, Method) and (r.method.prune, r.method.quant) == ("wanda", "gptq")
    assert r.needs_calibration and r.method.compensates


@pytest.mark.parametrize("name", method_names())
def test_every_registered_name_round_trips_through_the_record(name):
    r = nmq.Recipe(method=name)
    d = r.to_dict()
    assert d["method"] == name and d["pattern"] == "2:4"
    assert nmq.Recipe.from_dict(d) == r


def test_aliases_are_the_same_method_under_their_own_name():
    assert type(get_method("rtn")) is type(get_method("magnitude"))
    assert get_method("rtn").name == "rtn" and not get_method("rtn").needs_calibration
    assert type(get_method("sparsegpt+joint")) is type(get_method("sparsegpt"))


def test_bad_recipes_name_what_is_wrong():
    with pytest.raises(RecipeError, match="accepted: magnitude, rtn"):
        nmq.Recipe(method="obs")
    with pytest.raises(PatternError, match="recipe: "):
        nmq.Recipe(pattern="5:4")
    with pytest.raises(QuantError, match="recipe: .*multiple of M=8"):
        nmq.Recipe(pattern="4:8", group_size=12)
    with pytest.raises(RecipeError, match="unknown field"):
        nmq.Recipe.from_dict({"pattern": "2:4", "quant": "int4"})
