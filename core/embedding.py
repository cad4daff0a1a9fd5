"""Image embeddings with DINOv2 (transformers `Dinov2Model`): CLS token, preprocessing in torch."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from .interface import ProtagonistError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DINOV2 = "facebook/dinov2-large"


def load_dinov2(source: str = DEFAULT_DINOV2, device: str | torch.device = "cpu"):
    """A `Dinov2Model` from a local folder or a hub id, in eval mode."""
    from transformers import Dinov2Model

    try:
        model = Dinov2Model.from_pretrained(str(source))
    except (OSError, ValueError) as error:
        raise ProtagonistError(
            f"could not load DINOv2 from {source!r} ({error}). Put a transformers DINOv2 folder (config.json + "
            f"model.safetensors, e.g. a download of {DEFAULT_DINOV2}) there, or in ComfyUI's models/dinov2, "
            f"or pass a hub id on a machine that can download it.") from error
    log.info("loaded DINOv2 %s", source)
    return model.to(device).eval()


def preprocess(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] → resized to `resolution`² and ImageNet-normalised."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ProtagonistError(f"expected RGB images [B, 3, H, W], got shape {tuple(images.shape)}")
    if images.shape[-2:] != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bicubic", antialias=True,
                               align_corners=False).clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def embed_images(model, images: torch.Tensor, resolution: int | None = None, batch_size: int = 32,
                 callback=None) -> torch.Tensor:
    """CLS embeddings [B, D] (after DINOv2's final layer norm), computed in batches.

    `callback(done, total)` runs after each batch (progress; it may raise to interrupt).
    """
    resolution = resolution or model.config.image_size
    device = next(model.parameters()).device
    rows = []
    for start in range(0, images.shape[0], batch_size):
        pixels = preprocess(images[start:start + batch_size].to(device, torch.float32), resolution)
        rows.append(model(pixel_values=pixels).pooler_output.float().cpu())
        if callback is not None:
            callback(min(start + batch_size, images.shape[0]), images.shape[0])
    return torch.cat(rows) if rows else torch.zeros(0, model.config.hidden_size)
