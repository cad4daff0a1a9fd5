"""Learn an identity from a cluster of images: LoRA on the denoiser's attention + one new token per encoder."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from ..adapters import ATTENTION_TARGETS, LoraAdapter, frozen, frozen_parameters
from ..interface import DiffusionBackend, ProtagonistError, TokenEmbedding
from ..proposals import with_scene
from ..training import adamw, check_noisiest_share, denoising_error, optimisation_step

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = ("a photo of {}", "a rendering of {}", "an illustration of {}", "a picture of {}", "{}")


@dataclass
class IdentityTraining:
    """How an identity is learned (defaults: the unofficial implementation's published settings)."""

    steps: int = 500
    batch_size: int = 1
    rank: int = 4
    alpha: float = 4.0
    lora_lr: float = 3e-5
    token_lr: float = 3e-5
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    seed: int = 0
    targets: tuple[str, ...] = ATTENTION_TARGETS
    # Below 1, noise levels come only from this noisiest share of the schedule, where what a character
    # is (shape, accessory) gets decided; 1 draws them as the family was trained (the published recipe).
    noisiest_share: float = 1.0


@dataclass
class LearnedIdentity:
    token: TokenEmbedding
    lora: dict[str, torch.Tensor]  # peft-format LoRA weights of the denoiser
    rank: int
    alpha: float
    losses: list[float] = field(default_factory=list)


def new_token(backend: DiffusionBackend, name: str, init_word: str) -> TokenEmbedding:
    """A token named `name` whose vectors start as the rows of `init_word` (which must be one token)."""
    rows = backend.word_embedding(init_word)
    for key, block in rows.items():
        if block.shape[0] != 1:
            raise ProtagonistError(
                f"the initialiser word {init_word!r} is {block.shape[0]} tokens for {key}, not one: pick a short, "
                f"common word (for example the class word of the subject, like 'person', 'cat' or 'blob')")
    return TokenEmbedding(name, {k: v.float().clone().requires_grad_(True) for k, v in rows.items()})


def text_modules(backend: DiffusionBackend) -> list[torch.nn.Module]:
    """The text encoders (through their embedding tables' owners when the backend exposes them)."""
    encoders = getattr(backend, "text_encoders", None)
    if encoders:
        return list(encoders.values())
    clip = getattr(backend, "clip", None)
    return [clip.cond_stage_model] if clip is not None else []


def _batches(count: int, batch_size: int, steps: int, generator: torch.Generator):
    for _ in range(steps):
        yield torch.randint(0, count, (min(batch_size, count),), generator=generator)


def train_identity(backend: DiffusionBackend, images: torch.Tensor, token: TokenEmbedding,
                   settings: IdentityTraining, callback=None,
                   initial_lora: dict[str, torch.Tensor] | None = None,
                   scenes: list[str] | None = None) -> LearnedIdentity:
    """Fit LoRA + `token` to `images` ([N, 3, H, W] in [0, 1]) with the denoising loss.

    `scenes`, one per image ("on a beach"), end that image's captions, so that what the caption
    explains (the background) is not learnt into the token.

    The adapter starts from `initial_lora` when given (same rank), else from peft's zero-effect init.
    It is removed from the denoiser before returning; the result carries its weights.
    `callback(step, loss)` may raise to interrupt (the adapter is still removed).
    """
    check_noisiest_share(settings.noisiest_share)
    scenes = _checked_scenes(scenes, len(images))
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        latents = backend.encode_images(images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # peft draws LoRA's A from the global generator
        adapter = LoraAdapter(backend.denoiser, settings.rank, settings.alpha, settings.targets)
    trained = {id(p) for p in adapter.parameters()}
    base = [p for p in backend.denoiser.parameters() if id(p) not in trained]
    try:
        if initial_lora is not None:
            adapter.load_state_dict(initial_lora)
        optimizer = adamw([
            {"params": adapter.parameters(), "lr": settings.lora_lr},
            {"params": list(token.vectors.values()), "lr": settings.token_lr, "weight_decay": 0.0},
        ], backend.device)
        with backend.trainable(), backend.session(), frozen_parameters(base), frozen(*text_modules(backend)):
            losses = _fit(backend, latents, scenes, token, settings, optimizer, generator, callback)
        return LearnedIdentity(_detached(token), adapter.state_dict(), settings.rank, settings.alpha, losses)
    finally:
        adapter.remove()


def _checked_scenes(scenes: list[str] | None, count: int) -> list[str]:
    if scenes is None:
        return [""] * count
    if len(scenes) != count:
        raise ProtagonistError(f"got {len(scenes)} scenes for {count} training images: give one per image")
    return list(scenes)


def _fit(backend, latents, scenes, token, settings, optimizer, generator, callback) -> list[float]:
    size = (latents.shape[-2] * backend.vae_scale, latents.shape[-1] * backend.vae_scale)
    losses = []
    with torch.enable_grad():
        for step, index in enumerate(_batches(len(latents), settings.batch_size, settings.steps, generator)):
            batch_scenes = [scenes[i] for i in index.tolist()]
            loss = _step_loss(backend, latents[index], batch_scenes, token, settings, size, generator)
            losses.append(optimisation_step(loss, optimizer, step))
            if callback is not None:
                callback(step, losses[-1])
    return losses


def _step_loss(backend, latents, scenes, token, settings: IdentityTraining, size, generator) -> torch.Tensor:
    templates = settings.templates
    picks = torch.randint(0, len(templates), (latents.shape[0],), generator=generator).tolist()
    prompts = [with_scene(templates[p].format(token.name), scene) for p, scene in zip(picks, scenes)]
    cond = backend.encode_prompts(prompts, tokens=[token], image_size=size)
    return denoising_error(backend, latents, cond, generator, settings.noisiest_share).mean()


def _detached(token: TokenEmbedding) -> TokenEmbedding:
    return TokenEmbedding(token.name, {k: v.detach().clone() for k, v in token.vectors.items()})
