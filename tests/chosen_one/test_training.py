"""LoRA + textual-inversion training on the tiny SDXL: what changes, what must not, and failures."""

from __future__ import annotations

import math

import pytest
import torch
from protagonist.core.adapters import LoraAdapter, LoraOnNoisiest, comfy_lora, kohya_lora, lora_applied
from protagonist.core.chosen_one.training import IdentityTraining, new_token, train_identity
from protagonist.core.interface import ProtagonistError
from protagonist.core.sampling import cfg_guidance, sample
from protagonist.core.training import TrainingDiverged, lowest_sigma_of_noisiest, noisiest_sigmas


@pytest.fixture(scope="module")
def backend(tiny_sdxl_backend):
    return tiny_sdxl_backend


def _images(n=4, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _prediction(backend, token=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, generator=g)
    prompt = f"a photo of {token.name}" if token else "a photo of a blob"
    with torch.no_grad():
        cond = backend.encode_prompts([prompt], tokens=[token] if token else None)
        return backend.predict(x, torch.tensor(2.0), [cond])


def test_training_changes_only_the_token_and_the_adapter(backend):
    tables = {k: t.weight.detach().clone() for k, t in backend.embedding_tables().items()}
    denoiser = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    before = _prediction(backend)
    token = new_token(backend, "<hero>", "blob")
    start = {k: v.detach().clone() for k, v in token.vectors.items()}
    learned = train_identity(backend, _images(), token, IdentityTraining(steps=5, lora_lr=1e-3, token_lr=1e-2))
    assert len(learned.losses) == 5 and all(math.isfinite(loss) for loss in learned.losses)
    for key, vector in start.items():
        assert not torch.equal(learned.token.vectors[key], vector)
    for key, table in backend.embedding_tables().items():
        assert torch.equal(table.weight, tables[key])
    assert set(backend.denoiser.state_dict()) == set(denoiser)
    assert all(torch.equal(v, denoiser[k]) for k, v in backend.denoiser.state_dict().items())
    assert torch.equal(_prediction(backend), before)
    assert learned.lora and all(".lora_A." in k or ".lora_B." in k for k in learned.lora)
    with lora_applied(backend.denoiser, learned.lora, learned.rank, learned.alpha):
        assert not torch.allclose(_prediction(backend), before)
    assert torch.equal(_prediction(backend), before)


def test_nan_loss_stops_with_the_step(backend):
    images = _images()
    images[:] = float("nan")
    with pytest.raises(TrainingDiverged, match="step 0"):
        train_identity(backend, images, new_token(backend, "<x>", "blob"), IdentityTraining(steps=3))
    assert not any("lora" in name for name, _ in backend.denoiser.named_parameters())


def test_noisiest_share_trains_only_on_the_noisiest_levels(backend, monkeypatch):
    seen = []
    predict = backend.raw_predict

    def recording(x, sigma, cond):
        seen.append(sigma.detach().clone())
        return predict(x, sigma, cond)

    monkeypatch.setattr(backend, "raw_predict", recording)
    train_identity(backend, _images(), new_token(backend, "<x>", "blob"),
                   IdentityTraining(steps=20, batch_size=4, noisiest_share=0.25, lora_lr=1e-3, token_lr=1e-2))
    levels = backend.schedule.sampling_sigmas(1000)[:-1]
    lowest_kept = levels[: round(0.25 * len(levels))].min()
    sigmas = torch.cat(seen)
    assert len(sigmas) == 80 and bool((sigmas >= lowest_kept).all())
    assert float(sigmas.min()) > float(levels.median())


def test_a_noisiest_share_outside_zero_to_one_is_refused_before_any_work(backend):
    for share in (0.0, 1.5):
        with pytest.raises(ProtagonistError, match="noisiest_share must be in"):
            train_identity(backend, _images(), new_token(backend, "<x>", "blob"),
                           IdentityTraining(steps=2, noisiest_share=share))
    assert not any("lora" in name for name, _ in backend.denoiser.named_parameters())


def test_initialiser_must_be_one_token(backend):
    with pytest.raises(ProtagonistError, match="not one"):
        new_token(backend, "<x>", "blob robot")


def test_export_key_formats(backend):
    adapter = LoraAdapter(backend.denoiser, rank=2, alpha=2)
    try:
        state = adapter.state_dict()
    finally:
        adapter.remove()
    kohya = kohya_lora(state, 2.0)
    down = [k for k in kohya if k.endswith(".lora_down.weight")]
    assert down and all(k.startswith("lora_unet_") and "." not in k[: -len(".lora_down.weight")] for k in down)
    assert len(kohya) == 3 * len(down) and float(kohya[down[0].replace("lora_down.weight", "alpha")]) == 2.0
    assert all(k.startswith("diffusion_model.") for k in comfy_lora(state, 2.0))


def _recording_prompts(backend, monkeypatch) -> list[str]:
    seen: list[str] = []
    encode = backend.encode_prompts

    def recording(prompts, *args, **kwargs):
        seen.extend(prompts)
        return encode(prompts, *args, **kwargs)

    monkeypatch.setattr(backend, "encode_prompts", recording)
    return seen


def test_each_image_is_captioned_with_its_own_scene(backend, monkeypatch):
    seen = _recording_prompts(backend, monkeypatch)
    scenes = ["on a beach", "in a forest", "in the snow", "at night"]
    train_identity(backend, _images(), new_token(backend, "<x>", "blob"),
                   IdentityTraining(steps=6, batch_size=4, templates=("a {}",), lora_lr=1e-3, token_lr=1e-2),
                   scenes=scenes)
    assert len(seen) == 24 and set(seen) == {f"a <x> {scene}" for scene in scenes}


def test_one_scene_per_training_image_is_required(backend):
    with pytest.raises(ProtagonistError, match="3 scenes for 4 training images"):
        train_identity(backend, _images(), new_token(backend, "<x>", "blob"), IdentityTraining(steps=2),
                       scenes=["on a beach"] * 3)


def test_an_applied_lora_is_merged_and_then_taken_out_bit_for_bit(backend):
    weights = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    adapter = LoraAdapter(backend.denoiser, rank=2, alpha=2.0)
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(3))
    lora = adapter.state_dict()
    unmerged = _prediction(backend)
    adapter.remove()
    with lora_applied(backend.denoiser, lora, 2, 2.0):
        assert not any("lora_" in name for name, _ in backend.denoiser.named_parameters())
        merged = _prediction(backend)
    assert (merged - unmerged).abs().max() <= 1e-5 * unmerged.abs().max()
    assert not torch.allclose(merged, _prediction(backend))
    assert all(torch.equal(v, weights[k]) for k, v in backend.denoiser.state_dict().items())


