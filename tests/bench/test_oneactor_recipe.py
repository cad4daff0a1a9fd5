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


def test_the_ceiling_row_hands_the_sampler_the_named_prompts_class_word_offset(tiny_sdxl_backend, monkeypatch):
    import torch

    from protagonist.bench.methods.reference import identity_for
    from protagonist.sprites.attributes import IDENTITY_ATTRIBUTES
    from protagonist.sprites.captions import blob_phrase

    character = Character("a red blob", ["on a beach, on the left", "at night, in the center"])
    method = oneactor.NamedOffsetCeiling()
    identity = method.prepare(tiny_sdxl_backend, character, seed=3)
    full = blob_phrase(identity_for("a red blob", 3), IDENTITY_ATTRIBUTES, prenominal=True)
    with torch.no_grad():
        named = tiny_sdxl_backend.encode_prompts([full], word="blob")
        subject = tiny_sdxl_backend.encode_prompts(["a red blob"], word="blob")
    # subject state + offset = the named state: the class word then reads as in the fully named prompt
    assert torch.allclose(subject.embeds[0, subject.word_positions[0][0]] + identity.delta_target,
                          named.embeds[0, named.word_positions[0][0]], atol=1e-5)
    assert not identity.delta_aux.any()
    seen = []
    monkeypatch.setattr(oneactor, "draw_identity", lambda backend, ident, prompts, seeds, guidance, *a: (
        seen.append(guidance), torch.zeros(len(prompts), 3, 32, 32))[1])
    from protagonist.bench.harness import SamplingSettings

    method.generate(tiny_sdxl_backend, identity, character.prompts, [0, 1], SamplingSettings(cfg=3.0))
    assert seen[0].eta_aux == 0.0 and seen[0].eta_target == OneActorRecipe().guidance.eta_target
    assert seen[0].cfg == 3.0
