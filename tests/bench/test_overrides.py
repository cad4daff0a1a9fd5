"""`--set` overrides reach nested settings, and mistakes are named."""

from __future__ import annotations

import pytest

from protagonist.bench.methods.oneactor import OneActorRecipe
from protagonist.bench.overrides import apply_overrides, parse_overrides


def test_nested_fields_are_replaced_and_the_rest_kept():
    overrides = parse_overrides(["oneactor:tuning.lr=1e-3", "oneactor:guidance.eta_target=3", "oneactor:target=2"])
    recipe = apply_overrides(OneActorRecipe(), overrides["oneactor"])
    assert recipe.tuning.lr == 1e-3 and recipe.guidance.eta_target == 3 and recipe.target == 2
    assert recipe.tuning.lambda_aux == OneActorRecipe().tuning.lambda_aux


def test_unknown_fields_and_malformed_items_are_explained():
    with pytest.raises(ValueError, match="no setting 'lrr'.*lambda_aux"):
        apply_overrides(OneActorRecipe(), {"tuning.lrr": 1.0})
    with pytest.raises(ValueError, match="method:field"):
        parse_overrides(["tuning.lr=1"])
