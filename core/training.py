"""The denoising loss every trainer shares: draw sigmas and noise, predict, compare with the target."""

from __future__ import annotations

import math

import torch

from .interface import Conditioning, DiffusionBackend, ProtagonistError


def denoising_error(backend: DiffusionBackend, latents: torch.Tensor, cond: Conditioning,
                    generator: torch.Generator) -> torch.Tensor:
    """Elementwise squared error of the network's native output against its training target."""
    sigma = backend.schedule.training_sigmas(latents.shape[0], generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    output = backend.raw_predict(backend.schedule.add_noise(latents, noise, sigma), sigma, cond)
    return (output.float() - backend.schedule.training_target(latents, noise, sigma).float()).pow(2)


def per_sample(error: torch.Tensor) -> torch.Tensor:
    return error.flatten(1).mean(dim=1)


class TrainingDiverged(ProtagonistError):
    """The loss became NaN or infinite; `step` says when. Nothing of that step was applied."""

    def __init__(self, step: int):
        super().__init__(f"the training loss became NaN at step {step}; lower the learning rate "
                         f"(the last saved state is kept)")
        self.step = step


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, step: int, backward=None) -> float:
    """Check the loss, then zero, backpropagate and step; the loss value. `backward` replaces loss.backward()."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(step)
    optimizer.zero_grad()
    (backward or torch.Tensor.backward)(loss)
    optimizer.step()
    return value
