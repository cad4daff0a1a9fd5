"""The denoising loss every trainer shares: draw sigmas and noise, predict, compare with the target."""

from __future__ import annotations

import torch

from .interface import Conditioning, DiffusionBackend


def denoising_error(backend: DiffusionBackend, latents: torch.Tensor, cond: Conditioning,
                    generator: torch.Generator) -> torch.Tensor:
    """Elementwise squared error of the network's native output against its training target."""
    sigma = backend.schedule.training_sigmas(latents.shape[0], generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    output = backend.raw_predict(backend.schedule.add_noise(latents, noise, sigma), sigma, cond)
    return (output.float() - backend.schedule.training_target(latents, noise, sigma).float()).pow(2)


def per_sample(error: torch.Tensor) -> torch.Tensor:
    return error.flatten(1).mean(dim=1)
