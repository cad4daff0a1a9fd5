"""The sprite world's small SDXL- and FLUX-architecture models: configs, builders, folders.

Both keep the real families' conditioning (SDXL: two CLIP encoders, pooled text + size ids; FLUX:
CLIP pooled + T5 sequence, distilled guidance) and ComfyUI's latent conventions, at widths a CPU
trains in under an hour. Trained models are saved as diffusers pipelines under `sprites/models/` and
loaded by the same `load_backend` that loads real checkpoints.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from pathlib import Path

import torch

from ..core import tiny_models
from ..core.backends.loading import load_backend, load_pipeline
from .captions import VOCABULARY

MODELS_DIR = Path(__file__).parent / "models"
SDXL_DIR, FLUX_DIR = MODELS_DIR / "sdxl", MODELS_DIR / "flux"
SPRITE_SIZE, GRID_SIZE = 32, 64
VAE_WIDTH = 64  # at 32 it blurred the 1–2 px stripes and dots away (pattern read back on 65 % of reconstructions)
TEXT_MAX_LENGTH = 64  # the longest grid caption is about 50 tokens
#: Flow shift of the FLUX sprite model: exp(1.15), what ComfyUI's stock FLUX model sampling uses. At
#: shift 1 the logit-normal training noise rarely reached the high noise levels where a 32 px sprite's
#: identity is decided, and the model learnt to ignore identity words.
FLUX_FLOW_SHIFT = 3.1582
#: (attention heads of width 32, double blocks, single blocks) of the from-scratch FLUX sprite transformer.
FLUX_TRANSFORMER_SHAPE = (4, 2, 4)


def sprite_words() -> list[str]:
    return list(VOCABULARY)


def sprite_tokenizers(with_t5: bool):
    """(CLIP-L tokenizer, second tokenizer: CLIP-G or T5) over the sprite vocabulary."""
    tokenizer = tiny_models.clip_tokenizer(sprite_words(), max_length=TEXT_MAX_LENGTH)
    if with_t5:
        return tokenizer, tiny_models.t5_tokenizer(sprite_words(), max_length=TEXT_MAX_LENGTH)
    return tokenizer, tiny_models.clip_tokenizer(sprite_words(), max_length=TEXT_MAX_LENGTH, pad_with_bang=True)


def _text_encoders(hidden: int, with_t5: bool):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = sprite_tokenizers(with_t5)
    clip_l = CLIPTextModel(tiny_models.clip_text_config(tokenizer, hidden, layers=3))
    if not with_t5:
        second = CLIPTextModelWithProjection(tiny_models.clip_text_config(tokenizer_2, hidden, layers=3))
        return clip_l, second, tokenizer, tokenizer_2
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=hidden, d_kv=hidden // 4, d_ff=hidden * 2, num_layers=3, num_heads=4,
        relative_attention_num_buckets=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    return clip_l, t5, tokenizer, tokenizer_2


def build_sdxl(seed: int = 0) -> dict:
    """Untrained SDXL-architecture components for 32×32 sprites (8×8×4 latents)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = _text_encoders(64, with_t5=False)
    unet = UNet2DConditionModel(**tiny_models.sdxl_unet_config(
        sample_size=SPRITE_SIZE // 4, channels=(64, 128, 128), context=128, pooled=64))
    vae = tiny_models.tiny_vae(latent_channels=4, levels=3, width=VAE_WIDTH,
                               scaling_factor=tiny_models.SDXL_LATENT_SCALE)
    scheduler = sprite_scheduler("sdxl")
    return dict(unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer_2, vae=vae, scheduler=scheduler)


def build_flux(seed: int = 0) -> dict:
    """Untrained FLUX-architecture components for 32×32 sprites and 64×64 grids (16-channel latents)."""
    torch.manual_seed(seed)
    text_encoder, text_encoder_2, tokenizer, tokenizer_2 = _text_encoders(64, with_t5=True)
    transformer = flux_transformer(FLUX_TRANSFORMER_SHAPE)
    vae = tiny_models.tiny_vae(latent_channels=16, levels=3, width=VAE_WIDTH,
                               scaling_factor=tiny_models.FLUX_LATENT_SCALE,
                               shift_factor=tiny_models.FLUX_LATENT_SHIFT)
    scheduler = sprite_scheduler("flux")
    return dict(transformer=transformer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                tokenizer=tokenizer, tokenizer_2=tokenizer_2, vae=vae, scheduler=scheduler)


def flux_transformer(shape: tuple[int, int, int]):
    """An untrained sprite FLUX transformer of `shape` (attention heads of width 32, double blocks, single blocks),
    drawn from torch's current random state."""
    from diffusers import FluxTransformer2DModel

    heads, double_blocks, single_blocks = shape
    return FluxTransformer2DModel(**tiny_models.flux_transformer_config(
        latent_channels=16, context=64, pooled=64, layers=double_blocks, single_layers=single_blocks, heads=heads,
        head_dim=32, rope_axes=(8, 12, 12)))


def deepen_single_stack(transformer, extra: int):
    """`transformer` with `extra` more single blocks spread through its single stack, each starting as the identity:
    a copy of the block before it with its output projection zeroed, so the grown model predicts exactly what the
    trained one did and its first steps learn what the new depth adds."""
    blocks = list(transformer.single_transformer_blocks)
    if extra < 1 or not blocks:
        raise ValueError(f"can add only a positive number of single blocks to a transformer that has some; got "
                         f"{extra} for one with {len(blocks)}")
    copies_after = Counter(math.ceil((i + 1) * len(blocks) / (extra + 1)) - 1 for i in range(extra))
    grown = []
    for index, block in enumerate(blocks):
        grown += [block] + [_identity_copy(block) for _ in range(copies_after[index])]
    transformer.single_transformer_blocks = torch.nn.ModuleList(grown)
    transformer.register_to_config(num_single_layers=len(grown))
    return transformer


def _identity_copy(block):
    twin = copy.deepcopy(block)
    torch.nn.init.zeros_(twin.proj_out.weight)
    torch.nn.init.zeros_(twin.proj_out.bias)
    return twin


def sprite_scheduler(family: str):
    """The noise schedule a sprite model trains and samples with (fine-tunes adopt today's)."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    if family == "flux":
        return FlowMatchEulerDiscreteScheduler(shift=FLUX_FLOW_SHIFT, use_dynamic_shifting=False)
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  prediction_type="epsilon", timestep_spacing="leading", steps_offset=1)


#: New caption words start from the embedding of the word they derive from.
RELATED_WORDS = {"eyed": "eyes", "hatted": "hat", "bowed": "bow", "bare": "no"}


def _word_of(token: str) -> tuple[str, str, str]:
    """(prefix marker, bare word, suffix marker) of a BPE ("eye</w>") or SentencePiece ("▁eye") token."""
    prefix = "▁" if token.startswith("▁") else ""
    suffix = "</w>" if token.endswith("</w>") else ""
    return prefix, token[len(prefix):len(token) - len(suffix)], suffix


@torch.no_grad()
def carry_over_vocabulary(encoder, old_tokenizer, new_tokenizer) -> list[str]:
    """Give a trained text encoder the embedding table of `new_tokenizer`, keeping every known token's row.

    Unknown tokens start from a related word's row (:data:`RELATED_WORDS`) or the mean row, so a
    vocabulary can grow without retraining from scratch. Returns the tokens that were new.
    """
    old_vocab, old_rows = old_tokenizer.get_vocab(), encoder.get_input_embeddings().weight
    rows = old_rows.mean(dim=0, keepdim=True).repeat(len(new_tokenizer), 1)
    new_tokens = []
    for token, index in new_tokenizer.get_vocab().items():
        prefix, word, suffix = _word_of(token)
        source = token if token in old_vocab else prefix + RELATED_WORDS.get(word, "") + suffix
        if token not in old_vocab:
            new_tokens.append(token)
        if source in old_vocab:
            rows[index] = old_rows[old_vocab[source]]
    encoder.set_input_embeddings(torch.nn.Embedding.from_pretrained(rows.clone(), freeze=False))
    encoder.config.vocab_size = len(new_tokenizer)
    _renumber_special_tokens(encoder, new_tokenizer)
    return sorted(new_tokens)


def _renumber_special_tokens(encoder, tokenizer) -> None:
    """Special-token ids follow the tokenizer: CLIP pools at the eos id, so a stale id pools the wrong token."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None and hasattr(encoder.config, name):
            setattr(encoder.config, name, value)
    for module in (encoder, getattr(encoder, "text_model", None)):  # transformers 5 / 4 layouts
        if module is not None and isinstance(getattr(module, "eos_token_id", None), int):
            module.eos_token_id = tokenizer.eos_token_id


def load_for_finetuning(family: str, folder: Path) -> dict:
    """A trained sprite pipeline's components in float32, text encoders moved onto today's vocabulary."""
    pipe, _ = load_pipeline(str(folder), family)
    parts = {k: v for k, v in pipe.components.items() if v is not None}
    tokenizer, tokenizer_2 = sprite_tokenizers(with_t5=family == "flux")
    carry_over_vocabulary(parts["text_encoder"], parts["tokenizer"], tokenizer)
    carry_over_vocabulary(parts["text_encoder_2"], parts["tokenizer_2"], tokenizer_2)
    parts.update(tokenizer=tokenizer, tokenizer_2=tokenizer_2)
    parts["scheduler"] = sprite_scheduler(family)
    return parts


def load_sprite_model(family: str = "sdxl", device: str = "cpu"):
    """The shipped trained sprite model of `family`, through the same loader as real checkpoints."""
    folder = SDXL_DIR if family == "sdxl" else FLUX_DIR
    if not (folder / "model_index.json").exists():
        raise FileNotFoundError(f"the sprite {family} model is not at {folder}; train it with "
                                f"`python -m protagonist.sprites.train_models {family}`")
    return load_backend(str(folder), family=family, device=device)
