"""The diffusers SDXL and FLUX backends: batched prediction, broadcasting, VAE, feature points."""

from __future__ import annotations

import pytest
import torch

from protagonist.core.interface import Conditioning, ProtagonistError, broadcast, concat_conditionings
from protagonist.core.sampling import seeded_noise

PROMPTS = ["a photo of blob", "a cat on the beach at night", ""]


@pytest.fixture(params=["sdxl", "flux"])
def backend(request):
    return request.getfixturevalue(f"tiny_{request.param}_backend")


def _latents(backend, batch=2, side=32, seed=0):
    return seeded_noise(list(range(seed, seed + batch)), backend.latent_shape(batch, side, side))


def _sigma(backend):
    return 2.0 if backend.family == "sdxl" else 0.6


@torch.no_grad()
def test_predict_batches_conditionings_like_separate_calls(backend):
    x = _latents(backend)
    sigma = torch.tensor(_sigma(backend))
    conds = [backend.encode_prompts([p]) for p in PROMPTS]
    joined = backend.predict(x, sigma, conds)
    assert joined.shape == (3, *x.shape)
    for i, cond in enumerate(conds):
        single = backend.predict(x, sigma, [cond])
        assert single.shape == (1, *x.shape)
        assert (joined[i] - single[0]).abs().max() < 1e-5
    # the conditionings do matter
    assert (joined[0] - joined[1]).abs().max() > 1e-4


@torch.no_grad()
def test_predict_per_sample_sigma(backend):
    x = _latents(backend)
    cond = backend.encode_prompts(["a blob"])
    sigmas = torch.tensor([0.5, 0.9]) if backend.family == "flux" else torch.tensor([1.0, 8.0])
    both = backend.predict(x, sigmas, [cond])[0]
    for b in range(2):
        alone = backend.predict(x[b:b + 1], sigmas[b], [cond])[0, 0]
        # x0 = x - sigma·eps: float32 noise in eps grows with sigma
        assert (both[b] - alone).abs().max() < 1e-5 * max(1.0, float(sigmas[b]))


@torch.no_grad()
def test_batch_one_conditioning_broadcasts(backend):
    x = _latents(backend, batch=3)
    sigma = torch.tensor(_sigma(backend))
    one = backend.encode_prompts(["a red blob"], word="blob")
    three = backend.encode_prompts(["a red blob"] * 3, word="blob")
    assert one.batch_size == 1 and three.batch_size == 3
    expanded = broadcast(one, 3)
    assert expanded.batch_size == 3 and expanded.word_positions == three.word_positions
    assert torch.equal(expanded.embeds, three.embeds)
    assert (backend.predict(x, sigma, [one]) - backend.predict(x, sigma, [three])).abs().max() < 1e-5
    mixed = backend.predict(x, sigma, [one, three])
    assert mixed.shape == (2, *x.shape) and (mixed[0] - mixed[1]).abs().max() < 1e-5
    with pytest.raises(ProtagonistError):
        backend.predict(x[:2], sigma, [three])


def test_concat_conditionings_checks_lengths():
    a = Conditioning(torch.zeros(1, 5, 4), torch.zeros(1, 3), {"t": torch.ones(1, 2)}, [[1]])
    b = Conditioning(torch.ones(2, 5, 4), torch.ones(2, 3), {"t": torch.zeros(2, 2)}, [[2], [3]])
    joined = concat_conditionings([a, b])
    assert joined.embeds.shape == (3, 5, 4) and joined.extras["t"].shape == (3, 2)
    assert joined.word_positions == [[1], [2], [3]]
    assert concat_conditionings([a, b.replace(word_positions=None)]).word_positions is None
    with pytest.raises(ProtagonistError):
        concat_conditionings([a, Conditioning(torch.zeros(1, 6, 4), torch.zeros(1, 3))])


@torch.no_grad()
def test_raw_predict_then_to_denoised_is_predict(backend):
    x = _latents(backend)
    sigma = torch.full((2,), _sigma(backend))
    cond = backend.encode_prompts(["a blob", "a cat"])
    raw = backend.raw_predict(x, sigma, cond)
    assert raw.shape == x.shape
    expected = backend.schedule.to_denoised(x, raw, sigma)
    assert (backend.predict(x, sigma, [cond])[0] - expected).abs().max() < 1e-5


