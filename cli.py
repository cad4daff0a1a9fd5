"""Command line: `python -m protagonist <command> …`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EMBEDDED_MODELS = ("sprite-sdxl", "sprite-flux", "tiny-sdxl", "tiny-flux")


def load_model(name: str, device: str):
    """An embedded model by name, or a hub id / diffusers folder / single file."""
    from .core import tiny_models
    from .core.backends.loading import load_backend

    if name in ("sprite-sdxl", "sprite-flux"):
        from .sprites.models import load_sprite_model

        return load_sprite_model(name.split("-")[1], device)
    if name in ("tiny-sdxl", "tiny-flux"):
        backend = tiny_models.tiny_sdxl(0) if name == "tiny-sdxl" else tiny_models.tiny_flux(0)
        return backend if device == "cpu" else backend.to(device=device)
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


def load_embedder(source: str, device: str):
    """`sprite` for the sprite world's stand-in, else a DINOv2 folder or hub id."""
    from .core.embedding import load_dinov2

    if source == "sprite":
        from .sprites.embedder import load_embedder as load_sprite_embedder

        return load_sprite_embedder(device=device)
    return load_dinov2(source, device)


def read_scenes(path: str) -> list[str]:
    from .core.interface import ProtagonistError
    from .core.proposals import scene_lines

    scenes = list(scene_lines(Path(path).read_text()))
    if not scenes:
        raise ProtagonistError(f"{path} has no scenes: write one per line, like 'on a beach'")
    return scenes


def run_chosen_one(args) -> int:
    """The Chosen One loop; writes the run directory, the identity and ComfyUI-loadable exports."""
    from .core.chosen_one.identity_file import export_for_comfyui, save_identity
    from .core.chosen_one.loop import load_round_images
    from .core.chosen_one.loop import run_chosen_one as loop
    from .core.chosen_one.presets import preset
    from .core.embedding import embed_images
    from .core.images import contact_sheet, save_png

    backend = load_model(args.model, args.device)
    embedder = load_embedder(args.dinov2, args.device)
    settings = preset(args.preset, args.prompt, args.init_word, args.identity_prompt, size=(args.size, args.size),
                      seed=args.seed, token_name=f"<{args.name}>",
                      scenes=tuple(read_scenes(args.scenes)) if args.scenes else ())
    out = Path(args.out)
    result = loop(backend, settings, lambda images: embed_images(embedder, images), out / "run")
    if result.identity is None:
        logging.error("no identity was learned (see %s)", out / "run")
        return 1
    save_identity(result.identity, out / f"{args.name}.identity.safetensors", backend.family, args.init_word)
    export_for_comfyui(result.identity, out / f"{args.name}_lora.safetensors", out / f"{args.name}.safetensors",
                       overwrite=True)
    last = len(result.rounds) - 1
    save_png(contact_sheet(load_round_images(out / "run", last), scale=args.sheet_scale), out / "last_round.png")
    logging.info("%s after %d rounds, keeping round %d's identity; prompt with %r",
                 "converged" if result.converged else "stopped", len(result.rounds), result.kept_round,
                 settings.identity_prompt.format(settings.token_name))
    if settings.lora_noisiest_share < 1.0:
        logging.info("draw with the LoRA on the noisiest %.0f %% of the noise levels only, as the preset was "
                     "measured (in ComfyUI: Create Hook LoRA (MO), keyframes of strength 1 at 0 and 0 at %.2f, "
                     "Cond Pair Set Props)",
                     100 * settings.lora_noisiest_share, settings.lora_noisiest_share)
    return 0


