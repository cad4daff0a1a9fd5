"""Noise schedules: the sigma convention, x0 recovery from every native target, and the sigma grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from protagonist.core.schedules import DiscreteSchedule, FlowSchedule, flux_shift


def _batch(sigmas, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(sigmas), 4, 6, 6, generator=g)
    noise = torch.randn(len(sigmas), 4, 6, 6, generator=g)
    return x0, noise, torch.tensor(sigmas, dtype=torch.float32)


# -- discrete (SD / SDXL) ---------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_discrete_to_denoised_inverts_training_target(prediction_type):
    schedule = DiscreteSchedule(prediction_type)
    x0, noise, sigma = _batch([schedule.sigma_min, 0.1, 1.0, 5.0, schedule.sigma_max])
    x = schedule.add_noise(x0, noise, sigma)
    assert torch.allclose(x, x0 + sigma[:, None, None, None] * noise)
    target = schedule.training_target(x0, noise, sigma)
    if prediction_type == "epsilon":
        assert torch.equal(target, noise)
    assert (schedule.to_denoised(x, target, sigma) - x0).abs().max() < 1e-5


def test_discrete_matches_diffusers_ddpm_convention():
    """add_noise + model_input scaling is diffusers' VP sample, training_target(v) its velocity."""
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="v_prediction")
    schedule = DiscreteSchedule("v_prediction")
    ac = ddpm.alphas_cumprod.double()
    # diffusers builds its betas in float32, we in float64: agree to float32 precision
    assert torch.allclose(schedule.sigmas.double(), ((1 - ac) / ac).sqrt(), rtol=1e-4)
    t = torch.tensor([0, 10, 250, 500, 999])
    x0, noise, _ = _batch([0.0] * len(t))
    sigma = schedule.sigmas[t]
    scaled, _ = schedule.model_input(schedule.add_noise(x0, noise, sigma), sigma)
    assert torch.allclose(scaled, ddpm.add_noise(x0, noise, t), atol=1e-5)
    assert torch.allclose(schedule.training_target(x0, noise, sigma), ddpm.get_velocity(x0, noise, t), atol=1e-5)


def test_discrete_sdxl_sigma_range():
    schedule = DiscreteSchedule()
    assert schedule.sigma_max == pytest.approx(14.6146, abs=1e-3)
    assert schedule.sigma_min == pytest.approx(0.0292, abs=1e-3)
    assert torch.all(schedule.sigmas[1:] > schedule.sigmas[:-1])


def test_discrete_model_input_scaling_and_timestep():
    schedule = DiscreteSchedule()
    x = torch.randn(3, 4, 5, 5)
    sigma = schedule.sigmas[torch.tensor([0, 421, 999])]
    scaled, t = schedule.model_input(x, sigma)
    expected = x / torch.sqrt(sigma**2 + 1)[:, None, None, None]
    assert torch.allclose(scaled, expected, rtol=1e-6, atol=1e-7)
    assert t.tolist() == [0.0, 421.0, 999.0]


def test_discrete_timestep_is_nearest_index_in_log_sigma():
    schedule = DiscreteSchedule()
    queries = torch.tensor([0.01, 0.0292, 0.05, 0.3, 1.0, 1.7, 7.3, 14.6, 20.0])
    log_sigmas = np.log(schedule.sigmas.double().numpy())
    expected = [int(np.abs(log_sigmas - math.log(q)).argmin()) for q in queries.tolist()]
    assert schedule.timestep(queries).tolist() == [float(i) for i in expected]
    assert schedule.timestep(torch.tensor(0.01)).item() == 0.0      # below the range: the first index
    assert schedule.timestep(torch.tensor(20.0)).item() == 999.0    # above: the last


def test_discrete_sigma_at_recovers_the_schedule_sigmas():
    schedule = DiscreteSchedule()
    t = schedule.timestep(schedule.sigmas)
    assert torch.equal(t, torch.arange(1000, dtype=torch.float32))
    assert torch.allclose(schedule.sigma_at(t), schedule.sigmas, rtol=1e-5)
    # fractional timesteps are log-linear: the midpoint is the geometric mean
    mid = schedule.sigma_at(torch.tensor(10.5))
    assert mid.item() == pytest.approx(math.sqrt(schedule.sigmas[10].item() * schedule.sigmas[11].item()), rel=1e-5)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_discrete_sampling_sigmas(steps):
    schedule = DiscreteSchedule()
    sigmas = schedule.sampling_sigmas(steps)
    assert sigmas.shape == (steps + 1,)
    assert sigmas[-1].item() == 0.0
    assert sigmas[0].item() == pytest.approx(schedule.sigma_max, rel=1e-5)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    if steps > 1:
        assert sigmas[-2].item() == pytest.approx(schedule.sigma_min, rel=1e-5)


def test_discrete_initial_latent_and_training_sigmas():
    schedule = DiscreteSchedule()
    noise = torch.randn(2, 4, 3, 3)
    assert torch.allclose(schedule.initial_latent(noise), noise * math.sqrt(1 + schedule.sigma_max**2))
    drawn = schedule.training_sigmas(64, torch.Generator().manual_seed(1))
    again = schedule.training_sigmas(64, torch.Generator().manual_seed(1))
    assert drawn.shape == (64,) and torch.equal(drawn, again)
    assert all(bool((schedule.sigmas == s).any()) for s in drawn)


