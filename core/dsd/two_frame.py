"""DSD's two-frame FLUX: a reference frame beside a blank frame, the condition added through `c_embedder`.

The canvas is [reference | blank] (blank = −1 in the VAE's [−1, 1] range, i.e. black); it is VAE-encoded
and packed into tokens exactly like the noisy latent, and the transformer computes
``x_embedder(noisy tokens) + c_embedder(condition tokens)`` with a zero-initialised `c_embedder`
(so an untrained one leaves FLUX unchanged). Standard FLUX positional ids cover the whole canvas; the
right half of the denoised canvas is the new frame.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..backends.flux import DiffusersFlux, pack_latents
from ..interface import Conditioning, ProtagonistError

MIN_REFERENCE_SIDE = 16


def new_c_embedder(transformer) -> torch.nn.Linear:
    """A zero-initialised Linear(packed latent channels → inner width), as DSD adds to FLUX."""
    inner = transformer.x_embedder.out_features
    layer = torch.nn.Linear(transformer.x_embedder.in_features, inner)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    return layer.to(transformer.x_embedder.weight)


def check_reference(reference: torch.Tensor) -> None:
    if reference.ndim != 4 or reference.shape[1] != 3:
        raise ProtagonistError(f"the reference must be an RGB image batch [B, 3, H, W], got {tuple(reference.shape)}")
    if min(reference.shape[-2:]) < MIN_REFERENCE_SIDE:
        raise ProtagonistError(f"the reference is {tuple(reference.shape[-2:])}; give at least "
                               f"{MIN_REFERENCE_SIDE}×{MIN_REFERENCE_SIDE} pixels")


def reference_canvas(reference: torch.Tensor, side: int) -> torch.Tensor:
    """[B, 3, side, 2·side]: the reference resized to side², then a black panel."""
    check_reference(reference)
    resized = F.interpolate(reference.float(), size=(side, side), mode="bicubic", antialias=True,
                            align_corners=False).clamp(0, 1)
    return torch.cat([resized, torch.zeros_like(resized)], dim=-1)


def condition_tokens(backend: DiffusersFlux, reference: torch.Tensor, side: int) -> torch.Tensor:
    """The packed latent tokens of the reference canvas."""
    with torch.no_grad():
        return pack_latents(backend.encode_images(reference_canvas(reference, side)))


@contextlib.contextmanager
def conditioned(transformer, c_embedder: torch.nn.Module, tokens: torch.Tensor):
    """While active, the transformer's input embedding adds `c_embedder(tokens)` (repeated to the batch)."""

    def add_condition(module, inputs, output):
        extra = c_embedder(tokens.to(output))
        repeat = output.shape[0] // extra.shape[0]
        return output + extra.repeat(repeat, 1, 1)

    handle = transformer.x_embedder.register_forward_hook(add_condition)
    try:
        yield
    finally:
        handle.remove()


def right_half(images: torch.Tensor) -> torch.Tensor:
    return images[..., images.shape[-1] // 2:]


def two_frame_predict(backend: DiffusersFlux, c_embedder, tokens, x, sigma, conds: list[Conditioning]):
    """x0 predictions of the canvas under `conds`, conditioned on the reference tokens."""
    with conditioned(backend.transformer, c_embedder, tokens):
        return backend.predict(x, sigma, conds)