def run_oneactor_tune(args) -> int:
    """OneActor tuning: proposals of the prompt (with features), projector tuned on the chosen target."""
    from .core.images import contact_sheet, save_png
    from .core.oneactor.identity import make_identity, save_identity
    from .core.oneactor.tuning import OneActorTuning, ProposalSet, tune_projector
    from .core.proposals import ProposalSettings, generate_proposals

    backend = load_model(args.model, args.device)
    size = (args.size, args.size)
    settings = ProposalSettings(count=args.proposals, seed=args.seed, steps=args.steps, cfg=args.cfg,
                                height=size[0], width=size[1], batch_size=args.proposals)
    proposals = generate_proposals(backend, args.prompt, "", settings,
                                   feature_point=backend.oneactor_feature_point)
    out = Path(args.out)
    save_png(contact_sheet(proposals.images, labels=[str(i) for i in range(args.proposals)], scale=args.sheet_scale),
             out / "proposals.png")
    data = ProposalSet.from_proposals(proposals, args.target, size)
    tuned = tune_projector(backend, data, args.base_word, OneActorTuning(steps=args.tune_steps, seed=args.seed,
                                                                             mirror_target=not args.no_mirror))
    identity = make_identity(tuned.projector, data.features, args.base_word, backend.family)
    path = save_identity(identity, out / "identity.safetensors")
    logging.info("tuned on proposal %d (see %s); identity %s", args.target, out / "proposals.png", path)
    return 0


def run_oneactor_sample(args) -> int:
    """Cluster-guided sampling of prompts with a saved OneActor identity."""
    from .core.images import contact_sheet, save_png
    from .core.oneactor.guidance import ClusterGuidance, draw_identity
    from .core.oneactor.identity import load_identity

    backend = load_model(args.model, args.device)
    identity = load_identity(args.identity, backend)
    settings = ClusterGuidance(args.eta_target, args.eta_aux, args.semantic_scale, args.cluster_fraction, args.cfg)
    seeds = [args.seed + i for i in range(len(args.prompt))]
    images = draw_identity(backend, identity, args.prompt, seeds, settings, (args.size, args.size), args.steps)
    save_png(contact_sheet(images, labels=args.prompt, scale=args.sheet_scale), Path(args.out) / "samples.png")
    return 0


def add_oneactor(commands) -> None:
    oneactor = commands.add_parser("oneactor", help="OneActor: tune a projector on one proposal, then sample")
    steps = oneactor.add_subparsers(dest="step", required=True)
    tune = steps.add_parser("tune", help="proposals of a prompt and projector tuning on the chosen one")
    sample = steps.add_parser("sample", help="cluster-guided sampling with a tuned identity")
    for parser in (tune, sample):
        parser.add_argument("--model", default="sprite-sdxl", help=f"embedded {EMBEDDED_MODELS}, hub id or folder")
        parser.add_argument("--size", type=int, default=32)
        parser.add_argument("--steps", type=int, default=30)
        parser.add_argument("--cfg", type=float, default=5.0)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--sheet-scale", type=int, default=4)
        parser.add_argument("--out", default="out/oneactor")
    tune.add_argument("--prompt", default="a red blob")
    tune.add_argument("--base-word", default="blob")
    tune.add_argument("--proposals", type=int, default=11, help="the target and its auxiliaries")
    tune.add_argument("--target", type=int, default=0, help="index of the proposal to keep (see proposals.png)")
    tune.add_argument("--tune-steps", type=int, default=200)
    tune.add_argument("--no-mirror", action="store_true",
                      help="tune on the target image only, not also on its mirror image (for asymmetric characters)")
    tune.set_defaults(run=run_oneactor_tune)
    sample.add_argument("--identity", required=True, help="identity.safetensors from `oneactor tune`")
    sample.add_argument("--prompt", nargs="+", default=["a blob on a beach, on the left"])
    sample.add_argument("--eta-target", type=float, default=8.0)
    sample.add_argument("--eta-aux", type=float, default=1.0)
    sample.add_argument("--semantic-scale", type=float, default=0.8)
    sample.add_argument("--cluster-fraction", type=float, default=20 / 30)
    sample.set_defaults(run=run_oneactor_sample)


def run_dsd_make_pairs(args) -> int:
    """Grid prompts → grids → filtered pairs, into a resumable pair-dataset folder."""
    from .core.dsd.pairs import PairMining, grid_prompts, mine_pairs
    from .core.embedding import embed_images
    from .core.proposals import ProposalSettings

    judge = None
    if args.judge:  # loaded first: a missing judge fails before the generator is loaded
        from .core.dsd.judge import load_judge

        judge = load_judge(args.judge, args.device, max_new_tokens=args.judge_tokens)
    backend = load_model(args.model, args.device)
    embedder = load_embedder(args.dinov2, args.device)
    prompts = grid_prompts(args.subject, read_scenes(args.scenes), args.grids, seed=args.seed)
    sampling = ProposalSettings(count=1, seed=args.seed, steps=args.steps, cfg=args.cfg, height=2 * args.size,
                                width=2 * args.size)
    summary = mine_pairs(backend, prompts, args.out, lambda images: embed_images(embedder, images),
                         PairMining(threshold=args.threshold, sampling=sampling), judge=judge)
    logging.info("%s", summary)
    return 0


