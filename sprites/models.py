"""The sprite world's small SDXL- and FLUX-architecture models: configs, builders, folders.

Both keep the real families' conditioning (SDXL: two CLIP encoders, pooled text + size ids; FLUX:
CLIP pooled + T5 sequence, distilled guidance) and ComfyUI's latent conventions, at widths a CPU
trains in under an hour. Trained models are saved as diffusers pipelines under `sprites/models/` and
loaded by the same `load_backend` that loads real checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core import tiny_models
from ..core.backends.loading import load_backend
from .captions import VOCABULARY

MODELS_DIR = Path(__file__).parent / "models"
SDXL_DIR, FLUX_DIR = MODELS_DIR / "sdxl", MODELS_DIR / "flux"
SPRITE_SIZE, GRID_SIZE = 32, 64
VAE_WIDTH = 64  # at 32 it blurred the 1–2 px stripes and dots away (pattern read back on 65 % of reconstructions)
TEXT_MAX_LENGTH = 64  # the longest grid caption is about 50 tokens


def sprite_words() -> list[str]:
    return list(VOCABULARY)


def _text_encoders(hidden: int, with_t5: bool):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer = tiny_models.clip_tokenizer(sprite_words(), max_length=TEXT_MAX_LENGTH)
    clip_l = CLIPTextModel(tiny_models.clip_text_config(tokenizer, hidden, layers=3))
    if not with_t5:
        tokenizer_2 = tiny_models.clip_tokenizer(sprite_words(), max_length=TEXT_MAX_LENGTH, pad_with_bang=True)
        second = CLIPTextModelWithProjection(tiny_models.clip_text_config(tokenizer_2, hidden, layers=3))
        return clip_l, second, tokenizer, tokenizer_2
    tokenizer_2 = tiny_models.t5_tokenizer(sprite_words(), max_length=TEXT_MAX_LENGTH)
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=hidden, d_kv=hidden // 4, d_ff=hidden * 2, num_layers=3, num_heads=4,
        relative_attention_num_buckets=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    return clip_l, t5, tokenizer, tokenizer_2


def build_sdxl(seed: int = 0) -> dict:
    """Untrained SDXL-architecture components for 32×32 sprites (8×8×4 latents)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = _text_encoders(64, with_t5=False)
    unet = UNet2DConditionModel(**tiny_models.sdxl_unet_config(
        sample_size=SPRITE_SIZE // 4, channels=(64, 128, 128), context=128, pooled=64))
    vae = tiny_models.tiny_vae(latent_channels=4, levels=3, width=VAE_WIDTH,
                               scaling_factor=tiny_models.SDXL_LATENT_SCALE)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
    return dict(unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer_2, vae=vae, scheduler=scheduler)


def build_flux(seed: int = 0) -> dict:
    """Untrained FLUX-architecture components for 32×32 sprites and 64×64 grids (16-channel latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(seed)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = _text_encoders(64, with_t5=True)
    transformer = FluxTransformer2DModel(**tiny_models.flux_transformer_config(
        latent_channels=16, context=64, pooled=64, layers=2, single_layers=4, heads=4, head_dim=32,
        rope_axes=(8, 12, 12)))
    vae = tiny_models.tiny_vae(latent_channels=16, levels=3, width=VAE_WIDTH,
                               scaling_factor=tiny_models.FLUX_LATENT_SCALE,
                               shift_factor=tiny_models.FLUX_LATENT_SHIFT)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    return dict(transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, vae=vae, scheduler=scheduler)


def load_sprite_model(family: str = "sdxl", device: str = "cpu"):
    """The shipped trained sprite model of `family`, through the same loader as real checkpoints."""
    folder = SDXL_DIR if family == "sdxl" else FLUX_DIR
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"the sprite {family} model is not at {folder}; train it with "
                                f"`python -m protagonist.sprites.train_models {family}`")
    return load_backend(str(folder), family=family, device=device)
