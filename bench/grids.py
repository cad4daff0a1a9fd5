"""Grid consistency: how often a 2×2 grid prompt gives one identity in all four panels (what DSD mines)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..sprites.attributes import IDENTITY_ATTRIBUTES, Context, Identity
from ..sprites.captions import grid_caption, random_grid_caption
from ..sprites.oracle import Oracle, identity_of
from ..sprites.world import SIZE, render_grid, split_grid
from .harness import SamplingSettings, draw


@dataclass
class GridScores:
    grids: int
    consistent: float  # share of grids whose four panels all read as one identity
    panel_validity: float  # share of panels the oracle reads confidently
    panel_conformity: float  # share of panels whose background and position match their part of the prompt
    # per identity attribute, the share of readable panels 2–4 that agree with a readable first panel: one
    # identity in a grid needs all fifteen of these comparisons to hold at once
    panel_agreement: dict[str, float]


def grid_prompts(count: int, seed: int) -> tuple[list[str], list[list[Context]]]:
    rng = np.random.default_rng(seed)
    prompts, contexts = [], []
    for _ in range(count):
        panels = [Context.random(rng) for _ in range(4)]
        prompts.append(random_grid_caption(Identity.random(rng), panels, rng))
        contexts.append(panels)
    return prompts, contexts


def one_identity(identities: list, grids: int) -> list[bool]:
    """Per grid: do its four panels (consecutive in `identities`) all read as the same identity?"""
    return [identities[4 * g] is not None and len({identities[4 * g + k] for k in range(4)}) == 1
            for g in range(grids)]


def score_grids(images: torch.Tensor, contexts: list[list[Context]], oracle: Oracle) -> GridScores:
    reading = oracle.read_grid(images)
    identities = identity_of(reading)
    consistent = one_identity(identities, len(contexts))
    expected = [c for panel_contexts in contexts for c in panel_contexts]
    conform = [int(reading.labels["background"][i]) == c.background and int(reading.labels["position"][i]) == c.position
               for i, c in enumerate(expected)]
    return GridScores(len(contexts), float(np.mean(consistent)), float(reading.valid.float().mean()),
                      float(np.mean(conform)), agreement_with_first_panel(reading))


def agreement_with_first_panel(reading) -> dict[str, float]:
    valid = reading.valid.view(-1, 4)
    pairs = valid[:, :1] & valid[:, 1:]
    if not pairs.any():
        return {name: float("nan") for name in IDENTITY_ATTRIBUTES}
    agreement = {}
    for name in IDENTITY_ATTRIBUTES:
        labels = reading.labels[name].view(-1, 4)
        agreement[name] = float((labels[:, 1:] == labels[:, :1])[pairs].float().mean())
    return agreement


def run_grids(backend, count: int, seed: int, settings: SamplingSettings, batch: int = 16):
    prompts, contexts = grid_prompts(count, seed)
    grid_settings = replace(settings, size=(2 * SIZE, 2 * SIZE))  # every other setting as the caller's
    images = [draw(backend, prompts[i:i + batch], list(range(seed + i, seed + i + len(prompts[i:i + batch]))),
                   grid_settings) for i in range(0, count, batch)]
    return torch.cat(images), prompts, contexts


def vae_grid_readability(backend, oracle: Oracle, grids: int = 32, seed: int = 0) -> dict[str, float]:
    """Share of oracle-readable panels after a VAE round trip of rendered grids: whole, and panel by panel.

    A VAE whose attention spans the whole latent can code a grid worse than its four panels; the
    denoiser then learns grids from blurred targets.
    """
    rng = np.random.default_rng(seed)
    images = torch.stack([render_grid(Identity.random(rng), [Context.random(rng) for _ in range(4)], rng)
                          for _ in range(grids)])
    panels = split_grid(images).flatten(0, 1)
    with torch.no_grad():
        as_grids = backend.decode_latents(backend.encode_images(images))
        one_by_one = backend.decode_latents(backend.encode_images(panels))
    return {"as grids": float(oracle.read_grid(as_grids.float()).valid.float().mean()),
            "one by one": float(oracle.read(one_by_one.float()).valid.float().mean())}


def panel_reliance(backend, sigmas=(0.9, 0.7, 0.5), grids: int = 32, seed: int = 0) -> dict[float, float]:
    """How much the denoiser reads a grid's other panels, per noise level.

    The x0 error on the top-left panel when the other three show another character, over the error when
    they show the same one (same contexts, same noise, a caption that names no attribute). 1 means each
    panel is drawn on its own; a model whose panels agree must read the others where identity is decided.
    `sigmas` are the backend's own noise levels (FLUX: 0 to 1).
    """
    rng = np.random.default_rng(seed)
    same, mixed, captions = [], [], []
    for _ in range(grids):
        identity, stranger = Identity.random(rng), Identity.random(rng)
        contexts = [Context.random(rng) for _ in range(4)]
        same.append(render_grid(identity, contexts, rng))
        mixed.append(render_grid(stranger, contexts, rng))
        mixed[-1][:, :SIZE, :SIZE] = same[-1][:, :SIZE, :SIZE]
        captions.append(grid_caption(identity, contexts))
    with torch.no_grad():
        cond = backend.encode_prompts(captions, image_size=(64, 64))
        latents = [backend.encode_images(torch.stack(images)) for images in (same, mixed)]
        noise = torch.randn(latents[0].shape, generator=torch.Generator().manual_seed(seed))
        top_left = (..., slice(latents[0].shape[-2] // 2), slice(latents[0].shape[-1] // 2))
        return {sigma: x0_error(backend, latents[1], noise, sigma, cond, top_left)
                / x0_error(backend, latents[0], noise, sigma, cond, top_left) for sigma in sigmas}


def x0_error(backend, latents: torch.Tensor, noise: torch.Tensor, sigma: float, cond, region: tuple) -> float:
    """Mean squared error of the denoiser's x0 prediction at `sigma` over `region` (an index into the latents)."""
    sigmas = torch.full((latents.shape[0],), float(sigma))
    denoised = backend.predict(backend.schedule.add_noise(latents, noise, sigmas), sigmas, [cond])[0]
    return float((denoised - latents)[region].pow(2).mean())
