"""Proposals on the tiny SDXL: one prompt per image gives each image what its prompt alone gives."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from protagonist.core.interface import ProtagonistError
from protagonist.core.proposals import ProposalSettings, generate_proposals, prompt_template

SETTINGS = ProposalSettings(count=4, seed=5, steps=2, cfg=3.0, height=32, width=32, batch_size=3)


def test_one_prompt_per_image_equals_each_prompt_on_its_own(tiny_sdxl_backend):
    prompts = ["a red blob on a beach", "a red blob in a forest"] * 2
    mixed = generate_proposals(tiny_sdxl_backend, prompts, "", SETTINGS)
    beach = generate_proposals(tiny_sdxl_backend, prompts[0], "", SETTINGS)
    forest = generate_proposals(tiny_sdxl_backend, prompts[1], "", SETTINGS)
    assert mixed.seeds == beach.seeds == [5, 6, 7, 8]
    torch.testing.assert_close(mixed.latents[0::2], beach.latents[0::2], rtol=0, atol=2e-4)  # batch composition moves float sums
    torch.testing.assert_close(mixed.latents[1::2], forest.latents[1::2], rtol=0, atol=2e-4)  # batch composition moves float sums
    assert not torch.allclose(beach.latents, forest.latents)


def test_a_prompt_list_must_have_one_prompt_per_proposal(tiny_sdxl_backend):
    with pytest.raises(ProtagonistError, match="3 prompts for 4 proposals"):
        generate_proposals(tiny_sdxl_backend, ["a blob"] * 3, "", SETTINGS)


def test_a_prompt_becomes_a_template_at_its_first_whole_base_word():
    assert prompt_template("a yellow blob with a hat", "blob") == "a yellow {} with a hat"
    template = prompt_template("a Blobby {odd} Blob and a blob", "blob")
    assert template.format("<x>") == "a Blobby {odd} <x> and a blob"  # braces kept, only the first whole word
    assert prompt_template("a <blob> blob", "blob") == "a <blob> {}"  # as the encoders find it: not in a token
    with pytest.raises(ProtagonistError, match=r"'blob' does not occur in the prompt 'a red man'.*'man', 'red'"):
        prompt_template("a red man", "blob")


def test_features_that_were_never_captured_are_refused_by_name(tiny_sdxl_backend, monkeypatch):
    import contextlib

    monkeypatch.setattr(type(tiny_sdxl_backend), "capture_features",
                        lambda self, point, cond_index, n_conds: contextlib.nullcontext({}))
    settings = ProposalSettings(count=1, seed=0, steps=1, cfg=2.0, height=32, width=32, batch_size=1)
    with pytest.raises(ProtagonistError, match="no features were captured at 'mid_block'"):
        generate_proposals(tiny_sdxl_backend, "a blob", "", settings, feature_point="mid_block")


def test_guidance_that_ends_early_costs_one_pass_on_each_unguided_step(tiny_sdxl_backend, monkeypatch):
    passes = []
    predict = type(tiny_sdxl_backend).predict
    monkeypatch.setattr(type(tiny_sdxl_backend), "predict",
                        lambda self, x, sigma, conds: passes.append(len(conds)) or predict(self, x, sigma, conds))
    settings = ProposalSettings(count=2, seed=5, steps=4, cfg=3.0, cfg_end=0.5, height=32, width=32, batch_size=2)
    generate_proposals(tiny_sdxl_backend, "a red blob", "", settings)
    assert passes == [2, 2, 1, 1]
    assert settings.evaluations_per_image() == 6


def test_no_guided_step_is_sampling_the_conditional_prediction(tiny_sdxl_backend):
    unguided = generate_proposals(tiny_sdxl_backend, "a red blob", "", replace(SETTINGS, cfg_end=0.0))
    scale_one = generate_proposals(tiny_sdxl_backend, "a red blob", "", replace(SETTINGS, cfg=1.0))
    torch.testing.assert_close(unguided.latents, scale_one.latents, rtol=0, atol=2e-4)
    guided = generate_proposals(tiny_sdxl_backend, "a red blob", "", SETTINGS)
    assert not torch.allclose(unguided.latents, guided.latents, atol=1e-3)


def test_guidance_end_outside_the_steps_or_under_feature_capture_is_refused(tiny_sdxl_backend):
    with pytest.raises(ProtagonistError, match="share of the steps sampled with CFG, from 0 to 1; got 1.5"):
        generate_proposals(tiny_sdxl_backend, "a blob", "", replace(SETTINGS, cfg_end=1.5))
    with pytest.raises(ProtagonistError, match="set `cfg_end` to 1 to capture them"):
        generate_proposals(tiny_sdxl_backend, "a blob", "", replace(SETTINGS, cfg_end=0.5),
                           feature_point="mid_block")
