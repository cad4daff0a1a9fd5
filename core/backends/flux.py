"""FLUX through diffusers components (transformer, CLIP-L + T5 text encoders, VAE)."""

from __future__ import annotations

import torch
from einops import rearrange

from ..interface import Conditioning, ProtagonistError
from ..schedules import FlowSchedule, flux_shift
from . import text
from .common import DiffusersBackend


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, H/2·W/2, C·4]: FLUX's 2×2 patch tokens."""
    if latents.shape[-1] % 2 or latents.shape[-2] % 2:
        raise ProtagonistError(f"FLUX latents need even height and width, got {tuple(latents.shape[-2:])}")
    return rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack_latents` for a latent grid of `height`×`width`."""
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=height // 2, w=width // 2, ph=2, pw=2)


def image_position_ids(height: int, width: int, frame: int = 0, device=None) -> torch.Tensor:
    """FLUX's positional ids of a packed latent grid: [frame, row, column] per token."""
    rows = torch.arange(height // 2, device=device)[:, None].expand(-1, width // 2)
    cols = torch.arange(width // 2, device=device)[None, :].expand(height // 2, -1)
    ids = torch.stack([torch.full_like(rows, frame), rows, cols], dim=-1)
    return ids.reshape(-1, 3).float()


# LoRA targets of diffusers' FLUX: the joint attention of the double blocks (image and text projections)
# and the attention projections of the single blocks.
FLUX_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


class DiffusersFlux(DiffusersBackend):
    """FLUX components from `FluxPipeline` (or built by hand with the same roles)."""

    family = "flux"
    text_encoder_keys = ("clip_l", "t5")

    def __init__(self, transformer, text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae,
                 shift: float | None = None, max_sequence_length: int = 512, distilled_guidance: float = 3.5):
        self.transformer = transformer
        self.text_encoders = {"clip_l": text_encoder, "t5": text_encoder_2}
        self.tokenizers = {"clip_l": tokenizer, "t5": tokenizer_2}
        self.vae = vae
        self.latent_channels = transformer.config.in_channels // 4
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.max_sequence_length = min(max_sequence_length, tokenizer_2.model_max_length)
        self.distilled_guidance = distilled_guidance
        self.schedule = FlowSchedule(shift=shift if shift is not None else flux_shift(1024))

    @classmethod
    def from_components(cls, parts: dict, **kwargs) -> "DiffusersFlux":
        """From components named as in `FluxPipeline` (`pipe.components`); a fixed-shift scheduler sets the shift."""
        config = parts["scheduler"].config
        if not config.get("use_dynamic_shifting", True):
            kwargs.setdefault("shift", config.get("shift", 1.0))
        return cls(parts["transformer"], parts["text_encoder"], parts["text_encoder_2"], parts["tokenizer"],
                   parts["tokenizer_2"], parts["vae"], **kwargs)

    # -- text --------------------------------------------------------------------------------
    def _encode(self, key, prompts, tokens, word, max_length):
        encoder, tokenizer = self.text_encoders[key], self.tokenizers[key]
        stand_in = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id
        tokenized = text.tokenize_batch(tokenizer, prompts, max_length, tokens, word, stand_in_id=stand_in)
        ids = torch.tensor([t.ids for t in tokenized], device=encoder.device)
        with text.spliced_embeddings(text.input_embedding(encoder), tokenized, tokens, key):
            out = encoder(ids)
        return out, tokenized

    def encode_prompts(self, prompts, tokens=None, word=None, image_size=None) -> Conditioning:
        tokens = tokens or []
        clip_out, _ = self._encode("clip_l", prompts, tokens, None, self.tokenizers["clip_l"].model_max_length)
        t5_out, t5_tokens = self._encode("t5", prompts, tokens, word, self.max_sequence_length)
        extras = {}
        if self.transformer.config.guidance_embeds:
            extras["guidance"] = torch.full((len(prompts),), self.distilled_guidance, device=self.device)
        return Conditioning(
            embeds=t5_out.last_hidden_state.to(self.dtype),
            pooled=clip_out.pooler_output.to(self.dtype),
            extras=extras,
            word_positions=[t.word_positions for t in t5_tokens] if word is not None else None,
        )

    # -- denoiser ----------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.transformer

    def feature_module(self, point: str) -> torch.nn.Module:
        """Feature points: "double_blocks.N" / "single_blocks.N" (the input of that block)."""
        kind, _, index = point.partition(".")
        blocks = {"double_blocks": self.transformer.transformer_blocks,
                  "single_blocks": self.transformer.single_transformer_blocks}
        if kind not in blocks or not index.isdigit() or int(index) >= len(blocks[kind]):
            raise ValueError(f"FLUX feature point must be 'double_blocks.N' or 'single_blocks.N' "
                             f"within the model's blocks, got {point!r}")
        return blocks[kind][int(index)]

    @property
    def oneactor_feature_point(self) -> str:
        """Experimental: the input of the last double-stream block, whose image tokens have seen the text through
        every joint block before it, as the UNet's mid-block input has seen it through the down blocks. Not yet
        shown to carry an identity in the sprite world."""
        return f"double_blocks.{len(self.transformer.transformer_blocks) - 1}"

    def feature_grid(self, features: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        return image_tokens_as_grid(features, latent_size)

    def image_embedder(self) -> torch.nn.Module:
        return self.transformer.x_embedder

    def lora_targets(self) -> tuple[str, ...]:
        return FLUX_ATTENTION

    def raw_predict(self, x, sigma, cond: Conditioning) -> torch.Tensor:
        x_in, timestep = self.schedule.model_input(x, sigma)
        height, width = x.shape[-2:]
        ids = image_position_ids(height, width, device=x.device)
        txt_ids = torch.zeros(cond.embeds.shape[1], 3, device=x.device)
        guidance = cond.extras.get("guidance")
        out = self.transformer(
            hidden_states=pack_latents(x_in), encoder_hidden_states=cond.embeds, pooled_projections=cond.pooled,
            timestep=timestep, img_ids=ids, txt_ids=txt_ids,
            guidance=guidance.to(x.dtype) if guidance is not None else None,
        ).sample
        return unpack_latents(out, height, width)


def image_tokens_as_grid(features: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """FLUX image tokens [B, h·w/4, C] (2×2 latent patches, row by row) → [B, C, h/2, w/2]."""
    height, width = (side // 2 for side in latent_size)
    if features.ndim != 3 or features.shape[1] != height * width:
        raise ValueError(f"expected {height * width} image tokens for a {latent_size} latent, got features of "
                         f"shape {tuple(features.shape)}: capture a double-stream block's input")
    return features.transpose(1, 2).reshape(features.shape[0], features.shape[2], height, width)
