"""The denoising loss every trainer shares: draw sigmas and noise, predict, compare with the target."""

from __future__ import annotations

import math

import torch

from .interface import Conditioning, DiffusionBackend, ProtagonistError
from .schedules import shifted_schedule


def check_noisiest_share(share: float) -> None:
    """Trainers call this before any work: a share outside (0, 1] would silently train on one level or all."""
    if not 0.0 < share <= 1.0:
        raise ProtagonistError(f"noisiest_share must be in (0, 1] (1 = every noise level), got {share}")


def noisiest_sigmas(schedule, batch: int, generator: torch.Generator, share: float) -> torch.Tensor:
    """Sigmas drawn uniformly from the noisiest `share` of the sampling schedule's 1000 levels.

    A character's look (shape, colour, pattern) is settled in the first, noisiest steps of sampling;
    training only there spends every step on identity instead of on texture.
    """
    kept = _noisiest_levels(schedule, share)
    return kept[torch.randint(len(kept), (batch,), generator=generator)]


def lowest_sigma_of_noisiest(schedule, share: float) -> float:
    """The least sigma among the noisiest `share` of the schedule's 1000 levels: where training with
    `noisiest_share=share` stops (the unit of ComfyUI's start and end percents)."""
    check_noisiest_share(share)
    return float(_noisiest_levels(schedule, share)[-1])


def _noisiest_levels(schedule, share: float) -> torch.Tensor:
    levels = schedule.sampling_sigmas(1000)[:-1]  # noisiest first
    return levels[: max(1, round(share * len(levels)))]


def denoising_error(backend: DiffusionBackend, latents: torch.Tensor, cond: Conditioning,
                    generator: torch.Generator, noisiest_share: float = 1.0,
                    noise_scale: torch.Tensor | None = None, min_snr: float | None = None,
                    sigma_shift: float | None = None, input_perturbation: float = 0.0) -> torch.Tensor:
    """Elementwise squared error of the network's native output against its training target.

    Noise levels are drawn as the family was trained, or with `noisiest_share` < 1 from the noisiest
    part of the schedule only (:func:`noisiest_sigmas`). `noise_scale` (broadcast against the latents)
    noises some positions less than the level the network is told, e.g. a grid panel held almost clean.
    `min_snr` weights each sample by :func:`min_snr_weights`. `sigma_shift` (flow schedules) draws the noise
    levels at another shift than the schedule's own, as FLUX trains an image of more tokens at a higher one.
    `input_perturbation` γ noises the network's input with ε + γξ but keeps ε in the target (Ning et al., 2023):
    in sampling the network meets its own earlier errors, never the exact noised data it was trained on.
    """
    sigma, noise = draw_noise(backend, latents, generator, noisiest_share, sigma_shift)
    input_noise = None
    if input_perturbation:
        input_noise = noise + input_perturbation * torch.randn(latents.shape, generator=generator).to(latents)
    error = error_at(backend, latents, cond, sigma, noise, noise_scale, input_noise)
    if min_snr is None:
        return error
    return error * min_snr_weights(backend.schedule, sigma, min_snr).reshape(-1, *[1] * (error.dim() - 1))


def min_snr_weights(schedule, sigma: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al., 2023) of an epsilon-predicting schedule: min(SNR, γ) / SNR, SNR = σ⁻².

    The nearly clean levels, where the noise is hardest to tell from the image and the least of the image
    is decided, then count less; every level noisier than σ = γ^-½ keeps weight 1.
    """
    if getattr(schedule, "prediction_type", None) != "epsilon":
        raise ProtagonistError("min-SNR weighting is defined here for epsilon prediction only (SD/SDXL), "
                               f"not for {getattr(schedule, 'prediction_type', 'this schedule')!r}")
    if gamma <= 0:
        raise ProtagonistError(f"min_snr must be positive, got {gamma}")
    snr = sigma.float().pow(-2)
    return snr.clamp(max=gamma) / snr


def draw_noise(backend: DiffusionBackend, latents: torch.Tensor, generator: torch.Generator,
               noisiest_share: float = 1.0, sigma_shift: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The sigmas and noise :func:`denoising_error` draws for `latents`, in its order."""
    schedule = backend.schedule if sigma_shift is None else shifted_schedule(backend.schedule, sigma_shift)
    if noisiest_share < 1.0:
        sigma = noisiest_sigmas(schedule, latents.shape[0], generator, noisiest_share).to(latents.device)
    else:
        sigma = schedule.training_sigmas(latents.shape[0], generator).to(latents.device)
    return sigma, torch.randn(latents.shape, generator=generator).to(latents)


def error_at(backend: DiffusionBackend, latents: torch.Tensor, cond: Conditioning, sigma: torch.Tensor,
             noise: torch.Tensor, noise_scale: torch.Tensor | None = None,
             input_noise: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`denoising_error` for sigmas and noise already drawn; `input_noise` (default `noise`) is what the
    network's input is noised with."""
    noised_at = sigma if noise_scale is None else sigma.reshape(-1, 1, 1, 1) * noise_scale.to(latents)
    noisy = backend.schedule.add_noise(latents, noise if input_noise is None else input_noise, noised_at)
    output = backend.raw_predict(noisy, sigma, cond)
    return (output.float() - backend.schedule.training_target(latents, noise, noised_at).float()).pow(2)


def per_sample(error: torch.Tensor) -> torch.Tensor:
    return error.flatten(1).mean(dim=1)


class TrainingDiverged(ProtagonistError):
    """The loss became NaN or infinite; `step` says when. Nothing of that step was applied."""

    def __init__(self, step: int):
        super().__init__(f"the training loss became NaN at step {step}; lower the learning rate "
                         f"(the last saved state is kept)")
        self.step = step


def adamw(param_groups, device: torch.device, **settings) -> torch.optim.AdamW:
    """AdamW, fused where torch has the kernel (CPU, CUDA): on a small model its per-tensor loop was a fifth of
    a CPU training step (bench/results/sprite_methods.md, session 23). Elsewhere torch's default."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(param_groups, fused=fused, **settings)


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, step: int, backward=None) -> float:
    """Check the loss, then zero, backpropagate and step; the loss value. `backward` replaces loss.backward()."""
    value = loss.item()
    if not math.isfinite(value):
        raise TrainingDiverged(step)
    optimizer.zero_grad()
    (backward or torch.Tensor.backward)(loss)
    optimizer.step()
    return value
