"""ProposalSampler: N seeded images of one prompt through the core sampler on ComfyUI's model."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..core.proposals import ProposalSettings, generate_proposals, scene_lines, scene_prompts
from ..core.sampling import SAMPLERS
from .comfy_backend import ComfyBackend
from .convert import images_to_comfy
from .progress import SamplingProgress

Features = io.Custom("PROTAGONIST_FEATURES")


class ProposalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_ProposalSampler",
            display_name="Proposal Sampler (Protagonist)",
            category="Protagonist/common",
            description="Generates many candidate images of one prompt; image i uses seed + i.",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL or FLUX model."),
                io.Clip.Input("clip", tooltip="The text encoders that belong to the model."),
                io.Vae.Input("vae", tooltip="The VAE that belongs to the model."),
                io.String.Input("prompt", multiline=True, default="a photo of a cute blob",
                                tooltip="Describes the character; every proposal uses this prompt."),
                io.String.Input("negative", multiline=True, default="",
                                tooltip="Negative prompt for classifier-free guidance."),
                io.Int.Input("count", default=8, min=1, max=1024, tooltip="How many proposals to draw."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Image i uses seed + i."),
                io.Int.Input("steps", default=30, min=1, max=200, tooltip="Denoising steps per image."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler", options=sorted(SAMPLERS), default="euler",
                               tooltip="Euler or DPM++ 2M."),
                io.Int.Input("width", default=1024, min=16, max=4096, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=1024, min=16, max=4096, step=8, tooltip="Image height in pixels."),
                io.Int.Input("batch_size", default=4, min=1, max=64,
                             tooltip="Images sampled per pass; lower it if you run out of memory."),
                io.String.Input("scenes", multiline=True, default="", optional=True,
                                tooltip="Optional, one per line (\"on a beach\"): proposal i ends with scene i, "
                                        "cycling. Give the trainer the same list, so the token learns the "
                                        "character rather than a background."),
            ],
            outputs=[io.Image.Output(display_name="images"), io.Latent.Output(display_name="latents"),
                     Features.Output(display_name="features")],
        )

    @classmethod
    def execute(cls, model, clip, vae, prompt, negative, count, seed, steps, cfg, sampler, width, height,
                batch_size, scenes="") -> io.NodeOutput:
        backend = ComfyBackend(model, clip, vae)
        settings = ProposalSettings(count=count, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                                    height=height, width=width, batch_size=batch_size)
        runs = -(-count // batch_size)
        point = backend.oneactor_feature_point  # FLUX: experimental (README, OneActor)
        result = generate_proposals(backend, scene_prompts(prompt, scene_lines(scenes), count), negative, settings,
                                    callback=SamplingProgress(model, steps, runs), feature_point=point)
        latent = {"samples": model.model.process_latent_out(result.latents.float()).cpu()}
        return io.NodeOutput(images_to_comfy(result.images), latent, result.features)
