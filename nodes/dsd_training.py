"""DSD's trainer node for small runs: c_embedder + LoRA on ComfyUI's own FLUX, from a pair dataset folder."""

from __future__ import annotations

from pathlib import Path

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..core.adapters import comfy_lora
from ..core.dsd.convert import load_converted, save_trained
from ..core.dsd.training import TwoFrameTraining, read_pairs, train_two_frame
from ..core.interface import ProtagonistError
from .chosen_one import loss_curve_image
from .comfy_backend import ComfyBackend
from .dsd import DSDWeights
from .model_folders import PROTAGONIST_FOLDER, output_file, run_directory
from .progress import TrainingProgress


def pair_folder(text: str) -> Path:
    """An absolute folder, or one relative to ComfyUI's output folder, that holds pairs.jsonl."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = Path(folder_paths.get_output_directory()) / path
    if not path.is_dir():
        raise ProtagonistError(f"the pair dataset folder {path} does not exist; give the folder that "
                               f"`python -m protagonist dsd make-pairs --out …` wrote (images + pairs.jsonl)")
    read_pairs(path)  # says what is wrong with an empty or missing manifest
    return path


class TwoFrameTrainer(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_TwoFrameTrainer", display_name="Two-Frame Trainer (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="Trains DSD's c_embedder + LoRA on your FLUX from a pair dataset (small runs). Resumes "
                        "from output/protagonist_runs/<name>; writes models/protagonist/<name>.safetensors.",
            inputs=[
                io.Model.Input("model", tooltip="The FLUX model to adapt (FLUX.1-dev for DSD)."),
                io.Clip.Input("clip", tooltip="Its text encoders (encode each pair's prompt)."),
                io.Vae.Input("vae", tooltip="Its VAE (encodes the two-frame canvases)."),
                io.String.Input("pairs", default="dsd-pairs",
                                tooltip="Pair dataset folder (images + pairs.jsonl): absolute, or inside output/."),
                io.String.Input("name", default="dsd-character", tooltip="Run and file name."),
                io.Int.Input("steps", default=500, min=1, max=100000,
                             tooltip="Total optimisation steps (a rerun resumes up to this count)."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Pairs per step."),
                io.Int.Input("rank", default=16, min=1, max=256, tooltip="LoRA rank."),
                io.Float.Input("alpha", default=16.0, min=0.1, max=512.0, tooltip="LoRA alpha (scale = alpha/rank)."),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=1.0, step=1e-6,
                               tooltip="AdamW learning rate of the LoRA and the c_embedder."),
                io.Int.Input("side", default=512, min=16, max=2048, step=16,
                             tooltip="Frame size; each canvas is side × 2·side (DSD: 512)."),
                io.Float.Input("right_weight", default=1.0, min=0.0, max=10.0, step=0.1,
                               tooltip="Loss weight of the new (right) frame against the reference (left) one."),
                io.Int.Input("checkpoint_every", default=100, min=1, max=100000,
                             tooltip="Save the run state every this many steps (and when interrupted)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of batches and noise."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing file of the same name."),
            ],
            outputs=[DSDWeights.Output(display_name="dsd"), io.String.Output(display_name="file"),
                     io.Image.Output(display_name="loss_curve")],
        )

    @classmethod
    def execute(cls, model, clip, vae, pairs, name, steps, batch_size, rank, alpha, learning_rate, side,
                right_weight, checkpoint_every, seed, overwrite) -> io.NodeOutput:
        target = output_file(PROTAGONIST_FOLDER, f"{name}.safetensors", overwrite)  # refuse before any work
        folder = pair_folder(pairs)
        settings = TwoFrameTraining(steps=steps, batch_size=batch_size, rank=rank, alpha=alpha, lr=learning_rate,
                                    right_weight=right_weight, side=side, seed=seed, checkpoint_every=checkpoint_every)
        with torch.inference_mode(False), torch.enable_grad():
            backend = ComfyBackend(model, clip, vae)
            if backend.family != "flux":
                raise ProtagonistError(f"the two-frame trainer needs a FLUX model, got {backend.family}")
            c_embedder, lora, losses = train_two_frame(backend, folder, run_directory(name), settings,
                                                       callback=TrainingProgress(steps))
        save_trained(target, c_embedder, comfy_lora(lora, alpha),
                     {"rank": str(rank), "alpha": str(alpha), "trained_on": "comfyui-flux", "steps": str(steps)})
        return io.NodeOutput(load_converted(target), target.name, loss_curve_image(losses))
