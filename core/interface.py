"""The one interface through which every method drives a diffusion model.

A method (The Chosen One, OneActor, DSD) is written once against :class:`DiffusionBackend`; the
diffusers implementation lives in ``core/backends`` and the ComfyUI one in ``nodes/comfy_backend.py``.

Conventions inside the core:
  * images are float tensors in [0, 1], B×C×H×W;
  * latents are in the denoiser's own space (VAE output already scaled and shifted);
  * predictions are x0 estimates, whatever the model's native prediction type (see ``schedules``).
"""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .schedules import NoiseSchedule


class ProtagonistError(ValueError):
    """A user-facing error: the message says what was wrong and what to do."""


def whole_word_pattern(word: str) -> str:
    """A regex for `word` as a prompt's own word: not inside a longer word or a <token> name."""
    return r"(?<![\w<])" + re.escape(word) + r"(?![\w>])"


def missing_word_error(word: str, prompt: str) -> ProtagonistError:
    """The error for a word a prompt lacks, listing the prompt's words so the user can pick one."""
    words = sorted(set(re.findall(r"[\w<>-]+", prompt.lower())))
    return ProtagonistError(f"the word {word!r} does not occur in the prompt {prompt!r}; its words are {words}")


@dataclass
class TokenEmbedding:
    """A textual-inversion token: one learnable vector block per text encoder.

    `vectors` maps an encoder key ("clip_l", "clip_g", "t5") to an [n_vectors, width] tensor. Wherever
    `name` occurs in a prompt, its token positions take these vectors instead of a vocabulary row, so
    no embedding table is ever modified.
    """

    name: str
    vectors: dict[str, torch.Tensor]

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]


@dataclass
class WordOffset:
    """An additive offset on the *encoded* embedding at the token positions of `word`.

    `offset` is [width] or [B, width] (width = the conditioning's embedding width); `scale` multiplies it.
    """

    word: str
    offset: torch.Tensor
    scale: float = 1.0


@dataclass
class Conditioning:
    """Encoded prompt(s) for the denoiser.

    `embeds` [B, L, D] is what the denoiser attends to (SDXL: CLIP-L ⊕ CLIP-G penultimate states;
    FLUX: T5 states); `pooled` [B, P] is the pooled vector. `extras` holds backend-specific entries
    (image size ids, distilled guidance, a ComfyUI cond dict). `word_positions[b]` lists the token
    positions of the offset word in prompt b, when a word was asked for.
    """

    embeds: torch.Tensor
    pooled: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    word_positions: list[list[int]] | None = None

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def replace(self, **changes) -> "Conditioning":
        values = {"embeds": self.embeds, "pooled": self.pooled, "extras": dict(self.extras),
                  "word_positions": self.word_positions}
        values.update(changes)
        return Conditioning(**values)


def apply_word_offset(cond: Conditioning, offset: WordOffset) -> Conditioning:
    """Add `offset` to `cond.embeds` at the recorded word positions only."""
    if cond.word_positions is None:
        raise ProtagonistError("the conditioning was encoded without a word; pass `word=` when encoding")
    delta = offset.offset.to(cond.embeds)
    if delta.ndim == 1:
        delta = delta.expand(cond.batch_size, -1)
    if delta.shape != (cond.batch_size, cond.embeds.shape[-1]):
        raise ProtagonistError(
            f"word offset has shape {tuple(offset.offset.shape)}, but the conditioning needs "
            f"[{cond.embeds.shape[-1]}] or [{cond.batch_size}, {cond.embeds.shape[-1]}]")
    mask = torch.zeros(cond.embeds.shape[:2], dtype=cond.embeds.dtype, device=cond.embeds.device)
    for b, positions in enumerate(cond.word_positions):
        mask[b, positions] = 1.0
    embeds = cond.embeds + offset.scale * mask[..., None] * delta[:, None, :]
    return cond.replace(embeds=embeds)


