"""The shared training pieces: a NaN loss stops before anything is applied; min-SNR weights the nearly clean levels
down."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.interface import ProtagonistError
from protagonist.core.schedules import DiscreteSchedule, FlowSchedule
from protagonist.core.training import TrainingDiverged, denoising_error, min_snr_weights, optimisation_step


def test_a_finite_loss_steps_and_a_nan_loss_changes_nothing():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    assert optimisation_step((weight ** 2).sum(), optimizer, 0) == 2.0
    assert torch.equal(weight.detach(), torch.zeros(2))
    with pytest.raises(TrainingDiverged, match="step 7"):
        optimisation_step(weight.sum() * float("nan"), optimizer, 7)
    assert torch.equal(weight.detach(), torch.zeros(2))


def test_min_snr_keeps_the_noisy_levels_and_weights_the_clean_ones_by_their_snr():
    weights = min_snr_weights(DiscreteSchedule(), torch.tensor([14.6, 2.0, 5 ** -0.5, 0.1]), 5.0)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 1.0, 0.05])
    with pytest.raises(ProtagonistError, match="epsilon prediction only"):
        min_snr_weights(FlowSchedule(), torch.tensor([0.5]), 5.0)
    with pytest.raises(ProtagonistError, match="positive"):
        min_snr_weights(DiscreteSchedule(), torch.tensor([0.5]), 0.0)


def test_min_snr_scales_each_samples_error_and_draws_the_same_noise():
    class EchoBackend:  # predicts what it is fed, so the error depends on the drawn sigma and noise only
        schedule = DiscreteSchedule()

        def raw_predict(self, x, sigma, cond):
            self.sigmas = sigma
            return x

    backend, latents = EchoBackend(), torch.randn(64, 4, 8, 8)
    plain = denoising_error(backend, latents, None, torch.Generator().manual_seed(3))
    weighted = denoising_error(backend, latents, None, torch.Generator().manual_seed(3), min_snr=5.0)
    expected = min_snr_weights(backend.schedule, backend.sigmas, 5.0)
    assert expected.min() < 0.5 and expected.max() == 1.0  # the batch spans both regimes
    assert torch.allclose(weighted, plain * expected.reshape(-1, 1, 1, 1))


def test_sigma_shift_draws_the_same_quantiles_at_the_other_shift():
    class RecordingBackend:
        schedule = FlowSchedule(shift=3.0, timestep_scale=1000.0)

        def raw_predict(self, x, sigma, cond):
            self.sigmas = sigma
            return x

    backend, latents = RecordingBackend(), torch.randn(256, 4, 4, 4)
    denoising_error(backend, latents, None, torch.Generator().manual_seed(5))
    own = backend.sigmas
    denoising_error(backend, latents, None, torch.Generator().manual_seed(5), sigma_shift=8.0)
    higher = backend.sigmas
    unshifted = own / (3.0 - 2.0 * own)  # t of sigma = 3t / (1 + 2t)
    assert torch.allclose(higher, 8.0 * unshifted / (1 + 7.0 * unshifted), atol=1e-6)
    assert (higher >= own).all() and higher.median() > own.median() + 0.05
    with pytest.raises(ValueError, match="flow schedules"):
        backend.schedule = DiscreteSchedule()
        denoising_error(backend, latents, None, torch.Generator().manual_seed(5), sigma_shift=8.0)


def test_input_perturbation_moves_the_input_by_sigma_gamma_xi_and_keeps_the_target():
    class ZeroBackend:  # predicts 0, so the error is the squared target alone
        schedule = FlowSchedule(shift=3.0, timestep_scale=1000.0)

        def raw_predict(self, x, sigma, cond):
            self.inputs, self.sigmas = x, sigma
            return torch.zeros_like(x)

    backend, latents = ZeroBackend(), torch.randn(128, 4, 4, 4)
    plain = denoising_error(backend, latents, None, torch.Generator().manual_seed(9))
    clean_input = backend.inputs
    perturbed = denoising_error(backend, latents, None, torch.Generator().manual_seed(9), input_perturbation=0.1)
    assert torch.equal(perturbed, plain)  # same sigmas and noise drawn, same target
    xi = (backend.inputs - clean_input) / backend.sigmas.reshape(-1, 1, 1, 1)
    assert abs(xi.std().item() - 0.1) < 0.005 and abs(xi.mean().item()) < 0.005
