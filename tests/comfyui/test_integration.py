"""The pack inside a real ComfyUI process: registration, headless execution, and backend parity."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.sampling import cfg_guidance, sample, seeded_noise

from .helpers import pack_module, proposal_sampler_inputs, run_prompt, tiny_loader_node

PARITY_TOLERANCE = 1e-4
OUR_NODES = {"Protagonist_ProposalSampler", "Protagonist_DINOv2Embed", "Protagonist_KMeansCohesiveCluster",
             "Protagonist_LoraTITrainer", "Protagonist_ChosenOneLoop", "Protagonist_OneActorProjectorTrainer",
             "Protagonist_ClusterGuidedSampler", "Protagonist_OneActorSampler", "Protagonist_SaveOneActorIdentity",
             "Protagonist_LoadOneActorIdentity", "Protagonist_GridPairSplitter", "Protagonist_PairFilter",
             "Protagonist_LoadDSD", "Protagonist_TwoFrameDiTSampler", "Protagonist_TwoFrameTrainer"}


def test_every_node_registers(comfy_nodes):
    registered = {name for name in comfy_nodes.NODE_CLASS_MAPPINGS if name.startswith("Protagonist_")}
    assert registered == OUR_NODES


def test_text_encoding_matches(diffusers_sdxl, comfy_backend):
    with torch.no_grad():
        ours = diffusers_sdxl.encode_prompts(["a photo of a blob on the beach"], word="blob")
        theirs = comfy_backend.encode_prompts(["a photo of a blob on the beach"], word="blob")
    assert (ours.embeds - theirs.embeds).abs().max() <= PARITY_TOLERANCE
    assert (ours.pooled - theirs.pooled).abs().max() <= PARITY_TOLERANCE
    assert ours.word_positions == theirs.word_positions


@pytest.mark.parametrize("sigma", [0.1, 1.0, 14.0])
def test_prediction_parity(diffusers_sdxl, comfy_backend, sigma):
    with torch.no_grad():
        negative, positive = diffusers_sdxl.encode_prompts([""]), diffusers_sdxl.encode_prompts(["a red blob"])
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * (1 + sigma)
        ours = diffusers_sdxl.predict(x, torch.tensor(sigma), [negative, positive])
        comfy = [c.replace(extras={"comfy": {"width": 32, "height": 32, "target_width": 32, "target_height": 32}})
                 for c in (negative, positive)]
        with comfy_backend.session():
            theirs = comfy_backend.predict(x, torch.tensor(sigma), comfy)
    assert ours.shape == theirs.shape == (2, 2, 4, 8, 8)
    assert (ours - theirs).abs().max() <= PARITY_TOLERANCE


def test_vae_parity(diffusers_sdxl, comfy_backend):
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = diffusers_sdxl.encode_images(images)
        theirs = comfy_backend.encode_images(images)
        assert (ours - theirs).abs().max() <= PARITY_TOLERANCE
        assert (diffusers_sdxl.decode_latents(ours) - comfy_backend.decode_latents(ours)).abs().max() <= 1e-4


def test_core_sampler_same_image_on_both_backends(diffusers_sdxl, comfy_backend):
    size = (32, 32)
    noise = seeded_noise([5, 6], diffusers_sdxl.latent_shape(2, *size))
    results = []
    for backend in (diffusers_sdxl, comfy_backend):
        with torch.no_grad():
            conds = [backend.encode_prompts([""], image_size=size), backend.encode_prompts(["a blob"], image_size=size)]
            results.append(sample(backend, conds, noise, 6, cfg_guidance(4.0), sampler="dpmpp_2m"))
    assert (results[0] - results[1]).abs().max() <= 1e-3


def test_proposal_sampler_runs_in_comfyui(comfy_nodes, comfy_sdxl):
    comfy_nodes.NODE_CLASS_MAPPINGS["ProtagonistTest_TinyModels"] = tiny_loader_node(comfy_sdxl)
    prompt = {
        "1": {"class_type": "ProtagonistTest_TinyModels", "inputs": {}},
        "2": {"class_type": "Protagonist_ProposalSampler", "inputs": proposal_sampler_inputs(
            seed=11, steps=4, cfg=5.0, batch_size=2)},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    outputs, executor = run_prompt(prompt)
    assert len(outputs["3"]["images"]) == 3


@pytest.mark.parametrize("sigma", [0.2, 0.9])
def test_flux_prediction_parity(comfy_nodes, sigma):
    from protagonist.core.tiny_models import tiny_flux

    from . import tiny_comfy

    ours = tiny_flux(0)
    for module in ours.modules().values():
        module.eval()
    model = tiny_comfy.comfy_flux_model(ours.transformer)
    theirs = pack_module("nodes.comfy_backend").ComfyBackend(model)
    assert theirs.family == "flux" and theirs.schedule.prediction_type == "flow"
    with torch.no_grad():
        cond = ours.encode_prompts(["a photo of a blob"])
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        expected = ours.predict(x, torch.tensor(sigma), [cond])
        with theirs.session():
            got = theirs.predict(x, torch.tensor(sigma), [cond])
    assert (expected - got).abs().max() <= PARITY_TOLERANCE


def test_flux_feature_capture_matches_between_backends(comfy_nodes):
    """OneActor's FLUX features (experimental): the last double block's image tokens of the conditional half."""
    from protagonist.core.tiny_models import tiny_flux

    from . import tiny_comfy

    ours = tiny_flux(0)
    for module in ours.modules().values():
        module.eval()
    theirs = pack_module("nodes.comfy_backend").ComfyBackend(tiny_comfy.comfy_flux_model(ours.transformer))
    assert theirs.oneactor_feature_point == ours.oneactor_feature_point
    with torch.no_grad():
        conds = [ours.encode_prompts([""] * 2), ours.encode_prompts(["a photo of a blob"] * 2)]
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        captured = []
        for backend in (ours, theirs):
            with backend.session(), backend.capture_features(backend.oneactor_feature_point, 1, 2) as store:
                backend.predict(x, torch.tensor(0.6), conds)
            captured.append(backend.feature_grid(store["features"], (8, 8)))
    assert captured[0].shape == captured[1].shape == (2, ours.transformer.inner_dim, 4, 4)
    assert (captured[0] - captured[1]).abs().max() <= 1e-3


def test_feature_capture_matches_between_backends(diffusers_sdxl, comfy_backend):
    from protagonist.core.proposals import ProposalSettings, generate_proposals

    settings = ProposalSettings(count=2, seed=4, steps=3, cfg=4.0, height=32, width=32, batch_size=2)
    ours = generate_proposals(diffusers_sdxl, "a photo of a blob", "", settings, feature_point="mid_block")
    theirs = generate_proposals(comfy_backend, "a photo of a blob", "", settings, feature_point="mid_block")
    assert ours.features.shape == theirs.features.shape == (2, 64, 4, 4)
    assert (ours.features - theirs.features).abs().max() <= 1e-3


def test_guidance_that_ends_early_matches_between_backends(diffusers_sdxl, comfy_backend):
    """`fast` proposals switch from two conditionings to one mid-run: ComfyUI's processed conds follow."""
    from dataclasses import replace

    from protagonist.core.proposals import ProposalSettings, generate_proposals

    settings = ProposalSettings(count=2, seed=4, steps=4, cfg=20.0, cfg_end=0.5, height=32, width=32, batch_size=2)
    ours = generate_proposals(diffusers_sdxl, "a photo of a blob", "", settings)
    theirs = generate_proposals(comfy_backend, "a photo of a blob", "", settings)
    full = generate_proposals(comfy_backend, "a photo of a blob", "", replace(settings, cfg_end=1.0))
    parity = (ours.latents - theirs.latents).abs().max()
    assert parity <= 1e-3
    assert (full.latents - theirs.latents).abs().max() > 10 * parity  # the unguided steps did change the images
