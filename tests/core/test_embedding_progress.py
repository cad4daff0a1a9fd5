"""DINOv2 embedding reports progress per batch (the node shows it and checks for interrupt there)."""

from __future__ import annotations

import torch
from protagonist.core.embedding import embed_images
from protagonist.core.tiny_models import tiny_dinov2


def test_embed_images_reports_each_batch_and_matches_one_pass():
    model = tiny_dinov2(0).eval()
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = []
    batched = embed_images(model, images, batch_size=2, callback=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    assert torch.allclose(batched, embed_images(model, images), atol=1e-5)
