"""Build ComfyUI MODEL / CLIP / VAE objects from the same tiny diffusers weights our backend uses.

ComfyUI's file-based detection only knows full-size SDXL, so the test builds the model classes
directly from configs written from the diffusers configs, and renames the weights with ComfyUI's own
key maps. Test glue only: it imports ComfyUI and never ships in the pack.
"""

from __future__ import annotations

import re

import torch

import comfy.diffusers_convert
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import comfy.utils


def comfy_sdxl_unet_config(config) -> dict:
    """ComfyUI's UNet config for a diffusers SDXL-family `UNet2DConditionModel` config."""
    channels = list(config["block_out_channels"])
    per_level = config["layers_per_block"]
    depth = [0 if kind == "DownBlock2D" else layers
             for kind, layers in zip(config["down_block_types"], config["transformer_layers_per_block"])]
    heads = config["attention_head_dim"]
    return {
        "use_checkpoint": False, "image_size": 32, "in_channels": config["in_channels"],
        "out_channels": config["out_channels"], "model_channels": channels[0],
        "num_res_blocks": [per_level] * len(channels), "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": [d for d in depth for _ in range(per_level)],
        "transformer_depth_output": [d for d in depth for _ in range(per_level + 1)],
        "transformer_depth_middle": config["transformer_layers_per_block"][-1],
        "context_dim": config["cross_attention_dim"], "num_heads": -1,
        "num_head_channels": channels[-1] // heads[-1], "use_linear_in_transformer": True,
        "adm_in_channels": config["projection_class_embeddings_input_dim"], "num_classes": "sequential",
        "use_spatial_transformer": True, "legacy": False, "use_temporal_attention": False,
        "use_temporal_resblock": False, "dtype": torch.float32,
    }


def comfy_sdxl_model(unet) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI SDXL MODEL holding the diffusers `unet`'s weights."""
    unet_config = comfy_sdxl_unet_config(unet.config)
    model_config = comfy.supported_models.SDXL(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    key_map = comfy.utils.unet_to_diffusers(unet_config)
    state = {key_map[k]: v for k, v in unet.state_dict().items()}
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def _clip_json(encoder) -> dict:
    c = encoder.config
    return {"num_hidden_layers": c.num_hidden_layers, "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "num_attention_heads": c.num_attention_heads,
            "hidden_act": c.hidden_act, "max_position_embeddings": c.max_position_embeddings,
            "eos_token_id": c.eos_token_id, "projection_dim": c.projection_dim}


def _resize_vocab(clip_model, vocab_size: int) -> None:
    embeddings = clip_model.transformer.text_model.embeddings
    width = embeddings.token_embedding.weight.shape[1]
    embeddings.token_embedding = comfy.ops.manual_cast.Embedding(vocab_size, width)


def _comfy_clip_keys(state: dict) -> dict:
    """transformers 5 drops the "text_model." prefix of a bare CLIPTextModel; ComfyUI expects it."""
    out = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
           for k, v in state.items()}
    if "text_projection.weight" not in out:  # a CLIP-L without projection: ComfyUI's pooled path wants one
        width = out["text_model.final_layer_norm.weight"].shape[0]
        out["text_projection.weight"] = torch.eye(width)
    return out


