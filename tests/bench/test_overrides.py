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


def test_oneactor_tunes_on_the_characters_subject_with_the_base_word_open(tiny_sdxl_backend, monkeypatch):
    from protagonist.bench.harness import Character
    from protagonist.bench.methods import oneactor

    seen = []
    real_tune = oneactor.tune_projector

    def spy(backend, data, base_word, settings, callback=None):
        seen.append((settings.templates, data.captions(settings.templates[0], base_word)))
        return real_tune(backend, data, base_word, settings)

    monkeypatch.setattr(oneactor, "tune_projector", spy)
    recipe = apply_overrides(OneActorRecipe(), {"proposals": 2, "proposal_steps": 1, "tuning.steps": 1})
    character = Character("a red blob with a hat", ["on a beach, on the left"])
    oneactor.OneActorMethod(recipe=recipe).prepare(tiny_sdxl_backend, character, seed=0)
    templates, captions = seen[-1]
    assert templates == ("a red {} with a hat",)
    assert all(c.startswith("a red blob with a hat ") for c in captions)
    assert not any(c.endswith("on a beach, on the left") for c in captions)  # held-out scenes only
    oneactor.OneActorMethod(recipe=apply_overrides(recipe, {"subject_captions": False})).prepare(
        tiny_sdxl_backend, character, seed=0)
    assert seen[-1][0] == ("a {}",)
