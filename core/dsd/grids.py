"""Split grid images into panels (with optional gutter and border detection) and ordered panel pairs."""

from __future__ import annotations

import itertools

import torch

from ..interface import ProtagonistError


def _nearest_divisible(size: int, parts: int) -> list[int]:
    if size % parts == 0:
        return [size]
    below = size - size % parts
    return sorted({below, below + parts} - {0})


def _check_divisible(height: int, width: int, rows: int, cols: int) -> None:
    if rows < 1 or cols < 1:
        raise ProtagonistError(f"`rows` and `cols` must be at least 1, got {rows}×{cols}")
    if height % rows or width % cols:
        raise ProtagonistError(
            f"a {height}×{width} image does not divide into {rows}×{cols} panels; the nearest sizes that do are "
            f"height {_nearest_divisible(height, rows)} and width {_nearest_divisible(width, cols)} — crop or pad "
            f"the grid, or turn on gutter detection if the panels are separated by lines")


def _flat_lines(image: torch.Tensor, axis: int, tolerance: float) -> torch.Tensor:
    """Bool per row (axis=1) or column (axis=2): the line is one flat colour (a gutter or border)."""
    spread = image.amax(dim=(0, axis)) - image.amin(dim=(0, axis))
    return spread <= tolerance


def _runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, flat in enumerate(mask.tolist() + [False]):
        if flat and start is None:
            start = i
        elif not flat and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _cuts(mask: torch.Tensor, parts: int) -> list[tuple[int, int]]:
    """Panel spans along one axis: borders trimmed, split at the flat runs nearest the even split points."""
    size = mask.shape[0]
    runs = _runs(mask)
    start = next((end for s, end in runs if s == 0), 0)
    stop = next((s for s, end in runs if end == size), size)
    inner = [r for r in runs if r[0] > start and r[1] < stop]
    spans, position = [], start
    for k in range(1, parts):
        target = start + k * (stop - start) / parts
        best = min(inner, key=lambda r: abs((r[0] + r[1]) / 2 - target), default=None)
        if best is None or abs((best[0] + best[1]) / 2 - target) > (stop - start) / (2 * parts):
            best = (round(target), round(target))
        spans.append((position, best[0]))
        position = best[1]
    spans.append((position, stop))
    return spans


def split_grid(image: torch.Tensor, rows: int = 2, cols: int = 2, detect_gutters: bool = False,
               tolerance: float = 0.02) -> torch.Tensor:
    """Panels [rows·cols, C, h, w] of one grid [C, H, W], row-major.

    Without gutter detection the image must divide evenly. With it, flat-coloured borders and gutters
    are found and removed, and every panel is cropped to the smallest panel's size (centred).
    """
    if image.ndim != 3:
        raise ProtagonistError(f"expected one image [C, H, W], got shape {tuple(image.shape)}")
    _, height, width = image.shape
    if not detect_gutters:
        _check_divisible(height, width, rows, cols)
        h, w = height // rows, width // cols
        return torch.stack([image[:, r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(rows) for c in range(cols)])
    row_spans = _cuts(_flat_lines(image, 2, tolerance), rows)
    col_spans = _cuts(_flat_lines(image, 1, tolerance), cols)
    h = min(b - a for a, b in row_spans)
    w = min(b - a for a, b in col_spans)
    if h < 1 or w < 1:
        raise ProtagonistError(f"gutter detection found empty panels in a {height}×{width} grid; lower `tolerance`")
    panels = []
    for (r0, r1), (c0, c1) in itertools.product(row_spans, col_spans):
        top, left = r0 + (r1 - r0 - h) // 2, c0 + (c1 - c0 - w) // 2
        panels.append(image[:, top:top + h, left:left + w])
    return torch.stack(panels)


def ordered_pairs(count: int) -> list[tuple[int, int]]:
    """Every (reference, target) pair of distinct panels."""
    return [(i, j) for i in range(count) for j in range(count) if i != j]


def filter_pairs(embeddings: torch.Tensor, pairs: list[tuple[int, int]], threshold: float
                 ) -> tuple[list[tuple[int, int]], list[float]]:
    """Pairs whose panels' cosine similarity reaches `threshold`, with every pair's similarity."""
    normed = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    similarity = [float(normed[i] @ normed[j]) for i, j in pairs]
    kept = [p for p, s in zip(pairs, similarity) if s >= threshold]
    return kept, similarity
