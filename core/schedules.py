"""Noise schedules in one convention: sigma-parameterised, predictions normalised to the clean sample x0.

Every backend maps its denoiser's native output (epsilon, v or flow velocity) to x0 through a
schedule, so the samplers and guidance rules of the core never see the prediction type. The
conventions follow k-diffusion (and so ComfyUI): for discrete epsilon/v models the noisy sample is
``x0 + sigma * noise`` and the network sees it scaled by ``1 / sqrt(sigma^2 + 1)``; for flow models it is
``(1 - sigma) * x0 + sigma * noise``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample sigma ([B] or scalar) against a B×… tensor."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(sigma.shape + (1,) * (like.ndim - sigma.ndim))


class NoiseSchedule(ABC):
    """The noise process of one model family, in sigma space."""

    prediction_type: str

    @property
    @abstractmethod
    def sigma_max(self) -> float: ...

    @property
    @abstractmethod
    def sigma_min(self) -> float: ...

    @abstractmethod
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Noisy sample at `sigma` (per sample) from clean `x0` and unit Gaussian `noise`."""

    @abstractmethod
    def initial_latent(self, noise: torch.Tensor) -> torch.Tensor:
        """The starting point of text-to-image sampling (pure noise at sigma_max)."""

    @abstractmethod
    def model_input(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the network is fed: (scaled sample, timestep in the network's own units)."""

    @abstractmethod
    def to_denoised(self, x: torch.Tensor, output: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Map the network's native output at noisy `x` to the x0 estimate."""

    @abstractmethod
    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The regression target of the network's native output (epsilon, v or velocity)."""

    @abstractmethod
    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """`steps + 1` descending sigmas ending in 0."""

    @abstractmethod
    def training_sigmas(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sigmas drawn for a training batch, as the family was trained."""


class DiscreteSchedule(NoiseSchedule):
    """DDPM-style discrete schedule (SD/SDXL): epsilon or v prediction over `num_timesteps` betas."""

    def __init__(
        self,
        prediction_type: str = "epsilon",
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        num_timesteps: int = 1000,
    ):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"`prediction_type` must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        else:
            raise ValueError(f"`beta_schedule` must be 'scaled_linear' or 'linear', got {beta_schedule!r}")
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.prediction_type = prediction_type
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest discrete timestep of `sigma` (as ComfyUI does, so both backends feed the same t)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32)
        dists = sigma.log().reshape(-1)[None, :].cpu() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).reshape(sigma.shape).float()

    def sigma_at(self, t: torch.Tensor) -> torch.Tensor:
        """Sigma at a fractional timestep, log-linearly interpolated."""
        t = torch.as_tensor(t, dtype=torch.float32).clamp(0, len(self.sigmas) - 1)
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def add_noise(self, x0, noise, sigma):
        return x0 + _expand(sigma, x0) * noise

    def initial_latent(self, noise):
        return noise * math.sqrt(1.0 + self.sigma_max**2)

    def model_input(self, x, sigma):
        s = _expand(sigma, x)
        return x / (s**2 + 1.0) ** 0.5, self.timestep(sigma).to(x.device)

    def to_denoised(self, x, output, sigma):
        s = _expand(sigma, x)
        if self.prediction_type == "epsilon":
            return x - output * s
        return x / (s**2 + 1.0) - output * s / (s**2 + 1.0) ** 0.5

    def training_target(self, x0, noise, sigma):
        if self.prediction_type == "epsilon":
            return noise
        s = _expand(sigma, x0)
        return (noise - s * x0) / (s**2 + 1.0) ** 0.5

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        # ComfyUI's "normal" scheduler: evenly spaced timesteps from the last to the first.
        start = float(self.timestep(torch.tensor(self.sigma_max)))
        end = float(self.timestep(torch.tensor(self.sigma_min)))
        timesteps = torch.linspace(start, end, steps)
        return torch.cat([self.sigma_at(timesteps), torch.zeros(1)])

    def training_sigmas(self, batch, generator=None):
        t = torch.randint(0, len(self.sigmas), (batch,), generator=generator)
        return self.sigmas[t]


class FlowSchedule(NoiseSchedule):
    """Rectified-flow schedule (FLUX, SD3): the network predicts the velocity noise - x0.

    `shift` stretches the schedule towards high noise: sigma' = shift·t / (1 + (shift - 1)·t).
    FLUX's resolution-dependent shift exp(mu) is computed by :func:`flux_shift`.
    """

    prediction_type = "flow"

    def __init__(self, shift: float = 1.0, timestep_scale: float = 1.0):
        if shift <= 0:
            raise ValueError(f"`shift` must be positive, got {shift}")
        self.shift = shift
        self.timestep_scale = timestep_scale

    @property
    def sigma_max(self) -> float:
        return 1.0

    @property
    def sigma_min(self) -> float:
        return self.shifted(torch.tensor(1e-3)).item()

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        return self.shift * t / (1 + (self.shift - 1) * t)

    def add_noise(self, x0, noise, sigma):
        s = _expand(sigma, x0)
        return (1 - s) * x0 + s * noise

    def initial_latent(self, noise):
        return noise

    def model_input(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        return x, sigma * self.timestep_scale

    def to_denoised(self, x, output, sigma):
        return x - output * _expand(sigma, x)

    def training_target(self, x0, noise, sigma):
        return noise - x0

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        t = torch.linspace(1.0, 0.0, steps + 1)
        return self.shifted(t)

    def training_sigmas(self, batch, generator=None):
        # Logit-normal timesteps, as SD3 and FLUX are trained.
        u = torch.randn(batch, generator=generator).sigmoid()
        return self.shifted(u)


def shifted_schedule(schedule: NoiseSchedule, shift: float) -> FlowSchedule:
    """`schedule` at another flow shift, e.g. FLUX's higher one for an image of more tokens; only flow schedules
    (FLUX) have one."""
    if not isinstance(schedule, FlowSchedule):
        raise ValueError(f"a noise-level shift applies to flow schedules (FLUX) only, not to "
                         f"{type(schedule).__name__}; leave the shift unset for this model")
    return FlowSchedule(shift=shift, timestep_scale=schedule.timestep_scale)


def flux_shift(image_tokens: int, base_shift: float = 0.5, max_shift: float = 1.15,
               base_tokens: int = 256, max_tokens: int = 4096) -> float:
    """FLUX.1-dev's resolution-dependent shift exp(mu), mu linear in the number of image tokens."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (image_tokens - base_tokens)
    return math.exp(mu)
