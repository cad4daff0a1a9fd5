"""The benchmark harness: run methods on the same characters, prompts and seeds; score with the oracle.

A prompt file has one character per line: ``subject | context | context | …`` — each image's prompt
is ``"{subject} {context}"``; lines starting with ``#`` are comments. A method prepares once per
character (tuning, whose cost is counted apart) and then generates one image per prompt and seed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from ..core.interface import DiffusionBackend
from ..core.sampling import cfg_guidance, sample, seeded_noise
from ..core.schedules import shifted_schedule
from .cost import Cost, measure


@dataclass
class Character:
    subject: str
    contexts: list[str]

    @property
    def prompts(self) -> list[str]:
        return [f"{self.subject} {context}" for context in self.contexts]


#: The benchmark's characters: 24 subjects, each with 5 contexts.
DEFAULT_PROMPTS = Path(__file__).parent / "prompts" / "sprite_characters.txt"


def read_characters(path: str | Path) -> list[Character]:
    characters = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        subject, *contexts = [part.strip() for part in line.split("|")]
        if not contexts:
            raise ValueError(f"{path}: a line needs a subject and at least one context: {line!r}")
        characters.append(Character(subject, contexts))
    return characters


@dataclass
class SamplingSettings:
    steps: int = 20
    cfg: float = 5.0
    sampler: str = "euler"
    size: tuple[int, int] = (32, 32)
    negative: str = ""
    shift: float | None = None  # flow shift of the sampling schedule (FLUX); None: the model's own


class Method(Protocol):
    name: str

    def prepare(self, backend: DiffusionBackend, character: Character, seed: int) -> object: ...

    def generate(self, backend: DiffusionBackend, state: object, prompts: list[str], seeds: list[int],
                 settings: SamplingSettings) -> torch.Tensor: ...


def draw(backend: DiffusionBackend, prompts: list[str], seeds: list[int], settings: SamplingSettings,
         tokens=None, before_step=None) -> torch.Tensor:
    """One image per prompt and seed, with classifier-free guidance, in one batch (`before_step`: the
    sampler's)."""
    with torch.no_grad():
        positive = backend.encode_prompts(prompts, tokens=tokens, image_size=settings.size)
        negative = backend.encode_prompts([settings.negative], image_size=settings.size)
    noise = seeded_noise(seeds, backend.latent_shape(len(seeds), *settings.size))
    sigmas = (None if settings.shift is None
              else shifted_schedule(backend.schedule, settings.shift).sampling_sigmas(settings.steps))
    latents = sample(backend, [negative, positive], noise, settings.steps, cfg_guidance(settings.cfg),
                     settings.sampler, sigmas=sigmas, before_step=before_step)
    with torch.no_grad():
        return backend.decode_latents(latents)


class PlainSampling:
    """The baseline: each prompt sampled on its own with classifier-free guidance."""

    name = "plain"

    def prepare(self, backend, character, seed):
        return None

    def generate(self, backend, state, prompts, seeds, settings):
        return draw(backend, prompts, seeds, settings)


@dataclass
class MethodRun:
    method: str
    images: torch.Tensor
    prompts: list[str]
    character_of: list[int]
    tuning: Cost = field(default_factory=Cost)
    generation: Cost = field(default_factory=Cost)
    # Plain CFG on the same prompts and seeds, drawn right beside each character's generation (None for plain).
    plain_beside: Cost | None = None


def run_method(method: Method, backend: DiffusionBackend, characters: list[Character], base_seed: int,
               settings: SamplingSettings) -> MethodRun:
    """Every character's prompts, image k of character c seeded with base_seed + 1000·c + k."""
    images, prompts, owners = [], [], []
    tuning, generation = Cost(), Cost()
    plain_beside = None if isinstance(method, PlainSampling) else Cost()
    for index, character in enumerate(characters):
        with measure(backend.denoiser) as cost:
            state = method.prepare(backend, character, base_seed + 1000 * index)
        tuning.add(cost)
        seeds = [base_seed + 1000 * index + k for k in range(len(character.prompts))]
        if plain_beside is not None and index % 2:
            plain_beside.add(plain_cost(backend, character.prompts, seeds, settings))
        with measure(backend.denoiser) as cost:
            images.append(method.generate(backend, state, character.prompts, seeds, settings))
        generation.add(cost)
        if plain_beside is not None and not index % 2:
            plain_beside.add(plain_cost(backend, character.prompts, seeds, settings))
        prompts += character.prompts
        owners += [index] * len(character.prompts)
    return MethodRun(method.name, torch.cat(images), prompts, owners, tuning, generation, plain_beside)


def plain_cost(backend: DiffusionBackend, prompts: list[str], seeds: list[int], settings: SamplingSettings) -> Cost:
    """What plain CFG costs for these images now. Wall time drifts by ±10 % over a run on a shared machine, and a
    method's generation runs in another state of it (after its tuning, minutes later) than the plain row's, so the
    per-image ratio to plain CFG is taken against this draw; it alternates before and after the method's images
    so that neither side is always the warmer one."""
    with measure(backend.denoiser) as cost:
        draw(backend, prompts, seeds, settings)
    return cost


def same_character_pairs(character_of: list[int]):
    """All (i, j), i < j, of images that belong to the same character."""
    for i, j in itertools.combinations(range(len(character_of)), 2):
        if character_of[i] == character_of[j]:
            yield i, j
