"""Grid training with one panel held almost clean: which positions, how clean, and that the loss skips them."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.schedules import FlowSchedule
from protagonist.core.training import denoising_error
from protagonist.sprites.held_panels import HELD_NOISE, held_panel_noise


def test_every_grid_holds_exactly_one_quadrant_at_rate_one():
    scale, keep = held_panel_noise(torch.Size([64, 16, 16, 16]), 1.0, torch.Generator().manual_seed(0))
    quadrants = keep[:, 0].unflatten(1, (2, 8)).unflatten(3, (2, 8)).amin(dim=(2, 4))  # [B, 2, 2]: 0 where held
    assert ((quadrants == 0).flatten(1).sum(dim=1) == 1).all()
    assert ((keep == 0) == (scale < 1)).all()
    assert scale[keep == 0].max() < HELD_NOISE and scale[keep == 1].eq(1).all()
    held_where = (quadrants == 0).flatten(1).float().mean(dim=0)
    assert held_where.min() > 0.1  # every quadrant gets held now and then, not always the same one


def test_rate_zero_holds_nothing_and_odd_latents_are_refused():
    scale, keep = held_panel_noise(torch.Size([8, 16, 16, 16]), 0.0, torch.Generator().manual_seed(0))
    assert scale.eq(1).all() and keep.eq(1).all()
    with pytest.raises(ValueError, match="even sides"):
        held_panel_noise(torch.Size([1, 16, 15, 16]), 1.0, torch.Generator())


def test_held_positions_are_noised_less_than_the_level_the_network_is_told():
    class EchoBackend:  # returns what it is fed, and records the level it was told
        schedule = FlowSchedule()

        def raw_predict(self, x, sigma, cond):
            self.told = sigma
            return x

    latents = torch.randn(2, 4, 8, 8)
    scale = torch.ones(2, 1, 8, 8)
    scale[:, :, :4] = 0.0  # the top half held perfectly clean
    backend = EchoBackend()
    error = denoising_error(backend, latents, None, torch.Generator().manual_seed(1), noise_scale=scale)
    noise = _noise_after_sigmas(latents, seed=1)
    # held: the network was fed x0 itself; its target is still noise - x0 (flow)
    assert torch.allclose(error[:, :, :4], (latents - (noise - latents)).pow(2)[:, :, :4], atol=1e-5)
    assert (backend.told > 0).all()
    fed = latents[:, :, 4:] * (1 - backend.told.reshape(-1, 1, 1, 1)) + noise[:, :, 4:] * backend.told.reshape(-1, 1, 1, 1)
    assert torch.allclose(error[:, :, 4:], (fed - (noise[:, :, 4:] - latents[:, :, 4:])).pow(2), atol=1e-5)


def _noise_after_sigmas(latents, seed):
    generator = torch.Generator().manual_seed(seed)
    FlowSchedule().training_sigmas(latents.shape[0], generator)
    return torch.randn(latents.shape, generator=generator)

