"""Tiny, seeded, randomly initialised SDXL / FLUX / DINOv2 models built from configs in seconds.

They have the real architectures (diffusers `UNet2DConditionModel` with SDXL's text-time conditioning,
`FluxTransformer2DModel`, transformers CLIP/T5/DINOv2) at toy widths, and tokenizers built locally, so
the whole test suite runs without a network. The configs are also the starting point of the sprite
world's trained models.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch

from . import tokenizers as local_tokenizers

TINY_WORDS = (
    "a an the photo picture of blob cat dog robot on in at with and beach forest snow night desert city "
    "left right center red blue green yellow striped dotted hat bow grid same"
).split()

SDXL_TIME_EMBED_DIM = 256  # ComfyUI's SDXL embeds the six size/crop ids at this width; keep it.
# ComfyUI fixes the latent scaling per model class; VAEs meant for its SDXL / FLUX must use the same.
SDXL_LATENT_SCALE = 0.13025
FLUX_LATENT_SCALE, FLUX_LATENT_SHIFT = 0.3611, 0.1159


def _tokenizer_dir(kind: str, words: tuple[str, ...], max_length: int) -> Path:
    digest = hashlib.sha1((kind + str(max_length) + " ".join(words)).encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / "protagonist-tokenizers" / f"{kind}-{digest}"
    if not (folder / "tokenizer_config.json").exists():
        writer = local_tokenizers.write_clip_tokenizer if kind.startswith("clip") else \
            local_tokenizers.write_t5_tokenizer
        kwargs = {"pad_token": "!"} if kind == "clip_g" else {}
        writer(list(words), folder, max_length=max_length, **kwargs)
    return folder


def clip_tokenizer(words=TINY_WORDS, max_length: int = 77, pad_with_bang: bool = False):
    """A CLIP BPE tokenizer over `words` (SDXL's second tokenizer pads with "!", the first with eos)."""
    kind = "clip_g" if pad_with_bang else "clip_l"
    return local_tokenizers.load_clip_tokenizer(_tokenizer_dir(kind, tuple(words), max_length))


def t5_tokenizer(words=TINY_WORDS, max_length: int = 32):
    return local_tokenizers.load_t5_tokenizer(_tokenizer_dir("t5", tuple(words), max_length))


def clip_text_config(tokenizer, hidden: int, layers: int = 3, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=max(hidden // 16, 1), max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection or hidden, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae(latent_channels: int = 4, levels: int = 3, width: int = 32, scaling_factor: float = 1.0,
             shift_factor: float | None = None):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(width,) * levels, norm_num_groups=min(32, width), sample_size=32,
        scaling_factor=scaling_factor, shift_factor=shift_factor,
    )


def sdxl_unet_config(sample_size: int = 8, channels=(32, 64), context: int = 96, pooled: int = 64,
                     head_channels: int = 64) -> dict:
    """An SDXL-family UNet config (the layout ComfyUI's SDXL model class can mirror).

    Heads are 64 channels wide, as in SDXL: with narrower heads diffusers and ComfyUI split the
    attention differently and the two backends stop agreeing.
    """
    return dict(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        transformer_layers_per_block=(1,) * len(channels),
        attention_head_dim=tuple(max(c // head_channels, 1) for c in channels),
        cross_attention_dim=context, use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=pooled + 6 * SDXL_TIME_EMBED_DIM,
    )


def tiny_sdxl_components(seed: int = 0, words=TINY_WORDS, unet_config: dict | None = None) -> dict:
    """Components in `StableDiffusionXLPipeline`'s roles, randomly initialised from `seed`."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer, tokenizer_2 = clip_tokenizer(words), clip_tokenizer(words, pad_with_bang=True)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, 32))
    text_encoder_2 = CLIPTextModelWithProjection(clip_text_config(tokenizer_2, 64))
    config = unet_config or sdxl_unet_config(context=32 + 64, pooled=64)
    unet = UNet2DConditionModel(**config)
    vae = tiny_vae(levels=3, scaling_factor=SDXL_LATENT_SCALE)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)
    return dict(unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer_2, vae=vae, scheduler=scheduler)


def flux_transformer_config(latent_channels: int = 4, context: int = 32, pooled: int = 32, layers: int = 1,
                            single_layers: int = 1, heads: int = 2, head_dim: int = 16,
                            rope_axes: tuple[int, int, int] = (4, 6, 6)) -> dict:
    if sum(rope_axes) != head_dim:
        raise ValueError(f"`rope_axes` {rope_axes} must sum to `head_dim` {head_dim}")
    return dict(
        patch_size=1, in_channels=latent_channels * 4, num_layers=layers, num_single_layers=single_layers,
        attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=context,
        pooled_projection_dim=pooled, guidance_embeds=True,
        axes_dims_rope=tuple(rope_axes),
    )


def tiny_flux_components(seed: int = 0, words=TINY_WORDS, transformer_config: dict | None = None,
                         latent_channels: int = 4) -> dict:
    """Components in `FluxPipeline`'s roles, randomly initialised from `seed`. `latent_channels` 16 gives real FLUX's
    latent format (the one a ComfyUI FLUX MODEL samples in); 4 keeps the smallest model."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = clip_tokenizer(words), t5_tokenizer(words)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_text_config(tokenizer, 32))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    ))
    transformer = FluxTransformer2DModel(**(transformer_config or flux_transformer_config(latent_channels)))
    vae = tiny_vae(latent_channels, levels=3, scaling_factor=FLUX_LATENT_SCALE, shift_factor=FLUX_LATENT_SHIFT)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    return dict(transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, vae=vae, scheduler=scheduler)


def tiny_sdxl(seed: int = 0, **kwargs):
    from .backends.loading import backend_from_components

    return backend_from_components("sdxl", tiny_sdxl_components(seed, **kwargs))


def tiny_flux(seed: int = 0, **kwargs):
    from .backends.loading import backend_from_components

    return backend_from_components("flux", tiny_flux_components(seed, **kwargs), shift=1.0)


def tiny_dinov2(seed: int = 0, image_size: int = 32, patch_size: int = 8, hidden: int = 32):
    """A small `Dinov2Model` (CLS token embeddings of width `hidden`)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    return Dinov2Model(Dinov2Config(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=2,
        num_attention_heads=2, mlp_ratio=2, layerscale_value=1.0,
    ))
