"""DSD memory on paper for FLUX.1-dev: the converted file we load on top of the user's FLUX vs a second copy.

The official release ships a full FLUX transformer with `c_embedder` (24.2 GB) plus a LoRA (418 MB); the
native sampler instead loads only a converted file (c_embedder + LoRA) next to the FLUX the user has.
Parameter counts come from the real module shapes: diffusers' `FluxTransformer2DModel` built with the
FLUX.1-dev config on the `meta` device (no weights are allocated or downloaded).

Run: ``python -m protagonist.bench.dsd_memory`` — prints a markdown table.
"""

from __future__ import annotations

import argparse
import json

import torch

# FLUX.1-dev's transformer config (diffusers): hidden 24 × 128 = 3072, 19 double + 38 single blocks.
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
RELEASED_TRANSFORMER_BYTES = 24.2e9  # the DSD release's full transformer (REFERENCE.md)
RELEASED_LORA_BYTES = 418e6  # the DSD release's LoRA file (REFERENCE.md)
BF16 = 2


def flux_on_meta(config: dict = FLUX_DEV) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):
        return FluxTransformer2DModel(**config)


def linear_shapes(model: torch.nn.Module, targets: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """(name, in, out) of every Linear whose name ends with one of `targets` (peft's matching rule)."""
    return [(name, m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)]


def comfy_flux_shapes(config: dict = FLUX_DEV) -> list[tuple[str, int, int]]:
    """The LoRA targets of ComfyUI's FLUX (fused layers; see nodes/comfy_backend.COMFY_FLUX_ATTENTION)."""
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    mlp = 4 * hidden
    shapes = []
    for n in range(config["num_layers"]):
        for stream in ("img", "txt"):
            shapes += [(f"double_blocks.{n}.{stream}_attn.qkv", hidden, 3 * hidden),
                       (f"double_blocks.{n}.{stream}_attn.proj", hidden, hidden)]
    for n in range(config["num_single_layers"]):
        shapes += [(f"single_blocks.{n}.linear1", hidden, 3 * hidden + mlp),
                   (f"single_blocks.{n}.linear2", hidden + mlp, hidden)]
    return shapes


def lora_bytes(shapes: list[tuple[str, int, int]], rank: int, dtype_bytes: int = BF16) -> int:
    """A (down) is rank × in, B (up) is out × rank, plus one float32 alpha scalar per module."""
    return sum(rank * (fan_in + fan_out) * dtype_bytes + 4 for _, fan_in, fan_out in shapes)


def table(ranks: tuple[int, ...] = (16, 32, 64, 128)) -> tuple[str, dict]:
    from protagonist.core.backends.flux import FLUX_ATTENTION

    model = flux_on_meta()
    total = sum(p.numel() for p in model.parameters())
    c_embedder = model.x_embedder.in_features * model.x_embedder.out_features + model.x_embedder.out_features
    diffusers_targets = linear_shapes(model, FLUX_ATTENTION)
    comfy_targets = comfy_flux_shapes()
    rows = [("FLUX.1-dev transformer (bf16, computed)", total * BF16),
            ("DSD release: full transformer + c_embedder (as published)", RELEASED_TRANSFORMER_BYTES),
            ("DSD release: LoRA file (as published)", RELEASED_LORA_BYTES),
            ("c_embedder Linear(64→3072) alone (bf16)", c_embedder * BF16)]
    for rank in ranks:
        rows.append((f"converted file, LoRA rank {rank} on diffusers attention ({len(diffusers_targets)} layers)",
                     c_embedder * BF16 + lora_bytes(diffusers_targets, rank)))
    for rank in ranks:
        rows.append((f"trainer-node file, LoRA rank {rank} on ComfyUI fused layers ({len(comfy_targets)} layers)",
                     c_embedder * BF16 + lora_bytes(comfy_targets, rank)))
    lines = ["| what | bytes | GB | vs. a 2nd transformer |", "|---|---:|---:|---:|"]
    for label, size in rows:
        lines.append(f"| {label} | {int(size):,} | {size / 1e9:.3f} | {size / RELEASED_TRANSFORMER_BYTES:.2%} |")
    implied = RELEASED_LORA_BYTES / BF16 / sum(f_in + f_out for _, f_in, f_out in diffusers_targets)
    notes = (f"\nTensor payload only (a safetensors header adds a few tens of kB). FLUX.1-dev has {total:,} "
             f"transformer parameters. The released 418 MB LoRA matches rank ≈ {implied:.0f} on the "
             f"{len(diffusers_targets)} diffusers attention layers in bf16 (an inference from the size; the "
             f"release does not state its rank). The trainer node keeps its c_embedder in float32 (+0.4 MB). "
             f"`diff.*` tensors are added only where the released "
             f"transformer differs from FLUX.1-dev (unknown without both files; `dsd convert` reports the count).")
    numbers = {"flux_parameters": total, "c_embedder_parameters": c_embedder, "implied_release_rank": implied,
               "rows": {label: int(size) for label, size in rows}}
    return "\n".join(lines) + "\n" + notes, numbers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = parser.parse_args(argv)
    text, numbers = table(tuple(args.ranks))
    print(text)
    if args.json:
        print(json.dumps(numbers, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
