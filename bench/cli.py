"""`python -m protagonist.bench`: methods side by side on one model, characters, prompts and seeds."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..cli import load_model
from ..core.checkpoint import atomic_write_text
from .harness import DEFAULT_PROMPTS, PlainSampling, SamplingSettings, read_characters, run_method
from .methods.chosen_one import ChosenOneMethod, PureClusterCeiling
from .methods.oneactor import NamedOffsetCeiling, OneActorMethod, OneActorRecipe
from .methods.reference import NamedIdentity
from .overrides import parse_overrides
from .report import markdown_table, table_row, write_contact_sheet
from .scoring import score

# Each factory gets the embedder, the output folder (for the methods' run directories) and --set overrides.
METHODS = {
    "plain": lambda embedder, out, sets: PlainSampling(),
    "named-identity": lambda embedder, out, sets: NamedIdentity(),
    "chosen-one-paper": lambda embedder, out, sets: ChosenOneMethod("paper", embedder, out / "runs", overrides=sets),
    "chosen-one-fast": lambda embedder, out, sets: ChosenOneMethod("fast", embedder, out / "runs", overrides=sets),
    "chosen-one-fast-pure-cluster": lambda embedder, out, sets: PureClusterCeiling("fast", overrides=sets),
    "oneactor": lambda embedder, out, sets: OneActorMethod(overrides=sets, embedder=embedder),
    # The same recipe without the auxiliary term (η2 = 0): guided sampling at plain CFG's cost.
    "oneactor-no-aux": lambda embedder, out, sets: OneActorMethod(
        "oneactor-no-aux", recipe=OneActorRecipe(guidance=replace(OneActorRecipe().guidance, eta_aux=0.0)),
        overrides=sets, embedder=embedder),
    # The ceiling of OneActor's mechanism: the fully named prompt's class-word offset, no tuning.
    "oneactor-named-offset": lambda embedder, out, sets: NamedOffsetCeiling(overrides=sets),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protagonist.bench", description=__doc__)
    parser.add_argument("--model", default="sprite-sdxl", help="sprite-sdxl, sprite-flux, or any --model of the CLI")
    parser.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="one character per line: subject | context | …")
    parser.add_argument("--methods", default="plain", help=f"comma-separated, from {sorted(METHODS)}")
    parser.add_argument("--seed", type=int, default=1_000_000, help="base seed; image k of character c: seed+1000c+k")
    parser.add_argument("--characters", type=int, default=0, help="use only the first N characters (0 = all)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--sampler", default="dpmpp_2m", choices=["euler", "dpmpp_2m"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grids", type=int, default=0,
                        help="also score N 2×2 grid prompts (FLUX: the grid ability DSD mines)")
    parser.add_argument("--grid-cfg", type=float, default=None,
                        help="CFG of the grid prompts (default: --cfg); the FLUX sprite model's grids agree more "
                             "at 1.5, where CFG 3 over-saturates their colours")
    parser.add_argument("--grid-shift", type=float, default=None,
                        help="flow shift of the grid prompts' sampling schedule (FLUX; default: the model's), as "
                             "FLUX samples an image of more tokens at a higher shift (ComfyUI's ModelSamplingFlux)")
    parser.add_argument("--set", action="append", default=[], metavar="METHOD:FIELD=VALUE",
                        help="override a method's setting, e.g. oneactor:tuning.lr=1e-3 (repeatable)")
    parser.add_argument("--out", default="out/bench")
    return parser


def grid_report(backend, args, settings, oracle, out: Path) -> str:
    from ..core.images import contact_sheet, save_png
    from .grids import panel_reliance, run_grids, score_grids

    grid_cfg = settings.cfg if args.grid_cfg is None else args.grid_cfg
    grid_shift = settings.shift if args.grid_shift is None else args.grid_shift
    grid_settings = replace(settings, cfg=grid_cfg, shift=grid_shift)
    images, _, contexts = run_grids(backend, args.grids, args.seed, grid_settings)
    scores = score_grids(images, contexts, oracle)
    save_png(contact_sheet(images[:16], columns=4, scale=2), out / "grids_contact_sheet.png")
    reliance = ", ".join(f"σ {sigma:g}: {ratio:.2f}" for sigma, ratio in panel_reliance(backend).items())
    shift = "" if grid_settings.shift is None else f", flow shift {grid_settings.shift:g}"
    return (f"grid prompts: {scores.grids} at CFG {grid_cfg:g}{shift}; "
            f"one identity in all four panels: {scores.consistent:.1%}; "
            f"panel validity {scores.panel_validity:.1%}; panel conformity {scores.panel_conformity:.1%}\n"
            f"readable panels 2–4 agreeing with a readable first panel ({' '.join(scores.panel_agreement)}): "
            f"{' '.join(f'{share:.0%}' for share in scores.panel_agreement.values())}\n"
            f"panel reliance (a panel's x0 error with the other panels another character ÷ the same one): "
            f"{reliance}\n")


def main(argv: list[str] | None = None) -> int:
    from ..sprites.embedder import load_embedder
    from ..sprites.oracle import Oracle

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    characters = read_characters(args.prompts)[: args.characters or None]
    backend = load_model(args.model, args.device)
    settings = SamplingSettings(steps=args.steps, cfg=args.cfg, sampler=args.sampler)
    oracle, embedder = Oracle.load(), load_embedder()
    out, overrides = Path(args.out), parse_overrides(args.set)
    unknown = set(overrides) - set(args.methods.split(","))
    if unknown:
        raise SystemExit(f"--set names {sorted(unknown)}, which are not among --methods {args.methods}")
    rows, results = [], {}
    for name in args.methods.split(","):
        run = run_method(METHODS[name](embedder, out, overrides.get(name, {})), backend, characters, args.seed,
                         settings)
        scores = score(run, oracle, embedder)
        rows.append(table_row(run, scores))
        write_contact_sheet(run, out, columns=max(len(c.contexts) for c in characters))
        results[name] = {"scores": asdict(scores), "tuning": asdict(run.tuning), "generation": asdict(run.generation),
                         "plain_beside": asdict(run.plain_beside) if run.plain_beside else None}
    table = markdown_table(rows)
    if args.grids:
        table += "\n" + grid_report(backend, args, settings, oracle, out)
    header = (f"model `{args.model}`, {len(characters)} characters × {len(characters[0].contexts)} prompts, "
              f"{args.steps} steps, CFG {args.cfg}, {args.sampler}, base seed {args.seed}, "
              f"{torch.get_num_threads()} CPU threads\n\n")
    atomic_write_text(header + table, out / "results.md")
    atomic_write_text(json.dumps(results, indent=1, default=str), out / "results.json")
    print(header + table)
    return 0
