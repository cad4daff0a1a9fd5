"""Model cards of the sprite models: what a training run did and the command that repeats it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .captions import MAX_MENTIONED, MENTION_PROBABILITY
from .models import FLUX_FLOW_SHIFT


def write_card(folder: Path, family: str, args, vae_losses, losses, stats: dict, seconds: dict, size: int):
    lines = [
        f"# Sprite-world {family.upper()}-architecture model", "",
        "Trained from scratch on procedurally rendered sprites (`protagonist.sprites`): random identities",
        "(shape, colour, pattern, eyes, accessory) in random contexts (background, position), with captions",
        "that name the context and sometimes up to two identity attributes; 10 % empty captions for CFG."
        + (f" Every {args.grid_every}-th step is a batch of 2×2 grids of one identity." if args.grid_every else ""),
        "", f"* seed {args.seed}; VAE {args.vae_steps} steps × {args.batch}; "
            f"denoiser {_denoiser_steps(args)} × {args.batch}",
        f"* final VAE loss {np.mean(vae_losses[-100:]):.4f}; final denoiser loss {np.mean(losses[-200:]):.4f}",
        f"* latent statistics before standardisation: {stats}",
        f"* training time: VAE {seconds['vae']:.0f} s, denoiser {seconds['denoiser']:.0f} s on "
        f"{torch.get_num_threads()} CPU threads (wall time, with other jobs sharing the 2 cores at times)",
        f"* weights: {size / 1e6:.1f} MB (float16 safetensors)",
        *([f"* loss weight {args.sprite_weight} on the characters' pixels"] if args.sprite_weight != 1.0 else []),
        *([f"* flow shift {FLUX_FLOW_SHIFT} for {_set_by_model_shift(args)}"] if family == "flux" else []),
        *_training_lines(args),
        "", f"Reproduce: `python -m protagonist.sprites.train_models {family} --steps {args.steps} "
            f"--vae-steps {args.vae_steps} {_stop_flag(args)}--threads {args.threads} {_recipe_flags(args)}`",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def _stopped_early(args) -> bool:
    return args.stop_after not in (None, args.steps)


def _denoiser_steps(args) -> str:
    if not _stopped_early(args):
        return f"{args.steps} steps"
    return f"{args.stop_after} steps of a {args.steps}-step learning-rate schedule (stopped early)"


def _stop_flag(args) -> str:
    return f"--stop-after {args.stop_after} " if _stopped_early(args) else ""


def _transformer_flags(args) -> str:
    shape = args.new_transformer
    flags = f"--new-transformer {','.join(map(str, shape))} --init-seed {args.init_seed} " if shape else ""
    return flags + (f"--deepen {args.deepen} " if args.deepen else "")


def _recipe_flags(args) -> str:
    """The command-line flags that shape a training run, as a card's reproduce line needs them."""
    return (f"--lr {args.lr} --ema {args.ema} --grid-every {args.grid_every} --sprite-weight {args.sprite_weight} "
            f"--hide-modifiers {args.hide_modifiers} --fold-modifiers {args.fold_modifiers} "
            f"--prenominal {args.prenominal} --held-panel {args.held_panel} "
            + (f"--held-layout {args.held_layout} " if args.held_layout != "one" else "")
            + (f"--grid-shift {args.grid_shift} " if args.grid_shift else "")
            + (f"--single-shift {args.single_shift} " if args.single_shift else "")
            + (f"--input-perturbation {args.input_perturbation} " if args.input_perturbation else "")
            + f"--min-snr {args.min_snr} --seed {args.seed}")


def _recipe_clauses(args) -> str:
    """The recipe's caption, grid and noise options, as both cards describe them."""
    return ((f", the adjectives before the class word hidden from the denoiser in {args.hide_modifiers:.0%} of "
             "captions (`hide_modifiers`)" if args.hide_modifiers else "")
            + (f", the adjectives before the class word folded into its state in {args.fold_modifiers:.0%} of "
               "captions (`fold_modifiers`)" if args.fold_modifiers else "")
            + (_held_clause(args) if args.held_panel else "")
            + (f", min-SNR-γ loss weighting with γ = {args.min_snr:g} (`min_snr_weights`)" if args.min_snr else "")
            + (f", the grids' training noise levels drawn at flow shift {args.grid_shift:g}"
               if args.grid_shift else "")
            + (f", the single images' training noise levels drawn at flow shift {args.single_shift:g}"
               if args.single_shift else "")
            + (f", the denoiser's input noised with {args.input_perturbation:g}× extra noise the target leaves out "
               "(input perturbation)" if args.input_perturbation else ""))


