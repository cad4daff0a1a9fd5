"""DSD's Two-Frame DiT Sampler, native on ComfyUI's FLUX: a post_input patch on a clone and a true-CFG guider."""

from __future__ import annotations

import contextlib

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.utils
import latent_preview
import torch
from comfy_api.v0_0_2 import io
from einops import rearrange

from ..core.dsd.guidance import TERMS, TrueCFG
from ..core.dsd.two_frame import add_condition, embed_condition, reference_canvas
from ..core.interface import ProtagonistError
from .convert import images_to_comfy, images_to_core
from .dsd import DSDWeights
from .oneactor_guider import step_of


class ReferencePatch:
    """FLUX `post_input` patch: adds `c_embedder(reference canvas tokens)` to the image tokens.

    `enabled` switches it off for DSD's "no image" prediction. ModelPatcher.clone() deep-copies patches,
    so the guider finds the live ones in the sampler's model options (:func:`references_off`).
    """

    def __init__(self, c_embedder: torch.nn.Linear, tokens: torch.Tensor):
        self.c_embedder, self.tokens, self.enabled = c_embedder, tokens.detach(), True

    def __call__(self, args: dict) -> dict:
        if not self.enabled:
            return args
        img = args["img"]
        return {**args, "img": add_condition(img, embed_condition(self.c_embedder, self.tokens, img))}

    def to(self, target) -> ReferencePatch:
        """Follow the model to a device; dtype casts are ignored (the term is cast where it is added)."""
        if not isinstance(target, torch.dtype) and self.tokens.device != torch.device(target):
            self.c_embedder.to(target)
            self.tokens = self.tokens.to(target)
        return self


@contextlib.contextmanager
def references_off(model_options: dict):
    """Switch off every reference patch the sampler's model options carry, for one prediction."""
    patches = model_options.get("transformer_options", {}).get("patches", {}).get("post_input", [])
    ours = [p for p in patches if isinstance(p, ReferencePatch)]
    if not ours:
        raise ProtagonistError("the model carries no two-frame reference patch: sample through the "
                               "Two-Frame DiT Sampler")
    for patch in ours:
        patch.enabled = False
    try:
        yield
    finally:
        for patch in ours:
            patch.enabled = True


def patched_flux(model, dsd: dict, vae, reference: torch.Tensor, side: int):
    """A clone of `model` with DSD's LoRA and the reference patch, and the empty canvas latent."""
    if type(model.model).__name__ != "Flux":
        raise ProtagonistError(f"the two-frame sampler needs a FLUX model, got {type(model.model).__name__}")
    weight = dsd["c_embedder"]["weight"]
    if weight.shape[1] != model.model.diffusion_model.img_in.in_features:
        raise ProtagonistError(f"this DSD file's c_embedder takes {weight.shape[1]} channels but the model's "
                               f"image input takes {model.model.diffusion_model.img_in.in_features}: wrong file")
    c_embedder = torch.nn.Linear(weight.shape[1], weight.shape[0])
    c_embedder.load_state_dict(dsd["c_embedder"])
    canvas = reference_canvas(reference, side)
    with torch.no_grad():
        latents = model.model.process_latent_in(vae.encode(images_to_comfy(canvas)).to(torch.float32))
    tokens = rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    patched = model.clone()
    if dsd["lora"]:
        patched, _ = comfy.sd.load_lora_for_models(patched, None, dsd["lora"], 1.0, 0.0)
    patched.set_model_patch(ReferencePatch(c_embedder, tokens), "post_input")
    return patched, torch.zeros_like(latents)