def test_sdxl_conditioning_layout(tiny_sdxl_backend):
    backend = tiny_sdxl_backend
    assert backend.family == "sdxl" and backend.latent_channels == 4 and backend.vae_scale == 4
    with torch.no_grad():
        cond = backend.encode_prompts(["a blob", "a cat"])
        sized = backend.encode_prompts(["a blob"], image_size=(64, 48))
    assert cond.embeds.shape == (2, 77, 32 + 64) and cond.pooled.shape == (2, 64)
    assert cond.extras["time_ids"].tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2
    assert sized.extras["time_ids"].tolist() == [[64.0, 48.0, 0.0, 0.0, 64.0, 48.0]]
    assert cond.embeds.dtype == torch.float32 and backend.dtype == torch.float32


def test_flux_conditioning_layout(tiny_flux_backend):
    backend = tiny_flux_backend
    assert backend.family == "flux" and backend.latent_channels == 4 and backend.vae_scale == 4
    with torch.no_grad():
        cond = backend.encode_prompts(["a blob", "a cat"])
    assert cond.embeds.shape == (2, backend.max_sequence_length, 32) and cond.pooled.shape == (2, 32)
    assert cond.extras["guidance"].tolist() == [backend.distilled_guidance] * 2


@torch.no_grad()
def test_vae_round_trip_shapes_and_range(backend):
    images = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    latents = backend.encode_images(images)
    assert latents.shape == backend.latent_shape(2, 32, 48) == (2, 4, 8, 12)
    assert latents.dtype == backend.dtype
    assert torch.equal(latents, backend.encode_images(images))  # the posterior mean: deterministic
    decoded = backend.decode_latents(latents)
    assert decoded.shape == images.shape
    assert decoded.min() >= 0 and decoded.max() <= 1
    wild = backend.decode_latents(100 * torch.randn_like(latents))
    assert wild.min() >= 0 and wild.max() <= 1


def test_latent_shape_checks_divisibility(backend):
    assert backend.latent_shape(2, 64, 32) == (2, 4, 16, 8)
    for height, width in ((30, 32), (32, 34), (33, 33)):
        with pytest.raises(ProtagonistError) as error:
            backend.latent_shape(1, height, width)
        assert str(backend.vae_scale) in str(error.value)


@torch.no_grad()
def test_sdxl_mid_block_feature_point(tiny_sdxl_backend):
    backend = tiny_sdxl_backend
    module = backend.feature_module("mid_block")
    assert module is backend.unet.mid_block and module is backend.denoiser.mid_block
    seen = []

    def hook(mod, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden)

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        x = _latents(backend)
        backend.predict(x, torch.tensor(1.0), [backend.encode_prompts(["a blob"]), backend.encode_prompts(["a cat"])])
    finally:
        handle.remove()
    assert len(seen) == 1
    assert isinstance(seen[0], torch.Tensor)
    assert seen[0].shape == (4, backend.unet.config.block_out_channels[-1], 4, 4)  # 2 conds × batch 2
    with pytest.raises(ValueError):
        backend.feature_module("up_blocks.0")


@torch.no_grad()
def test_flux_block_feature_points(tiny_flux_backend):
    backend = tiny_flux_backend
    assert backend.feature_module("double_blocks.0") is backend.transformer.transformer_blocks[0]
    assert backend.feature_module("single_blocks.0") is backend.transformer.single_transformer_blocks[0]
    seen = []

    def hook(mod, args, kwargs):
        seen.append(args[0] if args else kwargs["hidden_states"])

    handle = backend.feature_module("double_blocks.0").register_forward_pre_hook(hook, with_kwargs=True)
    try:
        x = _latents(backend)
        backend.predict(x, torch.tensor(0.5), [backend.encode_prompts(["a blob"])])
    finally:
        handle.remove()
    assert len(seen) == 1 and isinstance(seen[0], torch.Tensor)
    assert seen[0].shape[:2] == (2, (x.shape[-2] // 2) * (x.shape[-1] // 2))  # packed image tokens
    for bad in ("double_blocks.1", "single_blocks.7", "double_blocks", "double_blocks.x", "mid_block", ""):
        with pytest.raises(ValueError):
            backend.feature_module(bad)


def test_session_and_device(backend):
    with backend.session():
        assert backend.device == torch.device("cpu")
    assert backend.denoiser is (backend.unet if backend.family == "sdxl" else backend.transformer)
