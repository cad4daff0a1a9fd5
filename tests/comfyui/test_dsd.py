"""DSD inside real ComfyUI: the native two-frame patch predicts as the core forward does."""

from __future__ import annotations

import torch

from protagonist.core.dsd.two_frame import condition_tokens, new_c_embedder, two_frame_predict
from protagonist.core.tiny_models import tiny_flux

from .helpers import pack_module


def test_native_two_frame_equals_the_core_forward(comfy_nodes):
    from . import tiny_comfy

    ours = tiny_flux(0)
    for module in ours.modules().values():
        module.eval()
    c_embedder = new_c_embedder(ours.transformer)
    torch.nn.init.normal_(c_embedder.weight, std=0.2, generator=torch.Generator().manual_seed(0))
    dsd = {"c_embedder": {k: v.clone() for k, v in c_embedder.state_dict().items()}, "lora": {}, "diff": {}}
    model, vae = tiny_comfy.comfy_flux_model(ours.transformer), tiny_comfy.comfy_vae(ours.vae)
    reference = torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    patched, empty = pack_module("nodes.dsd").patched_flux(model, dsd, vae, reference, 32)
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
