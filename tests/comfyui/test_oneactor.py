"""OneActor inside real ComfyUI: the GUIDER in SamplerCustomAdvanced equals the core sampler."""

from __future__ import annotations

from pathlib import Path

import torch

from protagonist.core.oneactor.guidance import ClusterGuidance, cluster_guided_terms
from protagonist.core.oneactor.identity import make_identity, save_identity
from protagonist.core.oneactor.tuning import new_projector
from protagonist.core.sampling import sample, seeded_noise

from .helpers import pack_module, proposal_sampler_inputs, run_prompt, tiny_loader_node

CAPTURED: list = []


def _test_nodes():
    from comfy_api.v0_0_2 import io

    class ZeroLatent(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="ProtagonistTest_ZeroLatent", category="testing", inputs=[],
                             outputs=[io.Latent.Output()])

        @classmethod
        def execute(cls):
            return io.NodeOutput({"samples": torch.zeros(1, 4, 8, 8)})

    class Capture(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="ProtagonistTest_Capture", category="testing", is_output_node=True,
                             inputs=[io.Latent.Input("latent")], outputs=[])

        @classmethod
        def execute(cls, latent):
            CAPTURED.append(latent["samples"].clone())
            return io.NodeOutput()

    return ZeroLatent, Capture


def test_guider_equals_the_core_sampler(comfy_nodes, comfy_sdxl, comfy_backend):
    import folder_paths

    features = torch.randn(3, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    identity = make_identity(new_projector(comfy_backend, features, 0), features, "blob", "sdxl")
    save_identity(identity, Path(folder_paths.get_folder_paths("protagonist")[0]) / "guider_test.safetensors")
    settings = ClusterGuidance(eta_target=6.0, eta_aux=1.5, semantic_scale=0.8, cluster_fraction=0.5, cfg=4.0)
    prompt_text, seed, steps = "a photo of a blob on the beach", 21, 6

    conds, guidance = cluster_guided_terms(comfy_backend, [prompt_text], "", "blob", identity.delta_target,
                                           identity.delta_aux, settings, None)
    core = sample(comfy_backend, conds, seeded_noise([seed], (1, 4, 8, 8)), steps, guidance, "euler")
    expected = comfy_backend.model.model.process_latent_out(core)

    zero, capture = _test_nodes()
    comfy_nodes.NODE_CLASS_MAPPINGS.update({"ProtagonistTest_TinyModels": tiny_loader_node(comfy_sdxl),
                                            "ProtagonistTest_ZeroLatent": zero, "ProtagonistTest_Capture": capture})
    comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_LoadOneActorIdentity"].GET_SCHEMA()
    prompt = {
        "1": {"class_type": "ProtagonistTest_TinyModels", "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "3": {"class_type": "Protagonist_LoadOneActorIdentity", "inputs": {"file": "guider_test.safetensors"}},
        "4": {"class_type": "Protagonist_ClusterGuidedSampler", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "identity": ["3", 0], "prompt": prompt_text, "negative": ["2", 0],
            "eta_target": 6.0, "eta_aux": 1.5, "semantic_scale": 0.8, "cluster_fraction": 0.5, "cfg": 4.0}},
        "5": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "6": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": steps,
                                                         "denoise": 1.0}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "8": {"class_type": "ProtagonistTest_ZeroLatent", "inputs": {}},
        "9": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": ["4", 0], "sampler": ["5", 0], "sigmas": ["6", 0], "latent_image": ["8", 0]}},
        "10": {"class_type": "ProtagonistTest_Capture", "inputs": {"latent": ["9", 0]}},
    }
    CAPTURED.clear()
    run_prompt(prompt)
    assert len(CAPTURED) == 1
    assert (CAPTURED[0] - expected).abs().max() <= 1e-3


def test_one_node_sampler_draws_the_identity(comfy_nodes, comfy_sdxl, comfy_backend):
    from .helpers import pack_module

    model, clip, vae = comfy_sdxl
    features = torch.randn(3, 64, 4, 4, generator=torch.Generator().manual_seed(0))
    identity = make_identity(new_projector(comfy_backend, features, 0), features, "blob", "sdxl")
    node = pack_module("nodes.oneactor_io").OneActorSampler
    images = node.execute(model, clip, vae, identity, "a blob at night\na blob in the snow", "", 4, 3, "euler", 32, 32,
                          6.0, 1.0, 0.8, 0.5, 4.0).result[0]
    assert images.shape == (2, 32, 32, 3) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_trainer_scenes_follow_the_proposals_into_the_tuning(comfy_nodes, comfy_sdxl, monkeypatch):
    module = pack_module("nodes.oneactor")
    original, seen = module.tune_projector, []

    def record(backend, data, *args, **kwargs):
        seen.append(data)
        return original(backend, data, *args, **kwargs)

    monkeypatch.setattr(module, "tune_projector", record)
    scenes = "on a beach\nin a forest"
    comfy_nodes.NODE_CLASS_MAPPINGS["ProtagonistTest_TinyModels"] = tiny_loader_node(comfy_sdxl)
    prompt = {
        "1": {"class_type": "ProtagonistTest_TinyModels", "inputs": {}},
        "2": {"class_type": "Protagonist_ProposalSampler", "inputs": proposal_sampler_inputs(scenes=scenes)},
        "3": {"class_type": "Protagonist_OneActorProjectorTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latents": ["2", 1], "features": ["2", 2], "target_index": 1,
            "base_word": "blob", "templates": "a photo of a {}", "steps": 1, "aux_per_batch": 2, "lr": 1e-4,
            "seed": 0, "scenes": scenes}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }
    outputs, _ = run_prompt(prompt)
    assert len(outputs["4"]["images"]) == 1
    assert seen[0].scenes == ["in a forest", "on a beach", "on a beach"]  # the target (proposal 1) first


