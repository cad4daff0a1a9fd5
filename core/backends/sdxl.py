"""SDXL through diffusers components (UNet, two CLIP text encoders, VAE)."""

from __future__ import annotations

import torch

from ..interface import Conditioning
from ..schedules import DiscreteSchedule
from . import text
from .common import DiffusersBackend

SDXL_FEATURE_POINTS = ("mid_block",)


def schedule_from_scheduler_config(config) -> DiscreteSchedule:
    return DiscreteSchedule(
        prediction_type=config.get("prediction_type", "epsilon"),
        beta_start=config.get("beta_start", 0.00085),
        beta_end=config.get("beta_end", 0.012),
        beta_schedule=config.get("beta_schedule", "scaled_linear"),
        num_timesteps=config.get("num_train_timesteps", 1000),
    )


class DiffusersSDXL(DiffusersBackend):
    """SDXL components from `StableDiffusionXLPipeline` (or built by hand with the same roles)."""

    family = "sdxl"
    text_encoder_keys = ("clip_l", "clip_g")

    def __init__(self, unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae, scheduler_config):
        self.unet = unet
        self.text_encoders = {"clip_l": text_encoder, "clip_g": text_encoder_2}
        self.tokenizers = {"clip_l": tokenizer, "clip_g": tokenizer_2}
        self.vae = vae
        self.schedule = schedule_from_scheduler_config(dict(scheduler_config))
        self.latent_channels = unet.config.in_channels
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)

    @classmethod
    def from_components(cls, parts: dict) -> "DiffusersSDXL":
        """From components named as in `StableDiffusionXLPipeline` (`pipe.components`)."""
        return cls(parts["unet"], parts["text_encoder"], parts["text_encoder_2"], parts["tokenizer"],
                   parts["tokenizer_2"], parts["vae"], parts["scheduler"].config)

    # -- text --------------------------------------------------------------------------------
    def encode_prompts(self, prompts, tokens=None, word=None, image_size=None) -> Conditioning:
        tokens = tokens or []
        hidden, positions, pooled = [], None, None
        for key in self.text_encoder_keys:
            encoder, tokenizer = self.text_encoders[key], self.tokenizers[key]
            tokenized = text.tokenize_batch(tokenizer, prompts, tokenizer.model_max_length, tokens, word,
                                            stand_in_id=tokenizer.bos_token_id)
            positions = positions or [t.word_positions for t in tokenized]
            ids = torch.tensor([t.ids for t in tokenized], device=encoder.device)
            with text.spliced_embeddings(text.input_embedding(encoder), tokenized, tokens, key):
                out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if key == "clip_g":
                pooled = out.text_embeds
        size = image_size or self.default_image_size()
        time_ids = torch.tensor([[size[0], size[1], 0, 0, size[0], size[1]]], dtype=torch.float32)
        return Conditioning(
            embeds=torch.cat(hidden, dim=-1).to(self.dtype),
            pooled=pooled.to(self.dtype),
            extras={"time_ids": time_ids.expand(len(prompts), -1).to(self.device, self.dtype)},
            word_positions=positions if word is not None else None,
        )

    def default_image_size(self) -> tuple[int, int]:
        side = self.unet.config.sample_size * self.vae_scale
        return (side, side)




    # -- denoiser ----------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet

    def feature_module(self, point: str) -> torch.nn.Module:
        if point != "mid_block":
            raise ValueError(f"SDXL feature point must be one of {SDXL_FEATURE_POINTS}, got {point!r}")
        return self.unet.mid_block

    def raw_predict(self, x, sigma, cond: Conditioning) -> torch.Tensor:
        x_in, timestep = self.schedule.model_input(x, sigma)
        added = {"text_embeds": cond.pooled, "time_ids": cond.extras["time_ids"]}
        return self.unet(x_in, timestep, encoder_hidden_states=cond.embeds, added_cond_kwargs=added).sample
