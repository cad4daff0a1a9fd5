"""Train the sprite world's SDXL- or FLUX-architecture model from scratch on rendered sprites.

    python -m protagonist.sprites.train_models sdxl [--steps N] [--run-dir runs/sprite-sdxl]

Two phases, each resumable from its run directory: (1) the VAE, whose latents are then standardised
to the family's fixed ComfyUI latent scale; (2) the denoiser and text encoders, with 10 % empty
captions for classifier-free guidance. The result is saved as a diffusers pipeline (float16 weights)
with a model card.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from ..core.backends.loading import backend_from_components, pipeline_class
from ..core.checkpoint import atomic_folder, atomic_write_json, load_checkpoint, save_checkpoint
from ..core.training import denoising_error
from .attributes import CLASS_WORD
from .captions import PRENOMINAL_PROBABILITY
from .held_panels import HELD_LAYOUTS, held_noise
from .model_cards import write_card, write_finetune_card
from .models import (FLUX_DIR, FLUX_TRANSFORMER_SHAPE, SDXL_DIR, build_flux, build_sdxl, deepen_single_stack,
                     flux_transformer, load_for_finetuning)
from .training_data import Clock, sprite_batch
from .vae_training import finetune_vae_on_grids, standardise_latents, train_vae

log = logging.getLogger(__name__)


def denoiser_loss(backend, images, captions, generator, drop_rate: float = 0.1,
                  pixel_weights: torch.Tensor | None = None, hide_rate: float = 0.0,
                  fold_rate: float = 0.0, held_rate: float = 0.0, min_snr: float | None = None,
                  held_layout: str = "one", sigma_shift: float | None = None,
                  input_perturbation: float = 0.0) -> torch.Tensor:
    """Mean denoising error; `pixel_weights` [B, 1, H, W] weight it where they fall in latent space;
    `hide_rate`: see :func:`hide_modifiers`; `fold_rate`: see :func:`fold_modifiers`; `held_rate` (grids
    only): see :func:`held_noise`; `min_snr`: see :func:`~protagonist.core.training.min_snr_weights`;
    `sigma_shift`, `input_perturbation`: see :func:`~protagonist.core.training.denoising_error`."""
    keep = torch.rand(len(captions), generator=generator) >= drop_rate
    prompts = [c if k else "" for c, k in zip(captions, keep.tolist())]
    size = tuple(images.shape[-2:])
    with torch.no_grad():
        latents = backend.encode_images(images)
    cond = backend.encode_prompts(prompts, image_size=size)
    if hide_rate > 0:
        cond = hide_modifiers(backend, cond, prompts, hide_rate, generator)
    if fold_rate > 0:
        cond = fold_modifiers(backend, cond, prompts, fold_rate, generator)
    noise_scale = keep = None
    if held_rate > 0:
        noise_scale, keep = held_noise(held_layout)(latents.shape, held_rate, generator)
    error = denoising_error(backend, latents, cond, generator, noise_scale=noise_scale, min_snr=min_snr,
                            sigma_shift=sigma_shift, input_perturbation=input_perturbation)
    if pixel_weights is None and keep is None:
        return error.mean()
    weights = (torch.ones_like(latents[:, :1]) if pixel_weights is None
               else torch.nn.functional.adaptive_avg_pool2d(pixel_weights, latents.shape[-2:]))
    weights = weights if keep is None else weights * keep.to(weights)
    return (error * weights).sum() / (weights.sum() * error.shape[1])


def modifier_positions(tokenizer, prompt: str) -> range:
    """Token positions of the words between "a" and the class word ("a one eyed red blob …" → "one eyed red")."""
    ids = tokenizer(prompt)["input_ids"]
    class_id = tokenizer.convert_tokens_to_ids(CLASS_WORD + "</w>")
    if not prompt.startswith("a ") or class_id not in ids:
        return range(0)
    return range(2, ids.index(class_id))


def hide_modifiers(backend, cond, prompts: list[str], rate: float, generator: torch.Generator):
    """With probability `rate` per caption, the denoiser sees its identity adjectives' encoder states replaced by
    the start token's (a constant). What the adjectives said then reaches it only through the states of the
    words after them (the class word first), as CLIP's nouns carry their modifiers in real SDXL; the word
    offsets of OneActor act on exactly that state."""
    if backend.family != "sdxl":
        raise ValueError("hiding modifiers needs one tokenization for every encoder (SDXL); FLUX's T5 differs")
    tokenizer = next(iter(backend.tokenizers.values()))
    hidden = torch.zeros(cond.embeds.shape[:2], dtype=torch.bool)
    for b, prompt in enumerate(prompts):
        if torch.rand((), generator=generator) < rate:
            hidden[b, list(modifier_positions(tokenizer, prompt))] = True
    mask = hidden.to(cond.embeds.device)[..., None]
    return cond.replace(embeds=torch.where(mask, cond.embeds[:, :1], cond.embeds))


def strip_modifiers(prompt: str) -> str:
    """The prompt without the words between "a" and the class word ("a one eyed blob in …" → "a blob in …")."""
    return f"a {CLASS_WORD}{prompt.partition(f' {CLASS_WORD}')[2]}"


def fold_modifiers(backend, cond, prompts: list[str], rate: float, generator: torch.Generator):
    """With probability `rate` per caption that has adjectives before the class word, the denoiser sees the
    caption without them ("a blob in a forest, …", encoded alone) except for the class word's state, which
    comes from the full caption. That is exactly what OneActor's word offset can give it at sampling time —
    one changed state on the class word — so the text encoders learn to fold the adjectives into that state
    and the denoiser to read them there, as it must from a CLIP noun in real SDXL. (:func:`hide_modifiers`
    leaves them readable from the states of every word after the class word, which an offset on the class
    word does not reach.)"""
    if backend.family != "sdxl":
        raise ValueError("folding modifiers needs one tokenization for every encoder (SDXL); "
                         "FLUX's T5 differs")
    tokenizer = next(iter(backend.tokenizers.values()))
    drawn = [bool(torch.rand((), generator=generator) < rate) for _ in prompts]
    spans = {b: modifier_positions(tokenizer, p) for b, p in enumerate(prompts) if drawn[b]}
    folded = [b for b, span in spans.items() if span]
    if not folded:
        return cond
    bare = backend.encode_prompts([strip_modifiers(prompts[b]) for b in folded])
    embeds, pooled = list(cond.embeds.unbind(0)), list(cond.pooled.unbind(0))
    for row, b in enumerate(folded):
        at = spans[b].start  # where the class word stands once the modifiers are gone
        class_state = cond.embeds[b, spans[b].stop][None]
        embeds[b] = torch.cat([bare.embeds[row, :at], class_state, bare.embeds[row, at + 1:]])
        pooled[b] = bare.pooled[row]
    return cond.replace(embeds=torch.stack(embeds), pooled=torch.stack(pooled))


def sprite_weights(masks: torch.Tensor, sprite_weight: float) -> torch.Tensor | None:
    """Per-pixel loss weights: `sprite_weight` on the character, 1 on the background (None when 1)."""
    return None if sprite_weight == 1.0 else 1.0 + (sprite_weight - 1.0) * masks


def exponential_average(modules: dict, decay: float):
    """An EMA copy of `modules` (torch's AveragedModel); averages out the noise of late training steps."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(torch.nn.ModuleDict(modules), multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def train_denoiser(backend, steps: int, batch: int, run_dir: Path, seed: int, grid_every: int = 0,
                   lr: float = 4e-4, ema_decay: float = 0.0,
                   sprite_weight: float = 1.0, hide_rate: float = 0.0,
                   prenominal_rate: float = PRENOMINAL_PROBABILITY, fold_rate: float = 0.0,
                   held_rate: float = 0.0, min_snr: float | None = None,
                   held_layout: str = "one", stop_after: int | None = None,
                   grid_shift: float | None = None, input_perturbation: float = 0.0,
                   single_shift: float | None = None) -> tuple[list[float], float]:
    """Denoiser + text encoders; every `grid_every`-th step is a batch of 2×2 grids (0 = never).

    With `ema_decay` > 0 the modules end with the exponential moving average of their weights;
    `sprite_weight` > 1 weights the loss on the characters' pixels over the background's. `stop_after`
    ends the run early on the learning-rate schedule of `steps`, so that a long run can be taken in parts
    (each part resumes from the last) and any part reproduced. `grid_shift` (FLUX) draws the grids' noise
    levels at that flow shift: a grid has four times a sprite's tokens, so its panels' shared character is
    decided at higher noise, as FLUX's resolution-dependent shift has it. `single_shift` (FLUX) does the same
    for the single images while sampling keeps the model's shift: higher trains more at the heavy noise where
    shape and colour are decided, lower more where a pattern's marks are drawn. `input_perturbation`: see
    :func:`~protagonist.core.training.denoising_error`.
    """
    end = min(steps, stop_after or steps)
    modules = {"denoiser": backend.denoiser, **backend.text_encoders}
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = exponential_average(modules, ema_decay) if ema_decay else None
    saved = {**modules, **({"ema": ema} if ema else {})}
    state = load_checkpoint(run_dir, saved, optimizer) or {"step": 0, "extra": {"losses": []}}
    if state["step"] > end:
        raise ValueError(f"{run_dir} has already trained {state['step']} steps, past --stop-after {end}; "
                         "give a new --run-dir to stop earlier, or a --stop-after of at least that")
    losses, clock = state["extra"]["losses"], Clock(state["extra"].get("seconds", 0.0))
    for module in modules.values():
        module.train()
    for step in range(state["step"], end):
        grids = grid_every > 0 and step % grid_every == grid_every - 1
        rng = np.random.default_rng(seed * 100003 + step)
        images, captions, masks = sprite_batch(rng, batch // 4 if grids else batch, grids, prenominal_rate)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 200) * (0.1 + 0.9 * (1 - step / steps))
        loss = denoiser_loss(backend, images, captions, torch.Generator().manual_seed(seed + step),
                             pixel_weights=sprite_weights(masks, sprite_weight), hide_rate=hide_rate,
                             fold_rate=fold_rate, held_rate=held_rate if grids else 0.0, min_snr=min_snr,
                             held_layout=held_layout, sigma_shift=grid_shift if grids else single_shift,
                             input_perturbation=input_perturbation)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            ema.update_parameters(torch.nn.ModuleDict(modules))
        losses.append(round(loss.item(), 5))
        if (step + 1) % 200 == 0 or step + 1 == end:
            save_checkpoint(run_dir, step + 1, saved, optimizer, extra={"losses": losses, "seconds": clock.seconds()})
            log.info("denoiser step %d/%d loss %.4f", step + 1, steps, np.mean(losses[-200:]))
    if ema is not None:
        torch.nn.ModuleDict(modules).load_state_dict(ema.module.state_dict())
    for module in modules.values():
        module.eval()
    return losses, clock.seconds()


def save_pipeline(family: str, parts: dict, folder: Path) -> int:
    """Save as a diffusers pipeline with float16 weights; returns the bytes written."""
    pipe = pipeline_class(family)(**parts)
    pipe.to(torch.float16)
    with atomic_folder(folder) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        _forget_source_paths(tmp)
    pipe.to(torch.float32)
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors"))


def _forget_source_paths(folder: Path) -> None:
    """Drop the `_name_or_path` a fine-tuned model's configs inherit: a path on the training machine."""
    import json

    for config in folder.rglob("config.json"):
        values = json.loads(config.read_text())
        if values.pop("_name_or_path", None) is not None:
            config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _shape_text(shape: tuple[int, int, int]) -> str:
    return ",".join(map(str, shape))


def transformer_shape(text: str) -> tuple[int, int, int]:
    """`--new-transformer`'s "HEADS,DOUBLE,SINGLE" → three positive integers."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected HEADS,DOUBLE,SINGLE as three positive integers (for example "
                                         f"{_shape_text(FLUX_TRANSFORMER_SHAPE)}), got {text!r}")
    return shape


def finetune(args, run_dir: Path, folder: Path) -> int:
    source = Path(args.finetune_from)
    previous_card = (source / "MODEL_CARD.md").read_text()
    parts = load_for_finetuning(args.family, source)
    if args.new_transformer:
        torch.manual_seed(args.init_seed)
        parts["transformer"] = flux_transformer(args.new_transformer)
    if args.deepen:
        parts["transformer"] = deepen_single_stack(parts["transformer"], args.deepen)
    vae_seconds = 0.0
    if args.vae_grid_steps:
        _, vae_seconds = finetune_vae_on_grids(parts["vae"], args.vae_grid_steps, args.batch, run_dir / "vae-grids",
                                               args.seed)
    parts["vae"].requires_grad_(False)
    backend = backend_from_components(args.family, parts)
    losses, seconds = train_denoiser(backend, args.steps, args.batch, run_dir / "finetune", args.seed,
                                     args.grid_every, lr=args.lr, ema_decay=args.ema,
                                     sprite_weight=args.sprite_weight, hide_rate=args.hide_modifiers,
                                     prenominal_rate=args.prenominal, fold_rate=args.fold_modifiers,
                                     held_rate=args.held_panel, min_snr=args.min_snr or None,
                                     held_layout=args.held_layout, stop_after=args.stop_after,
                                     grid_shift=args.grid_shift, input_perturbation=args.input_perturbation,
                                     single_shift=args.single_shift)
    size = save_pipeline(args.family, parts, folder)
    write_finetune_card(folder, previous_card, args, losses, seconds, size, vae_seconds)
    atomic_write_json({"losses": losses, "seconds": seconds}, run_dir / "finetune-curves.json")
    log.info("saved %s (%.1f MB)", folder, size / 1e6)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family", choices=["sdxl", "flux"])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end the denoiser after N of its --steps (the learning rate still follows --steps) "
                             "and save; the same command with a larger N resumes from the run directory")
    parser.add_argument("--vae-steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grid-every", type=int, default=None, help="FLUX default 3, SDXL 0 (no grids)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--lr", type=float, default=4e-4)
    parser.add_argument("--sprite-weight", type=float, default=1.0,
                        help="loss weight of the characters' pixels relative to the background's (1 = plain loss)")
    parser.add_argument("--hide-modifiers", type=float, default=0.0,
                        help="share of captions whose words before the class word the denoiser cannot see "
                             "(their meaning then reaches it through the class word's state only)")
    parser.add_argument("--fold-modifiers", type=float, default=0.0,
                        help="share of captions the denoiser sees without the words before the class "
                             "word, except folded into the class word's state (what OneActor's word "
                             "offset acts on)")
    parser.add_argument("--prenominal", type=float, default=PRENOMINAL_PROBABILITY,
                        help="share of captions naming eyes and accessory as adjectives before the class "
                             "word (\"a one eyed hatted blob\") rather than after it "
                             "(\"a blob with one eye and a hat\")")
    parser.add_argument("--held-panel", type=float, default=0.0,
                        help="share of training grids with one panel noised almost clean and left out of the "
                             "loss, so that copying its character to the other panels pays")
    parser.add_argument("--held-layout", choices=HELD_LAYOUTS, default="one",
                        help="one: a single panel held almost clean; many: one to three panels, each noised at "
                             "its own level up to 0.9 × the step's")
    parser.add_argument("--min-snr", type=float, default=0.0,
                        help="min-SNR-γ loss weighting, sdxl only (0 = off; 5 is the paper's γ): the nearly clean "
                             "noise levels count less, the levels where a character's look is decided more")
    parser.add_argument("--grid-shift", type=float, default=None,
                        help="flux: the flow shift the grids' training noise levels are drawn at (default: the "
                             "model's, 3.16); a grid has four times a sprite's tokens, and FLUX trains and samples "
                             "larger images at a higher shift")
    parser.add_argument("--single-shift", type=float, default=None,
                        help="flux: the flow shift the single images' training noise levels are drawn at (default: "
                             "the model's, 3.16; sampling keeps it): a higher one trains more often at the heavy "
                             "noise where shape and colour are decided, a lower one where a pattern's marks are "
                             "drawn")
    parser.add_argument("--input-perturbation", type=float, default=0.0, metavar="GAMMA",
                        help="noise the denoiser's input with noise + GAMMA × extra noise but keep the target "
                             "(Ning et al. 2023; 0.1 is the paper's): sampling feeds the denoiser its own earlier "
                             "errors, which training on exactly noised data never shows it")
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the saved weights (0 = no EMA)")
    parser.add_argument("--vae-grid-steps", type=int, default=0,
                        help="with --finetune-from: first teach the VAE to code 2×2 grids as their four panels")
    parser.add_argument("--new-transformer", type=transformer_shape, default=None, metavar="HEADS,DOUBLE,SINGLE",
                        help="flux, with --finetune-from: train a new transformer of this shape (attention heads of "
                             "width 32, double blocks, single blocks) from scratch on the source's VAE and text "
                             f"encoders; a from-scratch run's is {_shape_text(FLUX_TRANSFORMER_SHAPE)}, the shipped "
                             "stage 13's 8,2,6")
    parser.add_argument("--deepen", type=int, default=0, metavar="N",
                        help="flux, with --finetune-from: add N single blocks to the transformer, each starting as "
                             "the identity (the grown model first predicts what the source did)")
    parser.add_argument("--init-seed", type=int, default=0, help="seed of the new transformer's initial weights")
    parser.add_argument("--finetune-from", default=None,
                        help="a trained sprite model folder: keep its VAE, carry its text encoders onto today's "
                             "vocabulary and train the denoiser further")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if (args.hide_modifiers or args.fold_modifiers) and args.family != "sdxl":
        parser.error("--hide-modifiers and --fold-modifiers work for sdxl only: FLUX's T5 tokenizes the "
                     "captions differently")
    if args.min_snr and args.family != "sdxl":
        parser.error("--min-snr works for sdxl only: it is defined here for epsilon prediction; FLUX predicts "
                     "a flow")
    if args.new_transformer and (args.family != "flux" or not args.finetune_from):
        parser.error("--new-transformer needs flux and --finetune-from (the VAE and text encoders it trains on)")
    if args.deepen and (args.family != "flux" or not args.finetune_from or args.deepen < 0):
        parser.error(f"--deepen needs flux, --finetune-from and a positive block count, got {args.deepen}")
    if args.stop_after is not None and not 0 < args.stop_after <= args.steps:
        parser.error(f"--stop-after must be between 1 and --steps ({args.steps}), got {args.stop_after}")
    for flag, shift in (("--grid-shift", args.grid_shift), ("--single-shift", args.single_shift)):
        if shift is not None and (args.family != "flux" or shift <= 0):
            parser.error(f"{flag} must be positive and works for flux only (a flow schedule), got "
                         f"{shift} for {args.family}")
    if not 0 <= args.input_perturbation < 1:
        parser.error(f"--input-perturbation must be in [0, 1) (0.1 is the paper's), got {args.input_perturbation}")
    if args.min_snr < 0:
        parser.error(f"--min-snr must be positive (or 0 for off), got {args.min_snr}")
    torch.set_num_threads(args.threads)
    args.grid_every = (3 if args.family == "flux" else 0) if args.grid_every is None else args.grid_every
    run_dir = Path(args.run_dir or f"runs/sprite-{args.family}")
    folder = Path(args.out) if args.out else (SDXL_DIR if args.family == "sdxl" else FLUX_DIR)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if args.finetune_from:
        return finetune(args, run_dir, folder)
    parts = build_sdxl(args.seed) if args.family == "sdxl" else build_flux(args.seed)
    backend = backend_from_components(args.family, parts)
    seconds = {}
    vae_losses, seconds["vae"] = train_vae(parts["vae"], args.vae_steps, args.batch, run_dir / "vae", args.seed)
    config = parts["vae"].config
    stats = standardise_latents(parts["vae"], config.scaling_factor, config.shift_factor or 0.0, args.seed)
    losses, seconds["denoiser"] = train_denoiser(backend, args.steps, args.batch, run_dir / "denoiser", args.seed,
                                                 args.grid_every, lr=args.lr, ema_decay=args.ema,
                                                 sprite_weight=args.sprite_weight, hide_rate=args.hide_modifiers,
                                                 prenominal_rate=args.prenominal, fold_rate=args.fold_modifiers,
                                                 held_rate=args.held_panel, min_snr=args.min_snr or None,
                                                 held_layout=args.held_layout, stop_after=args.stop_after,
                                                 grid_shift=args.grid_shift, single_shift=args.single_shift,
                                                 input_perturbation=args.input_perturbation)
    size = save_pipeline(args.family, parts, folder)
    write_card(folder, args.family, args, vae_losses, losses, stats, seconds, size)
    atomic_write_json({"vae_losses": vae_losses, "losses": losses, "seconds": seconds}, run_dir / "curves.json")
    log.info("saved %s (%.1f MB)", folder, size / 1e6)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
