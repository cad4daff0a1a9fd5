"""What both phases of sprite model training share: seeded batches of rendered sprites, and a clock of
training seconds carried across resumes."""

from __future__ import annotations

import time

import numpy as np
import torch

from .attributes import Context, Identity
from .captions import PRENOMINAL_PROBABILITY, random_caption, random_grid_caption
from .world import render_grid_with_mask, render_with_mask


class Clock:
    """Training seconds, carried across resumes."""

    def __init__(self, before: float):
        self.before, self.start = before, time.time()

    def seconds(self) -> float:
        return self.before + time.time() - self.start


def sprite_batch(rng: np.random.Generator, n: int, grids: bool,
                 prenominal_rate: float = PRENOMINAL_PROBABILITY) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Images, captions and the masks [n, 1, H, W] of the pixels the characters cover; `prenominal_rate` is
    the share of captions that name eyes and accessory as adjectives before the class word."""
    images, captions, masks = [], [], []
    for _ in range(n):
        identity = Identity.random(rng)
        if grids:
            contexts = [Context.random(rng) for _ in range(4)]
            image, mask = render_grid_with_mask(identity, contexts, rng)
            captions.append(random_grid_caption(identity, contexts, rng, prenominal_rate))
        else:
            context = Context.random(rng)
            image, mask = render_with_mask(identity, context, rng)
            captions.append(random_caption(identity, context, rng, prenominal_rate))
        images.append(image)
        masks.append(mask)
    return torch.stack(images), captions, torch.stack(masks)
