"""OneActor's benchmark recipe: what it tunes on."""

from __future__ import annotations

import pytest
import torch

from protagonist.bench.harness import Character, SamplingSettings
from protagonist.bench.methods import oneactor
from protagonist.bench.methods.oneactor import OneActorRecipe
from protagonist.bench.methods.reference import identity_for
from protagonist.core.chosen_one.clustering import mean_pairwise_distance
from protagonist.sprites.attributes import IDENTITY_ATTRIBUTES
from protagonist.sprites.captions import blob_phrase
from protagonist.bench.overrides import apply_overrides


def test_oneactor_tunes_on_the_characters_subject_with_the_base_word_open(tiny_sdxl_backend, monkeypatch):
    seen = []
    real_tune = oneactor.tune_projectors

    def spy(backend, sets, base_word, settings, callback=None):
        seen.append((settings.templates, sets[0].captions(settings.templates[0], base_word)))
        return real_tune(backend, sets, base_word, settings)

    monkeypatch.setattr(oneactor, "tune_projectors", spy)
    recipe = apply_overrides(OneActorRecipe(), {"proposals": 2, "proposal_steps": 1, "tuning.steps": 1,
                                                "candidates": 1})
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
    method.generate(tiny_sdxl_backend, identity, character.prompts, [0, 1], SamplingSettings(cfg=3.0))
    assert seen[0].eta_aux == 0.0 and seen[0].eta_target == OneActorRecipe().guidance.eta_target
    assert seen[0].cfg == 3.0


def test_with_several_candidates_the_identity_drawing_the_tightest_images_is_kept(tiny_sdxl_backend, monkeypatch):
    tuned_targets, spreads = [], iter([0.9, 0.2, 0.5])
    real_tune = oneactor.OneActorMethod._tune

    def tune(self, backend, character, proposals, scenes, seed, targets):
        tuned_targets.append(list(targets))
        return real_tune(self, backend, character, proposals, scenes, seed, targets)

    monkeypatch.setattr(oneactor.OneActorMethod, "_tune", tune)
    monkeypatch.setattr(oneactor.OneActorMethod, "_check_images", lambda self, *a: (
        ["in a city"] * 2, torch.zeros(2, 3, 32, 32), torch.tensor([[0.0], [next(spreads)]])))
    recipe = apply_overrides(OneActorRecipe(), {"proposals": 3, "proposal_steps": 1, "tuning.steps": 1,
                                                "candidates": 3, "tuning_seeds": 1, "refine_steps": 0})
    character = Character("a red blob", ["on a beach, on the left"])
    kept = oneactor.OneActorMethod(recipe=recipe, embedder=object()).prepare(tiny_sdxl_backend, character, seed=0)
    assert tuned_targets == [[0, 1, 2]]  # side by side, in one tuning
    alone = oneactor.OneActorMethod(recipe=apply_overrides(recipe, {"target": 1, "candidates": 1})).prepare(
        tiny_sdxl_backend, character, seed=0)
    # the second candidate (spread 0.2), as tuned alone up to the batched denoiser's rounding
    assert torch.allclose(kept.delta_target, alone.delta_target, atol=1e-3)


def test_the_kept_identity_is_tuned_further_on_its_most_typical_check_images(tiny_sdxl_backend, monkeypatch):
    calls = []
    real_tune = oneactor.tune_projectors

    def tune(backend, sets, word, settings, callback=None, projectors=None):
        calls.append((sets, settings, projectors))
        return real_tune(backend, sets, word, settings, callback, projectors)

    images = torch.stack([torch.full((3, 32, 32), v) for v in (0.1, 0.5, 0.9, 0.52)])
    embeddings = torch.tensor([[0.0], [5.0], [9.0], [5.2]])  # medoid: row 1; its nearest two: rows 1 and 3
    monkeypatch.setattr(oneactor, "tune_projectors", tune)
    monkeypatch.setattr(oneactor.OneActorMethod, "_check_images", lambda self, *a: (
        ["in the snow"] * 4, images, embeddings))
    recipe = apply_overrides(OneActorRecipe(), {"proposals": 3, "proposal_steps": 1, "tuning.steps": 1,
                                                "candidates": 2, "refine_views": 2, "refine_steps": 3})
    character = Character("a red blob", ["on a beach, on the left"])
    refined = oneactor.OneActorMethod(recipe=recipe, embedder=object()).prepare(tiny_sdxl_backend, character, seed=7)
    (first_sets, first, _), (sets, settings, projectors) = calls
    assert len(first_sets) == 2 and sets[0].proposals == 3 and sets[0].target_views == 2
    assert settings.steps == 3 and settings.seed == 8 and first.seed == 7 and projectors is not None
    with torch.no_grad():
        views = tiny_sdxl_backend.encode_images(images[[1, 3]])
    assert torch.allclose(sets[0].latents[-2:], views) and sets[0].scenes[-2:] == ["in the snow"] * 2
    calls.clear()
    kept = oneactor.OneActorMethod(recipe=apply_overrides(recipe, {"refine_steps": 0}), embedder=object()).prepare(
        tiny_sdxl_backend, character, seed=7)
    assert len(calls) == 1 and not torch.allclose(kept.delta_target, refined.delta_target)