def test_discrete_rejects_unknown_settings():
    with pytest.raises(ValueError):
        DiscreteSchedule("flow")
    with pytest.raises(ValueError):
        DiscreteSchedule(beta_schedule="cosine")


# -- flow (FLUX) ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_to_denoised_inverts_velocity_target(shift):
    schedule = FlowSchedule(shift=shift)
    x0, noise, sigma = _batch([0.001, 0.25, 0.5, 0.9, 1.0])
    x = schedule.add_noise(x0, noise, sigma)
    s = sigma[:, None, None, None]
    assert torch.allclose(x, (1 - s) * x0 + s * noise)
    target = schedule.training_target(x0, noise, sigma)
    assert torch.allclose(target, noise - x0)
    assert (schedule.to_denoised(x, target, sigma) - x0).abs().max() < 1e-5


def test_flow_model_input_and_initial_latent():
    schedule = FlowSchedule(timestep_scale=1000.0)
    x = torch.randn(2, 4, 3, 3)
    scaled, t = schedule.model_input(x, torch.tensor([0.25, 1.0]))
    assert torch.equal(scaled, x)
    assert t.tolist() == [250.0, 1000.0]
    assert torch.equal(schedule.initial_latent(x), x)


def test_flow_shift_one_is_linear():
    sigmas = FlowSchedule(shift=1.0).sampling_sigmas(8)
    assert torch.allclose(sigmas, torch.linspace(1, 0, 9), atol=1e-7)


@pytest.mark.parametrize("steps", [1, 5, 28])
def test_flow_shift_pushes_sigmas_up(steps):
    linear = FlowSchedule(shift=1.0).sampling_sigmas(steps)
    shifted = FlowSchedule(shift=3.0).sampling_sigmas(steps)
    assert shifted.shape == (steps + 1,)
    assert shifted[0].item() == pytest.approx(1.0) and shifted[-1].item() == 0.0
    assert torch.all(shifted[1:] < shifted[:-1])
    assert torch.all(shifted[1:-1] > linear[1:-1])
    # sigma' = shift·t / (1 + (shift - 1)·t): t = 0.5, shift 3 → 0.75
    assert FlowSchedule(shift=3.0).shifted(torch.tensor(0.5)).item() == pytest.approx(0.75)


def test_flow_sigma_range_and_training_sigmas():
    schedule = FlowSchedule(shift=2.0)
    assert schedule.sigma_max == 1.0
    assert schedule.sigma_min == pytest.approx(2e-3 / (1 + 1e-3), rel=1e-4)
    drawn = schedule.training_sigmas(256, torch.Generator().manual_seed(0))
    assert drawn.shape == (256,) and bool(((drawn > 0) & (drawn < 1)).all())
    assert torch.equal(drawn, schedule.training_sigmas(256, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        FlowSchedule(shift=0.0)


def test_flux_shift_endpoints():
    assert flux_shift(256) == pytest.approx(math.exp(0.5), rel=1e-12)
    assert flux_shift(4096) == pytest.approx(math.exp(1.15), rel=1e-12)
    # linear in mu between the endpoints (1024×1024 images: 4096 tokens; 512×512: 1024)
    assert math.log(flux_shift(1024)) == pytest.approx(0.5 + 0.65 * 768 / 3840, rel=1e-12)


def test_flux_shift_matches_diffusers():
    pipeline_flux = pytest.importorskip("diffusers.pipelines.flux.pipeline_flux")
    for tokens in (256, 1024, 2304, 4096):
        assert math.log(flux_shift(tokens)) == pytest.approx(pipeline_flux.calculate_shift(tokens), rel=1e-9)


def test_noisiest_sigmas_stay_in_the_noisiest_share_of_the_schedule():
    from protagonist.core.schedules import DiscreteSchedule, FlowSchedule
    from protagonist.core.training import noisiest_sigmas

    for schedule in (DiscreteSchedule(), FlowSchedule(shift=1.6)):
        levels = schedule.sampling_sigmas(1000)[:-1]
        drawn = noisiest_sigmas(schedule, 512, torch.Generator().manual_seed(0), 0.25)
        assert drawn.min() >= levels[249] and drawn.max() <= levels[0]
        assert len(drawn.unique()) > 100  # spread over the share, not one level


def test_a_shifted_schedule_keeps_the_timestep_scale_and_only_flow_schedules_shift():
    from protagonist.core.schedules import shifted_schedule

    moved = shifted_schedule(FlowSchedule(shift=3.0, timestep_scale=1000.0), 8.0)
    assert (moved.shift, moved.timestep_scale) == (8.0, 1000.0)
    assert torch.allclose(moved.sampling_sigmas(4), FlowSchedule(shift=8.0).sampling_sigmas(4))
    with pytest.raises(ValueError, match="flow schedules .FLUX. only"):
        shifted_schedule(DiscreteSchedule(), 8.0)
