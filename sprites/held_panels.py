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


def held_panel_noise(latent_shape: torch.Size, rate: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise scale, loss mask), both [B, 1, H, W], for a batch of 2×2 grid latents.

    In a `rate` share of the grids one random quadrant gets a noise scale below HELD_NOISE and loss weight 0;
    everything else keeps scale 1 and weight 1.
    """
    batch, _, height, width = latent_shape
    if height % 2 or width % 2:
        raise ValueError(f"a 2×2 grid latent needs even sides, got {height}×{width}")
    scale, keep = torch.ones(batch, 1, height, width), torch.ones(batch, 1, height, width)
    held = torch.rand(batch, generator=generator) < rate
    quadrants = torch.randint(4, (batch,), generator=generator)
    levels = torch.rand(batch, generator=generator) * HELD_NOISE
    for b in held.nonzero().flatten().tolist():
        row, col = divmod(int(quadrants[b]), 2)
        rows = slice(row * height // 2, (row + 1) * height // 2)
        cols = slice(col * width // 2, (col + 1) * width // 2)
        scale[b, :, rows, cols] = levels[b]
        keep[b, :, rows, cols] = 0.0
    return scale, keep