def test_trainer_with_a_vae_also_tunes_on_the_mirrored_target(comfy_nodes, comfy_sdxl, monkeypatch):
    module = pack_module("nodes.oneactor")
    original, seen = module.tune_projector, []

    def record(backend, data, base_word, settings, **kwargs):
        seen.append(settings.mirror_target)
        return original(backend, data, base_word, settings, **kwargs)

    monkeypatch.setattr(module, "tune_projector", record)
    comfy_nodes.NODE_CLASS_MAPPINGS["ProtagonistTest_TinyModels"] = tiny_loader_node(comfy_sdxl)
    trainer = {"model": ["1", 0], "clip": ["1", 1], "latents": ["2", 1], "features": ["2", 2], "target_index": 0,
               "base_word": "blob", "templates": "a photo of a {}", "steps": 2, "aux_per_batch": 2, "lr": 1e-4,
               "seed": 0, "scenes": "on a beach, on the left"}
    for with_vae in (True, False):
        prompt = {
            "1": {"class_type": "ProtagonistTest_TinyModels", "inputs": {}},
            "2": {"class_type": "Protagonist_ProposalSampler", "inputs": proposal_sampler_inputs()},
            "3": {"class_type": "Protagonist_OneActorProjectorTrainer",
                  "inputs": {**trainer, **({"vae": ["1", 2]} if with_vae else {})}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        }
        outputs, _ = run_prompt(prompt)
        assert len(outputs["4"]["images"]) == 1
    assert seen == [True, False]


def test_trainer_continues_an_identity_with_more_views_of_the_target(comfy_nodes, comfy_sdxl, monkeypatch):
    module = pack_module("nodes.oneactor")
    original, seen = module.tune_projector, []

    def record(backend, data, base_word, settings, projector=None, **kwargs):
        seen.append((data.proposals, data.target_views, data.latents, projector))
        return original(backend, data, base_word, settings, projector=projector, **kwargs)

    monkeypatch.setattr(module, "tune_projector", record)
    comfy_nodes.NODE_CLASS_MAPPINGS["ProtagonistTest_TinyModels"] = tiny_loader_node(comfy_sdxl)
    trainer = {"model": ["1", 0], "clip": ["1", 1], "latents": ["2", 1], "features": ["2", 2], "target_index": 0,
               "base_word": "blob", "templates": "a photo of a {}", "steps": 2, "aux_per_batch": 2, "lr": 1e-2,
               "seed": 0}
    prompt = {
        "1": {"class_type": "ProtagonistTest_TinyModels", "inputs": {}},
        "2": {"class_type": "Protagonist_ProposalSampler", "inputs": proposal_sampler_inputs()},
        "3": {"class_type": "Protagonist_OneActorProjectorTrainer", "inputs": trainer},
        "4": {"class_type": "Protagonist_OneActorProjectorTrainer",
              "inputs": {**trainer, "more_target_latents": ["2", 1], "continue_from": ["3", 0]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
    }
    outputs, _ = run_prompt(prompt)
    assert len(outputs["5"]["images"]) == 1
    (count, views, _, start), (again, more_views, latents, continued) = seen
    assert start is None and continued is not None and views == 0
    assert more_views == count == again  # every proposal's latent once more, as a view of the target
    assert torch.equal(latents[count:], latents[:count])


def test_flux_proposals_tune_an_identity_that_draws_images(comfy_nodes, monkeypatch):
    """OneActor on a ComfyUI FLUX MODEL (experimental): Proposal Sampler → trainer → sampler, in one prompt."""
    from protagonist.core.oneactor.identity import OneActorIdentity
    from protagonist.core.tiny_models import tiny_flux

    from . import tiny_comfy

    ours = tiny_flux(0, latent_channels=16)  # ComfyUI's FLUX latent format has 16 channels
    comfy_nodes.NODE_CLASS_MAPPINGS["ProtagonistTest_TinyModels"] = tiny_loader_node(tiny_comfy.comfy_flux_models(ours))
    module = pack_module("nodes.oneactor")
    identities, original = [], module.make_identity

    def keep(*args, **kwargs):
        identities.append(original(*args, **kwargs))
        return identities[-1]

    monkeypatch.setattr(module, "make_identity", keep)
    outputs, _ = run_prompt({
        "1": {"class_type": "ProtagonistTest_TinyModels", "inputs": {}},
        "2": {"class_type": "Protagonist_ProposalSampler", "inputs": proposal_sampler_inputs()},
        "3": {"class_type": "Protagonist_OneActorProjectorTrainer", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "latents": ["2", 1], "features": ["2", 2], "target_index": 2,
            "base_word": "blob", "templates": "a photo of a {}", "steps": 3, "aux_per_batch": 2, "lr": 1e-3,
            "seed": 0}},
        "4": {"class_type": "Protagonist_OneActorSampler", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "identity": ["3", 0],
            "prompt": "a blob at night\na blob in the snow", "negative": "", "seed": 4, "steps": 3,
            "sampler": "euler", "width": 32, "height": 32, "eta_target": 6.0, "eta_aux": 1.0,
            "semantic_scale": 0.8, "cluster_fraction": 0.5, "cfg": 4.0}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    })
    identity: OneActorIdentity = identities[0]
    # the last double block's image tokens on the 2×2-patch grid of the 32 px image's 8×8 latent
    assert identity.family == "flux" and tuple(identity.feature_shape) == (ours.transformer.inner_dim, 4, 4)
    assert identity.delta_target.shape == (ours.text_encoders["t5"].config.d_model,)
    assert float(identity.delta_target.norm()) > 0
    assert len(outputs["5"]["images"]) == 2 and len(outputs["6"]["images"]) == 1