class DiffusionBackend(ABC):
    """A text-to-image diffusion model as the methods see it.

    Attributes set by implementations:
      family: "sdxl" or "flux".
      schedule: the model's :class:`NoiseSchedule` (sigma convention, x0 predictions).
      latent_channels, vae_scale: latent channels and pixels per latent cell.
      text_encoder_keys: the keys of :class:`TokenEmbedding` vectors, e.g. ("clip_l", "clip_g").
      predicts_in_list_order: see below.
    """

    family: str
    schedule: NoiseSchedule
    latent_channels: int
    vae_scale: int
    text_encoder_keys: tuple[str, ...]
    # Whether `predict` runs its conditionings batched in list order; hooks that treat batch entries
    # differently (the two-frame image switch) rely on it.
    predicts_in_list_order: bool = True

    # -- text --------------------------------------------------------------------------------
    @abstractmethod
    def encode_prompts(
        self,
        prompts: list[str],
        tokens: list[TokenEmbedding] | None = None,
        word: str | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Conditioning:
        """Encode `prompts`; splice in textual-inversion `tokens`; record the positions of `word`.

        Gradients flow to `tokens[i].vectors` when they require grad. `image_size` (H, W in pixels)
        sets size conditioning where the family has it.
        """

    @abstractmethod
    def token_width(self) -> dict[str, int]:
        """Width of one textual-inversion vector per encoder key."""

    @abstractmethod
    def word_embedding(self, word: str) -> dict[str, torch.Tensor]:
        """The vocabulary rows of `word` per encoder key ([n_tokens, width]), e.g. to initialise a token."""

    @abstractmethod
    def embedding_tables(self) -> dict[str, torch.nn.Embedding]:
        """The text encoders' token embedding tables per encoder key."""

    # -- denoiser ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def denoiser(self) -> torch.nn.Module:
        """The UNet / transformer module, for adapters (LoRA) and hooks."""

    @abstractmethod
    def feature_module(self, point: str) -> torch.nn.Module:
        """The submodule whose forward *input* is the named feature point (e.g. "mid_block")."""

    def image_embedder(self) -> torch.nn.Module:
        """The layer that embeds the packed image tokens (FLUX: `x_embedder` / `img_in`).

        Two-frame conditioning (DSD) adds its `c_embedder` output to this layer's output.
        """
        raise ProtagonistError(f"{self.family} has no image-token embedding: two-frame conditioning needs FLUX")

    def lora_targets(self) -> tuple[str, ...]:
        """Name suffixes of the denoiser's attention layers that LoRA adapts (they differ per implementation)."""
        from .adapters import ATTENTION_TARGETS

        return ATTENTION_TARGETS

    @abstractmethod
    def raw_predict(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The network's native output (epsilon / v / velocity) for a batch — for training losses."""

    def predict(self, x: torch.Tensor, sigma: torch.Tensor, conds: list[Conditioning]) -> torch.Tensor:
        """x0 predictions [len(conds), B, …] of batch `x` at `sigma` under each conditioning.

        All conditionings run as one batched forward pass.
        """
        n = len(conds)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        joined = concat_conditionings([broadcast(c, x.shape[0]) for c in conds])
        x_all, sigma_all = x.repeat(n, *([1] * (x.ndim - 1))), sigma.repeat(n)
        output = self.raw_predict(x_all, sigma_all, joined)
        denoised = self.schedule.to_denoised(x_all, output, sigma_all)
        return denoised.reshape(n, *x.shape)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Keep the models ready on their device for a run of predictions (no-op by default)."""
        yield

    @property
    def oneactor_feature_point(self) -> str:
        """Where OneActor reads a proposal's features: SDXL's mid-block input (the paper's choice)."""
        return "mid_block"

    def feature_grid(self, features: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """Captured features as [B, C, h, w] for the OneActor projector (they already are for a UNet)."""
        return features

    @contextlib.contextmanager
    def capture_features(self, point: str, cond_index: int, n_conds: int) -> Iterator[dict]:
        """While active, `store["features"]` holds the input of `point` for conditioning `cond_index`
        at the latest prediction (predictions batch their conditionings in order, `n_conds` of them)."""
        store: dict = {}

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]  # diffusers' FLUX blocks take keywords only
            size = x.shape[0] // n_conds
            store["features"] = x[cond_index * size:(cond_index + 1) * size].detach().float().cpu().clone()

        handle = self.feature_module(point).register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield store
        finally:
            handle.remove()

    @contextlib.contextmanager
    def trainable(self) -> Iterator[None]:
        """While active, gradients can flow through the denoiser and the text encoders (no-op by default)."""
        yield

    # -- VAE ---------------------------------------------------------------------------------
    @abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] images in [0, 1] → latents in the denoiser's space."""

    @abstractmethod
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents in the denoiser's space → [B, 3, H, W] images in [0, 1]."""

    # -- devices -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def latent_shape(self, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
        if height % self.vae_scale or width % self.vae_scale:
            raise ProtagonistError(
                f"image size {height}×{width} must be a multiple of {self.vae_scale} for this model")
        return (batch, self.latent_channels, height // self.vae_scale, width // self.vae_scale)


def broadcast(cond: Conditioning, batch: int) -> Conditioning:
    """Repeat a batch-1 conditioning to `batch`; leave a matching one as it is."""
    if cond.batch_size == batch:
        return cond
    if cond.batch_size != 1:
        raise ProtagonistError(f"conditioning batch {cond.batch_size} does not match the image batch {batch}")
    extras = {k: (v.expand(batch, *v.shape[1:]) if isinstance(v, torch.Tensor) and v.shape[:1] == (1,) else v)
              for k, v in cond.extras.items()}
    positions = cond.word_positions * batch if cond.word_positions is not None else None
    return Conditioning(cond.embeds.expand(batch, -1, -1), cond.pooled.expand(batch, -1), extras, positions)


def concat_conditionings(conds: list[Conditioning]) -> Conditioning:
    """Join conditionings along the batch; token lengths must agree (they do for one backend)."""
    if len(conds) == 1:
        return conds[0]
    lengths = {c.embeds.shape[1] for c in conds}
    if len(lengths) != 1:
        raise ProtagonistError(f"conditionings have different token lengths {sorted(lengths)}")
    extras = {}
    for key, value in conds[0].extras.items():
        extras[key] = torch.cat([c.extras[key] for c in conds]) if isinstance(value, torch.Tensor) else value
    positions = None
    if all(c.word_positions is not None for c in conds):
        positions = [p for c in conds for p in c.word_positions]
    return Conditioning(torch.cat([c.embeds for c in conds]), torch.cat([c.pooled for c in conds]),
                        extras, positions)
