"""DSD inside real ComfyUI: the native two-frame patch and true-CFG guider agree with the core."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.dsd.generate import sample_two_frame
from protagonist.core.dsd.guidance import TrueCFG
from protagonist.core.dsd.two_frame import condition_tokens, new_c_embedder, two_frame_predict
from protagonist.core.sampling import seeded_noise
from protagonist.core.tiny_models import tiny_flux

from .helpers import pack_module


@pytest.fixture(scope="module")
def flux_pair(comfy_nodes):
    """The tiny diffusers FLUX, the same weights as ComfyUI MODEL and VAE, and a random (trained-like) DSD."""
    from . import tiny_comfy

    ours = tiny_flux(0)
    for module in ours.modules().values():
        module.eval()
    c_embedder = new_c_embedder(ours.image_embedder())
    torch.nn.init.normal_(c_embedder.weight, std=0.2, generator=torch.Generator().manual_seed(0))
    dsd = {"c_embedder": {k: v.clone() for k, v in c_embedder.state_dict().items()}, "lora": {}, "diff": {}}
    model, vae = tiny_comfy.comfy_flux_model(ours.transformer), tiny_comfy.comfy_vae(ours.vae)
    return ours, c_embedder, dsd, model, vae


def test_native_two_frame_equals_the_core_forward(flux_pair):
    ours, c_embedder, dsd, model, vae = flux_pair
    reference = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    patched, empty = pack_module("nodes.dsd_sampler").patched_flux(model, dsd, vae, reference, 32)
    assert empty.shape == (1, 4, 8, 16)
    theirs = pack_module("nodes.comfy_backend").ComfyBackend(patched)
    x = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cond = ours.encode_prompts(["a blob at night"])
        expected = two_frame_predict(ours, c_embedder, condition_tokens(ours, reference, 32), x, torch.tensor(0.6),
                                     [cond])
        with theirs.session():
            got = theirs.predict(x, torch.tensor(0.6), [cond])
        plain = ours.predict(x, torch.tensor(0.6), [cond])
    assert (expected - plain).abs().max() > 1e-3
    assert (expected - got).abs().max() <= 1e-4


def test_grid_pair_splitter_node(comfy_nodes):
    node = comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_GridPairSplitter"]
    grids = torch.rand(2, 64, 64, 3)
    panels, references, targets, pairs = node.execute(grids, 2, 2, False).result
    assert panels.shape == (8, 32, 32, 3) and references.shape == targets.shape == (24, 32, 32, 3)
    assert torch.equal(panels[5], grids[1, :32, 32:])


def test_native_true_cfg_sampling_equals_the_core(flux_pair):
    ours, c_embedder, dsd, model, vae = flux_pair
    sampler = pack_module("nodes.dsd_sampler")
    to_comfy = pack_module("nodes.comfy_backend").ComfyBackend(model).to_comfy
    reference = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    patched, empty = sampler.patched_flux(model, dsd, vae, reference, 32)
    with torch.no_grad():
        positive, negative = ours.encode_prompts(["a blob at night"]), ours.encode_prompts([""])
    rule, steps, seed = TrueCFG(image_scale=1.5, text_scale=2.5), 4, 7
    native = sampler.sample_canvas(patched, to_comfy(positive), to_comfy(negative), empty, seed, steps, rule)
    sigmas = sampler.canvas_sigmas(patched, "euler", "simple", steps)
    core = sample_two_frame(ours, c_embedder, condition_tokens(ours, reference, 32), positive, negative,
                            seeded_noise([seed], tuple(empty.shape)), steps, rule, "euler", sigmas)
    expected = model.model.process_latent_out(core)
    assert native.shape == expected.shape == (1, 4, 8, 16)
    assert (native - expected).abs().max() <= 1e-3
    off = sampler.sample_canvas(patched, to_comfy(positive), None, empty, seed, steps, TrueCFG())
    assert (native - off).abs().max() > 1e-3  # the guidance did something
    patches = patched.model_options["transformer_options"]["patches"]["post_input"]
    assert [p.enabled for p in patches] == [True]  # the "no image" switch is back on after sampling


def test_sampler_node_runs_any_sampler_and_names_a_missing_negative(flux_pair, comfy_nodes):
    ours, _, dsd, model, vae = flux_pair
    node = comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_TwoFrameDiTSampler"]
    to_comfy = pack_module("nodes.comfy_backend").ComfyBackend(model).to_comfy
    with torch.no_grad():
        positive, negative = to_comfy(ours.encode_prompts(["a blob"])), to_comfy(ours.encode_prompts([""]))
    reference = torch.rand(1, 40, 40, 3)
    image = node.execute(model, vae, dsd, reference, positive, 3, 3, 1.3, 1.5, "dpmpp_2m", "karras", 32, False,
                         negative=negative).result[0]
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(image).all()
    canvas = node.execute(model, vae, dsd, reference, positive, 3, 2, 1.0, 1.0, "heun", "normal", 32, True).result[0]
    assert canvas.shape == (1, 32, 64, 3)
    with pytest.raises(ValueError, match="needs the `negative` input"):  # the pack's own ProtagonistError
        node.execute(model, vae, dsd, reference, positive, 3, 2, 1.0, 2.0, "euler", "simple", 32, False)


def test_training_gradients_through_comfyui_flux_match_diffusers(flux_pair):
    """ComfyUI's FLUX adds residuals in place; the trainable() snapshots keep its gradients exact."""
    import copy

    from protagonist.core.adapters import frozen
    from protagonist.core.dsd.two_frame import conditioned

    ours, c_embedder, _, model, vae = flux_pair
    theirs = pack_module("nodes.comfy_backend").ComfyBackend(model, None, vae)
    reference = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    x = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(9))
    sigma = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        cond = ours.encode_prompts(["a blob at night", "a blob"])
    grads = []
    for backend in (ours, theirs):
        trained = copy.deepcopy(c_embedder)
        tokens = condition_tokens(backend, reference, 32)
        with backend.trainable(), backend.session(), frozen(backend.denoiser), torch.enable_grad(), \
                conditioned(backend.image_embedder(), trained, tokens):
            backend.raw_predict(x, sigma, cond).pow(2).mean().backward()
        grads.append(trained.weight.grad)
    assert grads[0].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-4 * grads[0].abs().max()


def test_pair_filter_asks_the_judge_after_the_threshold(comfy_nodes):
    import json

    dsd_nodes = pack_module("nodes.dsd")

    class BrightOnly:  # stands in for a VLM: "the same" when both panels are bright
        def filter(self, panels, pairs):
            return [(i, j) for i, j in pairs if panels[i].mean() > 0.5 and panels[j].mean() > 0.5], {}

    panels = torch.cat([torch.ones(2, 8, 8, 3), torch.zeros(2, 8, 8, 3)])
    pairs = json.dumps([[i, j] for i in range(4) for j in range(4) if i != j])
    node = comfy_nodes.NODE_CLASS_MAPPINGS["Protagonist_PairFilter"]
    dsd_nodes._JUDGES.clear()
    dsd_nodes._JUDGES["bright-judge"] = BrightOnly()
    try:
        references, targets, report = node.execute(panels, torch.ones(4, 5), pairs, 0.5, "bright-judge").result
    finally:
        dsd_nodes._JUDGES.clear()
    assert references.shape[0] == targets.shape[0] == 2 and float(references.min()) == 1.0
    assert "the judge rejected 10 of the 12 similar pairs" in report
    unjudged = node.execute(panels, torch.ones(4, 5), pairs, 0.5).result[0]
    assert unjudged.shape[0] == 12
