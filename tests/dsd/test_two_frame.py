"""The two-frame FLUX forward on the tiny FLUX."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.dsd.two_frame import (condition_tokens, conditioned, new_c_embedder, reference_canvas,
                                            right_half, two_frame_predict)
from protagonist.core.interface import ProtagonistError
from protagonist.core.sampling import cfg_guidance, sample, seeded_noise


def test_canvas_is_reference_then_black():
    reference = torch.rand(2, 3, 20, 24)
    canvas = reference_canvas(reference, 16)
    assert canvas.shape == (2, 3, 16, 32)
    assert torch.equal(right_half(canvas), torch.zeros(2, 3, 16, 16))
    with pytest.raises(ProtagonistError, match="RGB"):
        reference_canvas(torch.rand(1, 1, 32, 32), 16)
    with pytest.raises(ProtagonistError, match="at least 16"):
        reference_canvas(torch.rand(1, 3, 8, 8), 16)


def test_zero_c_embedder_leaves_flux_unchanged_and_a_trained_one_does_not(tiny_flux_backend):
    backend = tiny_flux_backend
    c_embedder = new_c_embedder(backend.image_embedder())
    tokens = condition_tokens(backend, torch.rand(1, 3, 32, 32), 32)
    assert tokens.shape == (1, 4 * 8, 16)  # 32×64 canvas → 8×16 latent → 4×8 packed tokens of 4·4 channels
    cond = backend.encode_prompts(["a blob"])
    x = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = backend.predict(x, torch.tensor(0.5), [cond])
        assert torch.equal(two_frame_predict(backend, c_embedder, tokens, x, torch.tensor(0.5), [cond]), plain)
        torch.nn.init.normal_(c_embedder.weight, std=0.5)
        changed = two_frame_predict(backend, c_embedder, tokens, x, torch.tensor(0.5), [cond])
    assert (changed - plain).abs().max() > 1e-3
    assert torch.equal(backend.predict(x, torch.tensor(0.5), [cond]), plain)  # the hook is gone


def test_sampling_the_canvas_gives_a_new_frame(tiny_flux_backend):
    backend = tiny_flux_backend
    c_embedder = new_c_embedder(backend.image_embedder())
    torch.nn.init.normal_(c_embedder.weight, std=0.1)
    tokens = condition_tokens(backend, torch.rand(2, 3, 32, 32), 32)
    conds = [backend.encode_prompts([""]), backend.encode_prompts(["a blob at night"] * 2)]
    with conditioned(backend.image_embedder(), c_embedder, tokens):
        latents = sample(backend, conds, seeded_noise([1, 2], (2, 4, 8, 16)), 2, cfg_guidance(2.0))
    frame = right_half(backend.decode_latents(latents))
    assert frame.shape == (2, 3, 32, 32)
