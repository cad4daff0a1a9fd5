"""Proposals: many images of one prompt, batched, each reproducible from its own seed."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .interface import DiffusionBackend, ProtagonistError, TokenEmbedding, missing_word_error, whole_word_pattern
from .sampling import StepCallback, cfg_guidance, sample, seeded_noise


@dataclass
class ProposalSettings:
    """How proposals are drawn. Image i uses seed `seed + i`."""

    count: int = 4
    seed: int = 0
    steps: int = 30
    cfg: float = 7.5
    sampler: str = "euler"
    # Share of the steps, from the first, sampled with CFG; the rest take the conditional prediction alone, one
    # denoiser pass a step instead of two. Late steps only refine what guidance has already decided: on the
    # sprite model, guidance on the first 10 of 15 steps keeps the proposals' validity and subject conformity.
    cfg_end: float = 1.0
    height: int = 1024
    width: int = 1024
    batch_size: int = 4

    def check(self) -> None:
        if self.count < 1:
            raise ProtagonistError(f"`count` must be at least 1, got {self.count}")
        if self.batch_size < 1:
            raise ProtagonistError(f"`batch_size` must be at least 1, got {self.batch_size}")
        if self.steps < 1:
            raise ProtagonistError(f"`steps` must be at least 1, got {self.steps}")
        if not 0.0 <= self.cfg_end <= 1.0:
            raise ProtagonistError(f"`cfg_end` is the share of the steps sampled with CFG, from 0 to 1; got "
                                   f"{self.cfg_end}")

    @property
    def guided_steps(self) -> int:
        return round(self.cfg_end * self.steps)

    def evaluations_per_image(self) -> int:
        """Denoiser passes one proposal costs: two on a guided step, one on the others."""
        return self.steps + self.guided_steps


@dataclass
class Proposals:
    latents: torch.Tensor  # [N, C, h, w] in the denoiser's space
    images: torch.Tensor  # [N, 3, H, W] in [0, 1]
    seeds: list[int]
    features: torch.Tensor | None = None  # denoiser features at the last step, conditional branch


def generate_proposals(
    backend: DiffusionBackend,
    prompt: str | Sequence[str],
    negative: str,
    settings: ProposalSettings,
    tokens: list[TokenEmbedding] | None = None,
    callback: StepCallback | None = None,
    feature_point: str | None = None,
) -> Proposals:
    """`settings.count` images of `prompt`, sampled `settings.batch_size` at a time with CFG.

    `prompt` may instead be one prompt per image (varied scenes of one subject).

    With `feature_point` (e.g. "mid_block"), the input of that module at the last denoising step,
    conditional branch only, is kept for every image.
    """
    settings.check()
    if feature_point is not None and settings.guided_steps < settings.steps:
        raise ProtagonistError("features are read from the last step's conditional pass under CFG: set `cfg_end` "
                               f"to 1 to capture them (got {settings.cfg_end})")
    size = (settings.height, settings.width)
    prompts = _per_image(prompt, settings.count)
    with torch.no_grad():
        negative_cond = backend.encode_prompts([negative], image_size=size)
        # one prompt for all: encoded once and broadcast; else each batch encodes its own prompts
        shared = backend.encode_prompts(prompts[:1], tokens=tokens, image_size=size) if len(set(prompts)) == 1 else None
    seeds = [settings.seed + i for i in range(settings.count)]
    latents, images, features = [], [], []
    for start in range(0, settings.count, settings.batch_size):
        batch_seeds = seeds[start:start + settings.batch_size]
        positive = shared
        if positive is None:
            with torch.no_grad():
                positive = backend.encode_prompts(prompts[start:start + settings.batch_size], tokens=tokens,
                                                  image_size=size)
        noise = seeded_noise(batch_seeds, backend.latent_shape(len(batch_seeds), *size))
        with _capture(backend, feature_point) as store:
            batch = sample(backend, _guided_until(settings.guided_steps, negative_cond, positive), noise,
                           settings.steps, cfg_guidance(settings.cfg), settings.sampler, callback=callback)
        if feature_point is not None:
            if "features" not in store:
                raise ProtagonistError(f"no features were captured at {feature_point!r}: the model never ran that "
                                       "block for the prompt, so OneActor cannot read this model's proposals")
            features.append(backend.feature_grid(store["features"], tuple(noise.shape[-2:])))
        latents.append(batch)
        with torch.no_grad():
            images.append(backend.decode_latents(batch))
    captured = torch.cat(features) if feature_point else None
    return Proposals(torch.cat(latents), torch.cat(images), seeds, captured)


def _guided_until(guided_steps: int, negative, positive):
    """[negative, positive] for the first `guided_steps` steps, then the positive alone."""
    return lambda info: [negative, positive] if info.index < guided_steps else [positive]


def with_scene(prompt: str, scene: str) -> str:
    return f"{prompt} {scene}" if scene else prompt


def prompt_template(prompt: str, base_word: str) -> str:
    """`prompt` as a tuning template: its first whole-word `base_word` becomes "{}" ("a red {} with a hat").

    Training on the proposals' own prompt teaches an identity (a word offset, a token) only what that prompt
    leaves unnamed, which is what it has to add at sampling time to prompts that start the same way.
    """
    template, found = re.subn(whole_word_pattern(base_word), "{}", prompt.replace("{", "{{").replace("}", "}}"), count=1,
                              flags=re.IGNORECASE)
    if not found:
        raise missing_word_error(base_word, prompt)
    return template


def scene_prompts(prompt: str, scenes: Sequence[str], count: int, first: int = 0) -> list[str]:
    """The prompts of proposals `first` to `first + count`: proposal i ends with scenes[i mod len(scenes)] (no
    scenes: `prompt`)."""
    return [with_scene(prompt, scene) for scene in scenes_for(scenes, range(first, first + count))]


def scene_lines(text: str) -> tuple[str, ...]:
    """Scenes written one per line (blank lines ignored)."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def scenes_for(scenes: Sequence[str], indices: Iterable[int]) -> list[str]:
    """Proposal i's scene is scenes[i mod len(scenes)] (no scenes: none)."""
    return [scenes[i % len(scenes)] if scenes else "" for i in indices]


def _per_image(prompt: str | Sequence[str], count: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * count
    prompts = list(prompt)
    if len(prompts) != count:
        raise ProtagonistError(f"got {len(prompts)} prompts for {count} proposals: give one prompt, or one per "
                               f"proposal")
    return prompts


def _capture(backend: DiffusionBackend, point: str | None):
    if point is None:
        return contextlib.nullcontext({})
    return backend.capture_features(point, cond_index=1, n_conds=2)