def run_dsd_train(args) -> int:
    from .core.dsd.convert import diffusers_lora, save_trained
    from .core.dsd.training import TwoFrameTraining, train_two_frame

    backend = load_model(args.model, args.device)
    settings = TwoFrameTraining(steps=args.steps, batch_size=args.batch, rank=args.rank, alpha=args.rank,
                                lr=args.lr, side=args.size, seed=args.seed)
    c_embedder, lora, losses = train_two_frame(backend, args.pairs, Path(args.out) / "run", settings)
    path = save_trained(Path(args.out) / "dsd.safetensors", c_embedder, diffusers_lora(lora, settings.alpha),
                        {"rank": str(args.rank), "alpha": str(settings.alpha)})
    logging.info("final loss %.4f; wrote %s", losses[-1], path)
    return 0


def run_dsd_sample(args) -> int:
    from PIL import Image

    from .core.dsd.convert import load_converted, peft_lora
    from .core.dsd.generate import generate_two_frame
    from .core.dsd.guidance import TrueCFG
    from .core.dsd.two_frame import new_c_embedder
    from .core.images import contact_sheet, pil_to_tensor, save_png

    backend = load_model(args.model, args.device)
    parts = load_converted(args.dsd)
    c_embedder = new_c_embedder(backend.image_embedder())
    c_embedder.load_state_dict(parts["c_embedder"])
    reference = pil_to_tensor(Image.open(args.reference))[None]
    lora, alpha = peft_lora(parts["lora"])
    frames = generate_two_frame(backend, c_embedder, lora, args.rank, alpha or float(args.rank),
                                reference.expand(len(args.prompt), -1, -1, -1), args.prompt,
                                [args.seed + i for i in range(len(args.prompt))], args.size, args.steps,
                                TrueCFG(args.image_guidance, args.text_guidance), args.negative)
    save_png(contact_sheet(frames, labels=args.prompt, scale=args.sheet_scale), Path(args.out) / "frames.png")
    return 0


def run_dsd_convert(args) -> int:
    from .core.dsd.convert import convert_dsd

    counts = convert_dsd(args.dsd_transformer, args.flux_transformer, args.out, lora=args.lora)
    logging.info("wrote %s: %s", args.out, counts)
    return 0