def comfy_sdxl_clip(text_encoder, text_encoder_2, tokenizer, tokenizer_2,
                    embedding_directory: str | None = None) -> comfy.sd.CLIP:
    """A ComfyUI SDXL CLIP with the tiny encoders and the locally built tokenizers."""
    specials = {"start": tokenizer.bos_token_id, "end": tokenizer.eos_token_id}

    class TinySDXLClip(comfy.sdxl_clip.SDXLClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=_clip_json(text_encoder), model_options=model_options,
                special_tokens={**specials, "pad": tokenizer.pad_token_id})
            self.clip_g = comfy.sd1_clip.SDClipModel(
                layer="hidden", layer_idx=-2, device=device, dtype=dtype, layer_norm_hidden_state=False,
                textmodel_json_config=_clip_json(text_encoder_2), model_options=model_options,
                special_tokens={**specials, "pad": tokenizer_2.pad_token_id}, return_projected_pooled=True)
            self.dtypes = {dtype}

    class TinySDXLTokenizer(comfy.sdxl_clip.SDXLTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            self.clip_l = comfy.sd1_clip.SDTokenizer(tokenizer.name_or_path, embedding_directory=embedding_directory)
            self.clip_g = comfy.sd1_clip.SDTokenizer(tokenizer_2.name_or_path, pad_with_end=False,
                                                     embedding_directory=embedding_directory,
                                                     embedding_size=text_encoder_2.config.hidden_size,
                                                     embedding_key="clip_g")

    class Target:
        clip, tokenizer, params = TinySDXLClip, TinySDXLTokenizer, {}

    clip = comfy.sd.CLIP(Target(), embedding_directory=embedding_directory, model_options={"dtype": torch.float32})
    for part, encoder in (("clip_l", text_encoder), ("clip_g", text_encoder_2)):
        module = getattr(clip.cond_stage_model, part)
        _resize_vocab(module, encoder.config.vocab_size)
        missing, unexpected = module.load_sd(_comfy_clip_keys(encoder.state_dict()))
        assert not [k for k in missing if "position_ids" not in k], missing
    return clip


def _fix_up_block_indices(state: dict, levels: int) -> dict:
    """ComfyUI's converter numbers decoder levels as if there were always four (up_blocks.i → up.3-i)."""
    offset = 4 - levels
    fixed = {}
    for key, value in state.items():
        match = re.match(r"decoder\.up\.(\d+)\.(.*)", key)
        fixed[f"decoder.up.{int(match[1]) - offset}.{match[2]}" if match else key] = value
    return fixed


def comfy_vae(vae) -> comfy.sd.VAE:
    """A ComfyUI VAE with the tiny diffusers `AutoencoderKL`'s weights."""
    c = vae.config
    ddconfig = {"double_z": True, "z_channels": c.latent_channels, "resolution": c.sample_size, "in_channels": 3,
                "out_ch": 3, "ch": c.block_out_channels[0],
                "ch_mult": [w // c.block_out_channels[0] for w in c.block_out_channels],
                "num_res_blocks": c.layers_per_block, "attn_resolutions": [], "dropout": 0.0}
    state = _fix_up_block_indices(comfy.diffusers_convert.convert_vae_state_dict(vae.state_dict()),
                                  len(c.block_out_channels))
    out = comfy.sd.VAE(sd=state, config={"params": {"ddconfig": ddconfig, "embed_dim": c.latent_channels}},
                       dtype=torch.float32)
    out.downscale_ratio = out.upscale_ratio = 2 ** (len(c.block_out_channels) - 1)
    return out


def comfy_flux_unet_config(config) -> dict:
    """ComfyUI's FLUX config for a diffusers `FluxTransformer2DModel` config (patch 2 over latent channels)."""
    return {
        "image_model": "flux", "in_channels": config["in_channels"] // 4, "out_channels": config["in_channels"] // 4,
        "patch_size": 2, "vec_in_dim": config["pooled_projection_dim"], "context_in_dim": config["joint_attention_dim"],
        "hidden_size": config["num_attention_heads"] * config["attention_head_dim"], "mlp_ratio": 4.0,
        "num_heads": config["num_attention_heads"], "depth": config["num_layers"],
        "depth_single_blocks": config["num_single_layers"], "axes_dim": list(config["axes_dims_rope"]),
        "theta": 10000, "qkv_bias": True, "guidance_embed": config["guidance_embeds"],
    }


def comfy_flux_model(transformer) -> comfy.model_patcher.ModelPatcher:
    """A ComfyUI FLUX MODEL holding the diffusers `transformer`'s weights (converted by ComfyUI itself)."""
    import comfy.model_detection

    unet_config = comfy_flux_unet_config(transformer.config)
    model_config = comfy.supported_models.Flux(unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    # ComfyUI's converter rewrites some tensors in place (scale/shift swap): give it copies.
    state = comfy.model_detection.convert_diffusers_mmdit(
        {k: v.detach().clone() for k, v in transformer.state_dict().items()}, "")
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    model.eval()
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def _t5_json(encoder) -> dict:
    c = encoder.config
    return {"d_ff": c.d_ff, "d_kv": c.d_kv, "d_model": c.d_model, "num_heads": c.num_heads,
            "num_layers": c.num_layers, "vocab_size": c.vocab_size, "dense_act_fn": "gelu_pytorch_tanh",
            "is_gated_act": True, "model_type": "t5"}


def comfy_flux_clip(text_encoder, tokenizer, tokenizer_2, seed: int = 0) -> comfy.sd.CLIP:
    """A ComfyUI FLUX CLIP: the tiny CLIP-L and a tiny T5 of its own.

    ComfyUI's T5 fixes 32 relative-position buckets, so the diffusers tiny T5 (8 buckets) cannot load;
    a fresh seeded T5 of the same widths with 32 buckets is used. Text parity with the core is therefore
    not expected — the tests that use this CLIP only need a working FLUX text encoder.
    """
    import comfy.text_encoders.flux
    import comfy.text_encoders.t5
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    torch.manual_seed(seed)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0,
                                 eos_token_id=1, decoder_start_token_id=0))
    specials = {"start": tokenizer.bos_token_id, "end": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}

    class TinyFluxClip(comfy.text_encoders.flux.FluxClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, return_projected_pooled=False,
                                                     textmodel_json_config=_clip_json(text_encoder),
                                                     special_tokens=specials, model_options=model_options)
            self.t5xxl = comfy.sd1_clip.SDClipModel(device=device, dtype=dtype, textmodel_json_config=_t5_json(t5),
                                                    special_tokens={"end": 1, "pad": 0},
                                                    model_class=comfy.text_encoders.t5.T5,
                                                    model_options={**model_options, "model_name": "t5xxl"})
            self.dtypes = {dtype}

    class TinyFluxTokenizer(comfy.text_encoders.flux.FluxTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            self.clip_l = comfy.sd1_clip.SDTokenizer(tokenizer.name_or_path, embedding_directory=embedding_directory)
            self.t5xxl = comfy.sd1_clip.SDTokenizer(tokenizer_2.name_or_path, embedding_directory=embedding_directory,
                                                    pad_with_end=False, embedding_size=32, embedding_key="t5xxl",
                                                    tokenizer_class=T5TokenizerFast, has_start_token=False,
                                                    pad_to_max_length=False, max_length=99999999, min_length=32)

    class Target:
        clip, tokenizer, params = TinyFluxClip, TinyFluxTokenizer, {}

    clip = comfy.sd.CLIP(Target(), model_options={"dtype": torch.float32})
    _resize_vocab(clip.cond_stage_model.clip_l, text_encoder.config.vocab_size)
    missing, _ = clip.cond_stage_model.clip_l.load_sd(_comfy_clip_keys(text_encoder.state_dict()))
    assert not [k for k in missing if "position_ids" not in k], missing
    missing, _ = clip.cond_stage_model.t5xxl.load_sd(t5.state_dict())
    assert not missing, missing
    return clip


class DiffusersFluxClip:
    """A CLIP stand-in for FLUX workflows: CLIPTextEncode's two calls, answered by the tiny diffusers encoders.

    ComfyUI's FLUX text encoder classes load only full-size T5/CLIP configs and tokenizer files; the
    workflow tests need the graph to run, and the conditioning format (T5 tokens + pooled CLIP) is the same.
    """

    def __init__(self, backend):
        self.backend = backend

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> list[str]:
        return [text]

    def encode_from_tokens_scheduled(self, tokens: list[str], unprojected=False, add_dict=None, show_pbar=True):
        with torch.no_grad():
            cond = self.backend.encode_prompts(tokens)
        return [[cond.embeds.float(), {"pooled_output": cond.pooled.float(), **(add_dict or {})}]]


def comfy_controlnet(unet, seed: int = 0):
    """A ComfyUI CONTROL_NET for the tiny SDXL UNet (ComfyUI's own ControlNet class, random small weights)."""
    import comfy.cldm.cldm
    import comfy.controlnet

    config = comfy_sdxl_unet_config(unet.config)
    config.pop("out_channels")
    net = comfy.cldm.cldm.ControlNet(**config, hint_channels=3, operations=comfy.ops.manual_cast,
                                     device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    device = comfy.model_management.get_torch_device()
    return comfy.controlnet.ControlNet(net, load_device=device, manual_cast_dtype=None)


def comfy_flux_models(ours):
    """ComfyUI MODEL, CLIP and VAE for a diffusers tiny FLUX backend (put in eval mode)."""
    for module in ours.modules().values():
        module.eval()
    clip = comfy_flux_clip(ours.text_encoders["clip_l"], ours.tokenizers["clip_l"], ours.tokenizers["t5"])
    return comfy_flux_model(ours.transformer), clip, comfy_vae(ours.vae)
