"""Grid splitting and pairing on synthetic grids whose panels are known."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.dsd.grids import filter_pairs, ordered_pairs, split_grid
from protagonist.core.interface import ProtagonistError


def _panels(count: int, h: int, w: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(count * 100 + h)
    return torch.rand(count, 3, h, w, generator=g) * 0.8 + 0.1


def _grid(panels, rows, cols, gutter=0, border=0, colour=1.0):
    _, c, h, w = panels.shape
    height = rows * h + (rows - 1) * gutter + 2 * border
    width = cols * w + (cols - 1) * gutter + 2 * border
    image = torch.full((c, height, width), colour)
    for k, panel in enumerate(panels):
        r, col = divmod(k, cols)
        top, left = border + r * (h + gutter), border + col * (w + gutter)
        image[:, top:top + h, left:left + w] = panel
    return image


@pytest.mark.parametrize("rows,cols,h,w", [(2, 2, 16, 16), (1, 3, 10, 7), (3, 2, 5, 9)])
def test_even_split_returns_the_panels_in_row_major_order(rows, cols, h, w):
    panels = _panels(rows * cols, h, w)
    assert torch.equal(split_grid(_grid(panels, rows, cols), rows, cols), panels)


@pytest.mark.parametrize("gutter,border", [(2, 0), (3, 4), (1, 1)])
def test_gutters_and_borders_are_found_and_removed(gutter, border):
    panels = _panels(4, 12, 14)
    image = _grid(panels, 2, 2, gutter=gutter, border=border)
    assert torch.equal(split_grid(image, 2, 2, detect_gutters=True), panels)


def test_uneven_gutters_crop_every_panel_to_the_smallest():
    panels = _panels(4, 12, 12)
    image = _grid(panels, 2, 2, gutter=2)
    image = torch.cat([image, torch.ones(3, 1, image.shape[2])], dim=1)  # one extra border row at the bottom
    out = split_grid(image, 2, 2, detect_gutters=True)
    assert out.shape == (4, 3, 12, 12) and torch.equal(out, panels)


def test_sizes_that_do_not_divide_name_the_nearest_valid_ones():
    with pytest.raises(ProtagonistError, match=r"131×128.*2×2.*\[130, 132\].*width \[128\]"):
        split_grid(torch.rand(3, 131, 128), 2, 2)
    with pytest.raises(ProtagonistError, match=r"height \[63, 66\]"):
        split_grid(torch.rand(3, 64, 64), 3, 2)


def test_pairs_and_filtering():
    assert ordered_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    kept, similarity = filter_pairs(embeddings, ordered_pairs(3), threshold=0.9)
    assert kept == [(0, 1), (1, 0)] and len(similarity) == 6
    assert filter_pairs(embeddings, ordered_pairs(3), threshold=1.01)[0] == []
