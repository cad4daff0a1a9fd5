"""Saving images: single PNGs and contact sheets, written atomically."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_pil(image: torch.Tensor) -> Image.Image:
    """[3, H, W] in [0, 1] → an RGB PIL image."""
    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def contact_sheet(images: torch.Tensor, columns: int | None = None, labels: list[str] | None = None,
                  scale: int = 1, label_height: int = 12) -> Image.Image:
    """Tile a [N, 3, H, W] batch into one image, optionally with a caption strip under each tile."""
    count, _, height, width = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    strip = label_height if labels else 0
    tile_h, tile_w = height * scale + strip, width * scale
    sheet = Image.new("RGB", (columns * tile_w, rows * tile_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(count):
        x, y = (i % columns) * tile_w, (i // columns) * tile_h
        sheet.paste(to_pil(images[i]).resize((width * scale, height * scale), Image.NEAREST), (x, y))
        if labels:
            draw.text((x + 1, y + height * scale), labels[i][: max(tile_w // 6, 1)], fill="black")
    return sheet


def line_plot(values: list[float], width: int = 320, height: int = 160, title: str = "") -> Image.Image:
    """A plain line chart (e.g. a loss curve) with its min and max written on it."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if values:
        low, high = min(values), max(values)
        span = (high - low) or 1.0
        step = (width - 10) / max(len(values) - 1, 1)
        points = [(5 + i * step, height - 15 - (v - low) / span * (height - 35)) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill="black", width=1)
        draw.text((5, 2), f"{title} max {high:.4g} min {low:.4g} ({len(values)} steps)", fill="black")
    return image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image → [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
