"""The sprite models' VAE: trained on single sprites, taught 2×2 grids, its latents standardised to the
family's ComfyUI latent scale."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import load_checkpoint, save_checkpoint
from .training_data import Clock, sprite_batch
from .world import split_grid, tile_grid

log = logging.getLogger(__name__)


def train_vae(vae, steps: int, batch: int, run_dir: Path, seed: int, lr: float = 1e-3) -> tuple[list[float], float]:
    """Reconstruction (L1 + L2, which keeps the small pattern marks sharper than L2 alone) + a light KL."""

    def loss(rng: np.random.Generator) -> torch.Tensor:
        images, _, _ = sprite_batch(rng, batch, grids=False)
        posterior = vae.encode(images * 2 - 1).latent_dist
        recon = vae.decode(posterior.sample()).sample
        target = images * 2 - 1
        return (torch.nn.functional.mse_loss(recon, target) + torch.nn.functional.l1_loss(recon, target)
                + 1e-6 * posterior.kl().mean())

    return _vae_training(vae, loss, steps, run_dir, seed, lr, "vae")


def finetune_vae_on_grids(vae, steps: int, batch: int, run_dir: Path, seed: int, lr: float = 2e-4
                          ) -> tuple[list[float], float]:
    """Teach a VAE trained on single sprites to encode and decode 2×2 grids as four single sprites.

    Its mid-block attention spans the whole latent, so a grid came out of it far worse than its panels
    one by one. Targets come from a frozen copy: a grid's latent should be its panels' latents tiled,
    a single sprite's latent stays what it was (the denoiser's latent space does not move), and the
    decoder reconstructs both from the frozen copy's latents.
    """
    reference = copy.deepcopy(vae).eval().requires_grad_(False)

    def loss(rng: np.random.Generator) -> torch.Tensor:
        singles, _, _ = sprite_batch(rng, batch // 2, grids=False)
        grids, _, _ = sprite_batch(rng, batch // 8, grids=True)
        return _grid_vae_loss(vae, reference, singles * 2 - 1, grids * 2 - 1)

    return _vae_training(vae, loss, steps, run_dir, seed, lr, "vae (grids)")


def _vae_training(vae, loss_of_batch, steps: int, run_dir: Path, seed: int, lr: float, label: str
                  ) -> tuple[list[float], float]:
    """AdamW with a cosine learning rate; one seeded batch per step; resumable from `run_dir`."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr)
    state = load_checkpoint(run_dir, {"vae": vae}, optimizer) or {"step": 0, "extra": {"losses": []}}
    losses, clock = state["extra"]["losses"], Clock(state["extra"].get("seconds", 0.0))
    vae.train().requires_grad_(True)
    for step in range(state["step"], steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = loss_of_batch(np.random.default_rng(seed * 100003 + step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 5))
        if (step + 1) % 100 == 0 or step + 1 == steps:
            save_checkpoint(run_dir, step + 1, {"vae": vae}, optimizer,
                            extra={"losses": losses, "seconds": clock.seconds()})
            log.info("%s step %d/%d loss %.4f", label, step + 1, steps, np.mean(losses[-100:]))
    vae.eval().requires_grad_(False)
    return losses, clock.seconds()


def _grid_vae_loss(vae, reference, singles: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        single_latents = reference.encode(singles).latent_dist
        panel_latents = reference.encode(split_grid(grids).flatten(0, 1)).latent_dist
        grid_mean = tile_grid(panel_latents.mean.unflatten(0, (grids.shape[0], 4)))
        grid_sample = tile_grid(panel_latents.sample().unflatten(0, (grids.shape[0], 4)))
    mse, l1 = torch.nn.functional.mse_loss, torch.nn.functional.l1_loss
    encoding = (mse(vae.encode(singles).latent_dist.mean, single_latents.mean)
                + mse(vae.encode(grids).latent_dist.mean, grid_mean))
    decoding = 0.0
    for latents, images in ((single_latents.sample(), singles), (grid_sample, grids)):
        decoded = vae.decode(latents).sample
        decoding = decoding + mse(decoded, images) + l1(decoded, images)
    return encoding + decoding


@torch.no_grad()
def standardise_latents(vae, scale: float, shift: float, seed: int) -> dict:
    """Fold an affine map into the VAE so that (latent - shift) * scale has zero mean and unit variance.

    The family's scale and shift are fixed by ComfyUI's latent format, so the VAE adapts to them.
    """
    images, _, _ = sprite_batch(np.random.default_rng(seed), 512, grids=False)
    z = vae.encode(images * 2 - 1).latent_dist.mean
    mean, std = z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    gain = 1.0 / (std * scale)
    offset = shift - mean * gain
    channels = mean.shape[0]
    quant = vae.quant_conv
    quant.weight[:channels] *= gain[:, None, None, None]
    quant.bias[:channels] = quant.bias[:channels] * gain + offset
    quant.bias[channels:] += 2 * torch.log(gain)
    post = vae.post_quant_conv
    post.bias -= (post.weight[:, :, 0, 0] * (offset / gain)[None, :]).sum(dim=1)
    post.weight /= gain[None, :, None, None]
    return {"raw_mean": mean.tolist(), "raw_std": std.tolist()}
