"""Zero-shot generation with the two-frame FLUX: a reference image and a prompt → a new frame."""

from __future__ import annotations

import contextlib

import torch

from ..adapters import lora_applied
from ..backends.flux import DiffusersFlux
from ..sampling import cfg_guidance, sample, seeded_noise
from .training import FLUX_ATTENTION
from .two_frame import condition_tokens, conditioned, right_half


def generate_two_frame(backend: DiffusersFlux, c_embedder, lora: dict | None, rank: int, alpha: float,
                       references: torch.Tensor, prompts: list[str], seeds: list[int], side: int, steps: int,
                       cfg: float = 1.0, negative: str = "", whole_canvas: bool = False) -> torch.Tensor:
    """One new frame per (reference, prompt, seed); FLUX's distilled guidance plus optional CFG (cfg > 1)."""
    tokens = condition_tokens(backend, references, side)
    with torch.no_grad():
        conds = [backend.encode_prompts(prompts)]
        if cfg != 1.0:
            conds.insert(0, backend.encode_prompts([negative]))
    noise = seeded_noise(seeds, backend.latent_shape(len(seeds), side, 2 * side))
    adapter = lora_applied(backend.transformer, lora, rank, alpha, FLUX_ATTENTION) if lora else contextlib.nullcontext()
    with adapter, conditioned(backend.transformer, c_embedder, tokens):
        latents = sample(backend, conds, noise, steps, cfg_guidance(cfg))
    with torch.no_grad():
        canvas = backend.decode_latents(latents)
    return canvas if whole_canvas else right_half(canvas)