def test_the_kept_target_is_tuned_with_more_seeds_and_their_offsets_averaged(tiny_sdxl_backend, monkeypatch):
    tunings = []
    real_tune = oneactor.OneActorMethod._tune

    def tune(self, backend, character, proposals, scenes, seed, targets):
        tunings.append((seed, list(targets), proposals, scenes))
        return real_tune(self, backend, character, proposals, scenes, seed, targets)

    monkeypatch.setattr(oneactor.OneActorMethod, "_tune", tune)
    recipe = apply_overrides(OneActorRecipe(), {"proposals": 3, "proposal_steps": 1, "tuning.steps": 2,
                                                "candidates": 1, "target": 1, "tuning_seeds": 2})
    character = Character("a red blob", ["on a beach, on the left"])
    method = oneactor.OneActorMethod(recipe=recipe)
    averaged = method.prepare(tiny_sdxl_backend, character, seed=5)
    assert [(seed, targets) for seed, targets, *_ in tunings] == [(5, [1]), (5 + oneactor.SEED_STRIDE, [1])]
    assert tunings[1][2] is tunings[0][2]  # the second seed tunes on the same proposals
    proposals, scenes = tunings[0][2:]
    first, second = (real_tune(method, tiny_sdxl_backend, character, proposals, scenes, seed, [1])[0]
                     for seed in (5, 5 + oneactor.SEED_STRIDE))
    assert not torch.allclose(first.delta_target, second.delta_target)
    assert torch.allclose(averaged.delta_target, (first.delta_target + second.delta_target) / 2, atol=1e-6)
    assert torch.allclose(averaged.delta_aux, (first.delta_aux + second.delta_aux) / 2, atol=1e-6)


def test_the_check_images_share_a_held_out_scene_and_are_measured_by_the_embedder(tiny_sdxl_backend, monkeypatch):
    drawn = []

    def draw_identity(backend, identity, prompts, seeds, guidance, size, steps, *rest):
        drawn.append((prompts, seeds, steps))
        return torch.stack([torch.full((3, 32, 32), float(k)) for k in range(len(seeds))])
    monkeypatch.setattr(oneactor, "draw_identity", draw_identity)
    monkeypatch.setattr(oneactor, "embed_images", lambda embedder, images: images.flatten(1)[:, :2])
    method = oneactor.OneActorMethod(recipe=apply_overrides(OneActorRecipe(), {"check_images": 3, "check_steps": 15}),
                                     embedder=object())
    scenes, images, embeddings = method._check_images(tiny_sdxl_backend, None, "a red blob", ("in a city", "at night"),
                                                      seed=40)
    prompts, seeds, steps = drawn[0]
    assert prompts == ["a red blob in a city"] * 3 and steps == 15 and scenes == ["in a city"] * 3
    assert seeds == [140, 141, 142] and images.shape == (3, 3, 32, 32)
    spread = mean_pairwise_distance(embeddings)
    assert abs(spread - (2 ** 0.5 * (1 + 2 + 1) / 3)) < 1e-5  # distances 1, 2 and 1 between [k, k] points
    method.recipe.check_in_one_scene = False
    scenes = method._check_images(tiny_sdxl_backend, None, "a red blob", ("in a city", "at night"), seed=40)[0]
    assert drawn[1][0] == ["a red blob in a city", "a red blob at night", "a red blob in a city"]
    assert scenes == ["in a city", "at night", "in a city"]
    with pytest.raises(ValueError, match="6 tuned targets needs the embedder"):  # before any work is done
        oneactor.OneActorMethod()
