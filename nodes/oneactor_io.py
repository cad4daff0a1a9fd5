"""OneActor convenience nodes: a one-node sampler, and saving / loading identity files."""

from __future__ import annotations

import folder_paths
from comfy_api.v0_0_2 import io

from ..core.oneactor.guidance import draw_identity
from ..core.oneactor.identity import check_compatible, load_identity, save_identity
from .comfy_backend import ComfyBackend
from .convert import images_to_comfy
from .model_folders import PROTAGONIST_FOLDER, output_file
from .oneactor import Identity, guidance_inputs, guidance_settings
from .progress import SamplingProgress


class OneActorSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_OneActorSampler", display_name="OneActor Sampler (Protagonist)",
            category="Protagonist/OneActor",
            description="Draws the identity in new prompts with cluster guidance (Euler or DPM++ 2M).",
            inputs=[
                io.Model.Input("model", tooltip="The model the identity was tuned on."),
                io.Clip.Input("clip", tooltip="Its text encoders."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                Identity.Input("identity", tooltip="From the projector trainer or Load OneActor Identity."),
                io.String.Input("prompt", multiline=True, default="a photo of a man in a park",
                                tooltip="One prompt per line; each must contain the base word."),
                io.String.Input("negative", default="", tooltip="Negative prompt (the ε(∅) term)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Image i uses seed + i."),
                io.Int.Input("steps", default=30, min=1, max=200, tooltip="Denoising steps."),
                io.Combo.Input("sampler", options=["euler", "dpmpp_2m"], default="euler", tooltip="Sampler."),
                io.Int.Input("width", default=1024, min=16, max=4096, step=8, tooltip="Width in pixels."),
                io.Int.Input("height", default=1024, min=16, max=4096, step=8, tooltip="Height in pixels."),
                *guidance_inputs(),
            ],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, model, clip, vae, identity, prompt, negative, seed, steps, sampler, width, height, eta_target,
                eta_aux, semantic_scale, cluster_fraction, cfg) -> io.NodeOutput:
        backend = ComfyBackend(model, clip, vae)
        check_compatible(identity.family, identity.width, backend, "the identity")
        prompts = [line for line in prompt.splitlines() if line.strip()]
        settings = guidance_settings(eta_target, eta_aux, semantic_scale, cluster_fraction, cfg)
        seeds = [seed + i for i in range(len(prompts))]
        images = draw_identity(backend, identity, prompts, seeds, settings, (height, width), steps, sampler, negative,
                               callback=SamplingProgress(model, steps))
        return io.NodeOutput(images_to_comfy(images))


class SaveOneActorIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_SaveOneActorIdentity", display_name="Save OneActor Identity (Protagonist)",
            category="Protagonist/OneActor", is_output_node=True,
            description="Writes the identity to models/protagonist/<name>.safetensors.",
            inputs=[Identity.Input("identity", tooltip="The identity to keep."),
                    io.String.Input("name", default="oneactor_identity", tooltip="File name, without extension."),
                    io.Boolean.Input("overwrite", default=False, tooltip="Replace a file of the same name.")],
            outputs=[io.String.Output(display_name="file")],
        )

    @classmethod
    def execute(cls, identity, name, overwrite) -> io.NodeOutput:
        path = save_identity(identity, output_file(PROTAGONIST_FOLDER, f"{name}.safetensors", overwrite))
        return io.NodeOutput(path.name)


class LoadOneActorIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_LoadOneActorIdentity", display_name="Load OneActor Identity (Protagonist)",
            category="Protagonist/OneActor",
            description="Reads an identity from models/protagonist.",
            inputs=[io.Combo.Input("file", options=folder_paths.get_filename_list(PROTAGONIST_FOLDER),
                                   tooltip="An identity file in models/protagonist.")],
            outputs=[Identity.Output(display_name="identity")],
        )

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        return io.NodeOutput(load_identity(folder_paths.get_full_path_or_raise(PROTAGONIST_FOLDER, file)))
