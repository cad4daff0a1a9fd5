"""The shared optimisation step: a NaN loss stops before anything is applied."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.training import TrainingDiverged, optimisation_step


def test_a_finite_loss_steps_and_a_nan_loss_changes_nothing():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    assert optimisation_step((weight ** 2).sum(), optimizer, 0) == 2.0
    assert torch.equal(weight.detach(), torch.zeros(2))
    with pytest.raises(TrainingDiverged, match="step 7"):
        optimisation_step(weight.sum() * float("nan"), optimizer, 7)
    assert torch.equal(weight.detach(), torch.zeros(2))