def _held_clause(args) -> str:
    if args.held_layout == "many":
        return (f", one to three panels noised at their own lower level and left out of the loss in "
                f"{args.held_panel:.0%} of the grids (`held_panels_noise`)")
    return (f", one panel held almost clean and left out of the loss in {args.held_panel:.0%} of the grids "
            "(`held_panel_noise`)")


def _training_lines(args) -> list[str]:
    """What a from-scratch card says about the denoiser's recipe beyond the step counts."""
    return [f"* learning rate {args.lr}, EMA decay {args.ema}; eyes and accessory as adjectives before the class "
            f"word in {args.prenominal:.0%} of the captions that name them" + _recipe_clauses(args)]


def _stage_title(args) -> str:
    parts = ["the VAE taught to code 2×2 grids as their four panels"] if args.vae_grid_steps else []
    if args.new_transformer:
        heads, double_blocks, single_blocks = args.new_transformer
        parts.append(f"a new transformer of width {32 * heads} ({double_blocks} double + {single_blocks} single "
                     "blocks) trained from scratch on the earlier stages' VAE and text encoders")
    if args.deepen:
        parts.append(f"{args.deepen} single blocks added to the transformer, each starting as the identity")
    if args.sprite_weight != 1.0:
        parts.append(f"the characters' pixels weighted {args.sprite_weight:g}×")
    if args.hide_modifiers or args.fold_modifiers:
        parts.append("the class word carries its adjectives")
    if args.min_snr:
        parts.append(f"min-SNR-{args.min_snr:g} loss weighting")
    if args.grid_shift:
        parts.append(f"grids trained at flow shift {args.grid_shift:g}")
    if args.single_shift:
        parts.append(f"single images trained at flow shift {args.single_shift:g}")
    if args.input_perturbation:
        parts.append(f"input perturbation {args.input_perturbation:g}")
    return "; ".join(parts or ["more training"])


def _set_by_model_shift(args) -> str:
    """What the model's own flow shift still sets: sampling, and the training noise levels no flag moved."""
    if args.single_shift:
        grids_unmoved = args.grid_every and not args.grid_shift
        return "the grids' training noise levels and sampling" if grids_unmoved else "sampling"
    levels = "the single images' training noise levels" if args.grid_shift else "training noise levels"
    return f"{levels} and sampling"


def write_finetune_card(folder: Path, previous_card: str, args, losses, seconds: float, size: int,
                        vae_seconds: float = 0.0):
    stage = previous_card.count("## Stage") + 2
    lines = [
        previous_card.rstrip(), "", f"## Stage {stage}: {_stage_title(args)}", "",
        f"Captions name identity attributes with probability {MENTION_PROBABILITY} (one to {MAX_MENTIONED} of "
        f"them), eyes and accessory as adjectives before the class word (\"a one eyed hatted red blob\") in "
        f"{args.prenominal:.0%} of them.",
        f"* {_denoiser_steps(args)} × {args.batch}, learning rate {args.lr}, EMA decay {args.ema} "
        "(the EMA weights are saved)"
        + (f", one batch of grids every {args.grid_every} steps" if args.grid_every else "")
        + (f", loss weight {args.sprite_weight} on the characters' pixels" if args.sprite_weight != 1.0 else "")
        + _recipe_clauses(args),
        *([f"* flow shift {FLUX_FLOW_SHIFT} for {_set_by_model_shift(args)} (ComfyUI's FLUX default)"]
          if args.family == "flux" else []),
        *([f"* first the VAE: {args.vae_grid_steps} steps teaching it to code 2×2 grids as their four panels "
           f"(`finetune_vae_on_grids`), {vae_seconds:.0f} s"] if args.vae_grid_steps else []),
        f"* final loss {np.mean(losses[-200:]):.4f}; {seconds:.0f} s on {torch.get_num_threads()} CPU threads",
        f"* weights: {size / 1e6:.1f} MB (float16 safetensors)",
        "", "Reproduce (after the stages above): "
            f"`python -m protagonist.sprites.train_models {args.family} --finetune-from <previous stage folder> "
            f"--steps {args.steps} {_stop_flag(args)}--vae-grid-steps {args.vae_grid_steps} "
            f"{_transformer_flags(args)}{_recipe_flags(args)}`",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
