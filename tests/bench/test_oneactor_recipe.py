"""OneActor's benchmark recipe: what it tunes on."""

from __future__ import annotations

from protagonist.bench.harness import Character
from protagonist.bench.methods import oneactor
from protagonist.bench.methods.oneactor import OneActorRecipe
from protagonist.bench.overrides import apply_overrides


def test_oneactor_tunes_on_the_characters_subject_with_the_base_word_open(tiny_sdxl_backend, monkeypatch):
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
