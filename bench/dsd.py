"""`python -m protagonist.bench.dsd`: Diffusion Self-Distillation measured in the sprite world.

1. Mine: grid prompts over the sprite world's scenes → grids from the FLUX-architecture model → panels
   → ordered pairs kept when the image embedder finds them similar (the pipeline users run).
   The oracle then says how often grids and pairs really show one identity, before and after filtering.
2. Train the two-frame model (c_embedder + LoRA) on the kept pairs.
   With `--pairs renders` the pair dataset is instead what a perfect miner would give: renders of one
   character in two scenes (a ceiling row, as `chosen-one-fast-pure-cluster` is for the Chosen One).
3. Test on characters the pair dataset never showed: a render of each one is the reference, and the
   two-frame model draws it in new prompted contexts. Identity agreement = the oracle reads all five
   identity attributes of the new frame equal to the reference's. The baseline samples the same
   prompts without the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.adapters import lora_applied
from ..core.checkpoint import atomic_write_text
from ..core.dsd.grids import ordered_pairs
from ..core.dsd.pairs import PairMining, grid_prompts, mine_pairs
from ..core.dsd.training import TwoFrameTraining, train_two_frame
from ..core.dsd.two_frame import condition_tokens, conditioned
from ..core.images import contact_sheet, pil_to_tensor, save_png, to_pil
from ..core.proposals import ProposalSettings
from ..sprites.attributes import ATTRIBUTES, IDENTITY_ATTRIBUTES, Context, Identity
from ..sprites.captions import context_phrase
from ..sprites.oracle import Oracle, context_of, identity_of
from ..sprites.world import render
from .grids import one_identity, x0_error
from .harness import SamplingSettings, draw

log = logging.getLogger(__name__)
SCENES = [context_phrase(Context(b, p)) for b in range(len(ATTRIBUTES["background"]))
          for p in range(len(ATTRIBUTES["position"]))]


PAIR_SOURCES = ("mined", "renders")
FRAME = 32  # the sprite world's image side: each frame of the two-frame canvas


@dataclass
class DSDBench:
    grids: int = 256
    threshold: float = 0.9
    steps: int = 30
    cfg: float = 3.0  # the sprite FLUX is not guidance-distilled: CFG is the text scale of DSD's true CFG
    image_scale: float = 1.0
    train_steps: int = 1500
    batch: int = 8
    rank: int = 32
    lr: float = 1e-3
    references: int = 24
    contexts: int = 5
    seed: int = 0
    pairs: str = "mined"  # or "renders": the ceiling, pairs a perfect miner would give
    render_identities: int = 400
    pairs_per_identity: int = 4


# ------------------------------------------------------------------ 1. mining
def mine(backend, embedder, folder: Path, bench: DSDBench) -> dict:
    from ..core.embedding import embed_images

    prompts = grid_prompts(["blob"], SCENES, bench.grids, seed=bench.seed)
    sampling = ProposalSettings(count=1, seed=bench.seed, steps=bench.steps, cfg=bench.cfg, height=64, width=64)
    return mine_pairs(backend, prompts, folder, lambda images: embed_images(embedder, images),
                      PairMining(threshold=bench.threshold, sampling=sampling))


def render_pairs(folder: Path, bench: DSDBench) -> dict:
    """A pair dataset of renders: `render_identities` characters, each in `pairs_per_identity` pairs of two
    random scenes (reference, target and the target's prompt); returns their counts and identity indices."""
    rng = np.random.default_rng(bench.seed + 123)
    identities = [int(i) for i in rng.permutation(Identity.count())[: bench.render_identities]]
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in identities:
        for k in range(bench.pairs_per_identity):
            scenes = [Context(int(s) // 3, int(s) % 3) for s in rng.choice(len(SCENES), 2, replace=False)]
            names = [f"identity{index:05d}_{k}_{role}.png" for role in ("reference", "target")]
            for name, scene in zip(names, scenes):
                save_png(to_pil(render(Identity.from_index(index), scene, rng)), folder / name)
            lines.append(json.dumps({"identity": index, "reference": names[0], "target": names[1],
                                     "prompt": f"a blob {context_phrase(scenes[1])}"}))
    atomic_write_text("\n".join(lines) + "\n", folder / "pairs.jsonl")
    return {"kept": len(lines), "characters": len(identities), "seen_identities": sorted(identities)}


def _panels(folder: Path, grid: int) -> torch.Tensor:
    return torch.stack([pil_to_tensor(Image.open(folder / f"grid{grid:06d}_panel{k}.png")) for k in range(4)])


def pair_agreement(folder: Path, oracle: Oracle) -> dict:
    """How often grids, all their pairs, and the kept pairs show one identity (oracle)."""
    grids = [json.loads(line)["grid"] for line in (folder / "grids.jsonl").read_text().splitlines()]
    panels = torch.cat([_panels(folder, g) for g in grids])
    identities = identity_of(oracle.read(panels))
    by_name = {f"grid{g:06d}_panel{k}.png": identities[4 * n + k] for n, g in enumerate(grids) for k in range(4)}
    def same(a: str, b: str) -> bool:
        return by_name[a] is not None and by_name[a] == by_name[b]

    everything = [same(f"grid{g:06d}_panel{i}.png", f"grid{g:06d}_panel{j}.png")
                  for g in grids for i, j in ordered_pairs(4)]
    kept = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    consistent = one_identity(identities, len(grids))
    return {"grids": len(grids), "grid_consistency": float(np.mean(consistent)),
            "pairs": len(everything), "pair_agreement_unfiltered": float(np.mean(everything)),
            "kept": len(kept), "pair_agreement_kept": float(np.mean([same(p["reference"], p["target"]) for p in kept]))
            if kept else float("nan"),
            "panel_validity": float(np.mean([i is not None for i in identities])),
            "seen_identities": sorted({i.index for i in identities if i is not None})}


# ------------------------------------------------------------------- 3. test
@dataclass
class HeldOut:
    identities: list[Identity]
    references: torch.Tensor  # one render per identity
    prompts: list[list[str]]  # per identity, prompts of new contexts
    contexts: list[list[Context]]


def held_out(seen: set[int], bench: DSDBench) -> HeldOut:
    """Identities absent from the pair dataset, each rendered once, and new contexts to draw them in."""
    rng = np.random.default_rng(bench.seed + 77)
    unseen = [i for i in rng.permutation(Identity.count()) if int(i) not in seen][: bench.references]
    identities = [Identity.from_index(int(i)) for i in unseen]
    references, prompts, contexts = [], [], []
    for identity in identities:
        scene = rng.choice(len(SCENES), bench.contexts + 1, replace=False)
        chosen = [Context(int(s) // 3, int(s) % 3) for s in scene]
        references.append(render(identity, chosen[0], rng))
        contexts.append(chosen[1:])
        prompts.append([f"a blob {context_phrase(c)}" for c in chosen[1:]])
    return HeldOut(identities, torch.stack(references), prompts, contexts)


def agreement(images: torch.Tensor, targets: list[Identity], contexts: list[Context], oracle: Oracle) -> dict:
    reading = oracle.read(images)
    got, where = identity_of(reading), context_of(reading)
    per_attribute = {a: float(np.mean([int(reading.labels[a][i]) == getattr(t, a) for i, t in enumerate(targets)]))
                     for a in IDENTITY_ATTRIBUTES}
    return {"identity_agreement": float(np.mean([g == t for g, t in zip(got, targets)])),
            "prompt_conformity": float(np.mean([w == c for w, c in zip(where, contexts)])),
            "validity": float(reading.valid.float().mean()), "per_attribute": per_attribute}


RELIANCE_SIGMAS = (0.9, 0.7, 0.5, 0.3)


def reference_reliance(backend, c_embedder, lora, rank: int, sigmas=RELIANCE_SIGMAS, pairs: int = 32,
                       seed: int = 0) -> dict[float, float]:
    """How much the two-frame model reads its reference, per noise level (FLUX's σ, 0 to 1).

    The x0 error on the new frame when the reference shows a stranger, over the error when it shows the
    character (same target render, noise and prompt). 1 means the reference is ignored; a model that carries
    the character must read it where identity is decided (σ above about 0.5 for this world's FLUX).
    """
    rng = np.random.default_rng(seed)
    characters, strangers = ([Identity.random(rng) for _ in range(pairs)] for _ in range(2))
    scenes, new_scenes = ([Context.random(rng) for _ in range(pairs)] for _ in range(2))
    references, others, targets = (torch.stack([render(i, c, rng) for i, c in zip(who, where)])
                                   for who, where in ((characters, scenes), (strangers, scenes),
                                                      (characters, new_scenes)))
    with torch.no_grad():
        latents = backend.encode_images(torch.cat([references, targets], dim=-1))
        cond = backend.encode_prompts([f"a blob {context_phrase(c)}" for c in new_scenes])
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    tokens = {name: condition_tokens(backend, images, images.shape[-1])
              for name, images in (("own", references), ("other", others))}
    adapter = (lora_applied(backend.denoiser, lora, rank, float(rank), backend.lora_targets()) if lora
               else contextlib.nullcontext())
    new_frame = (..., slice(latents.shape[-1] // 2, None))
    errors = {}
    with adapter, torch.no_grad():
        for name in tokens:
            with conditioned(backend.image_embedder(), c_embedder, tokens[name]):
                errors[name] = [x0_error(backend, latents, noise, sigma, cond, new_frame) for sigma in sigmas]
    return {sigma: other / own for sigma, other, own in zip(sigmas, errors["other"], errors["own"])}


def generate_frames(backend, c_embedder, lora, test: HeldOut, bench: DSDBench, with_reference: bool) -> torch.Tensor:
    from ..core.dsd.generate import generate_two_frame
    from ..core.dsd.guidance import TrueCFG

    frames = []
    settings = SamplingSettings(steps=bench.steps, cfg=bench.cfg, sampler="euler")
    for n, prompts in enumerate(test.prompts):
        seeds = [bench.seed + 10_000 + 100 * n + k for k in range(len(prompts))]
        if with_reference:
            references = test.references[n:n + 1].expand(len(prompts), -1, -1, -1)
            frames.append(generate_two_frame(backend, c_embedder, lora, bench.rank, float(bench.rank), references,
                                             prompts, seeds, FRAME, bench.steps,
                                             TrueCFG(image_scale=bench.image_scale, text_scale=bench.cfg)))
        else:
            frames.append(draw(backend, prompts, seeds, settings))
    return torch.cat(frames)


# ------------------------------------------------------------------- report
def _row(name: str, scores: dict) -> str:
    return (f"| {name} | {scores['identity_agreement']:.1%} | {scores['prompt_conformity']:.1%} | "
            f"{scores['validity']:.1%} | " + " ".join(f"{scores['per_attribute'][a]:.0%}" for a in IDENTITY_ATTRIBUTES)
            + " |")


def _mining_rows(mined: dict, bench: DSDBench) -> list[str]:
    if bench.pairs == "renders":
        return [f"| pair dataset: renders of one character in two scenes (the ceiling, no mining) | "
                f"{mined['kept']} pairs of {mined['characters']} characters |"]
    return [
        f"| grids | {mined['grids']} |",
        f"| grids showing one identity in all four panels | {mined['grid_consistency']:.1%} |",
        f"| panels the oracle reads | {mined['panel_validity']:.1%} |",
        (f"| ordered pairs, identity agreement before filtering | {mined['pair_agreement_unfiltered']:.1%} "
         f"({mined['pairs']} pairs) |"),
        (f"| kept pairs (embedder cosine ≥ {bench.threshold}), identity agreement | "
         f"{mined['pair_agreement_kept']:.1%} ({mined['kept']} pairs) |")]


def report(model: str, mined: dict, seconds: dict, baseline: dict, dsd: dict, bench: DSDBench, n_images: int) -> str:
    lines = [
        f"DSD in the sprite world (model `{model}`), settings: {asdict(bench)}", "",
        "| pair mining | value |", "|---|---|", *_mining_rows(mined, bench),
        (f"| wall time: mining {seconds['mine']:.0f} s, training {seconds['train']:.0f} s "
        f"({bench.train_steps} steps × {bench.batch}) | |"), "",
        (f"Held-out test: {bench.references} identities never in the pair dataset × {bench.contexts} new contexts "
        f"= {n_images} images."), "",
        "| method | identity agreement with the reference | prompt conformity | validity | "
        + " ".join(IDENTITY_ATTRIBUTES) + " |", "|---|---|---|---|---|",
        _row("plain sampling (no reference)", baseline), _row("two-frame DSD (reference)", dsd),
    ]
    if "reference_reliance" in dsd:
        sigmas, ratios = zip(*dsd["reference_reliance"].items())
        lines += ["", ("Reference reliance (x0 error on the new frame with a stranger's reference ÷ with the "
                       f"character's; 1 = ignored) at σ {' / '.join(map(str, sigmas))}: "
                       + " / ".join(f"{r:.2f}" for r in ratios))]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="protagonist.bench.dsd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(DSDBench()).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    parser.add_argument("--model", default="sprite-flux")
    parser.add_argument("--out", default="out/bench-dsd")
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..cli import load_model
    from ..sprites.embedder import load_embedder

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    bench = DSDBench(**{k: getattr(args, k) for k in asdict(DSDBench())})
    if bench.pairs not in PAIR_SOURCES:
        raise SystemExit(f"--pairs {bench.pairs!r}: choose one of {', '.join(PAIR_SOURCES)}")
    out, backend, oracle = Path(args.out), load_model(args.model, "cpu"), Oracle.load()
    seconds, start = {}, time.perf_counter()
    if bench.pairs == "renders":
        mined = render_pairs(out / "pairs", bench)
    else:
        mine(backend, load_embedder(), out / "pairs", bench)
        mined = pair_agreement(out / "pairs", oracle)
    seconds["mine"] = time.perf_counter() - start
    start = time.perf_counter()
    training = TwoFrameTraining(steps=bench.train_steps, batch_size=bench.batch, rank=bench.rank,
                                alpha=float(bench.rank), lr=bench.lr, side=FRAME, seed=bench.seed, checkpoint_every=250)
    c_embedder, lora, losses = train_two_frame(backend, out / "pairs", out / "train", training)
    seconds["train"] = time.perf_counter() - start
    test = held_out(set(mined.pop("seen_identities")), bench)
    targets = [i for i in test.identities for _ in range(bench.contexts)]
    contexts = [c for row in test.contexts for c in row]
    with torch.no_grad():
        plain = generate_frames(backend, None, None, test, bench, with_reference=False)
        frames = generate_frames(backend, c_embedder, lora, test, bench, with_reference=True)
    baseline, dsd = agreement(plain, targets, contexts, oracle), agreement(frames, targets, contexts, oracle)
    dsd["reference_reliance"] = reference_reliance(backend, c_embedder, lora, bench.rank)
    sheet = torch.cat([torch.cat([test.references[n:n + 1], frames[n * bench.contexts:(n + 1) * bench.contexts]])
                       for n in range(min(8, bench.references))])
    save_png(contact_sheet(sheet, columns=bench.contexts + 1, scale=3), out / "dsd_contact_sheet.png")
    table = report(args.model, mined, seconds, baseline, dsd, bench, len(targets))
    atomic_write_text(table, out / "results.md")
    atomic_write_text(json.dumps({"mined": mined, "seconds": seconds, "baseline": baseline, "dsd": dsd,
                                  "losses": losses[::10]}, indent=1), out / "results.json")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
