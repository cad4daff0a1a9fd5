"""Grid training with one panel held almost clean: which positions, how clean, and that the loss skips them."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.schedules import FlowSchedule
from protagonist.core.training import denoising_error
from protagonist.sprites.held_panels import (HELD_NOISE, MANY_HELD_NOISE, held_noise, held_panel_noise,
                                           held_panels_noise)


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



def test_many_layout_holds_one_to_three_quadrants_each_at_its_own_level():
    scale, keep = held_panels_noise(torch.Size([256, 16, 8, 8]), 1.0, torch.Generator().manual_seed(0))
    held = (keep[:, 0].unflatten(1, (2, 4)).unflatten(3, (2, 4)).amax(dim=(2, 4)) == 0).flatten(1)  # [B, 4]
    counts = held.sum(dim=1)
    assert counts.min() == 1 and counts.max() == 3
    assert {1, 2, 3} <= set(counts.tolist())
    assert ((keep == 0) == (scale < 1)).all() and scale[keep == 0].max() < MANY_HELD_NOISE
    two_held = scale[counts == 2, 0].unflatten(1, (2, 4)).unflatten(3, (2, 4)).amax(dim=(2, 4)).flatten(1)
    levels = two_held[two_held < 1].reshape(-1, 2)
    assert (levels[:, 0] != levels[:, 1]).all()  # each held panel draws its own level


def test_held_layouts_are_named_and_others_refused():
    assert held_noise("one") is held_panel_noise and held_noise("many") is held_panels_noise
    scale, keep = held_panels_noise(torch.Size([8, 16, 8, 8]), 0.0, torch.Generator().manual_seed(0))
    assert scale.eq(1).all() and keep.eq(1).all()
    with pytest.raises(ValueError, match="held layout"):
        held_noise("all")