def add_dsd(commands) -> None:
    dsd = commands.add_parser("dsd", help="Diffusion Self-Distillation: pairs, two-frame training and sampling")
    steps = dsd.add_subparsers(dest="step", required=True)
    pairs = steps.add_parser("make-pairs", help="mine identity pairs from generated 2x2 grids")
    train = steps.add_parser("train", help="train LoRA + c_embedder on a pair dataset")
    sample = steps.add_parser("sample", help="a new frame of a reference image's subject")
    for parser in (pairs, train, sample):
        parser.add_argument("--model", default="sprite-flux", help=f"embedded {EMBEDDED_MODELS}, hub id or folder")
        parser.add_argument("--size", type=int, default=32, help="frame (panel) side in pixels")
        parser.add_argument("--steps", type=int, default=28)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="cpu")
    pairs.add_argument("--subject", nargs="+", default=["blob"])
    pairs.add_argument("--scenes", required=True, help="a text file, one scene per line")
    pairs.add_argument("--grids", type=int, default=64)
    pairs.add_argument("--cfg", type=float, default=1.0)
    pairs.add_argument("--threshold", type=float, default=0.8)
    pairs.add_argument("--dinov2", default="sprite")
    pairs.add_argument("--judge", default=None,
                       help="a local vision-language model folder or hub id (transformers) that re-checks every "
                            "pair with DSD's three-step reasoning; off by default")
    pairs.add_argument("--judge-tokens", type=int, default=160, help="reply length limit of the judge")
    pairs.add_argument("--out", default="out/dsd-pairs")
    pairs.set_defaults(run=run_dsd_make_pairs)
    train.add_argument("--pairs", required=True)
    train.add_argument("--batch", type=int, default=8)
    train.add_argument("--rank", type=int, default=16)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument("--out", default="out/dsd-train")
    train.set_defaults(run=run_dsd_train)
    sample.add_argument("--dsd", required=True, help="dsd.safetensors from `dsd train` or `dsd convert`")
    sample.add_argument("--reference", required=True, help="an image of the subject")
    sample.add_argument("--prompt", nargs="+", default=["a blob at night, on the left"])
    sample.add_argument("--rank", type=int, default=16)
    sample.add_argument("--image-guidance", type=float, default=1.0,
                        help="true-CFG image scale s_i from the 2nd step (1 with --text-guidance 1 = off, DSD default)")
    sample.add_argument("--text-guidance", type=float, default=1.0, help="true-CFG text scale s_t")
    sample.add_argument("--negative", default="", help="negative prompt of true CFG")
    sample.add_argument("--sheet-scale", type=int, default=4)
    sample.add_argument("--out", default="out/dsd-sample")
    sample.set_defaults(run=run_dsd_sample)
    convert = steps.add_parser("convert", help="extract c_embedder + LoRA + differences from released DSD weights")
    convert.add_argument("--dsd-transformer", required=True, help="the released DSD transformer folder or file")
    convert.add_argument("--flux-transformer", required=True, help="your FLUX.1-dev transformer folder or file")
    convert.add_argument("--lora", default=None, help="the released DSD LoRA file")
    convert.add_argument("--out", default="models/protagonist/dsd.safetensors")
    convert.set_defaults(run=run_dsd_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protagonist", description="The same character across many images.")
    commands = parser.add_subparsers(dest="command", required=True)
    sample = commands.add_parser("sample", help="plain sampling of one prompt (the baseline), with a contact sheet")
    sample.add_argument("--model", default="sprite-sdxl",
                        help=f"embedded {EMBEDDED_MODELS}, a hub id, a diffusers folder or a .safetensors file")
    sample.add_argument("--prompt", default="a photo of a blob on the beach")
    sample.add_argument("--negative", default="")
    sample.add_argument("--count", type=int, default=8)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--steps", type=int, default=30)
    sample.add_argument("--cfg", type=float, default=3.0)
    sample.add_argument("--sampler", default="dpmpp_2m", choices=["euler", "dpmpp_2m"])
    sample.add_argument("--size", type=int, default=32, help="image height and width in pixels")
    sample.add_argument("--batch-size", type=int, default=8)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--sheet-scale", type=int, default=4, help="pixel zoom of the contact sheet")
    sample.add_argument("--out", default="out/sample")
    sample.set_defaults(run=run_sample)
    chosen = commands.add_parser("chosen-one", help="The Chosen One: learn a consistent character from a prompt")
    chosen.add_argument("--model", default="sprite-sdxl",
                        help=f"embedded {EMBEDDED_MODELS}, a hub id, a diffusers folder or a .safetensors file")
    chosen.add_argument("--prompt", default="a red blob")
    chosen.add_argument("--init-word", default="blob", help="a one-token word the new token starts from")
    chosen.add_argument("--identity-prompt", default="a {}", help='how later rounds prompt; "{}" is the token')
    chosen.add_argument("--scenes", help="a text file, one scene per line ('on a beach'): the proposals cycle "
                                         "through them and the training captions repeat them, so the token learns "
                                         "the character rather than a background (default: none, as published)")
    chosen.add_argument("--name", default="protagonist", help="the token and file names")
    chosen.add_argument("--preset", default="fast", choices=["paper", "fast"])
    chosen.add_argument("--dinov2", default="sprite", help="'sprite', a DINOv2 folder or a hub id")
    chosen.add_argument("--size", type=int, default=32)
    chosen.add_argument("--seed", type=int, default=0)
    chosen.add_argument("--device", default="cpu")
    chosen.add_argument("--sheet-scale", type=int, default=4)
    chosen.add_argument("--out", default="out/chosen-one")
    chosen.set_defaults(run=run_chosen_one)
    add_oneactor(commands)
    add_dsd(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