class TwoFrameGuider(comfy.samplers.CFGGuider):
    """DSD's guidance: p(prompt, image) on the first step, then true CFG with image and text scales.

    The terms that see the reference run in one `calc_cond_batch`; the "no image" term in a second one
    with the reference patch switched off.
    """

    def __init__(self, model_patcher, rule: TrueCFG):
        super().__init__(model_patcher)
        self.rule = rule

    def set_conds(self, positive, negative=None):
        if self.rule.active and negative is None:
            raise ProtagonistError("image_guidance or text_guidance ≠ 1 turns on true CFG, which needs the "
                                   "`negative` input connected (e.g. an empty-prompt CLIP Text Encode)")
        self.inner_set_conds({"positive": positive, **({"negative": negative} if negative is not None else {})})

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_options = model_options if model_options is not None else {}
        names = self.rule.terms(step_of(timestep, model_options)) if self.rule.active else ("positive",)
        seen = [name for name in names if TERMS[name][1]]
        outs = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[TERMS[n][0]] for n in seen], x,
                                              timestep, model_options)
        preds = dict(zip(seen, outs))
        if "no_image" in names:
            with references_off(model_options):
                preds["no_image"] = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds["negative"]], x,
                                                                   timestep, model_options)[0]
        return self.rule.combine(preds)


def canvas_sigmas(model, sampler_name: str, scheduler: str, steps: int) -> torch.Tensor:
    """The schedule ComfyUI's KSampler would use (one extra step dropped for the samplers that need it)."""
    discard = sampler_name in comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps + 1 if discard else steps)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def sample_canvas(patched, positive, negative, empty, seed: int, steps: int, rule: TrueCFG,
                  sampler_name: str = "euler", scheduler: str = "simple", callback=None) -> torch.Tensor:
    """The denoised canvas latent (ComfyUI's LATENT space) from any sampler and scheduler."""
    guider = TwoFrameGuider(patched, rule)
    guider.set_conds(positive, negative)
    sigmas = canvas_sigmas(patched, sampler_name, scheduler, steps)
    noise = comfy.sample.prepare_noise(empty, seed)
    return guider.sample(noise, empty, comfy.samplers.sampler_object(sampler_name), sigmas, callback=callback,
                         disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


class TwoFrameDiTSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_TwoFrameDiTSampler", display_name="Two-Frame DiT Sampler (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="Zero-shot identity: your FLUX model draws the reference's subject in a new frame "
                        "(DSD). Any sampler and scheduler; only the DSD file is loaded on top of your FLUX.",
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-dev (or the model the DSD file was trained on)."),
                io.Vae.Input("vae", tooltip="The FLUX VAE."),
                DSDWeights.Input("dsd", tooltip="From Load DSD Weights or the Two-Frame Trainer."),
                io.Image.Input("reference", tooltip="The subject to keep; resized to side × side."),
                io.Conditioning.Input("positive", tooltip="The new frame's prompt (FLUX guidance 3.5 recommended)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt of true CFG; needed only when a guidance scale ≠ 1."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Noise seed."),
                io.Int.Input("steps", default=28, min=1, max=200, tooltip="Denoising steps (DSD: 28)."),
                io.Float.Input("image_guidance", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="True-CFG image scale s_i from the 2nd step (DSD suggests 1.0–1.5). "
                                       "With text_guidance also 1, true CFG is off (DSD default, fastest)."),
                io.Float.Input("text_guidance", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="True-CFG text scale s_t from the 2nd step (DSD default 1.0 = off)."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Any ComfyUI sampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple",
                               tooltip="Any ComfyUI scheduler."),
                io.Int.Input("side", default=512, min=64, max=2048, step=16,
                             tooltip="Frame size; DSD works best at 512."),
                io.Boolean.Input("whole_canvas", default=False, tooltip="Output both frames side by side."),
            ],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, model, vae, dsd, reference, positive, seed, steps, image_guidance, text_guidance,
                sampler_name, scheduler, side, whole_canvas, negative=None) -> io.NodeOutput:
        patched, empty = patched_flux(model, dsd, vae, images_to_core(reference), side)
        preview = latent_preview.prepare_callback(patched, steps)  # progress and preview, as KSampler's

        def callback(step, x0, x, total_steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            preview(step, x0, x, total_steps)

        samples = sample_canvas(patched, positive, negative, empty, seed, steps,
                                TrueCFG(image_guidance, text_guidance), sampler_name, scheduler, callback)
        canvas = vae.decode(samples)
        return io.NodeOutput(canvas if whole_canvas else canvas[:, :, canvas.shape[2] // 2:])
