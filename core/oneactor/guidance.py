"""Cluster-guided sampling: towards the target's offset, away from the auxiliaries' mean, then plain CFG.

    x̂ = x̂(∅) + η1·[x̂(p, v·Δc_tar) − x̂(∅)] − η2·[x̂(p, Δc̄_aux) − x̂(∅)]

on the first `cluster_fraction` of the steps. The weights sum to 1 (η1 − η2 + (1 − η1 + η2)), so the
rule is the same in x0 and in ε space. With η2 = 0 the auxiliary term is not evaluated at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..interface import Conditioning, DiffusionBackend, WordOffset, apply_word_offset
from ..sampling import StepInfo


@dataclass
class ClusterGuidance:
    eta_target: float = 8.0
    eta_aux: float = 1.0
    semantic_scale: float = 0.8
    cluster_fraction: float = 20 / 30
    cfg: float = 7.5

    def in_cluster_phase(self, info: StepInfo) -> bool:
        return info.index < round(self.cluster_fraction * info.total)


def offset_conditionings(base: Conditioning, base_word: str, delta_target: torch.Tensor, delta_aux: torch.Tensor,
                         settings: ClusterGuidance) -> tuple[Conditioning, Conditioning]:
    """(prompt with v·Δc_tar, prompt with Δc̄_aux) from `base` encoded with `word=base_word`."""
    target = apply_word_offset(base, WordOffset(base_word, delta_target, settings.semantic_scale))
    return target, apply_word_offset(base, WordOffset(base_word, delta_aux))


def terms_at(settings: ClusterGuidance, info: StepInfo) -> int:
    """How many conditionings the rule uses at this step: [empty, target] or [empty, target, aux]."""
    return 3 if settings.in_cluster_phase(info) and settings.eta_aux != 0 else 2


def cluster_guided_terms(backend: DiffusionBackend, prompts: list[str], negative: str, base_word: str,
                         delta_target: torch.Tensor, delta_aux: torch.Tensor, settings: ClusterGuidance,
                         image_size: tuple[int, int]):
    """The (conds, guidance) pair for `core.sampling.sample`."""
    with torch.no_grad():
        empty = backend.encode_prompts([negative], image_size=image_size)
        base = backend.encode_prompts(prompts, word=base_word, image_size=image_size)
    target, aux = offset_conditionings(base, base_word, delta_target, delta_aux, settings)

    def conds(info: StepInfo) -> list[Conditioning]:
        return [empty, target, aux][:terms_at(settings, info)]

    return conds, cluster_guidance(settings)


def cluster_guidance(settings: ClusterGuidance):
    """The combination rule over predictions ordered [empty, target(, aux)]."""

    def guidance(preds: torch.Tensor, info: StepInfo) -> torch.Tensor:
        if not settings.in_cluster_phase(info):
            return preds[0] + settings.cfg * (preds[1] - preds[0])
        out = preds[0] + settings.eta_target * (preds[1] - preds[0])
        if preds.shape[0] > 2:
            out = out - settings.eta_aux * (preds[2] - preds[0])
        return out

    return guidance


def draw_identity(backend: DiffusionBackend, identity, prompts: list[str], seeds: list[int],
                  settings: ClusterGuidance, image_size: tuple[int, int], steps: int, sampler: str = "euler",
                  negative: str = "", callback=None) -> torch.Tensor:
    """One image per prompt and seed of a OneActor identity, with cluster guidance: [B, 3, H, W] in [0, 1]."""
    from ..sampling import sample, seeded_noise

    conds, guidance = cluster_guided_terms(backend, prompts, negative, identity.base_word, identity.delta_target,
                                           identity.delta_aux, settings, image_size)
    noise = seeded_noise(seeds, backend.latent_shape(len(seeds), *image_size))
    latents = sample(backend, conds, noise, steps, guidance, sampler, callback=callback)
    with torch.no_grad():
        return backend.decode_latents(latents)
