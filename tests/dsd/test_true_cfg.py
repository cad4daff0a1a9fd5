"""DSD's true CFG: the combination rule, its terms per step, and the batched "no image" switch."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.dsd.generate import sample_two_frame
from protagonist.core.dsd.guidance import TrueCFG, true_cfg
from protagonist.core.dsd.two_frame import (
    ImageSwitch,
    condition_tokens,
    conditioned,
    new_c_embedder,
    two_frame_predict,
)
from protagonist.core.interface import ProtagonistError
from protagonist.core.sampling import StepInfo, seeded_noise


def _info(index: int) -> StepInfo:
    return StepInfo(index, 4, 0.5, torch.linspace(1, 0, 5))


def test_the_rule_matches_a_hand_computation():
    no_image, negative, positive = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5]), torch.tensor([7.0, 1.5])
    # 1 + 1.5·(3 − 1) + 2·(7 − 3) = 12;  −2 + 1.5·(0.5 + 2) + 2·(1.5 − 0.5) = 3.75
    assert torch.allclose(true_cfg(no_image, negative, positive, 1.5, 2.0), torch.tensor([12.0, 3.75]))
    rule = TrueCFG(image_scale=1.5, text_scale=2.0)
    preds = {"no_image": no_image, "negative": negative, "positive": positive}
    assert torch.allclose(rule.combine(preds), torch.tensor([12.0, 3.75]))
    # The weights sum to 1: a constant prediction passes through unchanged (x0, noise or velocity alike).
    same = torch.full((2,), 0.25)
    assert torch.allclose(rule.combine({k: same for k in preds}), same)


def test_terms_per_step():
    assert TrueCFG().terms(_info(2)) == ("positive",)  # DSD default: off
    assert TrueCFG(1.5, 2.0).terms(_info(0)) == ("positive",)  # the first step uses p(prompt, image) alone
    assert TrueCFG(1.5, 2.0).terms(_info(1)) == ("no_image", "negative", "positive")
    assert TrueCFG(1.0, 3.0).terms(_info(1)) == ("negative", "positive")  # s_i = 1: the no-image term cancels
    with pytest.raises(ProtagonistError, match="`image_scale`"):
        TrueCFG(image_scale=-1.0)


@pytest.fixture
def conditioned_parts(tiny_flux_backend):
    backend = tiny_flux_backend
    c_embedder = new_c_embedder(backend.image_embedder())
    torch.nn.init.normal_(c_embedder.weight, std=0.3, generator=torch.Generator().manual_seed(0))
    tokens = condition_tokens(backend, torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)), 32)
    with torch.no_grad():
        negative, positive = backend.encode_prompts([""]), backend.encode_prompts(["a blob at night"])
    return backend, c_embedder, tokens, negative, positive


def test_the_switch_removes_the_condition_from_one_batch_entry_only(conditioned_parts):
    backend, c_embedder, tokens, negative, positive = conditioned_parts
    x = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor(0.7)
    switch = ImageSwitch()
    switch.flags = [False, True, True]
    with torch.no_grad():
        with conditioned(backend.image_embedder(), c_embedder, tokens, switch):
            batched = backend.predict(x, sigma, [negative, negative, positive])
        plain = backend.predict(x, sigma, [negative])[0]
        with_image = two_frame_predict(backend, c_embedder, tokens, x, sigma, [negative, positive])
    assert (with_image[0] - plain).abs().max() > 1e-3  # the condition matters for this c_embedder
    assert (batched[0] - plain).abs().max() <= 1e-5  # "no image": plain FLUX, no c_embedder term
    assert (batched[1:] - with_image).abs().max() <= 1e-5


def test_sampling_follows_the_rule_step_by_step(conditioned_parts):
    backend, c_embedder, tokens, negative, positive = conditioned_parts
    s_i, s_t, steps = 1.5, 2.5, 3
    noise = seeded_noise([4], (1, 4, 8, 16))
    got = sample_two_frame(backend, c_embedder, tokens, positive, negative, noise, steps, TrueCFG(s_i, s_t))
    sigmas = backend.schedule.sampling_sigmas(steps)
    x = backend.schedule.initial_latent(noise)
    with torch.no_grad():
        for i in range(steps):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            p_pos = two_frame_predict(backend, c_embedder, tokens, x, torch.tensor(sigma), [positive])[0]
            if i == 0:
                denoised = p_pos
            else:
                p_neg = two_frame_predict(backend, c_embedder, tokens, x, torch.tensor(sigma), [negative])[0]
                p_none = backend.predict(x, torch.tensor(sigma), [negative])[0]
                denoised = p_none + s_i * (p_neg - p_none) + s_t * (p_pos - p_neg)
            x = x + (x - denoised) / sigma * (sigma_next - sigma)
    assert (got - x).abs().max() <= 1e-4
    off = sample_two_frame(backend, c_embedder, tokens, positive, negative, noise, steps)
    assert (got - off).abs().max() > 1e-3
