"""Diffusion Self-Distillation as ComfyUI nodes: grid splitting, pair filtering, the native two-frame sampler."""

from __future__ import annotations

import json

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.sd
import folder_paths
import latent_preview
import torch
from comfy_api.v0_0_2 import io
from einops import rearrange

from ..core.dsd.convert import load_converted
from ..core.dsd.grids import filter_pairs, ordered_pairs, split_grid
from ..core.dsd.two_frame import reference_canvas
from ..core.interface import ProtagonistError
from .chosen_one import Embeddings
from .convert import images_to_comfy, images_to_core
from .model_folders import PROTAGONIST_FOLDER

DSDWeights = io.Custom("PROTAGONIST_DSD")


class GridPairSplitter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_GridPairSplitter", display_name="Grid Pair Splitter (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="Splits grid images into panels and every ordered (reference, target) pair of one grid.",
            inputs=[
                io.Image.Input("grids", tooltip="One or more grid images of the same size."),
                io.Int.Input("rows", default=2, min=1, max=8, tooltip="Panels per column."),
                io.Int.Input("cols", default=2, min=1, max=8, tooltip="Panels per row."),
                io.Boolean.Input("detect_gutters", default=False,
                                 tooltip="Find and remove flat-coloured borders and gutters between panels."),
            ],
            outputs=[io.Image.Output(display_name="panels"), io.Image.Output(display_name="references"),
                     io.Image.Output(display_name="targets"), io.String.Output(display_name="pairs")],
        )

    @classmethod
    def execute(cls, grids, rows, cols, detect_gutters) -> io.NodeOutput:
        panels = torch.cat([split_grid(g, rows, cols, detect_gutters) for g in images_to_core(grids)])
        per_grid = rows * cols
        pairs = [(g * per_grid + i, g * per_grid + j) for g in range(grids.shape[0]) for i, j in ordered_pairs(per_grid)]
        references = panels[[i for i, _ in pairs]]
        targets = panels[[j for _, j in pairs]]
        return io.NodeOutput(images_to_comfy(panels), images_to_comfy(references), images_to_comfy(targets),
                             json.dumps(pairs))


class PairFilter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_PairFilter", display_name="Pair Filter (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="Keeps the pairs whose panels' embeddings (DINOv2 Embed of the panels) are similar enough.",
            inputs=[
                io.Image.Input("panels", tooltip="The panels from Grid Pair Splitter."),
                Embeddings.Input("embeddings", tooltip="DINOv2 Embed of those panels, same order."),
                io.String.Input("pairs", tooltip="The pairs from Grid Pair Splitter."),
                io.Float.Input("threshold", default=0.8, min=-1.0, max=1.0, step=0.01,
                               tooltip="Minimum cosine similarity of a kept pair."),
            ],
            outputs=[io.Image.Output(display_name="references"), io.Image.Output(display_name="targets"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, panels, embeddings, pairs, threshold) -> io.NodeOutput:
        pairs = [tuple(p) for p in json.loads(pairs)]
        kept, similarity = filter_pairs(embeddings, pairs, threshold)
        if not kept:
            raise ProtagonistError(f"all {len(pairs)} pairs were rejected at threshold {threshold} "
                                   f"(best similarity {max(similarity):.3f}); lower the threshold")
        report = f"kept {len(kept)} of {len(pairs)} pairs at threshold {threshold}"
        return io.NodeOutput(panels[[i for i, _ in kept]], panels[[j for _, j in kept]], report)


class LoadDSD(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_LoadDSD", display_name="Load DSD Weights (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="A converted DSD file (c_embedder + LoRA) from models/protagonist, for your own FLUX.1-dev.",
            inputs=[io.Combo.Input("file", options=folder_paths.get_filename_list(PROTAGONIST_FOLDER),
                                   tooltip="Made by `python -m protagonist dsd convert` or the DSD trainer.")],
            outputs=[DSDWeights.Output(display_name="dsd")],
        )

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        return io.NodeOutput(load_converted(folder_paths.get_full_path_or_raise(PROTAGONIST_FOLDER, file)))


def c_embedder_patch(c_embedder: torch.nn.Linear, tokens: torch.Tensor):
    """A FLUX `post_input` patch adding the reference canvas's embedding to the image tokens."""

    def patch(args):
        img = args["img"]
        extra = c_embedder.to(img)(tokens.to(img))
        return {**args, "img": img + extra.repeat(img.shape[0] // extra.shape[0], 1, 1)}

    return patch


def patched_flux(model, dsd: dict, vae, reference: torch.Tensor, side: int):
    """A clone of `model` with DSD's LoRA and the reference condition, and the empty canvas latent."""
    if type(model.model).__name__ != "Flux":
        raise ProtagonistError(f"the two-frame sampler needs a FLUX model, got {type(model.model).__name__}")
    weight = dsd["c_embedder"]["weight"]
    if weight.shape[1] != model.model.diffusion_model.img_in.in_features:
        raise ProtagonistError(f"this DSD file's c_embedder takes {weight.shape[1]} channels but the model's "
                               f"image input takes {model.model.diffusion_model.img_in.in_features}: wrong file")
    c_embedder = torch.nn.Linear(weight.shape[1], weight.shape[0])
    c_embedder.load_state_dict(dsd["c_embedder"])
    canvas = reference_canvas(reference, side)
    latents = model.model.process_latent_in(vae.encode(images_to_comfy(canvas)).to(torch.float32))
    tokens = rearrange(latents, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)
    patched = model.clone()
    if dsd["lora"]:
        patched, _ = comfy.sd.load_lora_for_models(patched, None, dsd["lora"], 1.0, 0.0)
    patched.set_model_patch(c_embedder_patch(c_embedder, tokens), "post_input")
    return patched, torch.zeros_like(latents)


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
                DSDWeights.Input("dsd", tooltip="From Load DSD Weights."),
                io.Image.Input("reference", tooltip="The subject to keep; resized to side × side."),
                io.Conditioning.Input("positive", tooltip="The new frame's prompt (FLUX guidance 3.5 recommended)."),
                io.Conditioning.Input("negative", tooltip="Used only when cfg > 1."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Noise seed."),
                io.Int.Input("steps", default=28, min=1, max=200, tooltip="Denoising steps (DSD: 28)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="1 = distilled guidance only (DSD default)."),
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
    def execute(cls, model, vae, dsd, reference, positive, negative, seed, steps, cfg, sampler_name, scheduler, side,
                whole_canvas) -> io.NodeOutput:
        patched, empty = patched_flux(model, dsd, vae, images_to_core(reference), side)
        noise = comfy.sample.prepare_noise(empty, seed)
        preview = latent_preview.prepare_callback(patched, steps)  # progress and preview, as KSampler's

        def callback(step, x0, x, total_steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            preview(step, x0, x, total_steps)

        samples = comfy.sample.sample(patched, noise, steps, cfg, sampler_name, scheduler, positive, negative, empty,
                                      callback=callback, seed=seed)
        canvas = vae.decode(samples)
        return io.NodeOutput(canvas if whole_canvas else canvas[:, :, canvas.shape[2] // 2:])
