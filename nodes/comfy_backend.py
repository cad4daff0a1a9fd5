"""The core's DiffusionBackend on ComfyUI's own MODEL / CLIP / VAE objects.

Predictions go through `comfy.samplers.calc_cond_batch`, so everything ComfyUI attaches to a model
or a conditioning (LoRAs, ControlNets, attention patches) acts on our methods too.
"""

from __future__ import annotations

import contextlib

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.sampler_helpers
import comfy.samplers
import torch

from ..core.backends.flux import image_tokens_as_grid
from ..core.interface import Conditioning, DiffusionBackend, ProtagonistError, TokenEmbedding
from ..core.schedules import NoiseSchedule
from .convert import images_to_comfy, images_to_core

# LoRA targets of ComfyUI's FLUX: the fused qkv and output projections of the double blocks' image and text
# attention, and the single blocks' fused input (qkv + MLP in) and output (projection + MLP out) layers.
COMFY_FLUX_ATTENTION = ("img_attn.qkv", "img_attn.proj", "txt_attn.qkv", "txt_attn.proj", "linear1", "linear2")
# Our encoder keys → ComfyUI's tokenizer / text-encoder keys.
COMFY_TEXT_KEYS = {"clip_l": "l", "clip_g": "g", "t5": "t5xxl"}
MARKER = "protagonistmarker"


def model_family(model_patcher) -> str:
    base = model_patcher.model
    if isinstance(base, comfy.model_base.SDXL):
        return "sdxl"
    if isinstance(base, comfy.model_base.Flux):
        return "flux"
    raise ProtagonistError(f"this node needs an SDXL or FLUX model, got {type(base).__name__}")


class ComfySchedule(NoiseSchedule):
    """A ComfyUI `model_sampling` object seen through the core's schedule interface."""

    def __init__(self, model_sampling):
        self.sampling = model_sampling
        if isinstance(model_sampling, comfy.model_sampling.CONST):
            self.prediction_type = "flow"
        elif isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
            self.prediction_type = "v_prediction"
        else:
            self.prediction_type = "epsilon"

    @property
    def sigma_max(self):
        return float(self.sampling.sigma_max)

    @property
    def sigma_min(self):
        return float(self.sampling.sigma_min)

    def add_noise(self, x0, noise, sigma):
        return self.sampling.noise_scaling(sigma.to(x0), noise, x0.clone())

    def initial_latent(self, noise):
        sigma = torch.tensor(self.sigma_max, device=noise.device)
        return self.sampling.noise_scaling(sigma, noise, torch.zeros_like(noise), max_denoise=True)

    def model_input(self, x, sigma):
        return self.sampling.calculate_input(sigma, x), self.sampling.timestep(sigma)

    def to_denoised(self, x, output, sigma):
        return self.sampling.calculate_denoised(sigma, output, x)

    def training_target(self, x0, noise, sigma):
        if self.prediction_type == "epsilon":
            return noise
        if self.prediction_type == "flow":
            return noise - x0
        s = sigma.to(x0).reshape(-1, *([1] * (x0.ndim - 1)))
        return (noise - s * x0) / (s**2 + 1.0) ** 0.5

    def sampling_sigmas(self, steps):
        scheduler = "simple" if self.prediction_type == "flow" else "normal"
        return comfy.samplers.calculate_sigmas(self.sampling, scheduler, steps).cpu()

    def training_sigmas(self, batch, generator=None):
        if self.prediction_type == "flow":
            return self.sampling.sigma(torch.randn(batch, generator=generator).sigmoid())
        return self.sampling.sigma(torch.randint(0, 1000, (batch,), generator=generator).float())


