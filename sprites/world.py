"""The sprite world: characters ("blobs") with hidden identity attributes rendered at 32x32
in prompt-controlled contexts, their captions, 2x2 grids and datasets.

Quick tour::

    rng = np.random.default_rng(0)
    ident = Identity.from_index(123)             # hidden identity, 1152 of them
    ctx = Context(background="beach", position="left")
    img = render(ident, ctx, rng)                # FloatTensor [3, 32, 32] in [0, 1]
    caption(ident, ctx, mention=("color",))      # "a green blob on a beach, on the left"
    parse_prompt("a blob at night, on the right")  # {"background": "night", "position": "right"}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .attributes import (  # noqa: F401  (re-exported)
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    CLASS_WORD,
    CONTEXT_ATTRIBUTES,
    IDENTITY_ATTRIBUTES,
    N_CONTEXTS,
    N_IDENTITIES,
    RENDER_VERSION,
    WORDS,
    Context,
    Identity,
    attribute_table_hash,
)
from .captions import (  # noqa: F401  (re-exported)
    PUNCTUATION,
    VOCABULARY,
    caption,
    grid_caption,
    parse_prompt,
    random_caption,
    random_grid_caption,
    tokenize,
)
from .draw import SIZE, draw_with_mask

logger = logging.getLogger(__name__)

GRID_SIZE = 2 * SIZE


def _as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def render(identity: Identity, context: Context, rng: np.random.Generator | int | None = None) -> torch.Tensor:
    """Render one sprite: FloatTensor [3, 32, 32] in [0, 1].

    ``rng`` (a ``numpy.random.Generator`` or a seed) drives the small jitter (position
    +-1.5 px, height +-1 px, scale +-7 %, horizon +-1 px); the same rng state gives the same image.
    """
    return render_with_mask(identity, context, rng)[0]


def render_with_mask(identity: Identity, context: Context, rng: np.random.Generator | int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`render` (same rng use) and the character's pixels as a float mask [1, 32, 32]."""
    img, mask = draw_with_mask(identity, context, _as_rng(rng))
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), torch.from_numpy(mask)[None].float()


def render_grid_with_mask(identity: Identity, contexts: Sequence[Context], rng: np.random.Generator | int | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`render_grid` (same rng use) and the characters' pixels as a float mask [1, 64, 64]."""
    if len(contexts) != 4:
        raise ValueError(f"a grid has 4 panels, got {len(contexts)} contexts")
    rng = _as_rng(rng)
    panels, masks = zip(*(render_with_mask(identity, c, rng) for c in contexts))
    return tile_grid(torch.stack(panels)), tile_grid(torch.stack(masks))


def tile_grid(panels: torch.Tensor) -> torch.Tensor:
    """Panels [..., 4, C, h, w], row-major, as 2×2 grids [..., C, 2h, 2w] (images or latents)."""
    top = torch.cat([panels[..., 0, :, :, :], panels[..., 1, :, :, :]], dim=-1)
    bottom = torch.cat([panels[..., 2, :, :, :], panels[..., 3, :, :, :]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def render_batch(
    identities: Sequence[Identity], contexts: Sequence[Context], rng: np.random.Generator | int | None = None
) -> torch.Tensor:
    """Render pairs ``(identities[i], contexts[i])`` in order: FloatTensor [B, 3, 32, 32]."""
    if len(identities) != len(contexts):
        raise ValueError(f"{len(identities)} identities but {len(contexts)} contexts")
    rng = _as_rng(rng)
    if not identities:
        return torch.zeros(0, 3, SIZE, SIZE)
    return torch.stack([render(i, c, rng) for i, c in zip(identities, contexts)])


def render_grid(
    identity: Identity, contexts: Sequence[Context], rng: np.random.Generator | int | None = None
) -> torch.Tensor:
    """2x2 grid of one identity in four contexts (row-major panels): FloatTensor [3, 64, 64].

    Panels are rendered in order with the same rng, so panel k equals
    ``render(identity, contexts[k], rng)`` for an rng in the same state.
    """
    return render_grid_with_mask(identity, contexts, rng)[0]


def split_grid(grids: torch.Tensor) -> torch.Tensor:
    """Split grids [3, 64, 64] or [B, 3, 64, 64] into panels [4, 3, 32, 32] / [B, 4, 3, 32, 32]."""
    if grids.shape[-2:] != (GRID_SIZE, GRID_SIZE):
        raise ValueError(f"expected {GRID_SIZE}x{GRID_SIZE} grids, got shape {tuple(grids.shape)}")
    s = SIZE
    panels = [grids[..., :s, :s], grids[..., :s, s:], grids[..., s:, :s], grids[..., s:, s:]]
    return torch.stack(panels, dim=-4)


def random_contexts(n: int, rng: np.random.Generator) -> list[Context]:
    return [Context.random(rng) for _ in range(n)]


@dataclass(frozen=True)
class Label:
    """Ground truth of one dataset sample: the identity and one (single) or four (grid) contexts."""

    identity: Identity
    contexts: tuple[Context, ...]

    @property
    def is_grid(self) -> bool:
        return len(self.contexts) == 4

    def as_tensor(self) -> torch.Tensor:
        """LongTensor [P, 7] of value codes in :data:`ATTRIBUTE_NAMES` order, one row per panel."""
        ident = list(self.identity.codes())
        return torch.tensor([ident + list(c.codes()) for c in self.contexts], dtype=torch.long)


def labels_to_tensor(labels: Sequence[Label]) -> torch.Tensor:
    """[N, 7] codes for single-image labels, [N, 4, 7] for grid labels (no mixing)."""
    if not labels:
        return torch.zeros(0, len(ATTRIBUTE_NAMES), dtype=torch.long)
    if len({len(label.contexts) for label in labels}) != 1:
        raise ValueError("labels mix single images and grids; convert them separately")
    rows = torch.stack([label.as_tensor() for label in labels])
    return rows[:, 0] if not labels[0].is_grid else rows


def make_dataset(
    n: int, seed: int, grid_fraction: float = 0.0
) -> tuple[torch.Tensor | list[torch.Tensor], list[str], list[Label]]:
    """``n`` random samples ``(images, captions, labels)``, deterministic per ``seed``.

    Identities and contexts are uniform; captions are :func:`random_caption` /
    :func:`random_grid_caption`.  With ``grid_fraction == 0`` images is a FloatTensor
    [n, 3, 32, 32]; otherwise a list mixing [3, 32, 32] singles and [3, 64, 64] grids
    (each sample is a grid with probability ``grid_fraction``).
    """
    if not 0.0 <= grid_fraction <= 1.0:
        raise ValueError(f"grid_fraction must be in [0, 1], got {grid_fraction}")
    rng = np.random.default_rng(seed)
    images, captions, labels = [], [], []
    for _ in range(n):
        identity = Identity.random(rng)
        if grid_fraction > 0.0 and rng.random() < grid_fraction:
            contexts = tuple(random_contexts(4, rng))
            images.append(render_grid(identity, contexts, rng))
            captions.append(random_grid_caption(identity, contexts, rng))
        else:
            contexts = (Context.random(rng),)
            images.append(render(identity, contexts[0], rng))
            captions.append(random_caption(identity, contexts[0], rng))
        labels.append(Label(identity, contexts))
    logger.debug("made %d sprite samples (seed %d, grid_fraction %.2f)", n, seed, grid_fraction)
    if grid_fraction == 0.0:
        return (torch.stack(images) if images else torch.zeros(0, 3, SIZE, SIZE)), captions, labels
    return images, captions, labels
