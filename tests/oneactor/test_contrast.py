"""OneActor's contrast term (ours, not the paper's): its formula, its denoiser rows, its errors."""

from __future__ import annotations

import math

import pytest
import torch

from protagonist.core.interface import ProtagonistError
from protagonist.core.oneactor.tuning import OneActorTuning, ProposalSet, contrast_loss, tune_projector, tune_projectors
from protagonist.core.proposals import ProposalSettings, generate_proposals

CONTRAST = dict(lambda_aux=0.0, lambda_aver=0.0, contrast_weight=1.0, contrast_negatives=2, contrast_temperature=0.05)


@pytest.fixture(scope="module")
def proposals(tiny_sdxl_backend):
    settings = ProposalSettings(count=5, seed=2, steps=3, cfg=4.0, height=32, width=32, batch_size=5)
    return generate_proposals(tiny_sdxl_backend, "a photo of a blob", "", settings, feature_point="mid_block")


def test_contrast_loss_matches_a_hand_computation():
    target, negatives = torch.tensor(1.0), torch.tensor([1.0, 2.0, 0.9])
    scale = 0.05  # temperature × the target's error
    expected = scale * (math.log(2) + math.log1p(math.exp(-1 / scale)) + math.log1p(math.exp(0.1 / scale))) / 3
    assert contrast_loss(target, negatives, 0.05).item() == pytest.approx(expected, rel=1e-5)
    # a negative far worse than the target costs nothing; one far better costs its margin
    assert contrast_loss(torch.tensor(1.0), torch.tensor([9.0]), 0.05).item() == pytest.approx(0.0, abs=1e-6)
    assert contrast_loss(torch.tensor(1.0), torch.tensor([0.0]), 0.05).item() == pytest.approx(1.0, rel=1e-3)


def _denoiser_calls(backend, run):
    """(rows, timesteps) of each denoiser call during `run()`."""
    calls = []

    def hook(module, args, kwargs):
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append(torch.as_tensor(timestep).flatten().tolist())

    handle = backend.denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return calls


def test_negatives_are_denoised_at_the_targets_noise_level(tiny_sdxl_backend, proposals):
    data = ProposalSet.from_proposals(proposals, target=1, image_size=(32, 32))
    calls = _denoiser_calls(tiny_sdxl_backend, lambda: tune_projector(
        tiny_sdxl_backend, data, "blob", OneActorTuning(steps=3, aux_per_batch=3, **CONTRAST)))
    assert [len(t) for t in calls] == [3, 3, 3]  # the target + 2 negatives (λ1 = λ2 = 0: no other rows)
    assert all(len(set(t)) == 1 for t in calls)
    assert len({t[0] for t in calls}) > 1  # a new noise level each step, shared within it


def test_the_contrast_makes_the_offset_tell_the_target_from_the_others(tiny_sdxl_backend, proposals):
    from protagonist.core.oneactor.tuning import _step_losses, _Tuning, new_projector

    backend = tiny_sdxl_backend
    data = ProposalSet.from_proposals(proposals, target=2, image_size=(32, 32))
    with torch.no_grad():
        conds = [[backend.encode_prompts(["a photo of a blob"], word="blob", image_size=(32, 32))] * 5]
    projector = new_projector(backend, data.features, 0)
    optimizer = torch.optim.AdamW(projector.parameters(), lr=1e-2)
    tuning = _Tuning(data, 5, 1, conds, projector, torch.Generator())
    settings = OneActorTuning(aux_per_batch=2, contrast_temperature=0.5,
                              **{k: v for k, v in CONTRAST.items() if k != "contrast_temperature"})
    losses = []
    for _ in range(6):  # one fixed draw of negatives, noise level and noise
        tuning.generator.manual_seed(7)
        loss, = _step_losses(backend, [tuning], "blob", settings)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_contrast_keeps_side_by_side_tuning_equal_to_tuning_alone(tiny_sdxl_backend, proposals):
    sets = [ProposalSet.from_proposals(proposals, target=t, image_size=(32, 32)) for t in (0, 3)]
    settings = OneActorTuning(steps=3, aux_per_batch=2, lr=1e-2, templates=("a {}",), **CONTRAST)
    together = tune_projectors(tiny_sdxl_backend, sets, "blob", settings)
    for data, tuned in zip(sets, together):
        alone = tune_projector(tiny_sdxl_backend, data, "blob", settings)
        assert tuned.losses == pytest.approx(alone.losses, rel=1e-4)


@pytest.mark.parametrize("change", [dict(contrast_negatives=0), dict(contrast_temperature=0.0)])
def test_a_contrast_without_negatives_or_temperature_says_what_to_set(tiny_sdxl_backend, proposals, change):
    data = ProposalSet.from_proposals(proposals, target=0, image_size=(32, 32))
    with pytest.raises(ProtagonistError, match="contrast_negatives ≥ 1 and contrast_temperature > 0"):
        tune_projector(tiny_sdxl_backend, data, "blob", OneActorTuning(steps=1, **{**CONTRAST, **change}))
