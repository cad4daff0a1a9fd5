"""OneActor as ComfyUI nodes: projector tuning, the cluster GUIDER, a one-node sampler, identity files."""

from __future__ import annotations

import torch
from comfy_api.v0_0_2 import io

from ..core.oneactor.guidance import ClusterGuidance
from ..core.oneactor.identity import check_compatible, check_continuable, make_identity
from ..core.oneactor.tuning import DEFAULT_TEMPLATES, OneActorTuning, ProposalSet, tune_projector
from ..core.proposals import Proposals, scene_lines, scenes_for
from .chosen_one import loss_curve_image
from .comfy_backend import ComfyBackend
from .oneactor_guider import build_guider
from .progress import TrainingProgress

Features = io.Custom("PROTAGONIST_FEATURES")
Identity = io.Custom("PROTAGONIST_ONEACTOR")


def guidance_inputs() -> list:
    return [
        io.Float.Input("eta_target", default=8.0, min=0.0, max=30.0, step=0.1, tooltip="η1: pull towards the target."),
        io.Float.Input("eta_aux", default=1.0, min=0.0, max=30.0, step=0.1,
                       tooltip="η2: push away from the other proposals; 0 makes it as cheap as plain CFG."),
        io.Float.Input("semantic_scale", default=0.8, min=0.0, max=2.0, step=0.05,
                       tooltip="v: how much of the target offset (more = more consistent, less = more varied)."),
        io.Float.Input("cluster_fraction", default=0.67, min=0.0, max=1.0, step=0.01,
                       tooltip="Share of the steps with cluster guidance; plain CFG after (paper: 20 of 30)."),
        io.Float.Input("cfg", default=7.5, min=0.0, max=30.0, step=0.1, tooltip="CFG scale after the cluster phase."),
    ]


def guidance_settings(eta_target, eta_aux, semantic_scale, cluster_fraction, cfg) -> ClusterGuidance:
    return ClusterGuidance(eta_target, eta_aux, semantic_scale, cluster_fraction, cfg)


class OneActorProjectorTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_OneActorProjectorTrainer", display_name="OneActor Projector Trainer (Protagonist)",
            category="Protagonist/OneActor",
            description="Tunes OneActor's projector on one chosen proposal (the target) and the others.",
            inputs=[
                io.Model.Input("model", tooltip="The model that drew the proposals (SDXL; FLUX is experimental)."),
                io.Clip.Input("clip", tooltip="Its text encoders."),
                io.Latent.Input("latents", tooltip="The proposals' latents (Proposal Sampler)."),
                Features.Input("features", tooltip="The proposals' features (Proposal Sampler)."),
                io.Int.Input("target_index", default=0, min=0, max=4095, tooltip="Which proposal is the character."),
                io.String.Input("base_word", default="man", tooltip="The subject word the offset attaches to."),
                io.String.Input("templates", multiline=True, default="\n".join(DEFAULT_TEMPLATES),
                                tooltip="Tuning prompts, one per line; {} becomes the base word."),
                io.Int.Input("steps", default=200, min=1, max=10000, tooltip="Tuning steps (paper: about 200)."),
                io.Int.Input("aux_per_batch", default=3, min=1, max=32, tooltip="Auxiliary proposals per batch."),
                io.Float.Input("lr", default=1e-4, min=0.0, max=1.0, step=1e-5, tooltip="AdamW learning rate."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of batches and noise."),
                io.String.Input("scenes", multiline=True, default="", optional=True,
                                tooltip="The Proposal Sampler's scenes, one per line: each proposal's tuning "
                                        "captions end with its scene, so the offset does not learn the background."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Connect it to tune on the target and its mirror image too (the paper's flip "
                                     "augmentation; \"left\"/\"right\" are swapped in its scene). Leave it "
                                     "unconnected for a character whose mirror image is another character."),
                io.Latent.Input("more_target_latents", optional=True,
                                tooltip="More images of the same character, e.g. guided samples of a first tuning "
                                        "that show it as you want it, at the proposals' size: further views of "
                                        "the target, so the offset learns what they share rather than what only "
                                        "the target shows. Their captions end with the target's scene."),
                Identity.Input("continue_from", optional=True,
                               tooltip="Continue tuning this identity (tuned on the same proposals and base word) "
                                       "instead of a new projector, e.g. 50 steps with more_target_latents."),
            ],
            outputs=[Identity.Output(display_name="identity"), io.Image.Output(display_name="loss_curve")],
        )

    @classmethod
    def execute(cls, model, clip, latents, features, target_index, base_word, templates, steps, aux_per_batch, lr,
                seed, scenes="", vae=None, more_target_latents=None, continue_from=None) -> io.NodeOutput:
        settings = OneActorTuning(steps=steps, aux_per_batch=aux_per_batch, lr=lr, seed=seed,
                                  templates=tuple(t for t in templates.splitlines() if t.strip()),
                                  mirror_target=vae is not None)
        with torch.inference_mode(False), torch.enable_grad():
            backend = ComfyBackend(model, clip, vae)
            samples = model.model.process_latent_in(latents["samples"].clone())
            size = (samples.shape[-2] * backend.vae_scale, samples.shape[-1] * backend.vae_scale)
            proposals = Proposals(samples, torch.zeros(0), [], features.clone())
            lines = scene_lines(scenes)
            proposal_scenes = scenes_for(lines, range(samples.shape[0])) if lines else None
            data = ProposalSet.from_proposals(proposals, target_index, size, proposal_scenes)
            if more_target_latents is not None:
                data = data.with_target_views(model.model.process_latent_in(more_target_latents["samples"].clone()))
            start = None
            if continue_from is not None:
                check_continuable(continue_from, features, base_word)
                start = continue_from.projector
            with backend.trainable():
                tuned = tune_projector(backend, data, base_word, settings, callback=TrainingProgress(steps),
                                       projector=start)
            identity = make_identity(tuned.projector, data.features, base_word, backend.family)
        return io.NodeOutput(identity, loss_curve_image(tuned.losses))


class ClusterGuidedSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_ClusterGuidedSampler", display_name="OneActor Cluster Guider (Protagonist)",
            category="Protagonist/OneActor",
            description="A GUIDER for SamplerCustomAdvanced: any sampler, scheduler and ControlNet conditioning.",
            inputs=[
                io.Model.Input("model", tooltip="The model the identity was tuned on (LoRAs etc. allowed)."),
                io.Clip.Input("clip", tooltip="Its text encoders (to find the base word in the prompt)."),
                Identity.Input("identity", tooltip="From the projector trainer or Load OneActor Identity."),
                io.String.Input("prompt", multiline=True, default="a photo of a man in a park",
                                tooltip="Must contain the identity's base word."),
                io.Conditioning.Input("negative", tooltip="The negative / empty prompt (ε(∅))."),
                io.Conditioning.Input("positive", optional=True,
                                      tooltip="Optional: this prompt's conditioning after ControlNet or other nodes."),
                *guidance_inputs(),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, clip, identity, prompt, negative, eta_target, eta_aux, semantic_scale, cluster_fraction,
                cfg, positive=None) -> io.NodeOutput:
        backend = ComfyBackend(model, clip)
        check_compatible(identity.family, identity.width, backend, "the identity")
        settings = guidance_settings(eta_target, eta_aux, semantic_scale, cluster_fraction, cfg)
        return io.NodeOutput(build_guider(backend, model, identity, prompt, negative, settings, positive))
