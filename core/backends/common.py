"""What the diffusers SDXL and FLUX backends share: text-encoder tables and the VAE."""

from __future__ import annotations

import torch

from ..interface import DiffusionBackend
from . import text


class DiffusersBackend(DiffusionBackend):
    """Holds `text_encoders` / `tokenizers` (keyed like `text_encoder_keys`) and an `AutoencoderKL`."""

    text_encoders: dict[str, torch.nn.Module]
    tokenizers: dict
    vae: torch.nn.Module

    def token_width(self) -> dict[str, int]:
        return {k: e.get_input_embeddings().weight.shape[1] for k, e in self.text_encoders.items()}

    def word_embedding(self, word: str) -> dict[str, torch.Tensor]:
        return {k: text.word_rows(self.tokenizers[k], self.text_encoders[k].get_input_embeddings(), word)
                for k in self.text_encoder_keys}

    def embedding_tables(self) -> dict[str, torch.nn.Embedding]:
        return {k: e.get_input_embeddings() for k, e in self.text_encoders.items()}

    def modules(self) -> dict[str, torch.nn.Module]:
        """Every weight-holding component, by role."""
        return {"denoiser": self.denoiser, "vae": self.vae, **self.text_encoders}

    def to(self, device=None, dtype=None) -> "DiffusersBackend":
        for module in self.modules().values():
            module.to(device=device, dtype=dtype)
        return self

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype) * 2 - 1).latent_dist
        shift = self.vae.config.get("shift_factor") or 0.0
        return ((posterior.mean - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        shift = self.vae.config.get("shift_factor") or 0.0
        z = latents.to(self.vae.device, self.vae.dtype) / self.vae.config.scaling_factor + shift
        return ((self.vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)
