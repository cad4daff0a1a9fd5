"""The Chosen One's training nodes: LoRA + token trainer, and the whole loop with a resumable run."""

from __future__ import annotations

import json

import comfy.hooks
import comfy.sd
import torch
from comfy_api.v0_0_2 import io

from ..core.adapters import comfy_lora
from ..core.chosen_one.identity_file import export_for_comfyui, save_identity
from ..core.chosen_one.loop import proposal_batches, run_chosen_one
from ..core.chosen_one.presets import PRESETS
from ..core.chosen_one.presets import preset as preset_settings
from ..core.chosen_one.training import DEFAULT_TEMPLATES, IdentityTraining, new_token, train_identity
from ..core.embedding import embed_images
from ..core.proposals import scene_lines, scenes_for
from .chosen_one import cached_dinov2, loss_curve_image
from .comfy_backend import ComfyBackend
from .convert import images_to_comfy, images_to_core
from .model_folders import output_file, run_directory
from .progress import SamplingProgress, TrainingProgress


def identity_outputs(model, clip, identity, name: str, overwrite: bool, noisiest_share: float):
    """What both trainer nodes return after training: the exported files' names, MODEL/CLIP clones with the LoRA
    (ComfyUI's own patching, every step) and the LoRA as hooks on the noisiest `noisiest_share` of the levels."""
    lora_file, token_text = write_exports(identity, name, overwrite)
    lora = comfy_lora(identity.lora, identity.alpha)
    model_out, clip_out = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 0.0)
    return model_out, clip_out, lora_file, token_text, lora_hooks(lora, noisiest_share)


def lora_hooks(lora: dict[str, torch.Tensor], noisiest_share: float):
    """A LoRA in ComfyUI's keys as a hook (for Cond Pair Set Props) on the noisiest `noisiest_share` of the
    noise levels (the loop's `lora_noisiest_share`); ComfyUI's start percents count the same levels."""
    hooks = comfy.hooks.create_hook_lora(lora, strength_model=1.0, strength_clip=0.0)
    if noisiest_share >= 1.0:
        return hooks
    keyframes = comfy.hooks.HookKeyframeGroup()
    # ComfyUI holds the first keyframe from the first step whatever its start, so full strength needs its own
    keyframes.add(comfy.hooks.HookKeyframe(strength=1.0, start_percent=0.0))
    keyframes.add(comfy.hooks.HookKeyframe(strength=0.0, start_percent=noisiest_share))
    hooks = hooks.clone()
    hooks.set_keyframes_on_hooks(hook_kf=keyframes)
    return hooks


def refuse_existing_exports(name: str, overwrite: bool) -> None:
    """Fail before any work if the LoRA or the embedding file already exists (unless overwriting)."""
    for folder in ("loras", "embeddings"):
        output_file(folder, f"{name}.safetensors", overwrite)


def write_exports(identity, name: str, overwrite: bool) -> tuple[str, str]:
    lora_path = output_file("loras", f"{name}.safetensors", overwrite)
    embedding_path = output_file("embeddings", f"{name}.safetensors", overwrite)
    export_for_comfyui(identity, lora_path, embedding_path, lora_keys=comfy_lora, overwrite=overwrite)
    return lora_path.name, f"embedding:{name}"


def proposal_indices(text: str, count: int) -> list[int]:
    """The cluster node's indices ("[0, 5, 9]"), one per image; empty: images are proposals 0…count-1."""
    if not text.strip():
        return list(range(count))
    indices = json.loads(text)
    if len(indices) != count:
        raise ValueError(f"{len(indices)} indices for {count} images: connect the indices of the cluster these "
                         f"images came from")
    return indices


class LoraTITrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_LoraTITrainer", display_name="LoRA + Token Trainer (Protagonist)",
            category="Protagonist/The Chosen One",
            description="Learns a character from a cluster of images: LoRA on attention + one new token per "
                        "text encoder. Writes models/loras/<name> and models/embeddings/<name>.",
            inputs=[
                io.Model.Input("model", tooltip="The SDXL model to adapt."),
                io.Clip.Input("clip", tooltip="Its text encoders (the token is learned for each)."),
                io.Vae.Input("vae", tooltip="Its VAE (encodes the images)."),
                io.Image.Input("images", tooltip="The chosen cluster."),
                io.String.Input("name", default="protagonist", tooltip="File and token name; use embedding:<name>."),
                io.String.Input("init_word", default="person", tooltip="A one-token word the token starts from."),
                io.String.Input("templates", multiline=True, default="\n".join(DEFAULT_TEMPLATES),
                                tooltip="Training prompts, one per line; {} becomes the token."),
                io.Int.Input("steps", default=500, min=1, max=100000, tooltip="Optimisation steps."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Images per step."),
                io.Int.Input("rank", default=4, min=1, max=128, tooltip="LoRA rank."),
                io.Float.Input("alpha", default=4.0, min=0.1, max=256.0, tooltip="LoRA alpha (scale = alpha/rank)."),
                io.Float.Input("lora_lr", default=3e-5, min=0.0, max=1.0, step=1e-6, tooltip="LoRA learning rate."),
                io.Float.Input("token_lr", default=3e-5, min=0.0, max=1.0, step=1e-6, tooltip="Token learning rate."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of batches and noise."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace existing files of the same name."),
                io.String.Input("scenes", multiline=True, default="", optional=True,
                                tooltip="The Proposal Sampler's scenes, one per line: each image's captions end with "
                                        "its scene, so the token does not learn the background."),
                io.String.Input("indices", default="", optional=True, force_input=True,
                                tooltip="The cluster's indices (from K-Means Cohesive Cluster): which proposal, and "
                                        "so which scene, each image is. Without it image k is proposal k."),
                io.Float.Input("lora_noisiest_share", default=1.0, min=0.01, max=1.0, step=0.01, optional=True,
                               tooltip="For the lora_hooks output: the share of the noise levels, noisiest first, "
                                       "on which the LoRA draws (1: every step; the Chosen One's fast preset "
                                       "draws with 0.83)."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the learned LoRA on every step."), io.Clip.Output(),
                     io.String.Output(display_name="lora_file"), io.String.Output(display_name="token"),
                     io.Image.Output(display_name="loss_curve"),
                     io.Hooks.Output(display_name="lora_hooks",
                                     tooltip="The LoRA on the noisiest lora_noisiest_share of the noise levels. "
                                             "Connect to Cond Pair Set Props and sample the unpatched model.")],
        )

    @classmethod
    def execute(cls, model, clip, vae, images, name, init_word, templates, steps, batch_size, rank, alpha,
                lora_lr, token_lr, seed, overwrite, scenes="", indices="",
                lora_noisiest_share=1.0) -> io.NodeOutput:
        refuse_existing_exports(name, overwrite)
        image_scenes = scenes_for(scene_lines(scenes), proposal_indices(indices, images.shape[0]))
        settings = IdentityTraining(steps=steps, batch_size=batch_size, rank=rank, alpha=alpha, lora_lr=lora_lr,
                                    token_lr=token_lr, seed=seed,
                                    templates=tuple(t for t in templates.splitlines() if t.strip()))
        with torch.inference_mode(False), torch.enable_grad():
            backend = ComfyBackend(model, clip, vae)
            token = new_token(backend, f"<{name}>", init_word)
            identity = train_identity(backend, images_to_core(images).clone(), token, settings,
                                      callback=TrainingProgress(steps), scenes=image_scenes)
        model_out, clip_out, lora_file, token_text, hooks = identity_outputs(model, clip, identity, name, overwrite,
                                                                             lora_noisiest_share)
        return io.NodeOutput(model_out, clip_out, lora_file, token_text, loss_curve_image(identity.losses), hooks)


class ChosenOneLoop(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_ChosenOneLoop", display_name="The Chosen One (Protagonist)",
            category="Protagonist/The Chosen One",
            description="The whole loop: proposals, DINOv2 clusters, LoRA + token, repeated until consistent. "
                        "Each round is kept in output/protagonist_runs/<name>; run again with the same settings "
                        "to resume (other settings are refused: give them another name).",
            inputs=[
                io.Model.Input("model", tooltip="An SDXL model."),
                io.Clip.Input("clip", tooltip="Its text encoders."),
                io.Vae.Input("vae", tooltip="Its VAE."),
                io.String.Input("prompt", multiline=True, default="a photo of a 50 years old man with curly hair",
                                tooltip="Describes the character."),
                io.String.Input("init_word", default="man", tooltip="A one-token word the new token starts from."),
                io.String.Input("identity_prompt", default="a photo of {}",
                                tooltip="Prompt of later rounds; {} becomes the learned token."),
                io.Combo.Input("preset", options=list(PRESETS), default="fast",
                               tooltip="paper: the published recipe; fast: about 4× fewer model evaluations."),
                io.String.Input("scenes", multiline=True, default="",
                                tooltip="Optional, one per line (\"on a beach\", \"in a city, close-up\"): proposals "
                                        "cycle through them and training captions repeat them, so the token learns "
                                        "the character rather than a background. Empty: the published recipe."),
                io.String.Input("dinov2", default="dinov2-large", tooltip="A folder in models/dinov2 or a hub id."),
                io.String.Input("name", default="protagonist", tooltip="Run, token and file name."),
                io.Int.Input("width", default=1024, min=16, max=4096, step=8, tooltip="Proposal width."),
                io.Int.Input("height", default=1024, min=16, max=4096, step=8, tooltip="Proposal height."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of proposals and training."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace existing exported files."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the learned LoRA on every step, for any downstream "
                                             "node."),
                     io.Clip.Output(), io.String.Output(display_name="token"),
                     io.Image.Output(display_name="last_proposals",
                                     tooltip="The last proposals drawn: those that measured the last round's "
                                             "identity (fast: 16, or 32 where 16 could not decide)."),
                     io.String.Output(display_name="report"),
                     io.Hooks.Output(display_name="lora_hooks",
                                     tooltip="The LoRA on the noise levels the preset draws its result with (fast: "
                                             "the noisiest 83 %, then the base weights; paper: every step). Connect "
                                             "to Cond Pair Set Props and sample the unpatched model: this is how "
                                             "the benchmark draws.")],
        )

    @classmethod
    def execute(cls, model, clip, vae, prompt, init_word, identity_prompt, preset, scenes, dinov2, name, width,
                height, seed, overwrite) -> io.NodeOutput:
        refuse_existing_exports(name, overwrite)
        settings = preset_settings(preset, prompt, init_word, identity_prompt, size=(height, width), seed=seed,
                                   token_name=f"<{name}>", scenes=scene_lines(scenes))
        embedder = cached_dinov2(dinov2)
        shown = []
        with torch.inference_mode(False), torch.enable_grad():
            backend = ComfyBackend(model, clip, vae)
            result = run_chosen_one(
                backend, settings, lambda images: embed_images(embedder, images), run_directory(name),
                callback=lambda index, stage, images: shown.append(images),
                sample_callback=SamplingProgress(model, settings.proposals.steps, runs=proposal_batches(settings)),
                train_callback=TrainingProgress(settings.training.steps))
        if result.identity is None:
            raise RuntimeError("no round completed; see the log for why")
        save_identity(result.identity, output_file("protagonist", f"{name}.safetensors", True), "sdxl", init_word)
        model_out, clip_out, lora_file, token_text, hooks = identity_outputs(
            model, clip, result.identity, name, overwrite, settings.lora_noisiest_share)
        report = "\n".join(f"round {r.index}: spread {r.spread:.4f}, cluster of {len(r.chosen)}"
                           for r in result.rounds)
        report += f"\nconverged: {result.converged}; kept round {result.kept_round}; LoRA {lora_file}"
        last = shown[-1] if shown else torch.zeros(1, 3, 8, 8)
        return io.NodeOutput(model_out, clip_out, token_text, images_to_comfy(last), report, hooks)
