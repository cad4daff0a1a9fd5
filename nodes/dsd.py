"""Diffusion Self-Distillation as ComfyUI nodes: grid splitting, pair filtering, loading DSD weights.

The native two-frame sampler is in `dsd_sampler.py`, the trainer in `dsd_training.py`.
"""

from __future__ import annotations

import json

import folder_paths
import torch
from comfy_api.v0_0_2 import io

from ..core.dsd.convert import load_converted
from ..core.dsd.grids import filter_pairs, ordered_pairs, split_grid
from ..core.interface import ProtagonistError
from .chosen_one import Embeddings
from .convert import images_to_comfy, images_to_core
from .model_folders import PROTAGONIST_FOLDER, VLM_FOLDER, model_source

DSDWeights = io.Custom("PROTAGONIST_DSD")
_JUDGES: dict = {}  # explicit module-level cache of the one loaded VLM judge (nodes hold no state)


def cached_judge(name: str):
    """The VLM judge named by a models/vlm folder, a path or a hub id; the previous one is dropped."""
    source = model_source(name, VLM_FOLDER)
    if source not in _JUDGES:
        import comfy.model_management

        from ..core.dsd.judge import load_judge

        _JUDGES.clear()
        _JUDGES[source] = load_judge(source, comfy.model_management.get_torch_device())
    return _JUDGES[source]


class GridPairSplitter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_GridPairSplitter", display_name="Grid Pair Splitter (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="Splits grid images into panels and every ordered (reference, target) pair of one grid.",
            inputs=[
                io.Image.Input("grids", tooltip="One or more grid images of the same size."),
                io.Int.Input("rows", default=2, min=1, max=8, tooltip="Panels per column."),
                io.Int.Input("cols", default=2, min=1, max=8, tooltip="Panels per row."),
                io.Boolean.Input("detect_gutters", default=False,
                                 tooltip="Find and remove flat-coloured borders and gutters between panels."),
            ],
            outputs=[io.Image.Output(display_name="panels"), io.Image.Output(display_name="references"),
                     io.Image.Output(display_name="targets"), io.String.Output(display_name="pairs")],
        )

    @classmethod
    def execute(cls, grids, rows, cols, detect_gutters) -> io.NodeOutput:
        panels = torch.cat([split_grid(g, rows, cols, detect_gutters) for g in images_to_core(grids)])
        per_grid = rows * cols
        pairs = [(g * per_grid + i, g * per_grid + j) for g in range(grids.shape[0]) for i, j in ordered_pairs(per_grid)]
        references = panels[[i for i, _ in pairs]]
        targets = panels[[j for _, j in pairs]]
        return io.NodeOutput(images_to_comfy(panels), images_to_comfy(references), images_to_comfy(targets),
                             json.dumps(pairs))


class PairFilter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_PairFilter", display_name="Pair Filter (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="Keeps the pairs whose panels' embeddings (DINOv2 Embed of the panels) are similar enough.",
            inputs=[
                io.Image.Input("panels", tooltip="The panels from Grid Pair Splitter."),
                Embeddings.Input("embeddings", tooltip="DINOv2 Embed of those panels, same order."),
                io.String.Input("pairs", tooltip="The pairs from Grid Pair Splitter."),
                io.Float.Input("threshold", default=0.8, min=-1.0, max=1.0, step=0.01,
                               tooltip="Minimum cosine similarity of a kept pair."),
                io.String.Input("judge", default="",
                                tooltip="Optional: a vision-language model (folder in models/vlm, a path or a hub "
                                        "id) that re-checks each similar pair with DSD's three-step reasoning. "
                                        "Empty = off."),
            ],
            outputs=[io.Image.Output(display_name="references"), io.Image.Output(display_name="targets"),
                     io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(cls, panels, embeddings, pairs, threshold, judge="") -> io.NodeOutput:
        pairs = [tuple(p) for p in json.loads(pairs)]
        kept, similarity = filter_pairs(embeddings, pairs, threshold)
        similar = len(kept)
        if kept and judge.strip():
            kept, _ = cached_judge(judge.strip()).filter(images_to_core(panels), kept)
        if not kept:
            by_judge = f", {similar} of them by the VLM judge" if similar else ""
            raise ProtagonistError(f"all {len(pairs)} pairs were rejected at threshold {threshold}{by_judge} "
                                   f"(best similarity {max(similarity):.3f}); lower the threshold")
        report = f"kept {len(kept)} of {len(pairs)} pairs at threshold {threshold}"
        if judge.strip():
            report += f"; the judge rejected {similar - len(kept)} of the {similar} similar pairs"
        return io.NodeOutput(panels[[i for i, _ in kept]], panels[[j for _, j in kept]], report)


class LoadDSD(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Protagonist_LoadDSD", display_name="Load DSD Weights (Protagonist)",
            category="Protagonist/Diffusion Self-Distillation",
            description="A converted DSD file (c_embedder + LoRA) from models/protagonist, for your own FLUX.1-dev.",
            inputs=[io.Combo.Input("file", options=folder_paths.get_filename_list(PROTAGONIST_FOLDER),
                                   tooltip="Made by `python -m protagonist dsd convert` or the DSD trainer.")],
            outputs=[DSDWeights.Output(display_name="dsd")],
        )

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        return io.NodeOutput(load_converted(folder_paths.get_full_path_or_raise(PROTAGONIST_FOLDER, file)))
