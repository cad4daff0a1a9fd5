"""Two-frame training on a pair dataset: LoRA on FLUX's attention + the `c_embedder`, through accelerate.

Works on any FLUX backend (diffusers or ComfyUI): the backend names the layer whose output gets the
condition (:meth:`DiffusionBackend.image_embedder`) and its attention layers (:meth:`lora_targets`).

The clean target is the canvas [reference | target]; the condition is [reference | blank]. The loss
covers both frames (the left one reconstructs the reference, the right one is the new frame), with
`right_weight` on the right. Checkpoints go to the run directory; a rerun resumes from the last one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ..adapters import LoraAdapter, frozen_parameters
from ..backends.flux import FLUX_ATTENTION  # noqa: F401  (re-exported: diffusers FLUX's LoRA targets)
from ..checkpoint import load_checkpoint, save_checkpoint
from ..images import pil_to_tensor
from ..interface import DiffusionBackend, ProtagonistError
from ..training import adamw, denoising_error, optimisation_step
from .two_frame import condition_tokens, conditioned, new_c_embedder

log = logging.getLogger(__name__)


@dataclass
class TwoFrameTraining:
    steps: int = 1000
    batch_size: int = 4
    rank: int = 16
    alpha: float = 16.0
    lr: float = 1e-4
    right_weight: float = 1.0
    side: int = 512
    seed: int = 0
    checkpoint_every: int = 100


def read_pairs(folder: str | Path) -> list[dict]:
    path = Path(folder) / "pairs.jsonl"
    if not path.exists():
        raise ProtagonistError(f"{folder} has no pairs.jsonl: mine a pair dataset first (`dsd make-pairs`)")
    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not pairs:
        raise ProtagonistError(f"{path} is empty: no pair passed the filter")
    return pairs


def _load(folder: Path, name: str, side: int) -> torch.Tensor:
    return pil_to_tensor(Image.open(folder / name).resize((side, side), Image.BICUBIC))


def _batch(folder: Path, pairs: list[dict], picks: list[int], side: int):
    references = torch.stack([_load(folder, pairs[i]["reference"], side) for i in picks])
    targets = torch.stack([_load(folder, pairs[i]["target"], side) for i in picks])
    return references, torch.cat([references, targets], dim=-1), [pairs[i]["prompt"] for i in picks]


def _loss(backend: DiffusionBackend, c_embedder, references, canvas, prompts, settings, generator):
    with torch.no_grad():
        latents = backend.encode_images(canvas)
        cond = backend.encode_prompts(prompts)
    tokens = condition_tokens(backend, references, settings.side)
    with conditioned(backend.image_embedder(), c_embedder, tokens):
        error = denoising_error(backend, latents, cond, generator)
    half = error.shape[-1] // 2
    return error[..., :half].mean() + settings.right_weight * error[..., half:].mean()


def train_two_frame(backend: DiffusionBackend, pair_folder: str | Path, run_dir: str | Path,
                    settings: TwoFrameTraining, callback=None):
    """Train (or resume) and return (c_embedder, LoRA state dict in peft format, losses).

    `callback(step, loss)` runs after each step and may raise to interrupt: the state of the steps done
    so far is saved first, so a rerun with the same `run_dir` resumes there.
    """
    from accelerate import Accelerator

    folder, run_dir = Path(pair_folder), Path(run_dir)
    pairs = read_pairs(folder)
    accelerator = Accelerator(cpu=backend.device.type == "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        c_embedder = new_c_embedder(backend.image_embedder()).float()
        adapter = LoraAdapter(backend.denoiser, settings.rank, settings.alpha, backend.lora_targets())
    try:
        optimizer = adamw([*adapter.parameters(), *c_embedder.parameters()], backend.device, lr=settings.lr)
        lora_holder = _ParameterHolder(adapter)
        state = load_checkpoint(run_dir, {"c_embedder": c_embedder, "lora": lora_holder}, optimizer)
        start, losses = (state["step"], state["extra"]["losses"]) if state else (0, [])
        c_embedder, optimizer = accelerator.prepare(c_embedder, optimizer)

        def save(step: int) -> None:
            save_checkpoint(run_dir, step, {"c_embedder": accelerator.unwrap_model(c_embedder), "lora": lora_holder},
                            optimizer, extra={"losses": losses})

        trained = {id(p) for p in adapter.parameters()}
        frozen_base = [p for p in backend.denoiser.parameters() if id(p) not in trained]
        with backend.trainable(), backend.session(), torch.enable_grad(), frozen_parameters(frozen_base):
            for step in range(start, settings.steps):
                generator = torch.Generator().manual_seed(settings.seed * 100003 + step)
                picks = torch.randint(0, len(pairs), (settings.batch_size,), generator=generator).tolist()
                loss = _loss(backend, c_embedder, *_batch(folder, pairs, picks, settings.side), settings, generator)
                losses.append(round(optimisation_step(loss, optimizer, step, accelerator.backward), 5))
                if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                    save(step + 1)
                if callback is not None:
                    try:
                        callback(step, losses[-1])
                    except BaseException:
                        save(step + 1)
                        raise
        return accelerator.unwrap_model(c_embedder), adapter.state_dict(), losses
    finally:
        adapter.remove()


class _ParameterHolder(torch.nn.Module):
    """Exposes just the adapter's weights as a module state dict, so checkpoints hold LoRA only."""

    def __init__(self, adapter: LoraAdapter):
        super().__init__()
        self.adapter = adapter

    def state_dict(self, *args, **kwargs):
        return self.adapter.state_dict()

    def load_state_dict(self, state, strict: bool = True):
        self.adapter.load_state_dict(state)
