"""Every ComfyUI ↔ core layout conversion lives here.

ComfyUI IMAGE is B×H×W×C float in [0, 1]; the core uses B×C×H×W.
"""

from __future__ import annotations

import torch

from ..core.interface import ProtagonistError


def images_to_core(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] → core [B, C, H, W] (RGB only)."""
    if images.ndim != 4:
        raise ProtagonistError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(images.shape)}")
    return images[..., :3].permute(0, 3, 1, 2).contiguous()


def images_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """Core [B, C, H, W] → ComfyUI IMAGE [B, H, W, C] on the CPU in float32."""
    if images.ndim != 4:
        raise ProtagonistError(f"expected images [B, C, H, W], got shape {tuple(images.shape)}")
    return images.permute(0, 2, 3, 1).to("cpu", torch.float32).contiguous()