class ComfyBackend(DiffusionBackend):
    """SDXL or FLUX from a ComfyUI MODEL (ModelPatcher) with its CLIP and VAE (either may be None)."""

    predicts_in_list_order = False  # calc_cond_batch groups and reorders the conditionings of a batch

    def __init__(self, model, clip=None, vae=None):
        # Our own clone: temporary patches (feature capture) never reach the caller's MODEL.
        self.model, self.clip, self.vae = model.clone(), clip, vae
        self.family = model_family(model)
        self.text_encoder_keys = ("clip_l", "clip_g") if self.family == "sdxl" else ("clip_l", "t5")
        self.schedule = ComfySchedule(model.get_model_object("model_sampling"))
        self.latent_channels = model.model.latent_format.latent_channels
        self.vae_scale = vae.downscale_ratio if vae is not None else 8
        self._processed: dict = {}

    # -- text --------------------------------------------------------------------------------
    def _require_clip(self):
        if self.clip is None:
            raise ProtagonistError("this operation needs the CLIP input connected")
        return self.clip

    def _word_ids(self, word: str, key: str) -> list[int]:
        chunk = self._require_clip().tokenize(word, return_word_ids=True)[key][0]
        return [t[0] for t in chunk if t[2] != 0]

    def encode_prompts(self, prompts, tokens=None, word=None, image_size=None) -> Conditioning:
        encoded = [self._encode_one(p, tokens or [], word) for p in prompts]
        # Without a size, ComfyUI's own defaults apply, as for its CLIPTextEncode.
        sizes = {}
        if image_size is not None:
            height, width = image_size
            sizes = {"width": width, "height": height, "target_width": width, "target_height": height}
        return Conditioning(
            embeds=torch.cat([e[0] for e in encoded]), pooled=torch.cat([e[1] for e in encoded]),
            extras={"comfy": sizes},
            word_positions=[e[2] for e in encoded] if word is not None else None,
        )

    def _encode_one(self, prompt: str, tokens: list[TokenEmbedding], word: str | None):
        clip = self._require_clip()
        text = prompt
        for i, token in enumerate(tokens):
            text = text.replace(token.name, f"{MARKER}{chr(ord('a') + i)}")
        tokenized = clip.tokenize(text, return_word_ids=True)
        for i, token in enumerate(tokens):
            for key, comfy_key in COMFY_TEXT_KEYS.items():
                if comfy_key in tokenized and key in token.vectors:
                    marker_ids = self._word_ids(f"{MARKER}{chr(ord('a') + i)}", comfy_key)
                    tokenized[comfy_key] = splice_vectors(tokenized[comfy_key], marker_ids, token.vectors[key])
        positions = []
        if word is not None:
            key = "t5xxl" if self.family == "flux" else "l"
            positions = find_subsequence([t[0] for chunk in tokenized[key] for t in chunk], self._word_ids(word, key))
            if not positions:
                raise ProtagonistError(f"the word {word!r} does not occur in the prompt {prompt!r}; "
                                       f"its words are {sorted(set(prompt.lower().split()))}")
        out = clip.encode_from_tokens(tokenized, return_pooled=True, return_dict=True)
        return out["cond"], out["pooled_output"], positions

    def token_width(self) -> dict[str, int]:
        return {k: t.weight.shape[1] for k, t in self.embedding_tables().items()}

    def word_embedding(self, word: str) -> dict[str, torch.Tensor]:
        tables = self.embedding_tables()
        return {k: tables[k].weight[self._word_ids(word, COMFY_TEXT_KEYS[k])].detach().clone()
                for k in self.text_encoder_keys}

    def embedding_tables(self) -> dict[str, torch.nn.Embedding]:
        model = self._require_clip().cond_stage_model
        names = {"clip_l": "clip_l", "clip_g": "clip_g", "t5": "t5xxl"}
        return {k: getattr(model, names[k]).transformer.get_input_embeddings() for k in self.text_encoder_keys}

    # -- denoiser ----------------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return self.model.model.diffusion_model

    @property
    def device(self) -> torch.device:
        """Where ComfyUI runs the model (its weights may sit on the offload device until a session loads them)."""
        return torch.device(self.model.load_device)

    def feature_module(self, point: str) -> torch.nn.Module:
        if self.family == "sdxl" and point == "mid_block":
            return self.denoiser.middle_block
        kind, _, index = point.partition(".")
        if self.family == "flux" and kind in ("double_blocks", "single_blocks") and index.isdigit():
            return getattr(self.denoiser, kind)[int(index)]
        raise ValueError(f"unknown feature point {point!r} for {self.family}")

    @property
    def oneactor_feature_point(self) -> str:
        if self.family == "flux":  # the diffusers backend's choice (experimental), in ComfyUI's block names
            return f"double_blocks.{len(self.denoiser.double_blocks) - 1}"
        return super().oneactor_feature_point

    def feature_grid(self, features: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        return image_tokens_as_grid(features, latent_size) if self.family == "flux" else features

    def image_embedder(self) -> torch.nn.Module:
        if self.family != "flux":
            return super().image_embedder()
        return self.denoiser.img_in

    def lora_targets(self) -> tuple[str, ...]:
        return COMFY_FLUX_ATTENTION if self.family == "flux" else super().lora_targets()

    @contextlib.contextmanager
    def session(self):
        """Load the model (and, per conditioning set, its ControlNets) and mark it in use, as ComfyUI's guider does."""
        comfy.model_management.load_models_gpu([self.model])
        self._processed = {}
        self.model.pre_run()
        try:
            yield
        finally:
            self.model.cleanup()
            self._processed = {}

    @contextlib.contextmanager
    def capture_features(self, point: str, cond_index: int, n_conds: int):
        """The mid-block input (= the last input block's output) through ComfyUI's input-block patch.

        ComfyUI may order the conditionings of a batch as it likes; `cond_or_uncond` says how.
        """
        if self.family == "flux" and point.startswith("double_blocks."):
            with self._capture_block_input(point, cond_index) as store:
                yield store
            return
        if self.family != "sdxl" or point != "mid_block":
            raise ValueError(f"feature capture in ComfyUI supports SDXL's 'mid_block' and FLUX's 'double_blocks.N', "
                             f"not {self.family} {point!r}")
        store: dict = {}
        last = len(self.denoiser.input_blocks) - 1

        def patch(h, transformer_options):
            order = transformer_options.get("cond_or_uncond", [])
            if transformer_options.get("block") == ("input", last) and cond_index in order:
                store["features"] = _conditional_part(h, order, cond_index)
            return h

        saved = self.model.model_options
        self.model.model_options = comfy.model_patcher.create_model_options_clone(saved)
        self.model.set_model_input_block_patch(patch)
        try:
            yield store
        finally:
            self.model.model_options = saved

    @contextlib.contextmanager
    def _capture_block_input(self, point: str, cond_index: int):
        """A FLUX double block's image tokens; ComfyUI calls its blocks with keywords, `cond_or_uncond` in them."""
        store: dict = {}

        def hook(module, args, kwargs):
            order = (kwargs.get("transformer_options") or {}).get("cond_or_uncond", [])
            if cond_index in order:
                store["features"] = _conditional_part(kwargs["img"], order, cond_index)

        handle = self.feature_module(point).register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield store
        finally:
            handle.remove()

    @contextlib.contextmanager
    def trainable(self):
        """Make this model's weights usable by autograd and its CLIP layers differentiable, for one job.

        Weights loaded under ComfyUI's inference mode get normal copies (same values). ComfyUI's CLIP
        layers add residuals in place, which autograd cannot differentiate through; while training,
        each layer *instance* of this CLIP gets an out-of-place forward, removed afterwards.
        ComfyUI's FLUX blocks also add residuals in place (`x += …`) to tensors autograd saved; for FLUX,
        every activation autograd saves is snapshotted at that moment (weights are not copied), so the
        later in-place update cannot invalidate it and gradients stay exact.
        """
        modules = [self.denoiser] + ([self.clip.cond_stage_model] if self.clip is not None else [])
        for module in modules:
            for parameter in module.parameters():
                if parameter.is_inference():
                    parameter.data = parameter.data.clone()
        layers = [m for m in modules[1:] for m in m.modules() if type(m).__name__ == "CLIPLayer"]
        for layer in layers:
            layer.forward = _out_of_place_clip_layer(layer)
        snapshots = (torch.autograd.graph.saved_tensors_hooks(_snapshot, _unpack) if self.family == "flux"
                     else contextlib.nullcontext())
        try:
            with snapshots:
                yield
        finally:
            for layer in layers:
                del layer.forward

    def to_comfy(self, cond: Conditioning) -> list:
        """The core conditioning as a ComfyUI CONDITIONING list."""
        options = dict(cond.extras.get("comfy", {}))
        options["pooled_output"] = cond.pooled
        if "guidance" in cond.extras:
            options["guidance"] = float(cond.extras["guidance"].reshape(-1)[0])
        return [[cond.embeds, options]]

    def _comfy_conds(self, x, conds):
        """ComfyUI's processed conds, reused while the same Conditioning objects come back (a sampling run).

        The cache holds the objects themselves, not their ids: an id can be reused by a new object once
        the old one is freed, which would hand back another step's tensors.
        """
        cached = self._processed.get("entry")
        if cached is not None and cached[1] == tuple(x.shape) and len(cached[0]) == len(conds) \
                and all(a is b for a, b in zip(cached[0], conds)):
            return cached[2]
        named = {f"c{i}": comfy.sampler_helpers.convert_cond(self.to_comfy(c)) for i, c in enumerate(conds)}
        inner, named, _ = comfy.sampler_helpers.prepare_sampling(self.model, x.shape, named, self.model.model_options)
        processed = comfy.samplers.process_conds(inner, x, named, x.device)
        result = [processed[f"c{i}"] for i in range(len(conds))]
        self._processed = {"entry": (list(conds), tuple(x.shape), result)}
        return result

    def predict(self, x, sigma, conds):
        sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        outs = comfy.samplers.calc_cond_batch(self.model.model, self._comfy_conds(x, conds), x, sigma,
                                              self.model.model_options)
        return torch.stack(outs)

    def raw_predict(self, x, sigma, cond):
        denoised = self.predict(x, sigma, [cond])[0]
        s = torch.as_tensor(sigma, device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        if self.schedule.prediction_type == "v_prediction":
            return (x / (s**2 + 1) - denoised) * (s**2 + 1) ** 0.5 / s
        return (x - denoised) / s

    # -- VAE ---------------------------------------------------------------------------------
    def _require_vae(self):
        if self.vae is None:
            raise ProtagonistError("this operation needs the VAE input connected")
        return self.vae

    def encode_images(self, images):
        latents = self._require_vae().encode(images_to_comfy(images))
        return self.model.model.process_latent_in(latents.to(self.device, self.dtype))

    def decode_latents(self, latents):
        raw = self.model.model.process_latent_out(latents.to(torch.float32))
        return images_to_core(self._require_vae().decode(raw))


def _snapshot(tensor: torch.Tensor) -> torch.Tensor:
    """Saved-tensor pack hook: a private copy of an activation (leaves — weights, inputs — are kept as they are)."""
    return tensor.clone() if tensor.grad_fn is not None else tensor


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _out_of_place_clip_layer(layer):
    def forward(x, mask=None, optimized_attention=None):
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))

    return forward


