"""The sampling loop over x0 predictions, driven by a stub backend whose predictions are known."""

from __future__ import annotations

import contextlib

import pytest
import torch

from protagonist.core.interface import ProtagonistError
from protagonist.core.sampling import SAMPLERS, StepInfo, cfg_guidance, sample, seeded_noise
from protagonist.core.schedules import DiscreteSchedule, FlowSchedule

SHAPE = (2, 4, 6, 6)


class StubBackend:
    """Just what `sample` touches: predicts a fixed x0 per conditioning index, records every call."""

    def __init__(self, schedule, targets: torch.Tensor):
        self.schedule = schedule
        self.targets = targets  # [n_conds, B, ...]
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.calls: list[tuple[torch.Tensor, float, int]] = []
        self.session_entered = self.session_exited = 0

    def predict(self, x, sigma, conds):
        assert x.shape == self.targets.shape[1:]
        self.calls.append((x.clone(), float(sigma), len(conds)))
        return self.targets[: len(conds)].clone()

    @contextlib.contextmanager
    def session(self):
        self.session_entered += 1
        try:
            yield
        finally:
            self.session_exited += 1


def _targets(n, seed=0):
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


SCHEDULES = {"discrete": lambda: DiscreteSchedule(), "flow1": lambda: FlowSchedule(1.0),
             "flow3": lambda: FlowSchedule(3.0)}


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_samplers_converge_to_a_fixed_x0(sampler, schedule_name):
    schedule = SCHEDULES[schedule_name]()
    targets = _targets(2)
    target = targets[0] + 2.0 * (targets[1] - targets[0])  # what cfg 2.0 combines them into
    backend = StubBackend(schedule, targets)
    noise = seeded_noise([1, 2], SHAPE)
    x_start = schedule.initial_latent(noise)
    sigmas = schedule.sampling_sigmas(6)
    seen = []

    def callback(info, x, denoised):
        assert torch.allclose(denoised, target, atol=1e-6)
        # with a constant x0 the probability-flow ODE is linear in sigma, and both samplers are exact:
        # x(sigma) = x0 + sigma / sigma_0 · (x_start - x0)
        sigma_next = float(sigmas[info.index + 1])
        expected = target + sigma_next / float(sigmas[0]) * (x_start - target)
        assert (x - expected).abs().max() < 1e-4
        seen.append(info.index)

    out = sample(backend, ["negative", "positive"], noise, 6, cfg_guidance(2.0), sampler=sampler,
                 callback=callback)
    assert seen == list(range(6))
    assert out.shape == SHAPE
    assert (out - target).abs().max() < 1e-4
    assert torch.allclose(backend.calls[0][0], x_start)
    assert backend.session_entered == backend.session_exited == 1


def test_cfg_guidance_formula():
    info = StepInfo(0, 1, 1.0, torch.tensor([1.0, 0.0]))
    negative = torch.tensor([[1.0, -2.0, 0.5]])
    positive = torch.tensor([[2.0, 1.0, 0.5]])
    combined = cfg_guidance(3.0)(torch.stack([negative, positive]), info)
    # neg + 3·(pos - neg)
    assert torch.allclose(combined, torch.tensor([[4.0, 7.0, 0.5]]))
    assert torch.equal(cfg_guidance(1.0)(torch.stack([negative, positive]), info), positive)
    assert torch.equal(cfg_guidance(0.0)(torch.stack([negative, positive]), info), negative)
    # a single conditioning is returned as it is, whatever the scale
    assert torch.equal(cfg_guidance(7.5)(positive[None], info), positive)


def test_guidance_receives_all_conditionings_and_step_info():
    targets = _targets(3, seed=4)
    backend = StubBackend(FlowSchedule(1.0), targets)
    sigmas = FlowSchedule(1.0).sampling_sigmas(5)
    infos = []

    def guidance(preds, info):
        assert preds.shape == (3, *SHAPE)
        assert torch.equal(preds, targets)
        infos.append(info)
        return preds[2]

    out = sample(backend, ["a", "b", "c"], seeded_noise([0, 1], SHAPE), 5, guidance)
    assert [i.index for i in infos] == [0, 1, 2, 3, 4]
    assert all(i.total == 5 for i in infos)
    assert [i.fraction for i in infos] == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert [i.sigma for i in infos] == pytest.approx(sigmas[:-1].tolist())
    assert all(torch.equal(i.sigmas, sigmas) for i in infos)
    assert [c[1] for c in backend.calls] == pytest.approx(sigmas[:-1].tolist())
    assert all(c[2] == 3 for c in backend.calls)
    assert (out - targets[2]).abs().max() < 1e-5


def test_explicit_sigmas_override_steps():
    backend = StubBackend(DiscreteSchedule(), _targets(1))
    sigmas = torch.tensor([3.0, 1.0, 0.25, 0.0])
    infos = []
    out = sample(backend, ["c"], seeded_noise([5, 6], SHAPE), 50, cfg_guidance(5.0), sigmas=sigmas,
                 callback=lambda info, x, d: infos.append(info))
    assert [i.sigma for i in infos] == [3.0, 1.0, 0.25]
    assert all(i.total == 3 for i in infos)
    assert len(backend.calls) == 3
    assert (out - backend.targets[0]).abs().max() < 1e-5


def test_callback_is_called_once_per_step():
    backend = StubBackend(DiscreteSchedule(), _targets(1))
    calls = []
    sample(backend, ["c"], seeded_noise([0, 1], SHAPE), 7, cfg_guidance(1.0), sampler="dpmpp_2m",
           callback=lambda info, x, denoised: calls.append((info.index, x.shape, denoised.shape)))
    assert calls == [(i, torch.Size(SHAPE), torch.Size(SHAPE)) for i in range(7)]
    assert len(backend.calls) == 7


class Interrupted(Exception):
    pass


def test_exception_in_callback_interrupts_sampling():
    backend = StubBackend(DiscreteSchedule(), _targets(1))

    def callback(info, x, denoised):
        if info.index == 2:
            raise Interrupted()

    with pytest.raises(Interrupted):
        sample(backend, ["c"], seeded_noise([0, 1], SHAPE), 10, cfg_guidance(1.0), callback=callback)
    assert len(backend.calls) == 3  # steps 0, 1, 2 and no further prediction
    assert backend.session_entered == backend.session_exited == 1  # the session was left


def test_seeded_noise_rows_depend_only_on_their_seed():
    alone = seeded_noise([7], (1, 4, 8, 8))
    pair = seeded_noise([3, 7], (2, 4, 8, 8))
    assert alone.shape == (1, 4, 8, 8) and pair.shape == (2, 4, 8, 8)
    assert torch.equal(alone[0], pair[1])
    assert torch.equal(seeded_noise([3], (1, 4, 8, 8))[0], pair[0])
    assert not torch.equal(pair[0], pair[1])
    assert torch.equal(seeded_noise([3, 7], (2, 4, 8, 8)), pair)  # reproducible
    big = seeded_noise([11], (1, 4, 64, 64))
    assert abs(big.mean().item()) < 0.05 and abs(big.std().item() - 1) < 0.05


def test_unknown_sampler_names_the_valid_ones():
    backend = StubBackend(DiscreteSchedule(), _targets(1))
    with pytest.raises(ProtagonistError) as error:
        sample(backend, ["c"], seeded_noise([0, 1], SHAPE), 4, cfg_guidance(1.0), sampler="heun")
    message = str(error.value)
    assert "heun" in message
    for name in SAMPLERS:
        assert name in message
    assert backend.calls == []
