"""The core sampling loop: k-diffusion style samplers over x0 predictions, pluggable guidance.

A guidance function receives the x0 predictions of one step under every conditioning
([n_conds, B, …]) and returns the x0 to step with; classifier-free guidance is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from .interface import Conditioning, DiffusionBackend, ProtagonistError


@dataclass
class StepInfo:
    """Where the sampler is: step index, total steps, the current sigma and the full schedule."""

    index: int
    total: int
    sigma: float
    sigmas: torch.Tensor

    @property
    def fraction(self) -> float:
        """Share of the schedule already done (0 at the first step)."""
        return self.index / max(self.total, 1)


Guidance = Callable[[torch.Tensor, StepInfo], torch.Tensor]


class StepCallback(Protocol):
    def __call__(self, info: StepInfo, x: torch.Tensor, denoised: torch.Tensor) -> None:
        """Called after each step (progress, preview); raise to interrupt."""


def cfg_guidance(scale: float) -> Guidance:
    """Classifier-free guidance over conditionings ordered [negative, positive]."""

    def combine(preds: torch.Tensor, info: StepInfo) -> torch.Tensor:
        if preds.shape[0] == 1:
            return preds[0]
        return preds[0] + scale * (preds[1] - preds[0])

    return combine


def sampler_step_euler(x, denoised, sigma, sigma_next, state):
    derivative = (x - denoised) / sigma
    return x + derivative * (sigma_next - sigma)


def sampler_step_dpmpp_2m(x, denoised, sigma, sigma_next, state):
    """DPM-Solver++(2M): second order from the previous step's x0, first order on the first and last."""
    if sigma_next == 0:
        state["previous"] = (denoised, sigma)
        return denoised
    t, t_next = -torch.log(torch.tensor(sigma)), -torch.log(torch.tensor(sigma_next))
    h = t_next - t
    previous = state.get("previous")
    if previous is None:
        corrected = denoised
    else:
        old_denoised, old_sigma = previous
        ratio = (t - (-torch.log(torch.tensor(old_sigma)))) / h
        corrected = (1 + 1 / (2 * ratio)) * denoised - (1 / (2 * ratio)) * old_denoised
    state["previous"] = (denoised, sigma)
    return (sigma_next / sigma) * x - torch.expm1(-h).item() * corrected


SAMPLERS = {"euler": sampler_step_euler, "dpmpp_2m": sampler_step_dpmpp_2m}


Conds = list[Conditioning] | Callable[[StepInfo], list[Conditioning]]


def sample(
    backend: DiffusionBackend,
    conds: Conds,
    noise: torch.Tensor,
    steps: int,
    guidance: Guidance,
    sampler: str = "euler",
    sigmas: torch.Tensor | None = None,
    callback: StepCallback | None = None,
    before_step: Callable[[StepInfo], None] | None = None,
) -> torch.Tensor:
    """Denoise `noise` (unit Gaussian, latent-shaped) to latents.

    Args:
        backend: the model.
        conds: conditionings evaluated at every step, in the order `guidance` expects, or a function of
            the step that returns them (guidance that changes its terms during sampling).
        noise: [B, C, h, w] unit Gaussian noise; one row per image.
        steps: number of denoising steps (ignored when `sigmas` is given).
        guidance: combines the [len(conds), B, …] x0 predictions of a step.
        sampler: "euler" or "dpmpp_2m".
        sigmas: an explicit descending schedule ending in 0.
        callback: called after each step with the step info, current x and guided x0.
        before_step: called with the step info before each step's predictions (e.g. to change the weights
            for part of the schedule).
    """
    if sampler not in SAMPLERS:
        raise ProtagonistError(f"`sampler` must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    step_fn = SAMPLERS[sampler]
    sigmas = backend.schedule.sampling_sigmas(steps) if sigmas is None else sigmas
    sigmas = sigmas.to(torch.float32).cpu()
    x = backend.schedule.initial_latent(noise.to(backend.device, backend.dtype))
    state: dict = {}
    total = len(sigmas) - 1
    with backend.session(), torch.no_grad():
        for i in range(total):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            info = StepInfo(i, total, sigma, sigmas)
            if before_step is not None:
                before_step(info)
            step_conds = conds(info) if callable(conds) else conds
            preds = backend.predict(x, torch.tensor(sigma), step_conds)
            denoised = guidance(preds, info)
            x = step_fn(x, denoised, sigma, sigma_next, state)
            if callback is not None:
                callback(info, x, denoised)
    return x


def seeded_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One independent noise tensor per seed, so each image is reproducible from its seed alone."""
    rows = [torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(rows)
