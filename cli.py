"""Command line: `python -m protagonist <command> …`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EMBEDDED_MODELS = ("tiny-sdxl", "tiny-flux")
NOT_YET = {
    "chosen-one": "The Chosen One (issue 4)",
    "oneactor": "OneActor (issue 5)",
    "dsd": "Diffusion Self-Distillation (issue 6)",
}


def load_model(name: str, device: str):
    """An embedded model by name, or a hub id / diffusers folder / single file."""
    from .core import tiny_models
    from .core.backends.loading import load_backend

    if name == "tiny-sdxl":
        return tiny_models.tiny_sdxl(0).to(device=device)
    if name == "tiny-flux":
        return tiny_models.tiny_flux(0).to(device=device)
    return load_backend(name, device=device)


def run_sample(args) -> int:
    """Plain sampling: `count` seeded images of one prompt, saved with a contact sheet."""
    from .core.images import contact_sheet, save_png, to_pil
    from .core.proposals import ProposalSettings, generate_proposals

    backend = load_model(args.model, args.device)
    settings = ProposalSettings(count=args.count, seed=args.seed, steps=args.steps, cfg=args.cfg,
                                sampler=args.sampler, height=args.size, width=args.size, batch_size=args.batch_size)
    result = generate_proposals(backend, args.prompt, args.negative, settings)
    out = Path(args.out)
    for image, seed in zip(result.images, result.seeds):
        save_png(to_pil(image), out / f"seed{seed:06d}.png")
    sheet = save_png(contact_sheet(result.images, labels=[str(s) for s in result.seeds], scale=args.sheet_scale),
                     out / "contact_sheet.png")
    logging.info("wrote %d images and %s", len(result.seeds), sheet)
    return 0


def not_yet(name: str):
    def run(args) -> int:
        logging.error("%s is not implemented yet in this version; only `sample` runs today.", NOT_YET[name])
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protagonist", description="The same character across many images.")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="plain sampling of one prompt (the baseline), with a contact sheet")
    sample.add_argument("--model", default="tiny-sdxl",
                        help=f"embedded {EMBEDDED_MODELS}, a hub id, a diffusers folder or a .safetensors file")
    sample.add_argument("--prompt", default="a photo of a blob on the beach")
    sample.add_argument("--negative", default="")
    sample.add_argument("--count", type=int, default=8)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=int, default=20)
    sample.add_argument("--cfg", type=float, default=5.0)
    sample.add_argument("--sampler", default="euler", choices=["euler", "dpmpp_2m"])
    sample.add_argument("--size", type=int, default=32, help="image height and width in pixels")
    sample.add_argument("--batch-size", type=int, default=8)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--sheet-scale", type=int, default=4, help="pixel zoom of the contact sheet")
    sample.add_argument("--out", default="out/sample")
    sample.set_defaults(run=run_sample)
    for name in NOT_YET:
        stub = commands.add_parser(name, help=f"{NOT_YET[name]} — not implemented yet")
        stub.set_defaults(run=not_yet(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
