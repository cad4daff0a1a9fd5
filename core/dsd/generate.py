"""Zero-shot generation with the two-frame FLUX: a reference image and a prompt → a new frame."""

from __future__ import annotations

import contextlib

import torch

from ..adapters import lora_applied
from ..interface import DiffusionBackend, ProtagonistError
from ..sampling import StepCallback, sample, seeded_noise
from .guidance import DSD_DEFAULT, TrueCFG, TrueCFGSampling
from .two_frame import ImageSwitch, condition_tokens, conditioned, right_half


def sample_two_frame(backend: DiffusionBackend, c_embedder: torch.nn.Module, tokens: torch.Tensor,
                     positive, negative, noise: torch.Tensor, steps: int, guidance: TrueCFG = DSD_DEFAULT,
                     sampler: str = "euler", sigmas: torch.Tensor | None = None,
                     callback: StepCallback | None = None) -> torch.Tensor:
    """Canvas latents from `noise`, conditioned on the reference `tokens`.

    Args:
        backend: a FLUX backend (any LoRA must already be applied).
        c_embedder: the trained (or converted) condition embedding.
        tokens: the packed reference-canvas latents, from :func:`condition_tokens`.
        positive: the prompts' conditioning; negative: the negative prompt's (needed when `guidance` is active).
        noise: [B, C, h, 2·h] unit Gaussian noise of the canvas.
        steps: denoising steps (ignored when `sigmas` is given).
        guidance: the true-CFG scales; the default (1, 1) is DSD's distilled guidance only.
        sampler, sigmas, callback: as in :func:`~protagonist.core.sampling.sample`.
    """
    switch = ImageSwitch()
    rule = TrueCFGSampling(guidance, negative, positive, switch)
    if guidance.active and guidance.image_scale != 1.0 and not backend.predicts_in_list_order:
        raise ProtagonistError(f"{type(backend).__name__} may reorder a batch, so the core cannot switch the image "
                               f"off for one entry; in ComfyUI use the Two-Frame DiT Sampler node")
    with conditioned(backend.image_embedder(), c_embedder, tokens, switch):
        return sample(backend, rule.conds, noise, steps, rule.guidance, sampler, sigmas, callback)


def generate_two_frame(backend: DiffusionBackend, c_embedder, lora: dict | None, rank: int, alpha: float,
                       references: torch.Tensor, prompts: list[str], seeds: list[int], side: int, steps: int,
                       guidance: TrueCFG = DSD_DEFAULT, negative: str = "", whole_canvas: bool = False) -> torch.Tensor:
    """One new frame per (reference, prompt, seed); FLUX's distilled guidance plus optional true CFG."""
    tokens = condition_tokens(backend, references, side)
    with torch.no_grad():
        positive = backend.encode_prompts(prompts)
        negative_cond = backend.encode_prompts([negative]) if guidance.active else None
    noise = seeded_noise(seeds, backend.latent_shape(len(seeds), side, 2 * side))
    adapter = (lora_applied(backend.denoiser, lora, rank, alpha, backend.lora_targets()) if lora
               else contextlib.nullcontext())
    with adapter:
        latents = sample_two_frame(backend, c_embedder, tokens, positive, negative_cond, noise, steps, guidance)
    with torch.no_grad():
        canvas = backend.decode_latents(latents)
    return canvas if whole_canvas else right_half(canvas)