def _random_lora(backend, rank=2, seed=3):
    adapter = LoraAdapter(backend.denoiser, rank=rank, alpha=float(rank))
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(seed))
    lora = adapter.state_dict()
    adapter.remove()
    return lora


def test_a_lora_on_the_noisiest_levels_draws_the_first_steps_and_the_base_weights_the_rest(backend):
    base = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    lora, sigmas = _random_lora(backend), backend.schedule.sampling_sigmas(6)
    floor = float(sigmas[3])  # steps 0-3 at or above it
    merged_at = []

    def record(info, x, denoised):
        current = backend.denoiser.state_dict()
        merged_at.append(any(not torch.equal(current[k], v) for k, v in base.items()))

    with torch.no_grad():
        cond = backend.encode_prompts(["a photo of a blob"])
    with LoraOnNoisiest(backend.denoiser, lora, 2, 2.0, floor) as scheduled:
        for _ in range(2):  # every sampling run (a batch) merges it again
            sample(backend, [cond], torch.randn(1, 4, 8, 8), 6, cfg_guidance(1.0), callback=record,
                   before_step=scheduled.before_step)
    assert merged_at == [True] * 4 + [False] * 2 + [True] * 4 + [False] * 2
    assert all(torch.equal(v, base[k]) for k, v in backend.denoiser.state_dict().items())


def test_an_interrupted_run_leaves_no_lora_merged(backend):
    base = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    with torch.no_grad():
        cond = backend.encode_prompts(["a photo of a blob"])

    def stop(info, x, denoised):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), LoraOnNoisiest(backend.denoiser, _random_lora(backend), 2, 2.0, 0.0) as lora:
        sample(backend, [cond], torch.randn(1, 4, 8, 8), 4, cfg_guidance(1.0), callback=stop,
               before_step=lora.before_step)
    assert all(torch.equal(v, base[k]) for k, v in backend.denoiser.state_dict().items())


def test_the_lowest_sigma_of_a_share_is_the_least_that_training_with_it_draws(backend):
    drawn = noisiest_sigmas(backend.schedule, 4000, torch.Generator().manual_seed(0), 0.25)
    assert lowest_sigma_of_noisiest(backend.schedule, 0.25) == pytest.approx(float(drawn.min()))
    assert lowest_sigma_of_noisiest(backend.schedule, 1.0) == pytest.approx(
        float(backend.schedule.sampling_sigmas(1000)[-2]))
    with pytest.raises(ProtagonistError, match="in \\(0, 1\\]"):
        lowest_sigma_of_noisiest(backend.schedule, 0.0)


def test_a_lora_that_does_not_fit_leaves_the_model_as_it_was(backend):
    weights = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    adapter = LoraAdapter(backend.denoiser, rank=2, alpha=2.0)
    lora = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in adapter.state_dict().items()}
    adapter.remove()
    with pytest.raises(RuntimeError), lora_applied(backend.denoiser, lora, 2, 2.0):
        pass
    assert not any("lora_" in name for name, _ in backend.denoiser.named_parameters())
    assert all(torch.equal(v, weights[k]) for k, v in backend.denoiser.state_dict().items())


def test_a_merge_that_fails_part_way_puts_back_the_layers_it_changed(backend, monkeypatch):
    from peft.tuners.lora import Linear as LoraLinear

    weights = {k: v.clone() for k, v in backend.denoiser.state_dict().items()}
    adapter = LoraAdapter(backend.denoiser, rank=2, alpha=2.0)
    for parameter in adapter.parameters():
        torch.nn.init.normal_(parameter, std=0.05, generator=torch.Generator().manual_seed(4))
    lora = adapter.state_dict()
    adapter.remove()
    merge, calls = LoraLinear.merge, []

    def merge_twice_then_fail(self, *args, **kwargs):
        calls.append(self)
        if len(calls) > 2:
            raise RuntimeError("out of memory")
        return merge(self, *args, **kwargs)

    monkeypatch.setattr(LoraLinear, "merge", merge_twice_then_fail)
    with pytest.raises(RuntimeError, match="out of memory"), lora_applied(backend.denoiser, lora, 2, 2.0):
        pass
    assert len(calls) == 3
    assert not any("lora_" in name for name, _ in backend.denoiser.named_parameters())
    assert all(torch.equal(v, weights[k]) for k, v in backend.denoiser.state_dict().items())
