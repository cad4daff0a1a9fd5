"""Grid training with one panel held almost clean: a loss that pays for reading the other panels.

In a grid noised uniformly, a panel's best guess of the character at high noise can lean on the other
three panels only as much as their own noisy evidence allows, so the FLUX sprite model learnt to draw the
panels nearly independently (bench/results/sprite_baseline.md, session 14). When one panel is nearly clean
and the others are not, copying its character is the whole gain, and that copying is what the grid prompts
and DSD's two-frame model need. The held panel itself is left out of the loss (as DSD's reference frame).
"""

from __future__ import annotations

import torch

# The held panel's noise level is drawn uniformly from [0, HELD_NOISE × the step's level].
HELD_NOISE = 0.25
# Layout "many": one to three panels, each at its own level drawn from [0, MANY_HELD_NOISE × the step's level],
# so the model also learns to read panels that are only partly denoised, as in a grid being sampled.
MANY_HELD_NOISE = 0.9
HELD_LAYOUTS = ("one", "many")


def held_panel_noise(latent_shape: torch.Size, rate: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise scale, loss mask), both [B, 1, H, W], for a batch of 2×2 grid latents.

    In a `rate` share of the grids one random quadrant gets a noise scale below HELD_NOISE and loss weight 0;
    everything else keeps scale 1 and weight 1.
    """
    batch, _, height, width = _grid_shape(latent_shape)
    scale, keep = torch.ones(batch, 1, height, width), torch.ones(batch, 1, height, width)
    held = torch.rand(batch, generator=generator) < rate
    quadrants = torch.randint(4, (batch,), generator=generator)
    levels = torch.rand(batch, generator=generator) * HELD_NOISE
    for b in held.nonzero().flatten().tolist():
        _hold(scale, keep, b, int(quadrants[b]), float(levels[b]))
    return scale, keep


def held_panels_noise(latent_shape: torch.Size, rate: float, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`held_panel_noise`, but a held grid holds one to three random quadrants, each at its own noise
    scale below MANY_HELD_NOISE."""
    batch, _, height, width = _grid_shape(latent_shape)
    scale, keep = torch.ones(batch, 1, height, width), torch.ones(batch, 1, height, width)
    for b in (torch.rand(batch, generator=generator) < rate).nonzero().flatten().tolist():
        count = int(torch.randint(1, 4, (1,), generator=generator))
        for quadrant in torch.randperm(4, generator=generator)[:count].tolist():
            _hold(scale, keep, b, quadrant, float(torch.rand((), generator=generator)) * MANY_HELD_NOISE)
    return scale, keep


def held_noise(layout: str):
    """The noise function of a `--held-layout`."""
    if layout not in HELD_LAYOUTS:
        raise ValueError(f"held layout must be one of {HELD_LAYOUTS}, got {layout!r}")
    return held_panel_noise if layout == "one" else held_panels_noise


def _grid_shape(latent_shape: torch.Size) -> torch.Size:
    if latent_shape[-2] % 2 or latent_shape[-1] % 2:
        raise ValueError(f"a 2×2 grid latent needs even sides, got {latent_shape[-2]}×{latent_shape[-1]}")
    return latent_shape


def _hold(scale: torch.Tensor, keep: torch.Tensor, b: int, quadrant: int, level: float) -> None:
    height, width = scale.shape[-2:]
    row, col = divmod(quadrant, 2)
    rows = slice(row * height // 2, (row + 1) * height // 2)
    cols = slice(col * width // 2, (col + 1) * width // 2)
    scale[b, :, rows, cols] = level
    keep[b, :, rows, cols] = 0.0