def find_subsequence(sequence: list, pattern: list) -> list[int]:
    """Positions covered by every occurrence of `pattern` in `sequence`."""
    hits = []
    for start in range(len(sequence) - len(pattern) + 1):
        if pattern and sequence[start:start + len(pattern)] == pattern:
            hits.extend(range(start, start + len(pattern)))
    return hits


def splice_vectors(chunks: list, marker_ids: list[int], vectors: torch.Tensor) -> list:
    """Replace the marker's tokens in a tokenised prompt by one entry per vector, keeping chunk length."""
    out = []
    for chunk in chunks:
        ids = [t[0] if isinstance(t[0], int) else None for t in chunk]
        starts = [s for s in range(len(ids)) if ids[s:s + len(marker_ids)] == marker_ids]
        if not starts:
            out.append(chunk)
            continue
        length, new = len(chunk), list(chunk)
        for start in reversed(starts):
            word_id = new[start][2] if len(new[start]) > 2 else 0
            entries = [(vectors[r], 1.0, word_id) for r in range(vectors.shape[0])]
            new[start:start + len(marker_ids)] = entries
        padding = new[-1]
        new = new[:length] + [padding] * (length - len(new))
        out.append(new)
    return out


def _conditional_part(x: torch.Tensor, order: list[int], cond_index: int) -> torch.Tensor:
    """The rows of conditioning `cond_index` in a batch ComfyUI stacked in `order` (its `cond_or_uncond`)."""
    size = x.shape[0] // len(order)
    k = order.index(cond_index)
    return x[k * size:(k + 1) * size].detach().float().cpu().clone()
