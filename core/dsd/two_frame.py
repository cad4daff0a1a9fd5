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

from ..backends.flux import pack_latents
from ..interface import Conditioning, DiffusionBackend, ProtagonistError

MIN_REFERENCE_SIDE = 16


def new_c_embedder(image_embedder: torch.nn.Linear) -> torch.nn.Linear:
    """A zero-initialised Linear shaped like the model's image-token embedding, as DSD adds to FLUX.

    `image_embedder` is `backend.image_embedder()` (diffusers `x_embedder`, ComfyUI `img_in`).
    """
    weight = image_embedder.weight
    layer = torch.nn.Linear(image_embedder.in_features, image_embedder.out_features)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
    return layer.to(device=weight.device, dtype=dtype)  # quantised (fp8) models get a float32 c_embedder


def embed_condition(c_embedder: torch.nn.Module, tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`c_embedder(tokens)` computed in the c_embedder's dtype, returned in `like`'s dtype and device."""
    parameter = next(c_embedder.parameters())
    return c_embedder(tokens.to(parameter)).to(like)


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


def condition_tokens(backend: DiffusionBackend, reference: torch.Tensor, side: int) -> torch.Tensor:
    """The packed latent tokens of the reference canvas."""
    with torch.no_grad():
        return pack_latents(backend.encode_images(reference_canvas(reference, side)))


class ImageSwitch:
    """Which conditionings of a batched prediction see the reference (get the `c_embedder` term).

    `flags` holds one bool per conditioning, in the order the backend batches them (each covers
    batch/len(flags) consecutive entries); None means every entry sees it. True CFG sets it per step
    so that the "no image" prediction runs in the same batched pass as the other two.
    """

    def __init__(self):
        self.flags: list[bool] | None = None

    def gate(self, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        """[batch, 1, 1] ones and zeros, or None when every entry is on."""
        if self.flags is None or all(self.flags):
            return None
        if batch % len(self.flags):
            raise ProtagonistError(f"a batch of {batch} does not split into {len(self.flags)} conditionings")
        flags = torch.tensor(self.flags, dtype=like.dtype, device=like.device)
        return flags.repeat_interleave(batch // len(self.flags))[:, None, None]


def add_condition(image: torch.Tensor, condition: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """`image` tokens [N, L', D] plus the condition's embedding [B, L, D] on their first L tokens.

    The condition repeats over the N/B conditionings of a batched pass; tokens after L (e.g. reference
    latents appended by another node) are left alone; `gate` [N, 1, 1] turns entries off.
    """
    if image.shape[0] % condition.shape[0] or image.shape[1] < condition.shape[1]:
        raise ProtagonistError(f"the reference canvas gives {tuple(condition.shape[:2])} (batch, tokens) but the "
                               f"model's image tokens are {tuple(image.shape[:2])}: give the sampler a latent of "
                               f"the canvas size and a batch that is a multiple of the reference batch")
    extra = condition.repeat(image.shape[0] // condition.shape[0], 1, 1)
    if gate is not None:
        extra = extra * gate
    length = condition.shape[1]
    if image.shape[1] == length:
        return image + extra
    return torch.cat([image[:, :length] + extra, image[:, length:]], dim=1)


@contextlib.contextmanager
def conditioned(image_embedder: torch.nn.Module, c_embedder: torch.nn.Module, tokens: torch.Tensor,
                switch: ImageSwitch | None = None):
    """While active, `image_embedder`'s output gains `c_embedder(tokens)` (see :func:`add_condition`)."""

    def hook(module, inputs, output):
        gate = switch.gate(output.shape[0], output) if switch is not None else None
        return add_condition(output, embed_condition(c_embedder, tokens, output), gate)

    handle = image_embedder.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def right_half(images: torch.Tensor) -> torch.Tensor:
    return images[..., images.shape[-1] // 2:]


def two_frame_predict(backend: DiffusionBackend, c_embedder, tokens, x, sigma, conds: list[Conditioning]):
    """x0 predictions of the canvas under `conds`, conditioned on the reference tokens."""
    with conditioned(backend.image_embedder(), c_embedder, tokens):
        return backend.predict(x, sigma, conds)
